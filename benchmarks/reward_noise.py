"""Does an EMA of the weights, or a paired probe, make the reward less noisy? (issue 9, items 2-3)

Protocol and criteria: docs/experiments/reward-noise.md; the pre-registered text, verbatim, is
this module's docstring at commit 392b41a (``git show 392b41a:benchmarks/reward_noise.py``).
A state run (``state_spec``) saves checkpoints at S1 and S2 (``second_state``); from each, the
arms of ``ARMS`` continue with ``REPLICATE_SEEDS`` (``replicate_spec``: ``--restore-file`` and
``--gpts-allow-option-change``), and ``RewardMeter`` scores their raw and EMA weights on seed 0's
reward batches; ``analyse`` applies the criteria.

    python -m benchmarks.reward_noise                 # state run, then the 24 replicates (resumable)
    python -m benchmarks.reward_noise --summary-only  # the table and the verdicts from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, pretrain

DEFAULT_RESULTS = harness.REPO_ROOT / "benchmarks" / "results" / "reward_noise.json"
DEFAULT_WORK = harness.WORK_ROOT / "reward-noise"

CORPUS = "wikitext-2"
BUDGET_UPDATES = 4000
STATE_POLICY = "constant-0.30"
STATE_SEED = 0
EMA_DECAY = 0.99
S1 = 1000
STATE_STEP = 250  # S2 is the first multiple of this below the entropy
S2_LIMIT = 3000
ARMS = ("constant-0.15", "constant-0.45")  # rho 0.15 / 0.45, gamma = lambda = 0.1
REPLICATE_SEEDS = (1, 2, 3, 4, 5, 6)
HORIZON = 200  # updates per replicate
LENGTHS = (50, 200)  # n: the reward over the first n updates
CHECKPOINT_STEP = 50
WEIGHTS = ("raw", "ema")
EMA_SCORE_FACTOR = 1.25
PAIRED_NOISE_SHARE = 1 / 3
INTERACTION_UPDATES = 200  # L, the suite's interaction length
EMA_ARGS = ("--store-ema", "--ema-decay", str(EMA_DECAY))
CHECKPOINTS = ("--no-epoch-checkpoints", "--no-last-checkpoints")


def settings() -> pretrain.Settings:
    """The suite's settings with a 4,000-update schedule; validation every 250 updates (the
    state run's S2 test; the replicates do not validate, they are measured from checkpoints)."""
    return pretrain.Settings(budget_updates=BUDGET_UPDATES, interaction_updates=STATE_STEP,
                             validate_updates=STATE_STEP)


def state_spec(data_dir: Path) -> harness.RunSpec:
    """The suite's constant-0.30 run, saving checkpoints (with the EMA) every 250 updates."""
    spec = pretrain.run_spec(CORPUS, data_dir, pretrain.POLICIES[STATE_POLICY], STATE_SEED, settings())
    return replace(spec, arm="state", keep_checkpoints=True, fairseq=(
        *spec.fairseq, *EMA_ARGS, "--save-interval-updates", str(STATE_STEP), *CHECKPOINTS))


def replicate_spec(data_dir: Path, state_checkpoint: Path, state: int, arm: str, seed: int) -> harness.RunSpec:
    """Continue the state run at ``arm`` with training seed ``seed`` for HORIZON updates: optimizer,
    lr schedule (still decaying over 4,000 updates) and EMA restored; checkpoints every 50 updates.
    The changed seed and masking are reward options of the task, hence --gpts-allow-option-change."""
    spec = pretrain.run_spec(CORPUS, data_dir, pretrain.POLICIES[arm], seed, settings())
    return replace(spec, arm=f"state{state}-{arm}", budget_updates=state + HORIZON, keep_checkpoints=True,
                   fairseq=(*spec.fairseq, *EMA_ARGS, "--restore-file", str(state_checkpoint),
                            "--gpts-allow-option-change", "--save-interval-updates", str(CHECKPOINT_STEP),
                            *CHECKPOINTS, "--disable-validation"))


