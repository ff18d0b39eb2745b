"""Time of one GP-TS decision (refit + one joint posterior draw over the arms) against the
number of observations and of arms, for our fit, the paper's and the trend reward model, on the
rewards of the synthetic TrendProblem.

    python -m benchmarks.bandit_overhead [--quick] [--out benchmarks/results/bandit_overhead.json]

Target: <= ``TARGET_MS`` at 1,000 arms (the paper's ψ grid) and 100 observations.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks import harness
from gpts_fairseq.bandit import ArmSpace, FitSettings, make_policy
from gpts_fairseq.bandit.synthetic import TrendProblem

OBSERVATIONS = (10, 50, 100, 200, 500)
SPACES = {"rho (10 arms)": "rho", "psi (1,000 arms)": "psi"}
# column -> policy options: the GP over the arms with our fit and the paper's, and the trend reward model
MODELS = {"ours": {}, "paper": {"fit": FitSettings.paper()}, "trend": {"reward_model": "trend"}}
TARGET_MS = 50.0
HISTORY = ("arms", "previous_arms", "rewards", "progress", "start_losses")  # the policy's observations


def _append(policy, arm, reward, progress, loss):
    """Add one observation without refitting (observe() would refit at every step)."""
    previous = policy.arms[-1:] if policy.arms.shape[0] else arm.reshape(1, -1)
    values = (arm.reshape(1, -1), previous, *(torch.tensor([v], dtype=torch.float64) for v in (reward, progress, loss)))
    for name, value in zip(HISTORY, values):
        setattr(policy, name, torch.cat([getattr(policy, name), value]))


def decision_ms(variant, options, observations, repeats):
    """Median wall time of observe() (the refit) + decide() (the draw) after ``observations``."""
    space = ArmSpace.paper_grid(variant)
    problem = TrendProblem(space, seed=1)
    policy = make_policy("gp-ts", space=space, seed=1, **options)
    generator = torch.Generator().manual_seed(0)
    arms = space.candidates[torch.randint(len(space), (observations + repeats,), generator=generator)]
    loss = problem.initial_loss
    for t in range(observations - 1):  # fill the history without timing
        reward = problem.reward(arms[t], t / 1000, t)
        _append(policy, arms[t], reward, t / 1000, loss)
        loss *= 1.0 - reward
    policy._refit()
    times = []
    for r in range(repeats):
        t = observations - 1 + r
        start = time.perf_counter()
        policy.observe(arms[t], problem.reward(arms[t], t / 1000, t), t / 1000, start_loss=loss)
        policy.decide(t + 1, (t + 1) / 1000, start_loss=loss)
        times.append(time.perf_counter() - start)
        for name in HISTORY:
            setattr(policy, name, getattr(policy, name)[:-1])
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_ROOT / "bandit_overhead.json")
    options = parser.parse_args()
    repeats = 2 if options.quick else 5
    rows = []
    for label, variant in SPACES.items():
        for n in OBSERVATIONS:
            row = {"arms": label, "observations": n}
            for name, policy_options in MODELS.items():
                row[f"{name}_ms"] = decision_ms(variant, policy_options, n, repeats)
            rows.append(row)
            print(f"{label:18s} n={n:4d}  ours {row['ours_ms']:8.1f} ms   paper fit {row['paper_ms']:8.1f} ms   "
                  f"trend model {row['trend_ms']:8.1f} ms", flush=True)
    target = next(r for r in rows if r["arms"].startswith("psi") and r["observations"] == 100)
    print("\n" + harness.md_table(["arms", "observations", "ours (ms)", "paper's fit (ms)", "trend model (ms)"], "lrrrr",
                                  [[r["arms"], r["observations"], *(f"{r[f'{m}_ms']:.1f}" for m in MODELS)] for r in rows]))
    verdicts = {name: "met" if target[f"{name}_ms"] <= TARGET_MS else "MISSED" for name in ("ours", "trend")}
    print(f"\ntarget <= {TARGET_MS:.0f} ms at 1,000 arms, 100 observations: ours {target['ours_ms']:.1f} ms "
          f"({verdicts['ours']}), trend model {target['trend_ms']:.1f} ms ({verdicts['trend']}); "
          f"torch threads: {torch.get_num_threads()} (decisions run single-threaded)")
    harness.write_json(options.out, {"rows": rows, "target_ms": TARGET_MS,
                                     "target_met": {name: v == "met" for name, v in verdicts.items()},
                                     "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": os.cpu_count(),
                                     "load_average": list(os.getloadavg())})
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
