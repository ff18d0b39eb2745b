"""Continued pre-training with GP-TS: arms, protocol and scoring of
docs/experiments/continued-pretraining.md (pre-registered), on the experiment harness.

A warm start trained on one corpus continues on the other (wikitext-2 -> linux, linux ->
wikitext-2); both corpora are binarized with one character dictionary (the union of theirs).

    python -m benchmarks.continued --warm-starts-only   # the two warm starts (resumable)
    python -m benchmarks.continued --jobs 1             # warm starts, pilots, then the 70 runs (resumable)
    python -m benchmarks.continued --summary-only       # criteria and tables from the results

Results: ``benchmarks/results/continued/<direction>/<policy>/seed<k>.json`` (the harness' schema
plus ``charged``, the suite's compute accounting), pilots as ``<direction>/pilot/seed0.json``,
``warm-starts/<corpus>.json`` and ``summary.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, past_plateau, pretrain
from benchmarks.harness import Verdict
from gpts_fairseq.report.history import load_run

RESULTS = past_plateau.RESULTS_ROOT / "continued"
DIRECTIONS = {"wikitext-2-to-linux": ("wikitext-2", "linux"), "linux-to-wikitext-2": ("linux", "wikitext-2")}
SEEDS = (1, 2, 3, 4, 5)
PILOT_SEED = 0
BUDGET = 2400
LONG_BUDGET = 4800  # a direction whose pilot is below the target's entropy for < PLATEAU_SHARE
PLATEAU_SHARE = 0.5
SETTINGS = pretrain.Settings(budget_updates=BUDGET, interaction_updates=200)
THREE_ARMS = ("--gpts-arm-bounds", "0.15,0.45", "--gpts-arm-step", "0.15")
POLICIES = {name: pretrain.POLICIES[name] for name in pretrain.POLICIES if name != "gp-ts-rho"}
POLICIES["gp-ts-trend-3arm"] = pretrain.Policy("gp-ts-trend-3arm", "gp-ts", arms="rho", reward_model="trend")
SCORED = (pretrain.SCORED_POLICY, "gp-ts-trend-3arm")
RANDOM_SHARE = pretrain.PAIRS_TO_BEAT_RANDOM / 9  # criterion (c): the suite's 7 of 9, as a share


def joint_data_dir(corpus: str, corpora_names: Sequence[str] = ("wikitext-2", "linux")) -> Path:
    """``corpus`` binarized with the union of ``corpora_names``' character dictionaries (counts
    summed), so a model of any of them loads on the others; its train.tok kept for the entropy."""
    prepared = {name: corpora.prepare(name, tokenizer="char") for name in corpora_names}
    counts: dict[str, int] = {}
    for name in corpora_names:
        for line in (prepared[name] / "dict.txt").read_text(encoding="utf-8").splitlines():
            symbol, count = line.rsplit(" ", 1)
            counts[symbol] = counts.get(symbol, 0) + int(count)
    joint = "".join(f"{s} {c}\n" for s, c in sorted(counts.items(), key=lambda sc: (-sc[1], sc[0])))
    key = hashlib.sha256((joint + corpus).encode()).hexdigest()[:10]
    dest = corpora.DEFAULT_DATA_ROOT / f"{corpus}-char-joint-{key}"
    if (dest / "prepared.json").exists():
        return dest
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "joint_dict.txt").write_text(joint, encoding="utf-8")
    source = prepared[corpus]
    for split in ("train.tok", "valid.tok"):
        shutil.copyfile(source / split, staging / split)
    corpora.preprocess(staging, staging / "joint_dict.txt", trainpref=staging / "train.tok",
                       validpref=staging / "valid.tok")
    shutil.copyfile(source / "prepared.json", staging / "prepared.json")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def warm_start(corpus: str) -> harness.WarmStart:
    """The shared warm start of a source corpus (on its joint-dictionary data), its record
    copied to the results."""
    warm = past_plateau.warm_start(corpus, joint_data_dir(corpus))
    harness.write_json(RESULTS / "warm-starts" / f"{corpus}.json",
                       json.loads((warm.checkpoint.parent / "warm_start.json").read_text()))
    print(f"warm start {corpus}: update {warm.update}, {warm.loss:.3f} bits "
          f"(entropy {warm.entropy_bits:.3f} - {warm.margin_bits})", flush=True)
    return warm


def spec(direction: str, policy: pretrain.Policy, seed: int, budget: int, warm: harness.WarmStart,
         arm: str | None = None) -> harness.RunSpec:
    """One continued run: the suite's run (``pretrain.run_spec``) on the target corpus, from the
    source's warm start."""
    made = pretrain.run_spec(direction, joint_data_dir(DIRECTIONS[direction][1]), policy, seed,
                             replace(SETTINGS, budget_updates=budget))
    extra = THREE_ARMS if policy.name == "gp-ts-trend-3arm" else ()
    return replace(made, arm=arm or policy.name, arm_args=(*made.arm_args, *extra), warm_start=warm)