def second_state(curve: Sequence[tuple[int, float]], entropy: float) -> int | None:
    """S2: the first multiple of 250 validated below ``entropy``; S2_LIMIT if not below by then;
    None while undecided."""
    return next((u for u, loss in curve if u % STATE_STEP == 0 and (loss < entropy or u >= S2_LIMIT)), None)


class RewardMeter:
    """The reward's loss (bits, 12 reward batches, reference masking, seed 0's batches and masks)
    of a checkpoint's raw and EMA weights, with the task built from the state run's checkpoint."""

    def __init__(self, state_checkpoint: Path):
        import torch
        from fairseq import checkpoint_utils, tasks

        import gpts_fairseq.tasks.gpts_mlm  # noqa: F401  (registers the task and criterion)
        from gpts_fairseq import compat

        torch.set_num_threads(1)
        compat.allow_fairseq_checkpoints()
        self._load = checkpoint_utils.load_checkpoint_to_cpu
        cfg = self._load(str(state_checkpoint))["cfg"]
        self.task = tasks.setup_task(cfg.task)
        self.model = self.task.build_model(cfg.model)
        self.criterion = self.task.build_criterion(cfg.criterion)
        self._model_cfg = cfg.model

    def losses(self, checkpoint: Path) -> dict[str, float]:
        state, out = self._load(str(checkpoint)), {}
        for weights, tensors in (("raw", state["model"]), ("ema", state["extra_state"]["ema"])):
            self.model.load_state_dict(tensors, strict=True, model_cfg=self._model_cfg)
            out[weights] = self.task.reference_loss(self.model, self.criterion)
        return out


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def run_state(data_dir: Path, work: Path, results: dict, out: Path) -> dict:
    """The state run (unless recorded): constant-0.30, seed 0, until S2's checkpoint is saved."""
    if "state_run" in results:
        return results["state_run"]
    entropy = harness.corpus_entropy(str(data_dir))
    spec = state_spec(data_dir)
    save_dir = harness.save_dir_of(work, spec)

    def saved(curve, *updates):
        return all(u is not None and harness.checkpoint_at(save_dir, u) is not None for u in updates)

    def state_fields(save_dir: Path, result: dict) -> dict:
        curve = [tuple(p) for p in result["val_curve"]]
        s2 = second_state(curve, entropy)
        if not saved(curve, S1, s2):
            raise harness.RunFailed(f"state run: no checkpoints at S1 and S2 (exit {result['exit_code']}), "
                                    f"see {save_dir}/stdout.log")
        return {"policy": STATE_POLICY, "ema_decay": EMA_DECAY, "entropy_bits": entropy, "states": sorted({S1, s2}),
                "s2_below_entropy": dict(curve).get(s2, math.inf) < entropy,
                "update_s": result["compute"]["update_s"],
                "forward_cost_updates": result["compute"]["forward_cost_updates"], "settings": asdict(settings()),
                "load_average": result["loadavg_after"]}

    results["state_run"] = harness.run(spec, work, work, finish=state_fields, out=work / "state.json",
                                       stop=lambda curve: saved(curve, S1, second_state(curve, entropy)))
    harness.write_json(out, results)
    return results["state_run"]


