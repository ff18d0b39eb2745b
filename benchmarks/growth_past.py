"""Progressive growth past the plateau: arms, protocol and scoring of
docs/experiments/growth-past-plateau.md (pre-registered), on the experiment harness and the
growth benchmark's schedule and FLOPs accounting (``benchmarks/growth.py``).

    python -m benchmarks.growth_past --pilots-only   # the fixed-model pilots that set the budgets
    python -m benchmarks.growth_past --jobs 1        # pilots, then the 12 runs (resumable)
    python -m benchmarks.growth_past --summary-only  # criteria and tables from the results

Results: ``benchmarks/results/growth-past/<corpus>/<arm>/seed<k>.json`` (the harness' schema plus
the growth benchmark's ``schedule``, ``curve`` with FLOPs, ``growths``), pilots as
``<corpus>/pilot/seed0.json``, and ``summary.md``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, growth, harness, past_plateau, power, pretrain
from benchmarks.harness import Verdict
from gpts_fairseq.report.summary import one_sided_upper_bound

RESULTS = past_plateau.RESULTS_ROOT / "growth-past"
ARMS = ("fixed", "compound")
SEEDS = (1, 2, 3)
PILOT_SEED = 0
MASK_RHO = 0.30
VALIDATE_UPDATES = 100
PILOT_MAX_UPDATES = 8000
BUDGET_FACTOR = 2.5
MAX_CROSSING = PILOT_MAX_UPDATES / BUDGET_FACTOR  # a corpus crossing later is dropped
PLATEAU_SHARE = 0.5
TARGET_SHARES = (0.5, 0.75, 1.0)
RATIO_LIMIT = 0.8
LEVEL = 0.95


def data_dir(corpus: str) -> Path:
    return corpora.prepare(corpus, tokenizer="char")


def settings(budget: int) -> growth.Settings:
    return growth.Settings(budget_updates=budget, valid_every=VALIDATE_UPDATES, mask_prob=MASK_RHO)


def run_spec(corpus: str, arm: str, seed: int, budget: int, name: str | None = None) -> harness.RunSpec:
    data = data_dir(corpus)
    schedule = growth.plan(arm, settings(budget), growth.vocab_size(data))
    made = growth.run_spec(corpus, data, arm, seed, settings(budget), schedule)
    return made if name is None else replace(made, arm=name)


def budget_of(corpus: str) -> int | None:
    """The pilot (fixed, seed 0, LR over 8,000 updates) stops at 2.5 U*; B = 2.5 U* rounded up
    to 100, or None (corpus dropped) when U* > 3,200 or never reached."""
    entropy = harness.corpus_entropy(str(data_dir(corpus)))

    def stop(curve) -> bool:
        u_star = pretrain.crossing_update(curve, entropy)
        return bool(curve) and (u_star is not None and curve[-1][0] >= BUDGET_FACTOR * u_star
                                or u_star is None and curve[-1][0] > MAX_CROSSING)

    pilot = harness.run(run_spec(corpus, "fixed", PILOT_SEED, PILOT_MAX_UPDATES, name="pilot"), RESULTS,
                        past_plateau.RUNS_ROOT / "work", stop=stop)
    u_star = pretrain.crossing_update(pilot["val_curve"], entropy)
    if u_star is None or u_star > MAX_CROSSING:
        return None
    return int(VALIDATE_UPDATES * math.ceil(BUDGET_FACTOR * u_star / VALIDATE_UPDATES))


# -- scoring -----------------------------------------------------------------------------------


def targets(fixed: dict) -> list[float]:
    """The fixed run's loss at 50 %, 75 % and 100 % of its budget: the mean of the validations
    at p*B - 100, p*B, p*B + 100 (at 100 %, the last three)."""
    curve = dict(fixed["val_curve"])
    budget = fixed["budget_updates"]
    out = []
    for share in TARGET_SHARES:
        at = round(share * budget / VALIDATE_UPDATES) * VALIDATE_UPDATES
        around = [at - VALIDATE_UPDATES, at, at + VALIDATE_UPDATES] if share < 1 else sorted(curve)[-3:]
        out.append(statistics.fmean(curve[u] for u in around if u in curve))
    return out


def ratio(compound: dict, fixed: dict, target: float) -> float:
    """FLOPs of compound to ``target`` over fixed's (first validation at or below it); inf if never."""
    mine, theirs = growth.to_target(compound, target)["flops"], growth.to_target(fixed, target)["flops"]
    return math.inf if mine is None else mine / theirs


