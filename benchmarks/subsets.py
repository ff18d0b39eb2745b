"""Does an informative subset (INGENIOUS) pre-train as well as the full data? Pre-registered.

Protocol (written before any run; not re-tuned after):

- **Model and data**: the tiny RoBERTa of ``benchmarks/pretrain.py`` (``pretrain.model_args``:
  2 layers, 128 wide, char tokens, batches of 16 x 128, lr 2e-3 with 10 % warm-up and linear
  decay, no dropout), one thread, on the three corpora of ``corpora.py``, each cut to its first
  ``MAX_LINES`` lines (~2,500 blocks of 128 characters, so 45 runs fit in about an hour).
- **Budget**: one full-data epoch of updates per corpus (blocks / 16), the same for every arm.
- **Arms** (``ARMS``): ``full`` (plain gpts_mlm); 25 % subsets with one random warm-up epoch
  (the authors warm-start on the full data; a 25 % epoch of the full data's random stream is
  the same thing at this budget), then: ``random-fixed`` (one uniform subset), ``random-online``
  (a new uniform subset every epoch), ``ingenious`` (temperature 1, the authors' default) and
  ``ingenious-t10`` (temperature 10: flatter sampling, closer to random), both selecting once,
  after the warm-up, for the rest of the budget (a feature pass over every block costs about a
  third of a full-data epoch here; the authors reselect every 25K of their steps, i.e. rarely).
  Partitions of 2,000 blocks; features: mean-pooled middle-layer states; exact lazy greedy.
- **Seeds** 1, 2, 3 (same seed = same initial model, same validation masks).
- **Measure**: the reference-masking validation loss (rho 0.15, fixed masks, the first 12
  validation batches, bits) every 20 updates and at the budget. Reported per corpus and arm:
  final loss mean ± std, and the same-seed difference to ``full`` (mean, seeds lower).
  Selection cost (feature pass and greedy, summed over the run's selections) in seconds and in
  update-equivalents (seconds / the run's measured seconds per update).
- **Pass criteria** (decided now): (1) INGENIOUS matches full data: its same-seed difference
  to ``full`` is <= +0.01 bits on average on every corpus; (2) INGENIOUS beats random: its
  final loss is lower than ``random-online``'s on >= 7 of the 9 same-seed pairs. Either may
  fail; the README reports the numbers as they come.
- **Selection cost figure**: war-and-peace cut to ~20,000 blocks, partitions of 2,000:
  the greedy (and, separately, the feature pass) against one epoch's training time (blocks /
  16 updates at the measured seconds per update of the same run). Target: the greedy under
  10 % of the epoch.
- **Selection cost, second run** (written after the first timing run found the feature pass
  at 20 % of an epoch, before this run): in one run, at the same load, the feature pass over
  every block by the whole forward (before) and stopped at the feature layer (now), back to
  back in one process from the same initial model (features must be bit-identical), then the
  fairseq-train run that selects before its first update (greedy, and the feature pass as
  training runs it) and trains 60 updates for the seconds per update. Target (issue 11):
  selection = truncated feature pass + greedy < 10 % of one epoch. Feature batch size: the
  truncated pass over the first 4,096 blocks at batches of 16 (training's), 64 and 256, two
  alternating rounds; a larger batch replaces training's only if it is >= 15 % faster in CPU
  time and gives bit-identical features. The load average is recorded before and after.

Results (through ``benchmarks.harness``; selections from the run's subsets events):
``benchmarks/results/subsets/<corpus>/<arm>/seed<k>.json`` (a finished run is skipped, so the
suite resumes), ``timing.json``, ``summary.md`` and ``delta_vs_full.png``.

    python -m benchmarks.subsets --jobs 1          # all 45 runs and the timing run (resumable)
    python -m benchmarks.subsets --summary-only    # tables and the plot from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, pretrain

DEFAULT_RESULTS = harness.REPO_ROOT / "benchmarks" / "results" / "subsets"
DEFAULT_WORK = harness.WORK_ROOT / "subsets"
MAX_LINES = {"wikitext-2": 725, "linux": 11250, "war-and-peace": 5300}  # ~320 k characters each
TIMING_LINES = 41400  # war-and-peace: ~2.56 M characters, ~20,000 blocks
SEEDS = (1, 2, 3)
FRACTION = 0.25
VALIDATE_UPDATES = 20
EVAL_BATCHES = 12
BATCH_SIZE = 16
TOKENS_PER_SAMPLE = 128
BATCH_PROBE_BLOCKS = 4096  # the feature batch-size probe featurises this many blocks per size
PROBE_BATCH_SIZES = (BATCH_SIZE, 64, 256)
SUBSET = ["--subset-fraction", str(FRACTION), "--subset-warmup-epochs", "1", "--subset-partition-size", "2000"]
ONCE = ["--subset-resample-epochs", "3"]  # one selection after the warm-up, kept to the budget
ARMS = {
    "full": [],
    "random-fixed": ["--subset-selector", "random-fixed", *SUBSET],
    "random-online": ["--subset-selector", "random-online", "--subset-resample-epochs", "1", *SUBSET],
    "ingenious": ["--subset-selector", "ingenious", "--subset-temperature", "1", *ONCE, *SUBSET],
    "ingenious-t10": ["--subset-selector", "ingenious", "--subset-temperature", "10", *ONCE, *SUBSET],
}
SELECTION_EVENT = "selection"  # gpts_fairseq.subsets' event of one selection


def data_dir(corpus: str, max_lines: int) -> Path:
    return corpora.prepare(corpus, tokenizer="char", max_lines=max_lines)


def epoch_updates(data: Path) -> int:
    """Updates in one full-data epoch: masked_lm cuts the token stream (one eos per line) into
    blocks of TOKENS_PER_SAMPLE - 1 and prepends bos; BATCH_SIZE blocks an update."""
    info = json.loads((data / "prepared.json").read_text())
    blocks = -(-(info["train_tokens"] + info["train_lines"]) // (TOKENS_PER_SAMPLE - 1))
    return -(-blocks // BATCH_SIZE)


def run_spec(corpus: str, data: Path, arm: str, seed: int, budget: int, arm_args: Sequence[str] | None = None):
    """One run of the comparison, for the harness (``arm_args``: instead of ``ARMS[arm]``)."""
    model = pretrain.model_args(pretrain.Settings(budget_updates=budget, interaction_updates=budget))
    return harness.RunSpec(
        corpus=corpus, data_dir=data, arm=arm, seed=seed, budget_updates=budget, model=tuple(model),
        fairseq=("--gpts-valid-masking", "reference", "--max-valid-steps", str(EVAL_BATCHES - 1),
                 "--validate-interval-updates", str(VALIDATE_UPDATES), "--validate-interval", "1000000",
                 "--log-interval", str(VALIDATE_UPDATES)),
        arm_args=tuple(ARMS[arm] if arm_args is None else arm_args))


def selections(result: dict) -> list[dict]:
    """The run's selections, from its subsets events."""
    return [{"epoch": e["epoch"], "kind": e["kind"], "size": e["size"], "count": e["count"],
             "feature_s": e["feature_seconds"], "greedy_s": e["greedy_seconds"]}
            for e in result["events"].get("subsets", []) if e["event"] == SELECTION_EVENT]


