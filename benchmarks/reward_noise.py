"""Does an EMA of the weights, or a paired probe, make the reward less noisy? (issue 9, items 2-3)

Protocol (fixed by the lead before any run; written here before the first run, not re-tuned
after seeing results):

- **Setting.** wikitext-2 characters with exactly the pre-registered suite's model, optimiser
  and learning-rate schedule (``pretrain.Settings`` with a budget of 4,000 updates,
  ``pretrain.model_args``/``run_args``). The reward is the suite's relative reward on its 12
  reward batches at the reference masking (rho 0.15, gamma = lambda = 0.1), always with the
  reward batches and masks of seed 0 (the state run's).
- **State run.** ``constant-0.30``, seed 0, the 4,000-update schedule, stopped after state S2.
  Checkpoints at S1 = update 1,000 (the unigram plateau) and at S2 = the first multiple of 250
  at which its reference loss is below wikitext-2's previous-character entropy 3.372 bits
  (S2 = 3,000 if it is not below by then). An EMA of the weights (decay 0.99, started at update
  0 from the initial weights, updated after every optimizer step: fairseq's ``--store-ema
  --ema-decay 0.99``) runs through the state run and is saved in its checkpoints.
- **Replicates.** From each state: arms rho = 0.15 and rho = 0.45 (gamma = lambda = 0.1),
  replicates r = 1..6, replicate r with training seed r (data order and mask stream); 200
  updates each, restored with the optimizer and learning-rate scheduler state (the schedule
  continues), the EMA continued. The reward loss (12 batches) is measured at +0, +50 and +200
  updates on the raw weights and on the EMA weights. 2 states x 2 arms x 6 = 24 runs.
- **Rewards.** Relative, r = (l_start - l_end) / l_start, for n = 50 and n = 200 updates, raw
  and EMA (l_start and l_end both on the same kind of weights).
- **Unpaired.** noise = pooled within-arm sd of r over the replicates; effect = mean r(0.45) -
  mean r(0.15); score = |effect| / noise. **EMA ships** (as a documented option) iff its score
  is >= 1.25 x the raw weights' score at n = 200 in BOTH states.
- **Paired probe.** Common random numbers = the same replicate seed r for both arms (the same
  batches and the same uniform draws); d_r = r_r(0.45) - r_r(0.15); paired noise = sd over r
  of d_r; the unpaired difference's noise is noise x sqrt(2). **The probe ships** iff paired
  noise <= 1/3 of the unpaired difference's noise at the same n in both states AND its cost
  (n extra updates of the challenger + one reward pass of 12 batches at the measured forward
  cost, as a share of an interaction of L = 200 updates) is within the issue's 2 % interaction
  overhead goal. Its cost is reported for n = 50 and n = 200 either way.
- **Report.** Every number (table printed, JSON in ``benchmarks/results/reward_noise.json``,
  no machine paths, with the load average), including every criterion that fails.

    python benchmarks/reward_noise.py                 # state run, then the 24 replicates (resumable, ~35 min here)
    python benchmarks/reward_noise.py --summary-only  # the table and the verdicts from the JSON

Replicates restore the state checkpoint with fairseq's ``--restore-file`` (optimizer, lr
scheduler, EMA) and ``--gpts-allow-option-change`` (the seed and ρ are reward options of the
task); the rewards are measured afterwards from their checkpoints at +50 and +200, with the
task built from the state run's checkpoint, so every run is scored on seed 0's reward batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import corpora  # noqa: E402
import pretrain  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results" / "reward_noise.json"
DEFAULT_WORK = Path(os.environ.get("GPTS_WORK_ROOT", Path.home() / ".cache" / "gpts-fairseq" / "runs")) / "reward-noise"

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


def settings() -> pretrain.Settings:
    """The suite's settings with a 4,000-update schedule; validation every 250 updates (the
    state run's S2 test; the replicates do not validate, they are measured from checkpoints)."""
    return pretrain.Settings(budget_updates=BUDGET_UPDATES, interaction_updates=STATE_STEP,
                             validate_updates=STATE_STEP)


def _replace_option(cmd: list[str], option: str, value: str) -> list[str]:
    at = cmd.index(option)
    return [*cmd[:at + 1], value, *cmd[at + 2:]]


def _without(cmd: list[str], flag: str) -> list[str]:
    return [arg for arg in cmd if arg != flag]