def score(results: Sequence[dict], entropy: dict[str, float], corpora_names: Sequence[str] = past_plateau.CORPORA,
          seeds: Sequence[int] = SEEDS) -> list[Verdict]:
    """G1 and G2 (docs/experiments/growth-past-plateau.md), fixed runs checked against the plateau."""
    by = {(r["corpus"], r["arm"], r["seed"]): r for r in results}
    failing = past_plateau.below_share_failures([r for r in results if r["arm"] == "fixed"], entropy, PLATEAU_SHARE)
    ratios: dict[str, list[list[float]]] = {}  # corpus -> per seed, the ratio at each target
    for corpus in corpora_names:
        for seed in seeds:
            fixed, compound = by.get((corpus, "fixed", seed)), by.get((corpus, "compound", seed))
            if fixed and compound:
                ratios.setdefault(corpus, []).append([ratio(compound, fixed, t) for t in targets(fixed)])
    if failing:
        why = f"fixed runs below the entropy for < {PLATEAU_SHARE:.0%} of the budget: {', '.join(failing)}"
        return [Verdict(n, "NOT SCOREABLE", why) for n in ("G1", "G2")]
    if sum(len(v) for v in ratios.values()) < len(corpora_names) * len(seeds):
        done = sum(len(v) for v in ratios.values())
        return [Verdict(n, "incomplete", f"{done} of {len(corpora_names) * len(seeds)} pairs") for n in ("G1", "G2")]
    g1, notes = True, []
    for corpus, rows in ratios.items():
        means = [math.exp(statistics.fmean(math.log(r[k]) for r in rows)) for k in range(len(TARGET_SHARES))]
        g1 &= all(m <= RATIO_LIMIT for m in means)
        notes.append(f"{corpus}: " + ", ".join(f"{s:.0%} {m:.2f}" for s, m in zip(TARGET_SHARES, means)))
    bounds, spreads = [], []
    for k in range(len(TARGET_SHARES)):
        logs = [math.log(r[k]) for rows in ratios.values() for r in rows]
        bounds.append(math.inf if math.inf in logs else one_sided_upper_bound(logs, LEVEL))
        spreads.append(spread_note(logs))
    g2 = all(b < 0 for b in bounds)
    return [Verdict("G1", "PASS" if g1 else "FAIL", f"geometric-mean FLOPs ratio at each target (limit "
                    f"{RATIO_LIMIT}): " + "; ".join(notes)),
            Verdict("G2", "PASS" if g2 else "FAIL", f"{LEVEL:.0%} upper bound of the mean ln ratio per target "
                    f"(limit < 0): " + ", ".join(f"{s:.0%} {b:+.3f}" for s, b in zip(TARGET_SHARES, bounds))
                    + "; measured spread (reported, not scored): " + "; ".join(
                        f"{s:.0%} {note}" for s, note in zip(TARGET_SHARES, spreads)))]


def spread_note(logs: Sequence[float]) -> str:
    """The sd of the pairs' ln ratios and the ratio those pairs detect (G2's test, 80 % power)."""
    if math.inf in logs:
        return "sd not finite (a target compound never reached)"
    if (sd := statistics.stdev(logs)) == 0:
        return "sd of ln r 0 (every pair has the same ratio)"
    return f"sd of ln r {sd:.3f}, so {len(logs)} pairs detect a true ratio of " \
           f"{math.exp(-power.detectable(len(logs), sd, 1 - LEVEL)):.2f}"