def run_fields(save_dir: Path, result: dict) -> dict:
    """The harness' ``finish``: the selections and their cost in update-equivalents."""
    chosen = selections(result)
    seconds_per_update = result["compute"]["train_wall_s"] / result["compute"]["updates"]
    selection_s = sum(s["feature_s"] + s["greedy_s"] for s in chosen)
    return {"max_lines": MAX_LINES.get(result["corpus"]), "selections": chosen,
            "seconds_per_update": seconds_per_update, "selection_s": selection_s,
            "selection_update_equivalents": selection_s / seconds_per_update}


def _task_and_model(cmd: list[str]):
    """gpts_mlm with its training set loaded and its initial model, in this process, from the
    arguments of a fairseq-train command."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), cmd[1:]))
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset(cfg.dataset.train_subset)
    return task, task.build_model(cfg.model)


def _timed(function) -> tuple[object, dict]:
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = function()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "load_1min": load}


def feature_passes(task, model) -> dict:
    """The feature pass over every block, the whole forward (before) and up to the feature layer
    (now), back to back at the same load; then the truncated pass over the first
    ``BATCH_PROBE_BLOCKS`` blocks at each of ``PROBE_BATCH_SIZES`` (alternating, two rounds)."""
    import torch
    from gpts_fairseq.subsets.features import block_features, feature_batches

    dataset, pad = task.dataset(task.cfg.train_subset), task.dictionary.pad()

    def features(batches, full_forward=False):
        return block_features(model, dataset, batches, layer=-1, pad_idx=pad, full_forward=full_forward)

    batches = feature_batches(dataset, max_tokens=None, max_sentences=BATCH_SIZE)
    before, full_forward = _timed(lambda: features(batches, full_forward=True))
    now, truncated = _timed(lambda: features(batches))
    probe = {size: [] for size in PROBE_BATCH_SIZES}
    reference, identical = None, True
    for _ in range(2):
        for size in PROBE_BATCH_SIZES:
            sized = feature_batches(dataset, max_tokens=None, max_sentences=size)[:BATCH_PROBE_BLOCKS // size]
            table, timing = _timed(lambda: features(sized))
            probe[size].append(timing)
            reference = table if reference is None else reference
            identical &= torch.equal(table, reference)
    return {"full_forward": full_forward, "truncated": truncated, "identical": torch.equal(before, now),
            "batch_probe": {"blocks": BATCH_PROBE_BLOCKS, "identical": bool(identical),
                            "sizes": {str(size): {key: statistics.mean(t[key] for t in runs) for key in ("wall_s", "cpu_s")}
                                      for size, runs in probe.items()}}}


def run_timing(results: Path, work: Path) -> Path:
    """Selection of a ~20K-block corpus in partitions of 2,000 against one epoch of training:
    the feature pass before (whole forward) and now (up to the feature layer) side by side, the
    greedy, and the training, in one run (see the protocol)."""
    out = results / "timing.json"
    earlier = json.loads(out.read_text()) if out.exists() else None
    if earlier is not None and "feature_pass" in earlier:
        return out
    arm_args = list(ARMS["ingenious"])
    arm_args[arm_args.index("--subset-warmup-epochs") + 1] = "0"  # select before the first update
    spec = run_spec("war-and-peace", data_dir("war-and-peace", TIMING_LINES), "timing", 1, 60, arm_args)
    load_before = os.getloadavg()
    passes = feature_passes(*_task_and_model(spec.command(work / "timing")))
    run = harness.run(spec, work, work, finish=run_fields, out=work / "timing.json")
    selection = run["selections"][0]
    seconds_per_update = run["seconds_per_update"]
    epoch_s = -(-selection["count"] // BATCH_SIZE) * seconds_per_update
    share = {name: passes[name]["wall_s"] / epoch_s for name in ("full_forward", "truncated")}
    timing = {
        "blocks": selection["count"], "partition_size": 2000, "feature_batch_size": BATCH_SIZE,
        "feature_pass": {**{name: {**passes[name], "share_of_epoch": share[name]} for name in share},
                         "in_training_s": selection["feature_s"], "identical": passes["identical"]},
        "greedy_s": selection["greedy_s"], "greedy_share_of_epoch": selection["greedy_s"] / epoch_s,
        "selection_share_of_epoch": (passes["truncated"]["wall_s"] + selection["greedy_s"]) / epoch_s,
        "baseline_selection_share_of_epoch": (passes["full_forward"]["wall_s"] + selection["greedy_s"]) / epoch_s,
        "seconds_per_update": seconds_per_update, "epoch_train_s": epoch_s,
        "batch_probe": passes["batch_probe"],
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "earlier_run": earlier,  # the first timing run (whole forward), kept as it was recorded
    }
    harness.write_json(out, timing)
    print("\n".join(timing_table(timing)))
    return out


def timing_table(t: dict) -> list[str]:
    """Markdown rows of the selection cost against one epoch's training."""
    epoch = t["epoch_train_s"]
    rows = [("feature pass, whole forward (before)", t["feature_pass"]["full_forward"]["wall_s"]),
            ("feature pass, up to the feature layer (now)", t["feature_pass"]["truncated"]["wall_s"]),
            ("the same inside fairseq-train, before its first update", t["feature_pass"]["in_training_s"]),
            ("greedy (lazy, exact)", t["greedy_s"]),
            ("selection before: whole forward + greedy", t["feature_pass"]["full_forward"]["wall_s"] + t["greedy_s"]),
            ("**selection now: truncated features + greedy**", t["feature_pass"]["truncated"]["wall_s"] + t["greedy_s"])]
    lines = [f"{t['blocks']} blocks, partitions of {t['partition_size']}; one epoch's training {epoch:.0f} s "
             f"({t['seconds_per_update']:.2f} s/update); load average {t['load_average_before'][0]:.1f} before, "
             f"{t['load_average_after'][0]:.1f} after", "", "| step | seconds | share of one epoch |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.1f} | {100 * seconds / epoch:.1f} % |" for name, seconds in rows]
    probe = t["batch_probe"]
    lines += ["", f"Feature batch size (truncated pass over {probe['blocks']} blocks, mean of 2 rounds; features "
              f"{'bit-identical' if probe['identical'] else 'NOT identical'} across sizes):", "",
              "| batch | wall s | cpu s |", "|---:|---:|---:|"]
    lines += [f"| {size} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |" for size, v in probe["sizes"].items()]
    return lines