def state_command(data_dir: Path, save_dir: Path) -> list[str]:
    """The suite's constant-0.30 command line, saving checkpoints (with the EMA) every 250 updates."""
    cmd = pretrain.run_args(data_dir, save_dir, pretrain.POLICIES[STATE_POLICY], STATE_SEED, settings())
    return [*_without(cmd, "--no-save"), *EMA_ARGS, "--save-interval-updates", str(STATE_STEP),
            "--no-epoch-checkpoints", "--no-last-checkpoints"]


def replicate_command(data_dir: Path, save_dir: Path, state_checkpoint: Path, state: int, arm: str,
                      seed: int) -> list[str]:
    """Continue the state run at ``arm`` with training seed ``seed`` for HORIZON updates: optimizer,
    lr schedule (still decaying over 4,000 updates) and EMA restored; checkpoints every 50 updates.
    The changed seed and masking are reward options of the task, hence --gpts-allow-option-change."""
    cmd = pretrain.run_args(data_dir, save_dir, pretrain.POLICIES[arm], seed, settings())
    cmd = _replace_option(_without(cmd, "--no-save"), "--max-update", str(state + HORIZON))
    return [*cmd, *EMA_ARGS, "--restore-file", str(state_checkpoint), "--gpts-allow-option-change",
            "--save-interval-updates", str(CHECKPOINT_STEP), "--no-epoch-checkpoints", "--no-last-checkpoints",
            "--disable-validation"]


def checkpoint_at(save_dir: Path, update: int) -> Path | None:
    """The checkpoint fairseq saved at ``update`` once its "Saved checkpoint" line is logged
    (fairseq's checkpoint logger writes to the console output only, not to --log-file)."""
    log = save_dir / "stdout.log"
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if "Saved checkpoint" in line and f"@ {update} updates" in line:
            return Path(line.split("Saved checkpoint ", 1)[1].split(" ", 1)[0])
    return None


def second_state(curve: Sequence[tuple[int, float]], entropy: float) -> int | None:
    """S2: the first multiple of 250 validated below ``entropy``; S2_LIMIT if not below by then;
    None while undecided."""
    for update, loss in curve:
        if update % STATE_STEP == 0 and (loss < entropy or update >= S2_LIMIT):
            return update
    return None


# -- measuring ---------------------------------------------------------------------------------


class RewardMeter:
    """The reward's loss (bits, 12 reward batches, reference masking, seed 0's batches and masks)
    of a checkpoint's raw and EMA weights, with the task built from the state run's checkpoint."""

    def __init__(self, state_checkpoint: Path):
        import torch
        from fairseq import checkpoint_utils, tasks

        import gpts_fairseq.tasks.gpts_mlm  # noqa: F401  (registers the task and criterion)
        from gpts_fairseq.tasks import fairseq_compat

        torch.set_num_threads(1)
        fairseq_compat.allow_fairseq_checkpoints()
        self._load = checkpoint_utils.load_checkpoint_to_cpu
        cfg = self._load(str(state_checkpoint))["cfg"]
        self.task = tasks.setup_task(cfg.task)
        self.model = self.task.build_model(cfg.model)
        self.criterion = self.task.build_criterion(cfg.criterion)
        self._model_cfg = cfg.model

    def losses(self, checkpoint: Path) -> dict[str, float]:
        state = self._load(str(checkpoint))
        out = {}
        for weights, tensors in (("raw", state["model"]), ("ema", state["extra_state"]["ema"])):
            self.model.load_state_dict(tensors, strict=True, model_cfg=self._model_cfg)
            out[weights] = self.task.reference_loss(self.model, self.criterion)
        return out


