"""Does an informative subset (INGENIOUS) pre-train as well as the full data? Pre-registered.

Protocol and pass criteria: docs/experiments/subsets.md; the pre-registered text, verbatim, is
this module's docstring at commit 392b41a (``git show 392b41a:benchmarks/subsets.py``). The arms
(``ARMS``) train ``pretrain.model_args``' tiny RoBERTa for one full-data epoch of updates on each
corpus cut to ``MAX_LINES``. ``timing.json`` records the selection cost at ~20K blocks (its run
and its table are retired: docs/experiments/subsets.md holds them).
Results: ``benchmarks/results/subsets/<corpus>/<arm>/seed<k>.json``, ``summary.md`` and
``delta_vs_full.png``.

    python -m benchmarks.subsets --jobs 1          # all 45 runs (resumable)
    python -m benchmarks.subsets --summary-only    # tables and the plot from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, pretrain
from benchmarks.harness import md_table, verdict

DEFAULT_RESULTS = harness.RESULTS_ROOT / "subsets"
DEFAULT_WORK = harness.WORK_ROOT / "subsets"
MAX_LINES = {"wikitext-2": 725, "linux": 11250, "war-and-peace": 5300}  # ~320 k characters each
SEEDS = (1, 2, 3)
FRACTION = 0.25
VALIDATE_UPDATES = 20
EVAL_BATCHES = 12
BATCH_SIZE = 16
TOKENS_PER_SAMPLE = 128
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


def run_spec(corpus: str, data: Path, arm: str, seed: int, budget: int):
    """One run of the comparison, for the harness."""
    model = pretrain.model_args(pretrain.Settings(budget_updates=budget, interaction_updates=budget))
    return harness.RunSpec(
        corpus=corpus, data_dir=data, arm=arm, seed=seed, budget_updates=budget, model=tuple(model),
        fairseq=("--gpts-valid-masking", "reference", "--max-valid-steps", str(EVAL_BATCHES - 1),
                 "--validate-interval-updates", str(VALIDATE_UPDATES), "--validate-interval", "1000000",
                 "--log-interval", str(VALIDATE_UPDATES)),
        arm_args=tuple(ARMS[arm]))


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


def load(results: Path, corpus: str) -> dict:
    runs = {}
    for run in harness.load_results(results, corpus):
        run.setdefault("val_curve", run.get("curve"))  # results written before the harness
        runs.setdefault(run["arm"], {})[run["seed"]] = run
    return runs


def _final(run: dict) -> float:
    return run["val_curve"][-1][1]


def corpus_rows(runs: dict) -> list[dict]:
    full, rows = runs.get("full", {}), []
    for arm in (a for a in ARMS if a in runs):
        mine = runs[arm]
        seeds = sorted(mine)
        finals = [_final(mine[s]) for s in seeds]
        deltas = [_final(mine[s]) - _final(full[s]) for s in seeds if s in full]
        rows.append({"arm": arm, "seeds": len(seeds), "final_mean": statistics.mean(finals),
                     "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                     "delta_mean": statistics.mean(deltas) if deltas else None,
                     "delta_lower": sum(d < 0 for d in deltas), "delta_pairs": len(deltas),
                     "selection_s": statistics.mean(mine[s]["selection_s"] for s in seeds),
                     "selection_updates": statistics.mean(mine[s]["selection_update_equivalents"] for s in seeds),
                     "budget": mine[seeds[0]]["budget_updates"]})
    return rows


def criteria(per_corpus: dict) -> list[str]:
    complete = all(len(runs.get(arm, {})) == len(SEEDS) for runs in per_corpus.values()
                   for arm in ("full", "ingenious", "random-online")) and len(per_corpus) == len(corpora.CORPORA)
    deltas = [row["delta_mean"] for runs in per_corpus.values() for row in corpus_rows(runs) if row["arm"] == "ingenious"]
    worst = max((d for d in deltas if d is not None), default=None)
    pairs = [_final(run) < _final(other) for runs in per_corpus.values()
             for seed, run in runs.get("ingenious", {}).items()
             if (other := runs.get("random-online", {}).get(seed)) is not None]
    return [f"- (1) INGENIOUS within +0.01 bits of full data on every corpus: "
            f"**{verdict(complete, worst is not None and worst <= 0.01)}** "
            f"(worst corpus mean difference {'n/a' if worst is None else f'{worst:+.4f}'} bits)",
            f"- (2) INGENIOUS lower than random-online on >= 7 of 9 same-seed pairs: "
            f"**{verdict(complete, sum(pairs) >= 7)}** ({sum(pairs)} of {len(pairs)})"]


def write_summary(results: Path) -> Path:
    per_corpus = {c: runs for c in corpora.CORPORA if (runs := load(results, c))}
    lines = ["# Informative subsets: 25 % of the blocks vs the full data, one full-data epoch of updates", "",
             "Final: reference validation loss (bits) at the budget, mean ± std over seeds. Δ full: minus "
             "`full`'s with the same seed (mean; seeds lower). Selection: feature passes + greedy over the "
             "run, seconds and update-equivalents (seconds / the run's seconds per update).", "",
             *criteria(per_corpus), ""]
    table = {corpus: corpus_rows(runs) for corpus, runs in per_corpus.items()}
    for corpus, rows in table.items():
        lines += [f"## {corpus} (budget {rows[0]['budget']} updates)", "", md_table(
            ["arm", "seeds", "final", "Δ full", "selection (s)", "selection (updates)"], "lrrrrr",
            [[row["arm"], row["seeds"], f"{row['final_mean']:.4f} ± {row['final_std']:.4f}",
              "–" if row["arm"] == "full" or row["delta_mean"] is None else
              f"{row['delta_mean']:+.4f} ({row['delta_lower']}/{row['delta_pairs']})",
              f"{row['selection_s']:.1f}", f"{row['selection_updates']:.0f}"] for row in rows]), ""]
    if per_corpus:
        harness.plot_paired_deltas({corpus: {arm: {seed: run["val_curve"] for seed, run in runs[arm].items()}
                                             for arm in ARMS if arm in runs} for corpus, runs in per_corpus.items()},
                                   "full", results / "delta_vs_full.png", "valid loss − full data's (bits, same seed)",
                                   every_seed=True)
        lines.append("![validation loss minus full data's, same seed](delta_vs_full.png)")
    harness.write_json(results / "summary.json", {"criteria": criteria(per_corpus), "tables": table})
    path = results / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_suite_arguments(parser, DEFAULT_RESULTS, DEFAULT_WORK, arms=ARMS, seeds=SEEDS)
    args = parser.parse_args(argv)
    if not args.summary_only:
        data = {c: data_dir(c, MAX_LINES[c]) for c in args.corpus}
        specs = [run_spec(c, data[c], a, s, epoch_updates(data[c])) for s in args.seeds for c in args.corpus
                 for a in args.arms]  # seed-major
        harness.run_suite(specs, args.results_root, args.work_root, jobs=args.jobs, finish=run_fields)
    write_summary(args.results_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