def run_replicates(data_dir: Path, work: Path, results: dict, out: Path) -> None:
    """Every (state, arm, seed) run not recorded yet, one at a time, each written when done."""
    done = {(r["state"], r["arm"], r["seed"]) for r in results["runs"]}
    for state in results["state_run"]["states"]:
        state_checkpoint = harness.checkpoint_at(harness.save_dir_of(work, state_spec(data_dir)), state)
        meter, start_key = None, f"start_{state}"
        for arm, seed in ((a, s) for a in ARMS for s in REPLICATE_SEEDS if (state, a, s) not in done):
            meter = meter or RewardMeter(state_checkpoint)
            if start_key not in results:
                results[start_key] = meter.losses(state_checkpoint)

            def measure(save_dir: Path, result: dict) -> dict:
                loss = {"0": results[start_key]}
                for n in LENGTHS:
                    if (checkpoint := harness.checkpoint_at(save_dir, state + n)) is None:
                        raise harness.RunFailed(f"no checkpoint at update {state + n}, see {save_dir}/stdout.log")
                    loss[str(n)] = meter.losses(checkpoint)
                for checkpoint in save_dir.glob("checkpoint*.pt"):
                    checkpoint.unlink()
                return {"loss": loss}

            spec = replicate_spec(data_dir, state_checkpoint, state, arm, seed)
            run = harness.run(spec, work, work, finish=measure, out=work / "replicates" / spec.arm / f"seed{seed}.json")
            loss = run["loss"]
            results["runs"].append({"state": state, "arm": arm, "seed": seed, "loss": loss,
                                    "wall_time_s": run["wall_time_s"], "exit_code": run["exit_code"],
                                    "load_average": run["loadavg_after"], "fairseq_args": run["fairseq_args"]})
            harness.write_json(out, results)
            print(f"state {state} {arm} seed {seed}: " + ", ".join(
                f"+{n} raw {loss[str(n)]['raw']:.4f} ema {loss[str(n)]['ema']:.4f}" for n in ("0", *map(str, LENGTHS)))
                + f" ({run['wall_time_s']:.0f} s)", flush=True)


def relative_reward(loss: dict, n: int, weights: str) -> float:
    start = loss["0"][weights]
    return (start - loss[str(n)][weights]) / start


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """Pooled within-group standard deviation."""
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof)


def analyse(results: dict) -> dict:
    """Per state, n and weights: unpaired noise, effect and score; paired noise; the criteria."""
    state_run, rows = results["state_run"], []
    for state in state_run["states"]:
        runs = [r for r in results["runs"] if r["state"] == state]
        for n in LENGTHS:
            for weights in WEIGHTS:
                by_arm = {arm: {r["seed"]: relative_reward(r["loss"], n, weights) for r in runs if r["arm"] == arm}
                          for arm in ARMS}
                if any(len(v) < 2 for v in by_arm.values()):
                    continue
                low, high = (by_arm[arm] for arm in ARMS)
                noise = pooled_sd([list(low.values()), list(high.values())])
                effect = statistics.fmean(high.values()) - statistics.fmean(low.values())
                pairs = [high[s] - low[s] for s in sorted(set(low) & set(high))]
                paired = statistics.stdev(pairs) if len(pairs) > 1 else None
                rows.append({
                    "state": state, "n": n, "weights": weights, "replicates": min(len(low), len(high)),
                    "mean_reward": {arm: statistics.fmean(by_arm[arm].values()) for arm in ARMS},
                    "noise": noise, "effect": effect, "score": abs(effect) / noise if noise > 0 else None,
                    "unpaired_difference_noise": noise * math.sqrt(2), "paired_noise": paired,
                    "paired_share": paired / (noise * math.sqrt(2)) if paired is not None and noise > 0 else None,
                })
    complete = len(results["runs"]) == len(state_run["states"]) * len(ARMS) * len(REPLICATE_SEEDS)
    return {"rows": rows, "complete": complete, **criteria(rows, state_run, complete)}


def _row(rows, state, n, weights):
    return next((r for r in rows if (r["state"], r["n"], r["weights"]) == (state, n, weights)), None)


def probe_cost(n: int, forward_cost: float, batches: int) -> float:
    """The probe's extra cost per interaction: the challenger's n updates + one reward pass,
    over an interaction of L updates."""
    return (n + batches * forward_cost) / INTERACTION_UPDATES