def load(results: Path, corpus: str) -> dict:
    runs = {}
    for run in harness.load_results(results, corpus):
        run.setdefault("val_curve", run.get("curve"))  # results written before the harness
        runs.setdefault(run["arm"], {})[run["seed"]] = run
    return runs


def _final(run: dict) -> float:
    return run["val_curve"][-1][1]


def corpus_rows(runs: dict) -> list[dict]:
    full = runs.get("full", {})
    rows = []
    for arm in ARMS:
        if arm not in runs:
            continue
        seeds = sorted(runs[arm])
        finals = [_final(runs[arm][s]) for s in seeds]
        deltas = [_final(runs[arm][s]) - _final(full[s]) for s in seeds if s in full]
        rows.append({"arm": arm, "seeds": len(seeds), "final_mean": statistics.mean(finals),
                     "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                     "delta_mean": statistics.mean(deltas) if deltas else None,
                     "delta_lower": sum(d < 0 for d in deltas), "delta_pairs": len(deltas),
                     "selection_s": statistics.mean(runs[arm][s]["selection_s"] for s in seeds),
                     "selection_updates": statistics.mean(runs[arm][s]["selection_update_equivalents"] for s in seeds),
                     "budget": runs[arm][seeds[0]]["budget_updates"]})
    return rows


