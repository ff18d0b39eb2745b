"""Does the bandit cope with a non-stationary reward? Cumulative regret of the ``POLICIES`` on
the synthetic ``PROBLEMS`` of gpts_fairseq.bandit.synthetic, and a replay of the logged
pre-training rewards through each reward model.

    python -m benchmarks.nonstationary [--interactions 60] [--seeds 5]

Protocol and pre-registered criterion (``criterion``): docs/experiments/nonstationary.md
(pre-registered text: ``git show 392b41a:benchmarks/nonstationary.py``).
"""

import argparse
import json
import statistics
import warnings
from pathlib import Path

from benchmarks import harness
from gpts_fairseq.bandit import ArmSpace, BanditWarning, make_policy
from gpts_fairseq.bandit.synthetic import SyntheticProblem, TrendProblem, run_bandit

PROBLEMS = {
    "static": lambda space, seed: SyntheticProblem(space, rho_start=0.30, seed=seed),
    "drifting optimum": lambda space, seed: SyntheticProblem.drifting(space, decay=0.0, seed=seed),
    "drifting optimum + decaying rewards": lambda space, seed: SyntheticProblem.drifting(space, seed=seed),
    "measured trend + paid-back arm effect": lambda space, seed: TrendProblem(space, seed=seed),
}
POLICIES = {
    "gp-ts": ("gp-ts", {}),
    "gp-ts, context=progress": ("gp-ts", {"context": "progress"}),
    "gp-ts, window=10": ("gp-ts", {"window": 10}),
    "gp-ts, reward model=trend": ("gp-ts", {"reward_model": "trend"}),
    "random": ("random", {}),
}
CRITERION_PROBLEM = "measured trend + paid-back arm effect"
CRITERION_POLICY = "gp-ts, reward model=trend"
CRITERION_RIVALS = ("gp-ts", "gp-ts, context=progress", "gp-ts, window=10")
PRETRAIN_RESULTS = harness.RESULTS_ROOT / "pretrain"
REPLAY_POLICIES = ("random", "gp-ts-rho", "gp-ts-rho-progress", "gp-ts-rho-window")
REWARD_MODELS = ("arm", "trend")


def replay(results_dir=PRETRAIN_RESULTS) -> dict:
    """Per reward model: the runs whose posterior mean at ρ = 0.50 exceeds that at 0.05 after
    all of a logged run's rewards, and the rises themselves (reward units)."""
    space = ArmSpace.paper_grid("rho")
    rises = {model: {} for model in REWARD_MODELS}
    for path in sorted(Path(results_dir).glob("*/*/seed*.json"), key=str):
        run = json.loads(path.read_text())
        if run["policy"] not in REPLAY_POLICIES or not run["interactions"]:
            continue
        for model in REWARD_MODELS:
            policy = make_policy("gp-ts", space=space, seed=1, reward_model=model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BanditWarning)  # the first rewards of a run are clipped
                for record in run["interactions"]:
                    policy.observe(space.arm(record["psi"]), record["reward"], record["update"] / run["budget_updates"],
                                   start_loss=record["prev_val_loss"])
            _, mean, _ = policy.posterior(1.0)
            rises[model][str(path.relative_to(results_dir))] = float(mean[-1] - mean[0])
    return {model: {"runs": len(values), "rising": sum(rise > 0 for rise in values.values()), "rise": values}
            for model, values in rises.items()}


def criterion(results) -> dict:
    """The pre-registered comparison: per rival, the two means, the same-seed wins, and pass."""
    ours, verdict = results[CRITERION_PROBLEM][CRITERION_POLICY], {}
    for rival in CRITERION_RIVALS:
        theirs = results[CRITERION_PROBLEM][rival]
        wins = sum(a < b for a, b in zip(ours["per_seed"], theirs["per_seed"]))
        verdict[rival] = {"ours": ours["mean"], "theirs": theirs["mean"], "seed_wins": wins,
                          "passed": ours["mean"] < theirs["mean"] and wins >= len(ours["per_seed"]) - 1}
    return verdict


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=harness.RESULTS_ROOT / "nonstationary.json")
    options = parser.parse_args()
    space, results = ArmSpace.paper_grid("rho"), {}
    for problem_name, problem_for in PROBLEMS.items():
        for label, (name, policy_options) in POLICIES.items():
            totals = [sum(run_bandit(make_policy(name, space=space, seed=seed, **policy_options),
                                     problem_for(space, seed), options.interactions))
                      for seed in range(1, options.seeds + 1)]
            results.setdefault(problem_name, {})[label] = {
                "mean": statistics.mean(totals), "std": statistics.stdev(totals), "per_seed": totals}
    print(f"cumulative regret over {options.interactions} interactions, mean ± std over {options.seeds} seeds "
          "(lower is better)\n")
    print(harness.md_table(["policy", *PROBLEMS], "l" + "r" * len(PROBLEMS),
                           [[label, *(f"{results[p][label]['mean']:.1f} ± {results[p][label]['std']:.1f}" for p in PROBLEMS)]
                            for label in POLICIES]))
    replayed = replay()
    print("\nreplay of the logged pre-training rewards: runs whose posterior mean rises from rho 0.05 to 0.50")
    for model, row in replayed.items():
        print(f"  reward model {model}: {row['rising']} of {row['runs']} runs, median rise "
              f"{statistics.median(row['rise'].values()):+.4f}")
    verdict = criterion(results)
    print(f"\npre-registered criterion ({CRITERION_POLICY} on '{CRITERION_PROBLEM}'):")
    for rival, row in verdict.items():
        print(f"  vs {rival}: {row['ours']:.1f} vs {row['theirs']:.1f}, lower on {row['seed_wins']}/{options.seeds} "
              f"seeds: {'PASSED' if row['passed'] else 'FAILED'}")
    harness.write_json(options.out, {"interactions": options.interactions, "seeds": options.seeds, "results": results,
                                     "criterion": verdict, "criterion_passed": all(row["passed"] for row in verdict.values()),
                                     "replay": replayed})
    print(f"\nwrote {options.out}")


if __name__ == "__main__":
    main()