def charged(save_dir: Path, result: dict) -> dict:
    """The harness' ``finish``: the suite's compute accounting (``pretrain.compute_accounting``)
    and ``rho_played``, the mask rate in force in each interaction."""
    policy = POLICIES.get(result["arm"], POLICIES[pretrain.REFERENCE_POLICY])
    settings = replace(SETTINGS, budget_updates=result["budget_updates"])
    interactions = load_run(save_dir).interactions
    return {"charged": pretrain.compute_accounting(result["compute"], interactions, settings, policy),
            "rho_played": [i.psi["mask_prob"] for i in interactions]}


def played_table(results: Sequence[dict], policies: Sequence[str]) -> str:
    """Per direction and policy: the share of interactions (over seeds) played at each rho."""
    rows = []
    for direction in DIRECTIONS:
        for name in policies:
            played = [rho for r in results if r["corpus"] == direction and r["arm"] == name
                      for rho in r.get("rho_played", [])]
            if played:
                shares = {rho: played.count(rho) / len(played) for rho in sorted(set(played))}
                rows.append([direction, name, len(played), ", ".join(f"{rho:.2f}: {share:.0%}"
                                                                      for rho, share in shares.items())])
    return harness.md_table(["direction", "policy", "interactions", "share played at each rho"], "llrl", rows)


def budget_of(direction: str, warm: harness.WarmStart) -> int:
    """The pilot (seed 0, constant-0.15, U = BUDGET) decides the direction's budget."""
    pilot = harness.run(spec(direction, POLICIES[pretrain.REFERENCE_POLICY], PILOT_SEED, BUDGET, warm, arm="pilot"),
                        RESULTS, past_plateau.RUNS_ROOT / "work", finish=charged)
    share = harness.passed_previous_token_entropy(pilot["val_curve"], entropy(direction), BUDGET)
    return BUDGET if share >= PLATEAU_SHARE else LONG_BUDGET


def entropy(direction: str) -> float:
    return harness.corpus_entropy(str(joint_data_dir(DIRECTIONS[direction][1])))