# -- runs --------------------------------------------------------------------------------------


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def run_state(data_dir: Path, work: Path, results: dict, out: Path) -> dict:
    """The state run (unless recorded): constant-0.30, seed 0, until S2's checkpoint is saved."""
    if "state_run" in results:
        return results["state_run"]
    entropy = corpora.prepared_entropy(data_dir)
    save_dir = pretrain._fresh_save_dir(work / "state")
    cmd = state_command(data_dir, save_dir)

    def saved_second_state(curve):
        s2 = second_state(curve, entropy)
        return s2 is not None and checkpoint_at(save_dir, s2) is not None and checkpoint_at(save_dir, S1) is not None

    code, wall, output = pretrain._train(cmd, save_dir, settings(), stop=saved_second_state)
    curve = pretrain.read_valid_curve(save_dir / "train.log")
    s2 = second_state(curve, entropy)
    if s2 is None or checkpoint_at(save_dir, s2) is None or checkpoint_at(save_dir, S1) is None:
        raise RuntimeError(f"state run failed (exit {code}), see {save_dir}/stdout.log:\n{output[-3000:]}")
    update_s, forward_cost = pretrain.measured_costs(save_dir / "train.log")
    results["state_run"] = {
        "policy": STATE_POLICY, "seed": STATE_SEED, "ema_decay": EMA_DECAY, "entropy_bits": entropy,
        "states": sorted({S1, s2}), "s2_below_entropy": dict(curve).get(s2, math.inf) < entropy,
        "val_curve": [[u, loss] for u, loss in curve], "wall_time_s": wall, "update_s": update_s,
        "forward_cost_updates": forward_cost, "fairseq_args": corpora.portable_args(cmd[1:], data_dir, save_dir),
        "settings": asdict(settings()), "load_average": os.getloadavg(),
    }
    pretrain._write_json(out, results)
    return results["state_run"]


def run_replicates(data_dir: Path, work: Path, results: dict, out: Path) -> None:
    """Every (state, arm, seed) run not recorded yet, one at a time, each written when done."""
    state_run = results["state_run"]
    done = {(r["state"], r["arm"], r["seed"]) for r in results["runs"]}
    for state in state_run["states"]:
        state_checkpoint = checkpoint_at(work / "state", state)
        meter = None
        start_key = f"start_{state}"
        for arm in ARMS:
            for seed in REPLICATE_SEEDS:
                if (state, arm, seed) in done:
                    continue
                meter = meter or RewardMeter(state_checkpoint)
                if start_key not in results:
                    results[start_key] = meter.losses(state_checkpoint)
                save_dir = pretrain._fresh_save_dir(work / f"state{state}" / arm / f"seed{seed}")
                cmd = replicate_command(data_dir, save_dir, state_checkpoint, state, arm, seed)
                code, wall, output = pretrain._train(cmd, save_dir, settings())
                loss = {"0": results[start_key]}
                for n in LENGTHS:
                    checkpoint = checkpoint_at(save_dir, state + n)
                    if checkpoint is None:
                        raise RuntimeError(f"no checkpoint at update {state + n} (exit {code}), see "
                                           f"{save_dir}/stdout.log:\n{output[-3000:]}")
                    loss[str(n)] = meter.losses(checkpoint)
                results["runs"].append({"state": state, "arm": arm, "seed": seed, "loss": loss,
                                        "wall_time_s": wall, "exit_code": code, "load_average": os.getloadavg(),
                                        "fairseq_args": portable(cmd[1:], data_dir, save_dir, work)})
                pretrain._write_json(out, results)
                for checkpoint in save_dir.glob("checkpoint*.pt"):
                    checkpoint.unlink()
                print(f"state {state} {arm} seed {seed}: " + ", ".join(
                    f"+{n} raw {loss[str(n)]['raw']:.4f} ema {loss[str(n)]['ema']:.4f}" for n in ("0", *map(str, LENGTHS)))
                    + f" ({wall:.0f} s)", flush=True)


def portable(args: Sequence[str], data_dir: Path, save_dir: Path, work: Path) -> list[str]:
    """``corpora.portable_args``, and the state run's checkpoint under ``<work>``."""
    return [arg.replace(str(work), "<work>") for arg in corpora.portable_args(args, data_dir, save_dir)]


# -- analysis ----------------------------------------------------------------------------------


def relative_reward(loss: dict, n: int, weights: str) -> float:
    start = loss["0"][weights]
    return (start - loss[str(n)][weights]) / start


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """Pooled within-group standard deviation."""
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof)


