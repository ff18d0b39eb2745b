"""Does the bandit cope with a drifting best ψ? Cumulative regret on the synthetic problems of
gpts_fairseq.bandit.synthetic, for GP-TS (stationary), GP-TS with training progress as a GP
input (contextual), GP-TS on a sliding window of the last 10 observations, and random.

    python benchmarks/nonstationary.py [--interactions 60] [--seeds 5]

Problems (ρ grid, γ = λ = 0.1): the best ρ fixed at 0.30; the best ρ drifting 0.35 -> 0.15;
and that drift plus a reward level decaying as exp(-3 p), as improvements shrink while the
loss flattens. Regret per interaction is in [0, 1] (bump lost against the best arm).
"""

import argparse
import json
import os
import statistics

from gpts_fairseq.bandit import ArmSpace, make_policy
from gpts_fairseq.bandit.synthetic import SyntheticProblem, run_bandit

PROBLEMS = {
    "static": lambda space, seed: SyntheticProblem(space, rho_start=0.30, seed=seed),
    "drifting optimum": lambda space, seed: SyntheticProblem.drifting(space, decay=0.0, seed=seed),
    "drifting optimum + decaying rewards": lambda space, seed: SyntheticProblem.drifting(space, seed=seed),
}
POLICIES = {
    "gp-ts": ("gp-ts", {}),
    "gp-ts, context=progress": ("gp-ts", {"context": "progress"}),
    "gp-ts, window=10": ("gp-ts", {"window": 10}),
    "random": ("random", {}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "nonstationary.json"))
    options = parser.parse_args()
    space = ArmSpace.paper_grid("rho")
    results = {}
    for problem_name, problem_for in PROBLEMS.items():
        for label, (name, policy_options) in POLICIES.items():
            totals = [sum(run_bandit(make_policy(name, space=space, seed=seed, **policy_options),
                                     problem_for(space, seed), options.interactions))
                      for seed in range(1, options.seeds + 1)]
            results.setdefault(problem_name, {})[label] = {
                "mean": statistics.mean(totals), "std": statistics.stdev(totals), "per_seed": totals}
    print(f"cumulative regret over {options.interactions} interactions, mean ± std over {options.seeds} seeds "
          "(lower is better)\n")
    print("| policy | " + " | ".join(PROBLEMS) + " |\n|---|" + "---:|" * len(PROBLEMS))
    for label in POLICIES:
        cells = [f"{results[p][label]['mean']:.1f} ± {results[p][label]['std']:.1f}" for p in PROBLEMS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    with open(options.out, "w") as handle:
        json.dump({"interactions": options.interactions, "seeds": options.seeds, "results": results}, handle, indent=2)
    print(f"\nwrote {options.out}")


if __name__ == "__main__":
    main()