def score(results: Sequence[dict], policy: str, entropies: dict[str, float],
          seeds: Sequence[int] = SEEDS) -> list[Verdict]:
    """(a), (b), (c) of docs/experiments/continued-pretraining.md for ``policy``: the masking
    suite's criteria (``pretrain.masking_criteria``) over the directions, (a) on every direction,
    (c) on the suite's share of the pairs (``entropies``: each direction's target entropy, bits)."""
    failing = past_plateau.below_share_failures([r for r in results if r["arm"] != "pilot"], entropies, PLATEAU_SHARE)
    if failing:
        why = f"below the target's entropy for < {PLATEAU_SHARE:.0%} of the budget: {', '.join(failing)}"
        return [Verdict(n, "NOT SCOREABLE", why) for n in "abc"]
    wanted = len(DIRECTIONS) * len(seeds)
    need = math.ceil(RANDOM_SHARE * wanted - 1e-9)

    m = pretrain.masking_criteria({(r["corpus"], r["arm"], r["seed"]): r for r in results}, list(DIRECTIONS), seeds,
                                  policy, charged_at, len(DIRECTIONS), need)
    a = Verdict("a", m.a, f"≤ {pretrain.COMPUTE_SHARE:.0%} of the compute on {m.a_passed} of {len(m.a_notes)} complete "
                f"directions (need {len(DIRECTIONS)}) — "
                + ("; ".join(m.a_notes.values()) or "none complete yet"))
    b = past_plateau.bound_verdict("b", m.gaps, pretrain.BOUND_LEVEL, pretrain.BOUND_BITS, wanted, strict=False,
                                   what="gap to the best fixed rho, bits")
    c = Verdict("c", m.c, f"lower final loss than random on {m.wins} of {m.pairs} same-seed pairs (need ≥ {need} of {wanted})")
    return [a, b, c]


def write_summary() -> Path:
    results = [r for d in DIRECTIONS for r in harness.load_results(RESULTS, d)]
    lines = ["# Continued pre-training with GP-TS", "",
             "Protocol and criteria: docs/experiments/continued-pretraining.md (fixed before any run). "
             "Final loss: mean of the last 3 reference validations, bits.", ""]
    entropies = {d: entropy(d) for d in DIRECTIONS}
    for policy in SCORED:
        lines += [f"## {policy}", "", *(v.line() for v in score(results, policy, entropies)), ""]
    lines += ["## Final losses", "", "| direction | policy | runs | final (bits) | charged compute (update-eq.) |",
              "|---|---|---:|---:|---:|"]
    for direction in DIRECTIONS:
        for name in POLICIES:
            mine = [r for r in results if r["corpus"] == direction and r["arm"] == name]
            if mine:
                finals = [pretrain.final(r) for r in mine]
                spread = f" ± {statistics.stdev(finals):.4f}" if len(finals) > 1 else ""
                lines.append(f"| {direction} | {name} | {len(mine)} | {statistics.fmean(finals):.4f}{spread} | "
                             f"{statistics.fmean(r['charged']['charged_update_equivalents'] for r in mine):.0f} |")
    if runs := [r for r in results if r["arm"] in POLICIES]:
        figure = harness.plot_curves(runs, RESULTS / "loss.png", "charged compute (update-equivalents)", charged_at,
                                     entropies)
        lines += ["", "## Mask rates played", "", played_table(results, (*SCORED, "random")),
                  "", "## Below the target's previous-token entropy", "", past_plateau.plateau_table(results, entropies),
                  "", f"![loss against charged compute]({figure.name})"]
    return past_plateau.write_summary(RESULTS, lines)


def charged_at(result: dict, update: int) -> float:
    """Update-equivalents the run had spent by ``update`` (reward passes and decisions included)."""
    return pretrain.charged_compute(result["charged"], POLICIES[result["arm"]], update, SETTINGS.interaction_updates,
                                    SETTINGS.eval_batches)


def main(argv: Sequence[str] | None = None) -> int:
    args = past_plateau.parse_args(__doc__, argv, ("--warm-starts-only", "train (or find) the warm starts and stop"),
                                   corpora=False)
    if not args.summary_only:
        warm = {source: warm_start(source) for source, _ in DIRECTIONS.values()}
        if args.warm_starts_only:
            return 0
        budgets = {d: budget_of(d, warm[source]) for d, (source, _) in DIRECTIONS.items()}
        # seed-major: complete same-seed blocks arrive first
        specs = [spec(d, policy, seed, budgets[d], warm[DIRECTIONS[d][0]])
                 for seed in SEEDS for d in DIRECTIONS for policy in POLICIES.values()]
        harness.run_suite(specs, RESULTS, past_plateau.RUNS_ROOT / "work", jobs=args.jobs, finish=charged)
    print(write_summary().read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