def analyse(results: dict) -> dict:
    """Per state, n and weights: unpaired noise, effect and score; paired noise; the criteria."""
    state_run = results["state_run"]
    rows = []
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
    states = state_run["states"]
    ema_checks = []
    for state in states:
        raw, ema = _row(rows, state, HORIZON, "raw"), _row(rows, state, HORIZON, "ema")
        if raw and ema and raw["score"] is not None and ema["score"] is not None:
            ema_checks.append({"state": state, "raw_score": raw["score"], "ema_score": ema["score"],
                               "ratio": ema["score"] / raw["score"] if raw["score"] else math.inf,
                               "pass": ema["score"] >= EMA_SCORE_FACTOR * raw["score"]})
    batches = state_run["settings"]["eval_batches"]
    costs = {str(n): probe_cost(n, state_run["forward_cost_updates"], batches) for n in LENGTHS}
    probe_checks = []
    for n in LENGTHS:
        for state in states:
            raw = _row(rows, state, n, "raw")
            if raw and raw["paired_share"] is not None:
                probe_checks.append({"state": state, "n": n, "paired_share": raw["paired_share"],
                                     "noise_pass": raw["paired_share"] <= PAIRED_NOISE_SHARE,
                                     "cost": costs[str(n)], "cost_pass": costs[str(n)] <= pretrain.OVERHEAD_GOAL})
    ema_ships = complete and len(ema_checks) == len(states) and all(c["pass"] for c in ema_checks)
    probe_ships = complete and any(
        all(c["noise_pass"] and c["cost_pass"] for c in probe_checks if c["n"] == n)
        and sum(c["n"] == n for c in probe_checks) == len(states) for n in LENGTHS)
    return {"ema_criterion": ema_checks, "ema_ships": ema_ships, "probe_criterion": probe_checks,
            "probe_cost_share": costs, "probe_ships": probe_ships}


def table(analysis: dict) -> str:
    out = ["| state | n | weights | mean r (ρ 0.15) | mean r (ρ 0.45) | effect | noise (pooled sd) | "
           "score | paired sd | paired / (noise·√2) |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in analysis["rows"]:
        low, high = (r["mean_reward"][arm] for arm in ARMS)
        paired = "–" if r["paired_noise"] is None else f"{r['paired_noise']:.5f}"
        share = "–" if r["paired_share"] is None else f"{r['paired_share']:.2f}"
        out.append(f"| {r['state']} | {r['n']} | {r['weights']} | {low:+.5f} | {high:+.5f} | {r['effect']:+.5f} | "
                   f"{r['noise']:.5f} | {r['score']:.2f} | {paired} | {share} |")
    return "\n".join(out)


def verdicts(analysis: dict) -> list[str]:
    lines = []
    for c in analysis["ema_criterion"]:
        lines.append(f"EMA, state {c['state']}, n = {HORIZON}: score {c['ema_score']:.2f} vs raw {c['raw_score']:.2f} "
                     f"(x{c['ratio']:.2f}, need >= x{EMA_SCORE_FACTOR}): {'PASS' if c['pass'] else 'FAIL'}")
    for c in analysis["probe_criterion"]:
        lines.append(f"probe, state {c['state']}, n = {c['n']}: paired noise {c['paired_share']:.2f} of the unpaired "
                     f"difference's (need <= {PAIRED_NOISE_SHARE:.2f}): {'PASS' if c['noise_pass'] else 'FAIL'}; "
                     f"cost {c['cost']:.1%} of an interaction of {INTERACTION_UPDATES} updates "
                     f"(need <= {pretrain.OVERHEAD_GOAL:.0%}): {'PASS' if c['cost_pass'] else 'FAIL'}")
    status = "" if analysis["complete"] else " (incomplete: not every run is in)"
    lines.append(f"EMA ships: {'yes' if analysis['ema_ships'] else 'no'}; paired probe ships: "
                 f"{'yes' if analysis['probe_ships'] else 'no'}{status}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=corpora.DEFAULT_DATA_ROOT)
    parser.add_argument("--sources", type=Path, default=corpora.SHARED_DATA)
    parser.add_argument("--work-root", type=Path, default=DEFAULT_WORK, help="fairseq save dirs (outside the repo)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--summary-only", action="store_true", help="only analyse the recorded runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = load_results(args.results)
    if not args.summary_only:
        data_dir = corpora.prepare(CORPUS, args.data_root, args.sources, tokenizer="char")
        run_state(data_dir, args.work_root, results, args.results)
        run_replicates(data_dir, args.work_root, results, args.results)
    if "state_run" not in results:
        print("no state run recorded yet")
        return 0
    for run in results["runs"]:  # the first runs recorded the state checkpoint's machine path
        run["fairseq_args"] = [arg.replace(str(args.work_root), "<work>") for arg in run["fairseq_args"]]
    analysis = analyse(results)
    results["analysis"] = analysis
    pretrain._write_json(args.results, results)
    print(table(analysis))
    print("\n".join(verdicts(analysis)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