def criteria(per_corpus: dict) -> list[str]:
    lines = []
    complete = all(len(runs.get(arm, {})) == len(SEEDS) for runs in per_corpus.values()
                   for arm in ("full", "ingenious", "random-online")) and len(per_corpus) == len(corpora.CORPORA)
    deltas = {corpus: [row["delta_mean"] for row in corpus_rows(runs) if row["arm"] == "ingenious"]
              for corpus, runs in per_corpus.items()}
    worst = max((d[0] for d in deltas.values() if d and d[0] is not None), default=None)
    verdict = "incomplete" if not complete else ("PASS" if worst <= 0.01 else "FAIL")
    lines.append(f"- (1) INGENIOUS within +0.01 bits of full data on every corpus: **{verdict}** "
                 f"(worst corpus mean difference {'n/a' if worst is None else f'{worst:+.4f}'} bits)")
    wins = pairs = 0
    for runs in per_corpus.values():
        for seed, run in runs.get("ingenious", {}).items():
            other = runs.get("random-online", {}).get(seed)
            if other is not None:
                pairs += 1
                wins += _final(run) < _final(other)
    verdict = "incomplete" if not complete else ("PASS" if wins >= 7 else "FAIL")
    lines.append(f"- (2) INGENIOUS lower than random-online on >= 7 of 9 same-seed pairs: **{verdict}** "
                 f"({wins} of {pairs})")
    return lines