def write_summary(corpora_names: Sequence[str] = past_plateau.CORPORA) -> Path:
    results = [r for c in corpora_names for r in harness.load_results(RESULTS, c)]
    entropy = {c: harness.corpus_entropy(str(data_dir(c))) for c in corpora_names}
    lines = ["# Progressive growth past the plateau", "",
             "Protocol and criteria: docs/experiments/growth-past-plateau.md (fixed before any run).", "",
             *(v.line() for v in score(results, entropy, corpora_names)), "",
             "| corpus | arm | seed | budget | final (bits) | share below H | first validation below H |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        share = harness.share_below_entropy(r, entropy[r["corpus"]])
        first = pretrain.crossing_update(r["val_curve"], entropy[r["corpus"]])
        lines.append(f"| {r['corpus']} | {r['arm']} | {r['seed']} | {r['budget_updates']} | "
                     f"{r['val_curve'][-1][1]:.4f} | {share:.0%} | {'never' if first is None else first} |")
    by = {(r["corpus"], r["arm"], r["seed"]): r for r in results}
    if pairs := [(k[0], k[2], by[k], by[(k[0], "compound", k[2])]) for k in by
                 if k[1] == "fixed" and (k[0], "compound", k[2]) in by]:
        lines += ["", "## FLOPs ratio, compound / fixed, at each target (the fixed run's loss at that share of its "
                  "budget)", "", harness.md_table(
                      ["corpus", "seed", *(f"{s:.0%}: target (bits), ratio" for s in TARGET_SHARES)], "lr" + "r" * len(
                          TARGET_SHARES),
                      [[corpus, seed, *(f"{t:.3f}, {ratio(compound, fixed, t):.2f}" for t in targets(fixed))]
                       for corpus, seed, fixed, compound in pairs])]
        lines += ["", "## Reported besides (not scored)", "", harness.md_table(
            ["corpus", "seed", "compound's loss jump at its growth (bits)",
             *(f"train wall ratio at {s:.0%}" for s in TARGET_SHARES), "load avg before (fixed, compound)",
             "resumed at update (fixed, compound)"], "lrr" + "r" * len(TARGET_SHARES) + "ll",
            [[corpus, seed, ", ".join(f"{g['loss_after'] - g['loss_before']:+.3f} at {g['update']}"
                                      for g in compound["growths"]) or "–",
              *(harness.cell(wall_ratio(compound, fixed, t), ".2f") for t in targets(fixed)),
              f"{fixed['loadavg_before'][0]:.1f}, {compound['loadavg_before'][0]:.1f}",
              f"{fixed['resumed_at_update'] or '–'}, {compound['resumed_at_update'] or '–'}"]
             for corpus, seed, fixed, compound in pairs])]
    if runs := [r for r in results if r["arm"] in ARMS]:
        figure = harness.plot_curves(runs, RESULTS / "loss.png", "training TFLOPs",
                                     lambda r, update: growth.flops_at(r["schedule"], update) / 1e12, entropy)
        per_seed = [dict(r, arm=f"{r['arm']} seed {r['seed']}", wall_at=wall_at, val_curve=[
            [u, loss] for u, loss in r["val_curve"] if u in wall_at]) for r in runs
            if (wall_at := {p["update"]: p["train_wall_s"] for p in r["curve"] if p["train_wall_s"] is not None})]
        walls = harness.plot_curves(per_seed, RESULTS / "loss_wall.png", "training wall time, s",
                                    lambda r, update: r["wall_at"][update], entropy)
        lines += ["", f"![loss against training FLOPs]({figure.name})", "",
                  f"![loss against training wall time, each seed]({walls.name})"]
    return past_plateau.write_summary(RESULTS, lines)


def wall_ratio(compound: dict, fixed: dict, target: float) -> float | None:
    """Training wall time of compound to ``target`` over fixed's (None where either is unknown)."""
    mine, theirs = growth.to_target(compound, target)["train_wall_s"], growth.to_target(fixed, target)["train_wall_s"]
    return mine / theirs if mine and theirs else None


def main(argv: Sequence[str] | None = None) -> int:
    args = past_plateau.parse_args(__doc__, argv, ("--pilots-only", "run (or find) the pilots and stop"))
    if not args.summary_only:
        budgets = {c: budget_of(c) for c in args.corpus}
        for corpus, budget in budgets.items():
            print(f"{corpus}: " + (f"budget {budget} updates" if budget else "dropped (no crossing by "
                                   f"{MAX_CROSSING:.0f} updates)"), flush=True)
        if args.pilots_only:
            return 0
        vocabs = {c: growth.vocab_size(data_dir(c)) for c in budgets if budgets[c]}

        def finish(save_dir: Path, result: dict) -> dict:  # the growth benchmark's fields, at the corpus' budget
            return growth.run_fields(settings(budgets[result["corpus"]]), vocabs)(save_dir, result)

        specs = [run_spec(c, arm, seed, budgets[c]) for seed in SEEDS for c in vocabs for arm in ARMS]
        harness.run_suite(specs, RESULTS, past_plateau.RUNS_ROOT / "work", jobs=args.jobs, finish=finish)
    print(write_summary(args.corpus).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
