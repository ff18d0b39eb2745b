"""Informative subsets past the plateau: arms, protocol and scoring of
docs/experiments/subsets-past-plateau.md (pre-registered), on the experiment harness.

    python -m benchmarks.subsets_past --warm-starts-only   # the shared warm starts (resumable)
    python -m benchmarks.subsets_past --jobs 1             # warm starts, then the 32 runs (resumable)
    python -m benchmarks.subsets_past --summary-only       # criteria and tables from the results

Results: ``benchmarks/results/subsets-past/<corpus>/<arm>/seed<k>.json`` (the harness' schema plus
``selection``), ``warm-starts/<corpus>.json`` and ``summary.md``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, past_plateau, subsets
from benchmarks.harness import Verdict

RESULTS = past_plateau.RESULTS_ROOT / "subsets-past"
SEEDS = (1, 2, 3, 4)
FRACTION = 0.25
SUBSET_EPOCHS = 8
RESELECT_EVERY = 4  # ingenious: subset epochs between selections
VALIDATE_UPDATES = 50
MASK_RHO = 0.15
BATCH_SIZE = 16
TOKENS_PER_SAMPLE = 128
PLATEAU_SHARE = 0.9
LEVEL = 0.95
MARGIN_BITS = 0.01  # S2: ingenious within this of full data
RANDOM_SUBSETS = 100  # S3: uniform subsets the chosen one is compared with

SUBSET = ("--subset-fraction", str(FRACTION), "--subset-warmup-epochs", "0")
ARMS = {
    "full": (),
    "random-fixed": ("--subset-selector", "random-fixed", *SUBSET),
    "random-online": ("--subset-selector", "random-online", "--subset-resample-epochs", "1", *SUBSET),
    "ingenious": ("--subset-selector", "ingenious", "--subset-temperature", "1", "--subset-partition-size", "2000",
                  "--subset-greedy", "lazy", "--subset-resample-epochs", str(RESELECT_EVERY),
                  "--subset-report-facility-location", str(RANDOM_SUBSETS), *SUBSET),
}


def data_dir(corpus: str) -> Path:
    return corpora.prepare(corpus, tokenizer="char")


def budget_updates(data: Path) -> int:
    """``SUBSET_EPOCHS`` subset epochs: masked_lm cuts the stream (one eos a line) into blocks of
    127 tokens plus bos; a subset epoch is ceil(fraction * blocks) blocks, 16 an update."""
    info = json.loads((Path(data) / "prepared.json").read_text())
    blocks = -(-(info["train_tokens"] + info["train_lines"]) // (TOKENS_PER_SAMPLE - 1))
    return SUBSET_EPOCHS * -(-math.ceil(FRACTION * blocks) // BATCH_SIZE)


def specs(corpus: str, warm: harness.WarmStart) -> list[harness.RunSpec]:
    data = data_dir(corpus)
    budget = budget_updates(data)
    return [harness.RunSpec(corpus=corpus, data_dir=data, arm=arm, seed=seed, budget_updates=budget,
                            model=past_plateau.model_args(budget),
                            fairseq=(*past_plateau.validation_args(VALIDATE_UPDATES),
                                     *past_plateau.constant_masking(MASK_RHO)),
                            arm_args=args, warm_start=warm)
            for seed in SEEDS for arm, args in ARMS.items()]


def warm_starts(corpora_names: Sequence[str]) -> dict[str, harness.WarmStart]:
    """Each corpus' shared warm start, its record copied to the results."""
    made = {}
    for corpus in corpora_names:
        warm = past_plateau.warm_start(corpus, data_dir(corpus))
        harness.write_json(RESULTS / "warm-starts" / f"{corpus}.json",
                           json.loads((warm.checkpoint.parent / "warm_start.json").read_text()))
        print(f"warm start {corpus}: update {warm.update}, {warm.loss:.3f} bits "
              f"(entropy {warm.entropy_bits:.3f} - {warm.margin_bits})", flush=True)
        made[corpus] = warm
    return made


# -- scoring -----------------------------------------------------------------------------------


def run_fields(save_dir: Path, result: dict) -> dict:
    """The harness' ``finish``: the subsets benchmark's selections and their cost
    (``subsets.run_fields``), on the full corpus, and the seconds the facility-location reports
    took (not charged)."""
    reports = sum(r.get("facility_location_seconds", 0.0) for r in result["events"].get("subsets", [])
                  if r["event"] == "selection")
    return {**subsets.run_fields(save_dir, result), "max_lines": None, "facility_location_s": reports}


