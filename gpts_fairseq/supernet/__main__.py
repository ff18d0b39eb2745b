"""``python -m gpts_fairseq.supernet search CHECKPOINT --data DIR --split SPLIT --out DIR ...``:
search a trained super-net (progress lines; OUT/search.json, OUT/pareto.png, a resumable
OUT/search_state.json and the latency cache OUT/latency.json).

``python -m gpts_fairseq.supernet extract CHECKPOINT --data DIR (--arch L,D,H,F | --from-search
OUT/search.json) --out FILE.pt``: write a sub-net as a checkpoint that trains without the super-net.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .latency import MIN_RUNS, LatencyPredictor, LatencyTable
from .search import (CONSTRAINTS, MODES, STATE_FILE, Feasibility, SearchSettings, _write_json, all_archs,
                     pareto_front, params_counter, plot_front, run_search)
from .space import SubArch

LATENCY_STREAM = 0x1A7  # the generator that picks the sub-nets the latency predictor is fitted on
HELD_OUT_SHARE = 0.2
PATH_OPTIONS = ("checkpoint", "data", "out", "latency_cache")


def parse_window(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be LOW,HIGH, got {text!r}") from None
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpts_fairseq.supernet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="evolutionary / fast / random search of a super-net checkpoint")
    search.add_argument("checkpoint")
    search.add_argument("--data", required=True, help="the binarized data dir the super-net was trained on")
    search.add_argument("--split", required=True, help="the search split (never the split final numbers use)")
    search.add_argument("--out", required=True, help="output dir (state, results, plot, latency cache)")
    search.add_argument("--mode", choices=MODES, default="evolution")
    search.add_argument("--constraint", choices=CONSTRAINTS, default="none")
    target = search.add_mutually_exclusive_group()
    target.add_argument("--target", type=float, help="parameters, or latency in ms, the constraint aims at")
    target.add_argument("--target-arch", help="L,D,H,F: aim at this sub-net's parameters or predicted latency")
    search.add_argument("--window", type=parse_window, default=(0.85, 1.1),
                        help="feasible: LOW*target <= value <= HIGH*target (default 0.85,1.1)")
    search.add_argument("--generations", type=int, default=10)
    search.add_argument("--population", type=int, default=25)
    search.add_argument("--candidates", type=int, default=25, help="sub-nets evaluated by fast and random modes")
    search.add_argument("--seed", type=int, default=1)
    search.add_argument("--max-batches", type=int, help="evaluate fitness on the first N batches of the split")
    search.add_argument("--latency-runs", type=int, default=MIN_RUNS, help=f"timed runs per sub-net (>= {MIN_RUNS})")
    search.add_argument("--latency-threads", type=int, default=1)
    search.add_argument("--latency-length", type=int, default=128)
    search.add_argument("--latency-samples", type=int, default=60,
                        help="sub-nets measured to fit the latency predictor (a fifth held out)")
    search.add_argument("--latency-cache", help="latency cache file (default OUT/latency.json)")
    extract = commands.add_parser("extract", help="write a sub-net as a checkpoint without the super-net")
    extract.add_argument("checkpoint")
    extract.add_argument("--data", required=True)
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="LAYERS,HIDDEN,HEADS,FFN")
    source.add_argument("--from-search", help="a search.json: extract its chosen sub-net")
    extract.add_argument("--out", required=True)
    extract.add_argument("--format", default="auto", help="auto | roberta (stock fairseq) | super")
    return parser


def fit_latency_predictor(space, table: LatencyTable, samples: int, seed: int, progress) -> LatencyPredictor:
    if samples < 5:
        raise ValueError(f"--latency-samples must be >= 5, got {samples}")
    archs = all_archs(space)
    rng = np.random.default_rng([LATENCY_STREAM, seed])
    picked = [archs[i] for i in rng.permutation(len(archs))[:samples]]
    latencies = []
    for number, arch in enumerate(picked, 1):
        latencies.append(table(arch))
        if number % 10 == 0 or number == len(picked):
            progress(f"latency: {number}/{len(picked)} sub-nets measured")
    held = max(1, int(round(HELD_OUT_SHARE * len(picked))))
    predictor = LatencyPredictor(space, seed).fit(picked[held:], latencies[held:], picked[:held], latencies[:held])
    progress(f"latency predictor: mean relative error {predictor.held_out_error:.1%} on {held} held-out sub-nets")
    return predictor


def search_command(options) -> dict:
    def settings_with(target):
        return SearchSettings(mode=options.mode, constraint=options.constraint, target=target, window=options.window,
                              generations=options.generations, population=options.population,
                              candidates=options.candidates, seed=options.seed)

    target_arch = SubArch.parse(options.target_arch, "--target-arch") if options.target_arch else None
    if target_arch is not None and options.constraint == "none":
        raise ValueError("--target-arch needs --constraint params or latency")
    settings_with(1.0 if target_arch else options.target).check()  # before anything is loaded
    os.makedirs(options.out, exist_ok=True)

    from .subnets import SubnetLoss

    progress = lambda line: print(f"[supernet search] {line}", flush=True)  # noqa: E731
    fitness = SubnetLoss(options.checkpoint, options.data, options.split, options.max_batches)
    model = fitness.model
    space = model.space
    vocab = len(fitness.task.source_dictionary)
    params = params_counter(space, vocab, model.encoder.sentence_encoder.embed_positions.weight.size(0))
    table = LatencyTable(space, vocab, options.latency_cache or os.path.join(options.out, "latency.json"),
                         threads=options.latency_threads, length=options.latency_length, runs=options.latency_runs)
    predictor = fit_latency_predictor(space, table, options.latency_samples, options.seed, progress)
    target = options.target
    if target_arch is not None:  # on the scale feasibility is judged on: parameters, or predicted latency
        space.check(target_arch, "--target-arch")
        target = float(params(target_arch) if options.constraint == "params" else predictor.predict([target_arch])[0])
        progress(f"target: {target:g} {'parameters' if options.constraint == 'params' else 'ms predicted'} "
                 f"({target_arch}; measured {table(target_arch):.2f} ms)")
    settings = settings_with(target)
    state_path = os.path.join(options.out, STATE_FILE)
    if os.path.exists(state_path):
        with open(state_path) as handle:
            stored = json.load(handle)["settings"]
        settings.resumable_with(SearchSettings(**{**stored, "window": tuple(stored["window"])}))
    feasible = Feasibility(space, settings, params, predictor.predict)
    progress(f"{len(feasible.archs)} feasible sub-nets of {space.size()}")

    def describe(arch):
        return f"{arch} ({params(arch):,} params, {predictor.predict([arch])[0]:.2f} ms predicted)"

    evaluated = run_search(settings, space, fitness, feasible, state_path, progress, describe)
    archs = sorted(evaluated, key=lambda a: (evaluated[a], a))
    best = archs[0]
    predicted = predictor.predict(archs)
    losses = [evaluated[a] for a in archs]
    front = pareto_front(list(zip(predicted, losses)))
    kept = {k: v for k, v in vars(options).items() if k not in PATH_OPTIONS}  # no machine path in a result
    result = {"settings": kept | {"window": list(options.window), "target": settings.target}, "chosen": str(best),
              "chosen_loss_bits": evaluated[best], "chosen_params": params(best),
              "chosen_latency_ms_measured": table(best), "chosen_latency_ms_predicted": float(predicted[0]),
              "latency_predictor_held_out_error": predictor.held_out_error,
              "latency_condition": table.condition, "evaluated": len(evaluated), "feasible": len(feasible.archs),
              "pareto_front": [{"arch": str(archs[i]), "loss_bits": losses[i], "latency_ms": float(predicted[i]),
                                "params": params(archs[i])} for i in front],
              "all": [{"arch": str(a), "loss_bits": evaluated[a], "latency_ms": float(p), "params": params(a)}
                      for a, p in zip(archs, predicted)]}
    _write_json(os.path.join(options.out, "search.json"), result)
    plot_front(os.path.join(options.out, "pareto.png"), predicted, losses, front, 0,
               f"{settings.mode}, constraint {settings.constraint}"
               f"{'' if settings.target is None else f' {settings.target:g}'}: chosen {best}")
    progress(f"chosen {describe(best)}: {evaluated[best]:.4f} bits, measured {table(best):.2f} ms; "
             f"Pareto front of {len(front)}; wrote {options.out}/search.json and pareto.png")
    return result


def extract_command(options) -> str:
    from .subnets import extract

    if options.from_search:
        with open(options.from_search) as handle:
            arch = SubArch.parse(json.load(handle)["chosen"], "--from-search")
    else:
        arch = SubArch.parse(options.arch, "--arch")
    written = extract(options.checkpoint, options.data, arch, options.out, options.format)
    print(f"[supernet extract] {arch} -> {options.out} (format {written})")
    return written


def main(argv=None) -> int:
    options = build_parser().parse_args(argv)
    try:
        (search_command if options.command == "search" else extract_command)(options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