def criteria(rows: list[dict], state_run: dict, complete: bool) -> dict:
    states, ema_checks = state_run["states"], []
    for state in states:
        raw, ema = _row(rows, state, HORIZON, "raw"), _row(rows, state, HORIZON, "ema")
        if raw and ema and raw["score"] is not None and ema["score"] is not None:
            ema_checks.append({"state": state, "raw_score": raw["score"], "ema_score": ema["score"],
                               "ratio": ema["score"] / raw["score"] if raw["score"] else math.inf,
                               "pass": ema["score"] >= EMA_SCORE_FACTOR * raw["score"]})
    batches = state_run["settings"]["eval_batches"]
    costs = {str(n): probe_cost(n, state_run["forward_cost_updates"], batches) for n in LENGTHS}
    probe_checks = [{"state": state, "n": n, "paired_share": raw["paired_share"],
                     "noise_pass": raw["paired_share"] <= PAIRED_NOISE_SHARE,
                     "cost": costs[str(n)], "cost_pass": costs[str(n)] <= pretrain.OVERHEAD_GOAL}
                    for n in LENGTHS for state in states
                    if (raw := _row(rows, state, n, "raw")) and raw["paired_share"] is not None]
    ema_ships = complete and len(ema_checks) == len(states) and all(c["pass"] for c in ema_checks)
    probe_ships = complete and any(
        all(c["noise_pass"] and c["cost_pass"] for c in probe_checks if c["n"] == n)
        and sum(c["n"] == n for c in probe_checks) == len(states) for n in LENGTHS)
    return {"ema_criterion": ema_checks, "ema_ships": ema_ships, "probe_criterion": probe_checks,
            "probe_cost_share": costs, "probe_ships": probe_ships}


def table(analysis: dict) -> str:
    rows = [[r["state"], r["n"], r["weights"], *(f"{r['mean_reward'][arm]:+.5f}" for arm in ARMS),
             f"{r['effect']:+.5f}", f"{r['noise']:.5f}", f"{r['score']:.2f}",
             harness.cell(r["paired_noise"], ".5f"), harness.cell(r["paired_share"], ".2f")] for r in analysis["rows"]]
    return harness.md_table(["state", "n", "weights", "mean r (ρ 0.15)", "mean r (ρ 0.45)", "effect",
                             "noise (pooled sd)", "score", "paired sd", "paired / (noise·√2)"], "rrlrrrrrrr", rows)


def verdicts(analysis: dict) -> list[str]:
    lines = [f"EMA, state {c['state']}, n = {HORIZON}: score {c['ema_score']:.2f} vs raw {c['raw_score']:.2f} "
             f"(x{c['ratio']:.2f}, need >= x{EMA_SCORE_FACTOR}): {'PASS' if c['pass'] else 'FAIL'}"
             for c in analysis["ema_criterion"]]
    lines += [f"probe, state {c['state']}, n = {c['n']}: paired noise {c['paired_share']:.2f} of the unpaired "
              f"difference's (need <= {PAIRED_NOISE_SHARE:.2f}): {'PASS' if c['noise_pass'] else 'FAIL'}; "
              f"cost {c['cost']:.1%} of an interaction of {INTERACTION_UPDATES} updates "
              f"(need <= {pretrain.OVERHEAD_GOAL:.0%}): {'PASS' if c['cost_pass'] else 'FAIL'}"
              for c in analysis["probe_criterion"]]
    status = "" if analysis["complete"] else " (incomplete: not every run is in)"
    return lines + [f"EMA ships: {'yes' if analysis['ema_ships'] else 'no'}; paired probe ships: "
                    f"{'yes' if analysis['probe_ships'] else 'no'}{status}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=corpora.DEFAULT_DATA_ROOT)
    parser.add_argument("--sources", type=Path, default=corpora.SHARED_DATA)
    parser.add_argument("--work-root", type=Path, default=DEFAULT_WORK, help="fairseq save dirs (outside the repo)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--summary-only", action="store_true", help="only analyse the recorded runs")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not args.summary_only:
        data_dir = corpora.prepare(CORPUS, args.data_root, args.sources, tokenizer="char")
        run_state(data_dir, args.work_root, results, args.results)
        run_replicates(data_dir, args.work_root, results, args.results)
    if "state_run" not in results:
        print("no state run recorded yet")
        return 0
    results["analysis"] = analysis = analyse(results)
    harness.write_json(args.results, results)
    print(table(analysis))
    print("\n".join(verdicts(analysis)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