def selection_updates(result: dict) -> float | None:
    """Selection cost in update-equivalents; None for an ingenious run without selection events."""
    if result["arm"] == "ingenious" and not result.get("selections"):
        return None
    return result.get("selection_update_equivalents", 0.0)


def loss_at(curve: Sequence[Sequence[float]], update: float) -> float:
    """The validation curve at ``update``, linear between validations."""
    points = sorted((float(u), float(x)) for u, x in curve)
    for (u0, x0), (u1, x1) in zip(points, points[1:]):
        if u0 <= update <= u1:
            return x0 + (x1 - x0) * (update - u0) / (u1 - u0)
    raise ValueError(f"loss_at: update {update} outside the curve [{points[0][0]}, {points[-1][0]}]")


def _by(results: Sequence[dict]) -> dict[tuple[str, str, int], dict]:
    return {(r["corpus"], r["arm"], r["seed"]): r for r in results}


def score(results: Sequence[dict], entropy: dict[str, float], corpora_names: Sequence[str] = past_plateau.CORPORA,
          seeds: Sequence[int] = SEEDS) -> list[Verdict]:
    """S1, S2 and S3 (docs/experiments/subsets-past-plateau.md) with the plateau check."""
    wanted = len(corpora_names) * len(seeds)
    failing = past_plateau.below_share_failures(results, entropy, PLATEAU_SHARE)
    if failing:
        why = f"below the entropy for < {PLATEAU_SHARE:.0%} of the budget: {', '.join(failing)}"
        return [Verdict(n, "NOT SCOREABLE", why) for n in ("S1", "S2", "S3")]
    by = _by(results)
    s1, s2, missing_cost = [], [], 0
    for corpus in corpora_names:
        for seed in seeds:
            ing, online, full = (by.get((corpus, arm, seed)) for arm in ("ingenious", "random-online", "full"))
            if ing and full:
                s2.append(ing["val_curve"][-1][1] - full["val_curve"][-1][1])
            if ing and online:
                cost = selection_updates(ing)
                if cost is None:
                    missing_cost += 1
                    continue
                at = ing["budget_updates"] - cost
                s1.append(loss_at(ing["val_curve"], at) - online["val_curve"][-1][1])
    verdicts = [past_plateau.bound_verdict("S1", s1, LEVEL, 0.0, wanted, strict=True,
                                           what="ingenious at equal charged compute minus random-online")]
    if missing_cost:
        verdicts[0] = Verdict("S1", "incomplete", f"{missing_cost} ingenious runs carry no selection events")
    verdicts.append(past_plateau.bound_verdict("S2", s2, LEVEL, MARGIN_BITS, wanted, strict=False,
                                               what="ingenious minus full data at equal updates"))
    return verdicts + [separation([by[k] for k in sorted(by) if k[1] == "ingenious" and k[0] in corpora_names
                                   and k[2] in seeds], wanted)]


def first_selection(result: dict) -> dict | None:
    records = [r for r in result.get("events", {}).get("subsets", []) if r.get("event") == "selection"]
    return min(records, key=lambda r: r["update"]) if records else None


def separation(ingenious: Sequence[dict], wanted: int) -> Verdict:
    """S3: at each run's first selection (update 0: the warm start's features), the facility-
    location value of the chosen subset (``facility_location``) above every one of the
    ``RANDOM_SUBSETS`` uniform subsets' (``facility_location_random``); reported with the z-score
    and the share of the exact greedy's gain over random kept (``facility_location_greedy``),
    all from the selection event (``--subset-report-facility-location``)."""
    rows = []
    for result in ingenious:
        record = first_selection(result)
        if record is None or record.get("facility_location_random") is None:
            return Verdict("S3", "incomplete", f"{result['corpus']} seed {result['seed']}: its first selection "
                           f"event carries no facility-location values")
        if record["update"] != 0:
            return Verdict("S3", "incomplete", f"{result['corpus']} seed {result['seed']}: its first selection "
                           f"is at update {record['update']}, not on the warm start's features")
        chosen, randoms = record["facility_location"], record["facility_location_random"]
        mean, sd = statistics.fmean(randoms), statistics.stdev(randoms)
        kept = (chosen - mean) / (record["facility_location_greedy"] - mean)
        rows.append((result, chosen > max(randoms) and len(randoms) >= RANDOM_SUBSETS, (chosen - mean) / sd, kept))
    if len(rows) < wanted:
        return Verdict("S3", "incomplete", f"{len(rows)} of {wanted} ingenious runs")
    detail = "; ".join(f"{r['corpus']} seed {r['seed']}: z {z:+.1f}, {kept:.0%} of the greedy's gain"
                       for r, _, z, kept in rows)
    return Verdict("S3", "PASS" if all(ok for _, ok, _, _ in rows) else "FAIL",
                   f"chosen subset above all {RANDOM_SUBSETS} random ones at the first selection — {detail}")