def plot(per_corpus: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_corpus), figsize=(5 * len(per_corpus), 3.6), squeeze=False)
    for ax, (corpus, runs) in zip(axes[0], per_corpus.items()):
        full = runs.get("full", {})
        for arm in ARMS:
            if arm == "full" or arm not in runs:
                continue
            curves = []
            for seed, run in runs[arm].items():
                if seed in full:
                    base = dict(full[seed]["val_curve"])
                    curves.append({u: loss - base[u] for u, loss in run["val_curve"] if u in base})
            updates = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if updates:
                ax.plot(updates, [statistics.mean(c[u] for c in curves) for u in updates], label=arm)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(corpus)
        ax.set_xlabel("update")
        ax.set_ylabel("valid loss − full data's (bits, same seed)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(results: Path) -> Path:
    per_corpus = {c: load(results, c) for c in corpora.CORPORA}
    per_corpus = {c: runs for c, runs in per_corpus.items() if runs}
    lines = ["# Informative subsets: 25 % of the blocks vs the full data, one full-data epoch of updates", "",
             "Final: reference validation loss (bits) at the budget, mean ± std over seeds. Δ full: minus "
             "`full`'s with the same seed (mean; seeds lower). Selection: feature passes + greedy over the "
             "run, seconds and update-equivalents (seconds / the run's seconds per update).", ""]
    lines += criteria(per_corpus) + [""]
    table = {}
    for corpus, runs in per_corpus.items():
        rows = corpus_rows(runs)
        table[corpus] = rows
        lines += [f"## {corpus} (budget {rows[0]['budget']} updates)", "",
                  "| arm | seeds | final | Δ full | selection (s) | selection (updates) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            delta = "–" if row["arm"] == "full" or row["delta_mean"] is None else \
                f"{row['delta_mean']:+.4f} ({row['delta_lower']}/{row['delta_pairs']})"
            lines.append(f"| {row['arm']} | {row['seeds']} | {row['final_mean']:.4f} ± {row['final_std']:.4f} | "
                         f"{delta} | {row['selection_s']:.1f} | {row['selection_updates']:.0f} |")
        lines.append("")
    timing = results / "timing.json"
    if timing.exists() and "feature_pass" in (t := json.loads(timing.read_text())):
        lines += ["## Selection cost at 20K blocks", ""] + timing_table(t) + [""]
    if per_corpus:
        plot(per_corpus, results / "delta_vs_full.png")
        lines.append("![validation loss minus full data's, same seed](delta_vs_full.png)")
    harness.write_json(results / "summary.json", {"criteria": criteria(per_corpus), "tables": table})
    path = results / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=list(corpora.CORPORA), choices=corpora.CORPORA)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--skip-timing", action="store_true")
    harness.add_suite_arguments(parser, DEFAULT_RESULTS, DEFAULT_WORK)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if not args.summary_only:
        if not args.skip_timing:
            run_timing(args.results_root, args.work_root)
        data = {c: data_dir(c, MAX_LINES[c]) for c in args.corpus}
        specs = [run_spec(c, data[c], a, s, epoch_updates(data[c])) for s in args.seeds for c in args.corpus
                 for a in args.arms]  # seed-major
        harness.run_suite(specs, args.results_root, args.work_root, jobs=args.jobs, finish=run_fields)
    write_summary(args.results_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
