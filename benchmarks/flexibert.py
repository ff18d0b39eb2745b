"""FlexiBERT / BOSHNAS benchmark (protocol and criteria: docs/experiments/flexibert.md).

Per seed: three searches (BOSHNAS, GP-BO, random) of 10 trained models each over a 400-model
library of the paper's design space at a quarter of its widths, every query a harness run on
linux characters; then the finals: the best heterogeneous model against the best homogeneous
one at +-5 % parameters (1,000 updates from scratch, test split), and the best heterogeneous
model again from a weight transfer, until it reaches the from-scratch loss at update 500.

    python -m benchmarks.flexibert                 # everything (resumable: run it again)
    python -m benchmarks.flexibert --seeds 1       # one seed
    python -m benchmarks.flexibert --summary-only  # criteria, tables and plots from the results

Every run is single-threaded; start it with ``nice``. Results: benchmarks/results/flexibert/
(harness results per run under ``linux/<arm>/seed<k>.json``, search states under
``searches/seed<k>/<method>/search.json``, ``summary.json``, ``summary.md``, PNGs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness
from gpts_fairseq.flexibert.embedding import edit_distance
from gpts_fairseq.flexibert.plots import best_so_far, plot_searches
from gpts_fairseq.flexibert.runner import TrainSettings, recipe_options, validation_options
from gpts_fairseq.flexibert.search import METHODS, Search, SearchConfig, dictionary_size, transfer_trainer
from gpts_fairseq.flexibert.space import format_layers, is_homogeneous, parse_layers
from gpts_fairseq.flexibert.transfer import build_model, write_transfer_checkpoint
from gpts_fairseq.report.history import read_valid_curve

CORPUS = "linux"
SEEDS = (1, 2)
SPACE = {"layers": [2, 4], "ops": ["sdp", "wma", "dft", "dct", "c5", "c9", "c13"], "hidden": [32, 64],
         "heads": [2, 4], "ffn_dim": [128, 256], "ffn_stacks": [1, 3]}
SEARCH = {"budget": 10, "initial": 5, "patience": 5, "library_size": 400}  # protocol amendment: 15 -> 10
QUERY = TrainSettings(updates=200, transfer_updates=100, tokens_per_sample=64, batch_size=32, lr=3e-3,
                      max_valid_steps=20)
FINAL = TrainSettings(updates=1000, transfer_updates=1000, tokens_per_sample=64, batch_size=32, lr=3e-3,
                      max_valid_steps=20, valid_subsets=("valid", "test"))
FINAL_VALID_EVERY, TRANSFER_VALID_EVERY, TARGET_UPDATE = 100, 50, 500
PARAMETER_TOLERANCE = 0.05
CANDIDATES = 3
SURROGATE_MARGIN_BITS = 0.01
TRANSFER_RATIO_LIMIT = 0.75
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results" / "flexibert"
WORK_ROOT = harness.WORK_ROOT / "flexibert"


def prepare_data(data_root: Path = corpora.DEFAULT_DATA_ROOT) -> Path:
    """linux characters: the prepared train/valid splits, plus the corpus' own test.txt
    tokenized the same way and binarized with the same dictionary (``test`` subset)."""
    base = corpora.prepare(CORPUS, data_root=data_root, tokenizer="char")
    dest = Path(data_root) / f"{base.name}-with-test"
    if (dest / "test.idx").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx", "train.tok", "prepared.json"):
        if not (dest / name).exists():
            (dest / name).symlink_to(base / name)
    lines = corpora.tokenize_lines((corpora.SHARED_DATA / CORPUS / "test.txt").read_text().splitlines(), "char")
    (dest / "test.tok").write_text("\n".join(lines) + "\n")
    corpora.preprocess(dest / "staging", base / "dict.txt", testpref=dest / "test.tok")
    for suffix in ("bin", "idx"):  # idx last: its presence marks a finished preparation
        (dest / "staging" / f"test.{suffix}").rename(dest / f"test.{suffix}")
    return dest


class Suite:
    """The runs of one seed: harness specs for queries and finals, and the searches on them."""

    def __init__(self, seed: int, data_dir: Path, results_root: Path, work_root: Path):
        self.seed, self.data_dir, self.results_root, self.work_root = seed, data_dir, results_root, work_root
        self.entropy = harness.corpus_entropy(str(data_dir))
        self.vocab = dictionary_size(data_dir)

    def spec(self, arm: str, layers, settings: TrainSettings, updates: int, valid_every: int,
             init: harness.WarmStart | None = None) -> harness.RunSpec:
        return harness.RunSpec(corpus=CORPUS, data_dir=self.data_dir, arm=arm, seed=self.seed, budget_updates=updates,
                               model=tuple(recipe_options(settings, updates)),
                               fairseq=tuple(validation_options(settings, valid_every)),
                               arm_args=("--flexi-layers", format_layers(layers)), keep_checkpoints=True,
                               warm_start=init)

    def checkpoint(self, arm: str) -> Path:
        return self.work_root / CORPUS / arm / f"seed{self.seed}" / "checkpoint_last.pt"

    def transfer_start(self, path: Path, source_arm: str, layers) -> harness.WarmStart:
        """The transfer checkpoint as the harness' warm start: its record names the neighbour's
        result (update and search loss); its fingerprint, what the checkpoint is made from."""
        source = json.loads(harness.result_path(self.results_root, CORPUS, source_arm, self.seed).read_text())
        update, loss = source["val_curve"][-1]
        made_of = f"{source_arm}|{source['fingerprint']}|{format_layers(layers)}|{self.seed}"
        return harness.WarmStart(path, f"transfer-{hashlib.sha256(made_of.encode()).hexdigest()[:16]}", int(update),
                                 float(loss), self.entropy, self.entropy - float(loss))

    def search(self, method: str) -> Search:
        config = SearchConfig(method=method, seed=self.seed, space=SPACE, **SEARCH)
        directory = self.results_root / "searches" / f"seed{self.seed}" / method

        def arm(number: int) -> str:  # the initial draws are the same models in every search: shared
            return f"initial/q{number:03d}" if number < config.initial else f"{method}/q{number:03d}"

        def train_run(layers, number, updates, init, source_number):
            start = None if init is None else self.transfer_start(init, arm(source_number), layers)
            result = harness.run(self.spec(arm(number), layers, QUERY, updates, updates, start), self.results_root,
                                 self.work_root)
            return {"losses": {"valid": result["val_curve"][-1][1]}, "wall_s": result["wall_time_s"]}

        def init_of(number: int) -> Path:
            return self.work_root / "transfer" / arm(number) / f"seed{self.seed}.pt"

        trainer = transfer_trainer(train_run, lambda n: self.checkpoint(arm(n)), init_of, self.vocab, QUERY, self.seed)
        return Search(directory, config, trainer)

    def parameters(self, layers) -> int:
        return sum(p.numel() for p in build_model(layers, self.vocab, QUERY.tokens_per_sample, self.seed).parameters())

    def finals(self, searches: dict[str, Search]) -> dict:
        trained = {q["layers"]: q for s in searches.values() for q in s.queries}
        heterogeneous = [q for q in trained.values() if not is_homogeneous(parse_layers(q["layers"]))]
        best = min(heterogeneous, key=lambda q: (q["loss"], q["params"]))
        best_layers = parse_layers(best["layers"])
        library = next(iter(searches.values())).library
        near = [m for m in library if is_homogeneous(m)
                and abs(self.parameters(m) - best["params"]) <= PARAMETER_TOLERANCE * best["params"]]
        out = {"heterogeneous": best["layers"], "heterogeneous_params": best["params"], "homogeneous_candidates": len(near)}
        if not near:
            return {**out, "homogeneous": None}
        tried = [trained[format_layers(m)] for m in near if format_layers(m) in trained]
        if not tried:  # train the nearest few with the query recipe
            for model in sorted(near, key=lambda m: (edit_distance(best_layers, m), format_layers(m)))[:CANDIDATES]:
                arm = f"candidate/{hashlib.sha256(format_layers(model).encode()).hexdigest()[:12]}"
                result = harness.run(self.spec(arm, model, QUERY, QUERY.updates, QUERY.updates), self.results_root,
                                     self.work_root)
                tried.append({"layers": format_layers(model), "loss": result["val_curve"][-1][1],
                              "params": self.parameters(model)})
        homogeneous = min(tried, key=lambda q: (q["loss"], q["params"]))
        out.update(homogeneous=homogeneous["layers"], homogeneous_params=homogeneous["params"],
                   homogeneous_trained_in_search=bool([m for m in near if format_layers(m) in trained]))
        for name in ("heterogeneous", "homogeneous"):
            result = harness.run(self.spec(f"final/{name}", parse_layers(out[name]), FINAL, FINAL.updates,
                                           FINAL_VALID_EVERY), self.results_root, self.work_root, finish=_test_loss)
            out[f"{name}_final"] = {"valid": result["val_curve"][-1][1], "test": result["test_loss"],
                                    "val_curve": result["val_curve"]}
        out["transfer"] = self.transfer_run(best_layers, out["heterogeneous_final"]["val_curve"], searches)
        return out

    def transfer_run(self, layers, scratch_curve, searches: dict[str, Search]) -> dict:
        target = dict(scratch_curve)[TARGET_UPDATE]
        others = [(s, q) for s in searches.values() for q in s.queries if q["layers"] != format_layers(layers)]
        search, source = min(others, key=lambda sq: (edit_distance(layers, parse_layers(sq[1]["layers"])), sq[1]["query"],
                                                     sq[0].config.method))
        source_arm = (f"initial/q{source['query']:03d}" if source["query"] < search.config.initial
                      else f"{search.config.method}/q{source['query']:03d}")
        init = self.work_root / "transfer" / "final" / f"seed{self.seed}.pt"
        transfer = write_transfer_checkpoint(init, layers, parse_layers(source["layers"]), self.checkpoint(source_arm),
                                             self.seed)
        spec = self.spec("final/transfer", layers, FINAL, FINAL.updates, TRANSFER_VALID_EVERY,
                         self.transfer_start(init, source_arm, layers))
        result = harness.run(spec, self.results_root, self.work_root,
                             stop=lambda curve: any(loss <= target for _, loss in curve))
        reached = [u for u, loss in result["val_curve"] if loss <= target]
        return {"neighbour": source["layers"], "shared_fraction": transfer.shared_fraction, "target": target,
                "updates_to_target": reached[0] if reached else None,
                "ratio": reached[0] / TARGET_UPDATE if reached else None, "val_curve": result["val_curve"]}


def _test_loss(save_dir: Path, result: dict) -> dict:
    curve = read_valid_curve(Path(save_dir) / harness.LOG_FILE, "test")
    return {"test_loss": curve[-1][1] if curve else None}


def run_seed(seed: int, data_dir: Path, results_root: Path, work_root: Path, searches_only: bool) -> dict:
    suite = Suite(seed, data_dir, results_root, work_root)
    searches = {method: suite.search(method) for method in METHODS}
    for search in searches.values():
        search.run()
    plot_searches({m: s.queries for m, s in searches.items()}, results_root / f"searches-seed{seed}.png",
                  title=f"linux, seed {seed}")
    return {} if searches_only else suite.finals(searches)


def summarise(results_root: Path, seeds: Sequence[int], entropy: float) -> dict:
    """The criteria of the protocol from the recorded searches and finals (``entropy``: the
    corpus' previous-token entropy in bits, the plateau check's threshold)."""
    per_seed, curves = {}, {m: [] for m in METHODS}
    for seed in seeds:
        states = {m: results_root / "searches" / f"seed{seed}" / m / "search.json" for m in METHODS}
        if not all(p.exists() for p in states.values()):
            continue
        queries = {m: json.loads(p.read_text())["queries"] for m, p in states.items()}
        for method, items in queries.items():
            curve = best_so_far(items)
            curves[method].append(curve + [curve[-1]] * (SEARCH["budget"] - len(curve)) if curve else [])
        finals_path = results_root / f"finals-seed{seed}.json"
        per_seed[seed] = json.loads(finals_path.read_text()) if finals_path.exists() else None
    summary = {"seeds": sorted(per_seed), "search": {}, "A": None, "C": None}
    complete = [c for c in curves["random"] if len(c) == SEARCH["budget"]]
    for method in METHODS:
        full = [c for c in curves[method] if len(c) == SEARCH["budget"]]
        if not full:
            continue
        mean_curve = [statistics.fmean(values) for values in zip(*full)]
        random_best = statistics.fmean(c[-1] for c in complete) if complete else None
        reached = [next((n + 1 for n, v in enumerate(c) if random_best is not None and v <= random_best), None)
                   for c in full]
        summary["search"][method] = {"mean_best_so_far": mean_curve, "final_mean": mean_curve[-1],
                                     "trained_to_reach_random_final": reached,
                                     "pass": (None if method == "random" or random_best is None
                                              else mean_curve[-1] <= random_best - SURROGATE_MARGIN_BITS)}
    finals = {seed: f for seed, f in per_seed.items() if f and f.get("transfer")}
    if finals:
        rows = []
        for seed, f in finals.items():
            het, hom = f["heterogeneous_final"], f.get("homogeneous_final")
            plateau = hom is None or max(het["valid"], hom["valid"]) >= entropy
            rows.append({"seed": seed, "better": None if hom is None else het["test"] < hom["test"],
                         "on_plateau": plateau})
        decided = [r for r in rows if not r["on_plateau"]]
        summary["A"] = {"rows": rows, "entropy": entropy,
                        "verdict": ("FAIL" if any(r["better"] is False for r in decided)
                                    else "INCONCLUSIVE (plateau)" if len(decided) < len(rows) else "PASS")}
        ratios = [f["transfer"]["ratio"] for f in finals.values()]
        summary["C"] = {"ratios": ratios, "verdict": "PASS" if all(r is not None and r <= TRANSFER_RATIO_LIMIT
                                                                 for r in ratios) else "FAIL"}
    return summary


def summary_lines(results_root: Path, summary: dict) -> list[str]:
    """summary.md: the searches, the finals and the criteria as tables."""
    lines = ["# FlexiBERT benchmark: summary (generated by benchmarks/flexibert.py)", "",
             "## Searches (search-split loss, bits; best after n trained models)", "",
             "| seed | method | trained | heterogeneous trained | best after 5 | best after 10 | best model |",
             "|---|---|---|---|---|---|---|"]
    for seed in summary["seeds"]:
        for method in METHODS:
            path = results_root / "searches" / f"seed{seed}" / method / "search.json"
            queries = json.loads(path.read_text())["queries"] if path.exists() else []
            if not queries:
                continue
            curve, best = best_so_far(queries), min(queries, key=lambda q: q["loss"])
            mixed = sum(not is_homogeneous(parse_layers(q["layers"])) for q in queries)
            at = [f"{curve[n - 1]:.3f}" if len(curve) >= n else "–" for n in (5, 10)]
            lines.append(f"| {seed} | {method} | {len(queries)} | {mixed} | {at[0]} | {at[1]} | `{best['layers']}` |")
    lines += ["", "Mean best-so-far over seeds (searches with all their models):", "",
              "| method | " + " | ".join(str(n) for n in range(1, SEARCH["budget"] + 1)) + " |",
              "|---|" + "---|" * SEARCH["budget"]]
    for method, row in summary["search"].items():
        lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in row["mean_best_so_far"]) + " |")
    lines += ["", "## Finals", ""]
    for seed in summary["seeds"]:
        path = results_root / f"finals-seed{seed}.json"
        if not path.exists():
            continue
        f = json.loads(path.read_text())
        lines += [f"Seed {seed}: H* `{f['heterogeneous']}` ({f['heterogeneous_params']:,} parameters); M* "
                  f"`{f.get('homogeneous')}` ({f.get('homogeneous_params', 0):,}; {f['homogeneous_candidates']} "
                  f"homogeneous library models within ±5 %).", "",
                  "| model | search split at 1,000 | test split at 1,000 |", "|---|---|---|"]
        for name in ("heterogeneous", "homogeneous"):
            final = f.get(f"{name}_final")
            if final:
                lines.append(f"| {name} | {final['valid']:.3f} | {final['test']:.3f} |")
        t = f["transfer"]
        lines += ["", f"Transfer: from `{t['neighbour']}` (shared {t['shared_fraction']:.0%} of the layers' weights), "
                  f"target {t['target']:.3f} bits (scratch at {TARGET_UPDATE}): reached at "
                  f"{t['updates_to_target']} updates (ratio {t['ratio']}).", ""]
    lines += ["## Criteria", ""]
    for method, row in summary["search"].items():
        if row["pass"] is not None:
            lines.append(f"- B, {method}: mean best after {SEARCH['budget']} = {row['final_mean']:.3f} bits vs random "
                         f"{summary['search']['random']['final_mean']:.3f}: {'PASS' if row['pass'] else 'FAIL'}")
    for name in ("A", "C"):
        if summary[name]:
            lines.append(f"- {name}: {summary[name]['verdict']} ({json.dumps({k: v for k, v in summary[name].items() if k != 'verdict'})})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--searches-only", action="store_true", help="stop after the searches")
    harness.add_suite_arguments(parser, RESULTS_ROOT, WORK_ROOT)
    args = parser.parse_args(argv)
    data_dir = prepare_data()
    if not args.summary_only:
        for seed in args.seeds:
            finals = run_seed(seed, data_dir, args.results_root, args.work_root, args.searches_only)
            if finals:
                harness.write_json(args.results_root / f"finals-seed{seed}.json", finals)
    summary = summarise(args.results_root, args.seeds, harness.corpus_entropy(str(data_dir)))
    harness.write_json(args.results_root / "summary.json", summary)
    (args.results_root / "summary.md").write_text("\n".join(summary_lines(args.results_root, summary)) + "\n")
    plot_searches({f"{m} seed {seed}": json.loads(p.read_text())["queries"] for seed in summary["seeds"] for m in METHODS
                   if (p := args.results_root / "searches" / f"seed{seed}" / m / "search.json").exists()},
                  args.results_root / "searches.png", title="linux: best so far")
    print(json.dumps({k: v for k, v in summary.items() if k != "search"}, indent=1))
    for method, row in summary["search"].items():
        print(f"{method}: mean best after {SEARCH['budget']} = {row['final_mean']:.4f} bits, pass {row['pass']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