def charged(result: dict, update: int) -> float:
    """Charged compute by ``update``: the updates plus the selections made by then, in
    update-equivalents (seconds / the run's seconds per update)."""
    spent = sum(e["feature_seconds"] + e["greedy_seconds"] for e in result["events"].get("subsets", [])
                if e["event"] == "selection" and e["update"] <= update)
    return update + (spent / result["seconds_per_update"] if spent else 0.0)


def table(results: Sequence[dict], corpus: str) -> list[str]:
    by = _by(results)
    lines = [f"## {corpus}", "", "| arm | seeds | final (bits) | Δ random-online, same seed | selection (updates) |",
             "|---|---:|---:|---:|---:|"]
    for arm in ARMS:
        mine = [r for r in results if r["corpus"] == corpus and r["arm"] == arm]
        if not mine:
            continue
        finals = [r["val_curve"][-1][1] for r in mine]
        deltas = [r["val_curve"][-1][1] - by[(corpus, "random-online", r["seed"])]["val_curve"][-1][1]
                  for r in mine if (corpus, "random-online", r["seed"]) in by]
        costs = [c for c in (selection_updates(r) for r in mine) if c is not None]
        spread = f" ± {statistics.stdev(finals):.4f}" if len(finals) > 1 else ""
        lines.append(f"| {arm} | {len(mine)} | {statistics.fmean(finals):.4f}{spread} | "
                     f"{statistics.fmean(deltas):+.4f} | {statistics.fmean(costs) if costs else float('nan'):.0f} |"
                     if deltas else f"| {arm} | {len(mine)} | {statistics.fmean(finals):.4f}{spread} | – | – |")
    return lines + [""]


def write_summary(corpora_names: Sequence[str] = past_plateau.CORPORA) -> Path:
    results = [r for c in corpora_names for r in harness.load_results(RESULTS, c)]
    entropy = {c: harness.corpus_entropy(str(data_dir(c))) for c in corpora_names}
    lines = ["# Informative subsets past the plateau", "",
             "Protocol and criteria: docs/experiments/subsets-past-plateau.md (fixed before any run).", "",
             *(v.line() for v in score(results, entropy, corpora_names)), ""]
    for corpus in corpora_names:
        lines += table(results, corpus)
    if results:
        loss = harness.plot_curves(results, RESULTS / "loss.png", "charged compute (update-equivalents)", charged,
                                   entropy)
        deltas = harness.plot_paired_deltas(
            {corpus: {arm: {r["seed"]: r["val_curve"] for r in results if (r["corpus"], r["arm"]) == (corpus, arm)}
                      for arm in ARMS} for corpus in corpora_names}, "random-online",
            RESULTS / "delta_vs_random_online.png", "val loss − random-online's (same seed), bits", every_seed=True)
        lines += ["## Below the previous-token entropy", "", past_plateau.plateau_table(results, entropy), "",
                  f"![loss against charged compute]({loss.name})", "",
                  f"![loss minus random-online's, same seed]({deltas.name})", ""]
    return past_plateau.write_summary(RESULTS, lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = past_plateau.parse_args(__doc__, argv, ("--warm-starts-only", "train (or find) the warm starts and stop"))
    if not args.summary_only:
        warm = warm_starts(args.corpus)
        if args.warm_starts_only:
            return 0
        # seed-major: complete same-seed blocks arrive first
        all_specs = sorted((s for c in args.corpus for s in specs(c, warm[c])),
                           key=lambda s: (s.seed, args.corpus.index(s.corpus)))
        harness.run_suite(all_specs, RESULTS, past_plateau.RUNS_ROOT / "work", jobs=args.jobs, finish=run_fields)
    print(write_summary(args.corpus).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
