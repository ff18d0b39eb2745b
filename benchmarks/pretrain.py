"""Does GP-TS pre-train faster? A pre-registered comparison of masking policies past the
previous-character plateau.

Protocol (fixed before any suite run; the earlier protocol's 90 runs of 360 updates are kept
under ``benchmarks/results/pretrain/`` as its record):

1. **Pilot** (seed 0, reported, not scored). Per corpus, ``constant-0.15`` trains with the
   learning rate decaying over ``PILOT_MAX_UPDATES`` = 4,000 updates and the reference loss
   validated every ``PILOT_VALIDATE_UPDATES`` = 25 updates on the reward batches. U* = the
   first validated update whose loss is below the corpus' previous-token conditional entropy
   H(X_i | X_{i-1}) of its training text (``corpora.previous_token_entropy``, bits). The
   budget is U = 1.25 U*, clamped to [1,500, 4,000] (4,000 when U* is never reached). The pilot
   stops once it has validated at U. Note: the pilot's learning rate decays over 4,000
   updates, the suite's over U, so U* is a horizon for the suite, not its exact crossing.
2. **Interaction length** L, chosen from the pilots by this rule: candidates
   ``INTERACTION_CANDIDATES``; for each, the reward noise sigma(L) = sd of the relative
   reward's residual after the local trend (``reward_noise``: a quadratic over the validations
   within 200 updates, on the pilot's curve over (U/10, U]; a first choice, one degree-4
   polynomial in log(update), could not follow the linux pilot's plateau-then-drop and measured
   its misfit, growing with L, so it was replaced before L was fixed), the interaction overhead (reward pass at the
   measured forward cost + a GP decision) as a share of L updates' training time, and the
   decisions per run (U/L - 1). L = the smallest candidate with overhead <= 2 % and >= 10
   decisions on every corpus and a lasting arm effect >= 1 sigma(L), the effect extrapolated
   from the earlier protocol's fit (r = +0.011 rho_k - 0.008 rho_{k-1} per 20 updates: a
   lasting 0.003 per unit rho per 20 updates, linear in L) for a rho gap of 0.15; if no
   candidate meets all three, the smallest meeting the first two, and that is reported. The
   driver applies the rule itself once every pilot is in (``--interaction-updates`` overrides).
3. **Suite**: policies ``constant-0.15/0.30/0.45``, ``schedule-0.30-0.15``, ``random``,
   ``gp-ts-rho`` (stationary GP over the 10 rho arms) and ``gp-ts-trend`` (the same arms with
   ``--gpts-reward-model trend``); 3 corpora x seeds 1, 2, 3; every run validates every L
   updates on the same 12 reference batches its reward uses. Runs go seed-major (for seed:
   for corpus: every policy), so complete same-seed blocks arrive first.
4. **Compute accounting**: each run records its measured update time, forward-pass cost (in
   updates, from fairseq's train and valid throughput), reward passes and decision time;
   a policy that consumes rewards (gp-ts*) is charged reward passes x batches x forward cost
   + decision time in update-equivalents; the others are charged their updates only.
5. **Scoring** (``score``). A run's final loss is the mean of its last 3 validations.
   (a) ``gp-ts-trend`` reaches ``constant-0.15``'s final loss (seed mean) with <= 85 % of
       ``constant-0.15``'s compute (U), on >= 2 of 3 corpora (first validated update of the
       seed-mean curve at or below the target, plus its reward charge);
   (b) it ends <= 0.005 bits above the best fixed rho (per corpus, the constant policy with the
       lowest seed-mean final loss): one-sided 90 % upper bound (Student t) of the mean
       same-seed difference over the 9 pairs;
   (c) it beats ``random`` (lower final loss) on >= 7 of 9 same-seed pairs.
   Each prints PASS/FAIL with its numbers, or "incomplete" while pairs are missing.

Any corpus: ``--text FILE`` (split by ``corpora.split_text``) or ``--text TRAIN VALID`` with
``--text-name NAME`` runs the same protocol on a user's own text (only on it, unless
``--corpus`` names shared corpora too). Runs go through ``benchmarks.harness``.

    python -m benchmarks.pretrain --pilot-only                # the three pilots (~10-20 min each here)
    nohup python -m benchmarks.pretrain --jobs 1 &            # pilots if missing, then the suite (resumable)
    python -m benchmarks.pretrain --text my.txt --text-name mine --seeds 1
    python -m benchmarks.pretrain --summary-only              # criteria, tables and plots from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import corpora, harness
from gpts_fairseq.report.cli import write_report
from gpts_fairseq.report.history import load_run, run_from_result
from gpts_fairseq.report.summary import (
    final_loss,
    format_loss,
    label_table,
    mean_curve,
    one_sided_upper_bound,
    reference_target,
)

DEFAULT_RESULTS = harness.REPO_ROOT / "benchmarks" / "results" / "pretrain-prereg"
DEFAULT_WORK = harness.WORK_ROOT / "pretrain-prereg"
REFERENCE = (0.15, 0.1, 0.1)
REFERENCE_POLICY = "constant-0.15"
SCORED_POLICY = "gp-ts-trend"
SUITE_SEEDS = (1, 2, 3)

PILOT_SEED = 0
PILOT_MAX_UPDATES = 4000
PILOT_VALIDATE_UPDATES = 25
BUDGET_FACTOR = 1.25
BUDGET_RANGE = (1500, 4000)

INTERACTION_CANDIDATES = (50, 100, 150, 200, 250, 300, 400)
OVERHEAD_GOAL = 0.02
MIN_DECISIONS = 10
SYMLOG_LINEAR_BITS = 0.02  # delta_vs_constant.png: linear within this many bits of 0
# lasting arm effect per unit rho per update (relative reward), from the earlier protocol's
# fit r = +0.011 rho_k - 0.008 rho_{k-1} per 20-update interaction
ARM_EFFECT_PER_UPDATE = (0.011 - 0.008) / 20
ARM_GAP = 0.15
TREND_WINDOW = 200  # updates either side of a validation for its local trend (reward_noise)
GP_DECISION_S = 0.014  # median GP-TS decision of the earlier protocol's gp-ts-rho runs (153 decisions)

FINAL_VALIDATIONS = 3
COMPUTE_SHARE = 0.85
CORPORA_TO_PASS = 2
BOUND_BITS = 0.005
BOUND_LEVEL = 0.90
PAIRS_TO_BEAT_RANDOM = 7


@dataclass(frozen=True)
class Policy:
    """One compared masking policy, as ``--gpts-*`` options of the gpts_mlm task."""

    name: str
    gpts_policy: str
    psi: tuple[float, float, float] = REFERENCE  # constant value / schedule start / first arm
    arms: str | None = None
    schedule_end: tuple[float, float, float] | None = None
    reward_model: str | None = None

    @property
    def uses_rewards(self) -> bool:
        """Only GP-TS needs the reward passes; they are charged to its compute."""
        return self.gpts_policy == "gp-ts"

    def fairseq_args(self) -> list[str]:
        rho, gamma, lam = self.psi
        args = ["--gpts-policy", self.gpts_policy, "--mask-prob", str(rho),
                "--leave-unmasked-prob", str(gamma), "--random-token-prob", str(lam)]
        if self.arms:
            args += ["--gpts-arms", self.arms]
        if self.reward_model:
            args += ["--gpts-reward-model", self.reward_model]
        if self.schedule_end:
            args += ["--gpts-schedule", "linear", "--gpts-schedule-end", ",".join(map(str, self.schedule_end))]
        return args


# the order runs go in within a (seed, corpus) block: baselines first, the new model last
POLICIES = {p.name: p for p in [
    Policy("constant-0.15", "constant"),
    Policy("constant-0.30", "constant", (0.30, 0.1, 0.1)),
    Policy("constant-0.45", "constant", (0.45, 0.1, 0.1)),
    Policy("schedule-0.30-0.15", "schedule", (0.30, 0.1, 0.1), schedule_end=REFERENCE),
    Policy("random", "random", arms="rho"),
    Policy("gp-ts-rho", "gp-ts", arms="rho"),
    Policy(SCORED_POLICY, "gp-ts", arms="rho", reward_model="trend"),
]}
FIXED_RHO = ("constant-0.15", "constant-0.30", "constant-0.45")


@dataclass(frozen=True)
class Settings:
    """What every run of a corpus shares; recorded in each result JSON.

    - characters, not words (``--tokenizer char``, ~100 symbols): the output layer is cheap
      and an update costs the same on every corpus;
    - batches of 16 x 128 tokens, lr 2e-3 with 10 % warmup and linear decay to 0 at the
      budget, no dropout (under a few epochs nothing needs it);
    - reward and reported validation loss on the same first 12 validation batches (~25 k
      tokens, the same masks every time): a full pass over the largest validation split at
      every interaction would cost more than the training.
    """

    budget_updates: int
    interaction_updates: int
    eval_batches: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    threads: int = 1
    arch: str = "roberta_base"
    tokens_per_sample: int = 128
    dropout: float = 0.0
    tokenizer: str = "char"
    validate_updates: int = 0  # fairseq validation interval; 0 = at every interaction

    def validate(self) -> None:
        if self.budget_updates < 1:
            raise ValueError(f"--budget-updates must be >= 1, got {self.budget_updates}")
        if not 1 <= self.interaction_updates <= self.budget_updates:
            raise ValueError(
                f"--interaction-updates must be in [1, --budget-updates={self.budget_updates}], "
                f"got {self.interaction_updates}"
            )
        if self.eval_batches < 0:
            raise ValueError(f"--eval-batches must be >= 0 (0 = all), got {self.eval_batches}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


def model_args(settings: Settings) -> list[str]:
    """The tiny RoBERTa and its optimiser: 2 layers, 128 wide, 4 heads, FFN 512."""
    budget = settings.budget_updates
    return [
        "--arch", settings.arch, "--dropout", str(settings.dropout),
        "--attention-dropout", str(settings.dropout), "--encoder-layers", "2", "--encoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4",
        "--max-positions", str(settings.tokens_per_sample),
        "--tokens-per-sample", str(settings.tokens_per_sample), "--sample-break-mode", "none",
        "--batch-size", str(settings.batch_size), "--required-batch-size-multiple", "1",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6",
        "--weight-decay", "0.01", "--clip-norm", "1.0",
        "--lr", str(settings.lr), "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", str(budget // 10), "--total-num-update", str(budget),
    ]


def validation_args(settings: Settings) -> list[str]:
    """Reference-masking validation on the reward's first K batches, every interaction."""
    return [
        "--gpts-valid-masking", "reference", "--gpts-ref-mask-prob", "0.15",
        "--gpts-ref-leave-unmasked-prob", "0.1", "--gpts-ref-random-token-prob", "0.1",
        "--gpts-interaction-updates", str(settings.interaction_updates),
        "--gpts-reward-batches", str(settings.eval_batches),
        # the same first K validation batches as the reward (fairseq evaluates steps 0..N)
        *(["--max-valid-steps", str(settings.eval_batches - 1)] if settings.eval_batches else []),
        "--validate-interval-updates", str(settings.validate_updates or settings.interaction_updates),
        "--validate-interval", "1000000", "--log-interval", "50",
    ]


def run_spec(corpus: str, data_dir: Path, policy: Policy, seed: int, settings: Settings) -> harness.RunSpec:
    """One run of the comparison, for the harness."""
    return harness.RunSpec(
        corpus=corpus, data_dir=data_dir, arm=policy.name, seed=seed, budget_updates=settings.budget_updates,
        model=tuple(model_args(settings)), fairseq=tuple(validation_args(settings)),
        arm_args=tuple(policy.fairseq_args()), tokenizer=settings.tokenizer, threads=settings.threads,
        report_info={"policy": policy.gpts_policy, "arms": policy.arms,
                     "psi": dict(zip(("mask_prob", "leave_unmasked_prob", "random_token_prob"), policy.psi))})


def result_path(results_root: Path, corpus: str, policy: str, seed: int) -> Path:
    return harness.result_path(results_root, corpus, policy, seed)


def suite_fields(settings: dict[str, Settings]):
    """The harness' ``finish`` of a suite run: the gpts-report result (interactions, ψ
    sequence), the settings of its corpus and its compute accounting."""
    def finish(save_dir: Path, result: dict) -> dict:
        run = load_run(save_dir)
        run.wall_time_s = result["wall_time_s"]
        mine = settings[result["corpus"]]
        compute = compute_accounting(result["compute"], run.interactions, mine, POLICIES[result["arm"]])
        return {**run.to_result(), "settings": asdict(mine), "compute": compute}
    return finish


# -- compute accounting ----------------------------------------------------------------------


def compute_accounting(costs: dict, interactions, settings: Settings, policy: Policy) -> dict:
    """Update-equivalents of one run: updates, plus (for policies that use rewards) every
    reward pass at the measured forward cost and every decision at the measured update time.
    ``costs``: the harness' measured ``update_s`` and ``forward_cost_updates``."""
    update_s, forward_cost = costs["update_s"], costs["forward_cost_updates"]
    if not update_s:
        raise ValueError("compute_accounting: no train throughput lines to measure the update time from")
    # the task measures the reference loss before update 0 and at every interaction boundary
    # inside the budget (for every policy; a constant one writes no history of them)
    passes = 1 + (settings.budget_updates - 1) // settings.interaction_updates
    decision_s = sum(i.decision_time_s or 0.0 for i in interactions)
    batches = settings.eval_batches
    reward_ue = passes * batches * forward_cost + decision_s / update_s
    per_interaction = batches * forward_cost + (decision_s / max(len(interactions), 1)) / update_s
    return {
        "update_s": update_s, "forward_cost_updates": forward_cost, "reward_passes": passes,
        "reward_batches": batches, "decision_s": decision_s,
        "reward_update_equivalents": reward_ue,
        "charged_update_equivalents": settings.budget_updates + (reward_ue if policy.uses_rewards else 0.0),
        "interaction_overhead_share": per_interaction / settings.interaction_updates,
    }


def charged_compute(result_compute: dict | None, policy: Policy, update: int, interaction_updates: int,
                    batches: int) -> float:
    """Update-equivalents a run has spent by ``update`` (its reward passes so far included)."""
    if not policy.uses_rewards or not result_compute:
        return float(update)
    passes = 1 + update // interaction_updates
    per_pass = batches * result_compute["forward_cost_updates"]
    decisions = result_compute["decision_s"] / max(result_compute["reward_passes"] - 1, 1)
    return update + passes * (per_pass + decisions / result_compute["update_s"])


# -- pilot and interaction length ------------------------------------------------------------


def crossing_update(curve: Sequence[tuple[int, float]], entropy_bits: float) -> int | None:
    """U*: the first validated update whose loss is below ``entropy_bits``."""
    return next((u for u, loss in curve if loss < entropy_bits), None)


def budget_from_crossing(u_star: int | None) -> int:
    """U = 1.25 U*, rounded up to a whole interaction's multiple of 50 and clamped to
    [1500, 4000]; 4000 when the pilot never crossed."""
    low, high = BUDGET_RANGE
    if u_star is None:
        return high
    return int(min(max(50 * math.ceil(BUDGET_FACTOR * u_star / 50), low), high))


def pilot_settings(base: Settings) -> Settings:
    """The pilot's: no interactions, validation every 25 updates, lr decaying over ``base``'s
    budget (``PILOT_MAX_UPDATES`` in the protocol)."""
    return replace(base, interaction_updates=base.budget_updates, validate_updates=PILOT_VALIDATE_UPDATES)


def pilot_path(results_root: Path, corpus: str) -> Path:
    return Path(results_root) / "pilot" / f"{corpus}.json"


def run_pilot(corpus: str, data_dir: Path, base: Settings, work_root: Path, results_root: Path) -> dict:
    """The pilot of one corpus (unless recorded): constant-0.15, seed 0, until U is validated."""
    settings = pilot_settings(base)
    entropy = harness.corpus_entropy(str(data_dir))

    def reached_budget(curve):
        u_star = crossing_update(curve, entropy)
        return u_star is not None and curve[-1][0] >= budget_from_crossing(u_star)

    def pilot_fields(save_dir: Path, result: dict) -> dict:
        curve = result["val_curve"]
        u_star = crossing_update(curve, entropy)
        return {"policy": REFERENCE_POLICY, "previous_token_entropy_bits": entropy, "u_star": u_star,
                "budget_updates_suite": budget_from_crossing(u_star), "stopped_at": curve[-1][0] if curve else None,
                "update_s": result["compute"]["update_s"],
                "forward_cost_updates": result["compute"]["forward_cost_updates"], "settings": asdict(settings)}

    spec = run_spec(corpus, data_dir, POLICIES[REFERENCE_POLICY], PILOT_SEED, settings)
    return harness.run(spec, results_root, work_root, finish=pilot_fields, stop=reached_budget,
                       out=pilot_path(results_root, corpus))


def reward_noise(curve: Sequence[tuple[int, float]], length: int, start: int, end: int,
                 window: int = TREND_WINDOW) -> float:
    """sd of the relative reward's noise at interaction length ``length``: the loss curve on
    (start, end] minus its local trend (a quadratic fitted to the validations within
    ``window`` updates of each point), differenced ``length`` apart, divided by the earlier loss.
    With validations every 25 updates each fit absorbs about an eighth of the noise (tested)."""
    points = [(u, loss) for u, loss in curve if start < u <= end]
    if len(points) < 8:
        raise ValueError(f"reward_noise: {len(points)} validations in ({start}, {end}], need >= 8")
    updates = np.array([u for u, _ in points], dtype=float)
    losses = np.array([loss for _, loss in points])
    residual, loss_at = {}, {}
    for u, loss in zip(updates, losses):
        near = np.abs(updates - u) <= window
        if near.sum() < 4:
            raise ValueError(f"reward_noise: fewer than 4 validations within {window} updates of {int(u)}")
        trend = np.polyval(np.polyfit(updates[near] - u, losses[near], 2), 0.0)
        residual[int(u)], loss_at[int(u)] = loss - trend, loss
    noise = [(residual[u - length] - residual[u]) / loss_at[u - length] for u in residual if u - length in residual]
    if len(noise) < 2:
        raise ValueError(f"reward_noise: interaction length {length} leaves fewer than 2 rewards in ({start}, {end}]")
    return float(np.std(noise, ddof=1))


def interaction_length_table(pilots: Sequence[dict], batches: int, decision_s: float) -> list[dict]:
    """Per corpus and candidate L: reward noise, arm-effect-to-noise ratio, overhead share and
    decisions per run (see the module docstring's rule)."""
    rows = []
    for pilot in pilots:
        budget = pilot["budget_updates_suite"]
        curve = [(int(u), float(x)) for u, x in pilot["val_curve"]]
        per_interaction = batches * pilot["forward_cost_updates"] + decision_s / pilot["update_s"]
        for length in INTERACTION_CANDIDATES:
            try:
                sigma = reward_noise(curve, length, budget // 10, budget)
            except ValueError:
                sigma = None
            effect = ARM_EFFECT_PER_UPDATE * ARM_GAP * length
            rows.append({
                "corpus": pilot["corpus"], "interaction_updates": length, "budget_updates": budget,
                "reward_noise_sd": sigma, "arm_effect": effect,
                "effect_to_noise": effect / sigma if sigma else None,
                "overhead_share": per_interaction / length, "decisions": budget // length - 1,
            })
    return rows


def choose_interaction_length(rows: Sequence[dict]) -> tuple[int | None, bool]:
    """(L, whether the effect-to-noise condition held too) by the pre-registered rule."""
    def ok(length, with_effect):
        mine = [r for r in rows if r["interaction_updates"] == length]
        return bool(mine) and all(
            r["overhead_share"] <= OVERHEAD_GOAL and r["decisions"] >= MIN_DECISIONS
            and (not with_effect or (r["effect_to_noise"] or 0.0) >= 1.0) for r in mine)
    for with_effect in (True, False):
        for length in INTERACTION_CANDIDATES:
            if ok(length, with_effect):
                return length, with_effect
    return None, False


# -- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One pre-registered criterion: PASS, FAIL or incomplete, with the numbers behind it."""

    name: str
    status: str  # "PASS", "FAIL" or "incomplete"
    detail: str

    def line(self) -> str:
        return f"({self.name}) {self.status}: {self.detail}"


def _by_seed(runs, label):
    return {r.info.seed: r for r in runs if r.info.label == label and final_loss(r, FINAL_VALIDATIONS) is not None}


def best_fixed_rho(runs) -> str | None:
    """The constant policy with the lowest seed-mean final loss (criterion (b)'s yardstick)."""
    fixed = {label: _by_seed(runs, label) for label in FIXED_RHO}
    fixed = {label: members for label, members in fixed.items() if members}
    return min(fixed, key=lambda label: statistics.fmean(
        final_loss(r, FINAL_VALIDATIONS) for r in fixed[label].values())) if fixed else None


def score(per_corpus: dict, corpora_names: Sequence[str], seeds: Sequence[int] = SUITE_SEEDS,
          policy: str = SCORED_POLICY) -> list[Criterion]:
    """The three pre-registered criteria for ``policy`` over ``corpora_names`` x ``seeds``."""
    pairs_wanted = len(corpora_names) * len(seeds)
    # (a) compute to constant-0.15's final loss, per complete corpus
    verdicts, notes = [], []
    for corpus in corpora_names:
        runs = per_corpus.get(corpus, [])
        mine, ref = _by_seed(runs, policy), _by_seed(runs, REFERENCE_POLICY)
        if not all(s in mine and s in ref for s in seeds):
            notes.append(f"{corpus}: incomplete")
            continue
        target = statistics.fmean(final_loss(ref[s], FINAL_VALIDATIONS) for s in seeds)
        budget = ref[seeds[0]].info.budget_updates
        reached = next((u for u, loss in mean_curve([mine[s] for s in seeds]) if loss <= target), None)
        if reached is None:
            verdicts.append(False)
            notes.append(f"{corpus}: target {target:.3f} not reached")
            continue
        spent = statistics.fmean(
            charged_compute(mine[s].result.get("compute"), POLICIES[policy], reached,
                            int(mine[s].result["settings"]["interaction_updates"]),
                            int(mine[s].result["settings"]["eval_batches"])) for s in seeds)
        verdicts.append(spent <= COMPUTE_SHARE * budget)
        notes.append(f"{corpus}: {spent / budget:.2f} of constant-0.15's compute (update {reached} of {budget})")
    passed = sum(verdicts)
    if len(verdicts) < len(corpora_names):
        status_a = "incomplete"
    else:
        status_a = "PASS" if passed >= CORPORA_TO_PASS else "FAIL"
    a = Criterion("a", status_a, f"≤ {COMPUTE_SHARE:.0%} of the compute on ≥ {CORPORA_TO_PASS} of "
                  f"{len(corpora_names)} corpora; {passed} of {len(verdicts)} complete corpora pass — " + "; ".join(notes))
    # (b) same-seed gap to the best fixed rho of each corpus
    diffs = []
    for corpus in corpora_names:
        runs = per_corpus.get(corpus, [])
        best = best_fixed_rho(runs)
        if best is None:
            continue
        mine, fixed = _by_seed(runs, policy), _by_seed(runs, best)
        diffs += [final_loss(mine[s], FINAL_VALIDATIONS) - final_loss(fixed[s], FINAL_VALIDATIONS)
                  for s in seeds if s in mine and s in fixed]
    if len(diffs) >= 2:
        bound = one_sided_upper_bound(diffs, BOUND_LEVEL)
        numbers = (f"mean gap {statistics.fmean(diffs):+.4f} bits, {BOUND_LEVEL:.0%} upper bound {bound:+.4f} "
                   f"(limit +{BOUND_BITS}) over {len(diffs)} pairs")
    else:
        bound, numbers = None, f"{len(diffs)} pairs"
    status_b = "incomplete" if len(diffs) < pairs_wanted else ("PASS" if bound <= BOUND_BITS else "FAIL")
    b = Criterion("b", status_b, f"{numbers}" + (f" (incomplete: {len(diffs)} of {pairs_wanted} pairs)"
                                                if len(diffs) < pairs_wanted else ""))
    # (c) same-seed wins over random
    wins = total = 0
    for corpus in corpora_names:
        runs = per_corpus.get(corpus, [])
        mine, rand = _by_seed(runs, policy), _by_seed(runs, "random")
        for s in seeds:
            if s in mine and s in rand:
                total += 1
                wins += final_loss(mine[s], FINAL_VALIDATIONS) < final_loss(rand[s], FINAL_VALIDATIONS)
    status_c = "incomplete" if total < pairs_wanted else ("PASS" if wins >= PAIRS_TO_BEAT_RANDOM else "FAIL")
    c = Criterion("c", status_c, f"lower final loss than random on {wins} of {total} same-seed pairs "
                  f"(need ≥ {PAIRS_TO_BEAT_RANDOM} of {pairs_wanted})"
                  + (f" (incomplete: {total} of {pairs_wanted} pairs)" if total < pairs_wanted else ""))
    return [a, b, c]


# -- results, summary and plots --------------------------------------------------------------


def _policy_order(name: str) -> int:
    return list(POLICIES).index(name) if name in POLICIES else len(POLICIES)


def load_results(results_root: Path, corpus: str):
    """The corpus' runs; each keeps its result dict as ``run.result`` (settings, compute)."""
    runs = []
    for path in sorted((Path(results_root) / corpus).glob("*/seed*.json")):
        data = json.loads(path.read_text())
        run = run_from_result(data, str(path))
        run.result = data
        runs.append(run)
    return sorted(runs, key=lambda r: (_policy_order(r.info.label), r.info.label, r.info.seed or 0))


def result_corpora(results_root: Path) -> list[str]:
    """Corpora with results: the shared ones first, then users' texts."""
    found = sorted(p.name for p in Path(results_root).iterdir()
                   if p.is_dir() and p.name != "pilot" and any(p.glob("*/seed*.json"))) if Path(results_root).is_dir() else []
    return [c for c in corpora.CORPORA if c in found] + [c for c in found if c not in corpora.CORPORA]


def pilot_table(pilots: Sequence[dict]) -> str:
    rows = ["| corpus | H(X_i∣X_i−1), bits | U* (first validation below it) | budget U | pilot stopped at | "
            "loss there | s/update | forward pass, updates |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in pilots:
        last = p["val_curve"][-1][1] if p["val_curve"] else math.nan
        rows.append(f"| {p['corpus']} | {p['previous_token_entropy_bits']:.3f} | "
                    f"{p['u_star'] if p['u_star'] is not None else 'not reached'} | {p['budget_updates_suite']} | "
                    f"{p['stopped_at']} | {last:.3f} | {p['update_s']:.3f} | {p['forward_cost_updates']:.2f} |")
    return "\n".join(rows)


def interaction_table(rows: Sequence[dict]) -> str:
    out = ["| corpus | L | decisions | reward noise sd | arm effect (Δρ 0.15) | effect / noise | overhead |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sigma = "–" if r["reward_noise_sd"] is None else f"{r['reward_noise_sd']:.4f}"
        ratio = "–" if r["effect_to_noise"] is None else f"{r['effect_to_noise']:.2f}"
        out.append(f"| {r['corpus']} | {r['interaction_updates']} | {r['decisions']} | {sigma} | "
                   f"{r['arm_effect']:.4f} | {ratio} | {r['overhead_share']:.1%} |")
    return "\n".join(out)


def compute_table(per_corpus: dict) -> str:
    """Per corpus and policy: mean update time, reward passes, their update-equivalents and
    the interaction overhead share (reward pass + decision over L updates)."""
    rows = ["| corpus | policy | runs | s/update | reward passes | reward cost, update-eq. | "
            "charged compute, update-eq. | interaction overhead |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for corpus, runs in per_corpus.items():
        for label in sorted({r.info.label for r in runs}, key=_policy_order):
            comp = [r.result["compute"] for r in runs if r.info.label == label and r.result.get("compute")]
            if not comp:
                continue
            mean = {k: statistics.fmean(c[k] for c in comp) for k in comp[0] if isinstance(comp[0][k], (int, float))}
            rows.append(f"| {corpus} | {label} | {len(comp)} | {mean['update_s']:.3f} | {mean['reward_passes']:.0f} | "
                        f"{mean['reward_update_equivalents']:.0f} | {mean['charged_update_equivalents']:.0f} | "
                        f"{mean['interaction_overhead_share']:.1%} |")
    return "\n".join(rows)


def final_table(per_corpus: dict) -> str:
    """Per corpus and policy: final loss (mean of the last 3 validations; mean ± std over
    seeds) and its same-seed difference to constant-0.15 (mean; seeds lower)."""
    rows = ["| corpus | policy | runs | final loss (last 3 validations) | Δ vs constant-0.15, same seed (seeds lower) |",
            "|---|---|---:|---:|---:|"]
    for corpus, runs in per_corpus.items():
        ref = _by_seed(runs, REFERENCE_POLICY)
        for label in sorted({r.info.label for r in runs}, key=_policy_order):
            mine = _by_seed(runs, label)
            finals = [final_loss(r, FINAL_VALIDATIONS) for r in mine.values()]
            diffs = [final_loss(r, FINAL_VALIDATIONS) - final_loss(ref[s], FINAL_VALIDATIONS)
                     for s, r in mine.items() if s in ref]
            delta = "–" if label == REFERENCE_POLICY or not diffs else \
                f"{statistics.fmean(diffs):+.4f} ({sum(d < 0 for d in diffs)}/{len(diffs)})"
            std = statistics.stdev(finals) if len(finals) > 1 else None
            rows.append(f"| {corpus} | {label} | {len(finals)} | {format_loss(statistics.fmean(finals), std)} | {delta} |")
    return "\n".join(rows)


def block_table(per_corpus: dict, policy: str = SCORED_POLICY) -> str:
    """One row per (corpus, seed) block: every policy's final loss, and ``policy``'s gap to the
    best fixed ρ of the corpus and to random in that block — the pairs criteria (b), (c) score."""
    labels = list(POLICIES)
    rows = ["| corpus | seed | " + " | ".join(labels) + f" | {policy} − best fixed ρ | {policy} − random |",
            "|---|---:|" + "---:|" * (len(labels) + 2)]
    for corpus, runs in per_corpus.items():
        by_label = {label: _by_seed(runs, label) for label in labels}
        best = best_fixed_rho(runs)
        for seed in sorted({s for members in by_label.values() for s in members}):
            finals = {label: final_loss(by_label[label][seed], FINAL_VALIDATIONS)
                      for label in labels if seed in by_label[label]}
            gaps = [f"{finals[policy] - finals[other]:+.3f}" if policy in finals and other in finals else "–"
                    for other in (best, "random")]
            rows.append(f"| {corpus} | {seed} | " + " | ".join(
                f"{finals[label]:.3f}" if label in finals else "–" for label in labels) + " | " + " | ".join(gaps) + " |")
    return "\n".join(rows)


def write_summary(results_root: Path, corpus_names: Sequence[str] | None = None, work_root: Path = DEFAULT_WORK) -> Path:
    """summary.md: pilots, interaction length, the criteria, tables and gpts-report plots."""
    results_root = Path(results_root)
    corpus_names = list(corpus_names) if corpus_names is not None else result_corpora(results_root)
    lines = ["# Pre-registered pre-training comparison", "",
             "Protocol and criteria: the docstring of `benchmarks/pretrain.py` (fixed before the suite ran). "
             "Losses: reference-masking (ρ=0.15, γ=λ=0.1, fixed masks) validation loss in bits per masked "
             "character on the 12 reward batches.", ""]
    pilots = [json.loads(p.read_text()) for p in sorted((results_root / "pilot").glob("*.json"))
              if p.name != "interaction_length.json"]
    if pilots:
        lines += ["## Pilots (seed 0, constant-0.15; reported, not scored)", "", pilot_table(pilots), ""]
    length_file = results_root / "pilot" / "interaction_length.json"
    if length_file.is_file():
        measured = json.loads(length_file.read_text())
        lines += ["## Interaction length", "", interaction_table(measured["rows"]), "",
                  f"Chosen: L = {measured['chosen']} updates"
                  + ("" if measured["effect_condition_met"] else " (no candidate met the effect-to-noise condition; "
                     "the smallest meeting overhead and decisions)") + ".", ""]
    per_corpus = {c: load_results(results_root, c) for c in corpus_names}
    per_corpus = {c: runs for c, runs in per_corpus.items() if runs}
    if per_corpus:
        scored = list(corpora.CORPORA) if any(c in per_corpus for c in corpora.CORPORA) else list(per_corpus)
        criteria = score(per_corpus, scored)
        lines += ["## Pre-registered criteria (gp-ts-trend)", "", *[f"- {c.line()}" for c in criteria], "",
                  "## Final losses", "", final_table(per_corpus), "",
                  "## Same-seed blocks (final loss, bits)", "", block_table(per_corpus), "",
                  "## Compute", "", compute_table(per_corpus), ""]
        figure = plot_paired_deltas(per_corpus, results_root / "delta_vs_constant.png")
        lines += [f"![validation loss minus constant-0.15's, same seed]({figure.name})", ""]
    for corpus, runs in per_corpus.items():
        target = reference_target(runs)
        walls = [r.wall_time_s for r in runs if r.wall_time_s]
        report = write_report(runs, results_root / corpus / "report", target,
                              title=f"Pre-training comparison on {corpus}",
                              posterior_runs=_first_seed_save_dirs(runs, work_root))
        lines += [f"## {corpus}", "",
                  f"{len(runs)} runs; target {target:.3f} bits (constant-0.15's last validation, seed mean)."
                  if target is not None else f"{len(runs)} runs; no constant-0.15 run yet, so no target.",
                  f"Wall time per run: mean {sum(walls) / len(walls):.0f} s, max {max(walls):.0f} s "
                  f"(sum {sum(walls) / 60:.0f} min)." if walls else "",
                  _settings_line(results_root / corpus),
                  "", label_table(runs, target, paired_with=REFERENCE_POLICY), "",
                  f"![validation loss on {corpus}]({report.parent.relative_to(results_root)}/val_loss.png)", ""]
    summary = results_root / "summary.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(lines))
    return summary


def paired_delta_curve(runs, label):
    """(update, mean over seeds of loss - constant-0.15's loss of the same seed at that update)."""
    ref = {r.info.seed: dict(r.val_curve) for r in runs if r.info.label == REFERENCE_POLICY}
    by_update: dict[int, list[float]] = {}
    for run in runs:
        if run.info.label != label or run.info.seed not in ref:
            continue
        for update, loss in run.val_curve:
            if update in ref[run.info.seed]:
                by_update.setdefault(update, []).append(loss - ref[run.info.seed][update])
    count = max((len(v) for v in by_update.values()), default=0)
    return [(u, statistics.fmean(v)) for u, v in sorted(by_update.items()) if len(v) == count]


def plot_paired_deltas(per_corpus: dict, path: Path) -> Path:
    """One panel per corpus: each policy's validation loss minus constant-0.15's (same seed),
    averaged over seeds, over updates. Below zero = ahead of fixed 15% masking."""
    import matplotlib.pyplot as plt  # the report module has selected the Agg backend

    fig, axes = plt.subplots(1, len(per_corpus), figsize=(5.2 * len(per_corpus), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (corpus, runs) in zip(axes[0], per_corpus.items()):
        labels = sorted({r.info.label for r in runs} - {REFERENCE_POLICY}, key=_policy_order)
        for label in labels:
            curve = paired_delta_curve(runs, label)
            if not curve:
                continue
            gp = label.startswith("gp-ts")
            ax.plot([u for u, _ in curve], [d for _, d in curve], lw=2.2 if gp else 1.1, ls="-" if gp else "--",
                    color=cmap(_policy_order(label) % 10), label=label)
        ax.axhline(0.0, color="k", lw=0.8)
        seeds = len({r.info.seed for r in runs})
        ax.set_title(f"{corpus} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
        ax.set_xlabel("update")
        # Gaps on the plateau are hundredths of a bit, after the escape whole bits: linear
        # within ±SYMLOG_LINEAR_BITS, logarithmic beyond, so both show.
        ax.set_yscale("symlog", linthresh=SYMLOG_LINEAR_BITS)
    axes[0, 0].set_ylabel("val loss − constant-0.15 (same seed), bits")
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=len(handles))
    fig.suptitle("validation loss relative to constant-0.15 (same seed, mean over seeds; < 0 = better)", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _settings_line(corpus_dir: Path) -> str:
    """The settings of the corpus' runs (or a note that they differ)."""
    found = {json.dumps(json.loads(p.read_text()).get("settings"), sort_keys=True)
             for p in sorted(corpus_dir.glob("*/seed*.json"))}
    if len(found) != 1 or found == {"null"}:
        return "Settings: differ between runs (see each result JSON)." if len(found) > 1 else ""
    settings = {k: v for k, v in json.loads(found.pop()).items() if k != "threads"}
    return "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "."


def _first_seed_save_dirs(runs, work_root: Path):
    """Save-dir runs (with GP posteriors) of the lowest seed per policy, where still on disk."""
    firsts = {}
    for run in runs:
        firsts.setdefault(run.info.label, run)
    dirs = [Path(work_root) / (run.info.corpus or "") / run.info.label / f"seed{run.info.seed}" for run in firsts.values()]
    return [load_run(d) for d in dirs if d.is_dir() and (d / "train.log").is_file()]


def measure_interaction_length(pilots: Sequence[dict], results_root: Path, batches: int) -> dict:
    """Write pilot/interaction_length.json: the table and the L the rule picks."""
    decision_s = GP_DECISION_S
    rows = interaction_length_table(pilots, batches, decision_s)
    chosen, with_effect = choose_interaction_length(rows)
    data = {"rule": "see benchmarks/pretrain.py docstring, step 2", "decision_s": decision_s,
            "rows": rows, "chosen": chosen, "effect_condition_met": with_effect}
    harness.write_json(Path(results_root) / "pilot" / "interaction_length.json", data)
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="*", default=None, choices=corpora.CORPORA,
                        help="shared corpora to run (default: all three, or none when --text is given)")
    parser.add_argument("--text", nargs="+", type=Path, metavar="FILE",
                        help="your own text: one file (its last 10%% of lines validate) or TRAIN VALID")
    parser.add_argument("--text-name", default="user-text", help="the name of --text in results")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SUITE_SEEDS))
    parser.add_argument("--budget-updates", type=int, default=None,
                        help="override the pilot's budget U (smoke tests); default: from the pilot")
    parser.add_argument("--pilot-max-updates", type=int, default=PILOT_MAX_UPDATES, help=argparse.SUPPRESS)
    parser.add_argument("--interaction-updates", type=int, default=None,
                        help="updates per bandit interaction, also the validation interval; default: the "
                             "length the pilots' measurement picks (pilot/interaction_length.json)")
    parser.add_argument("--eval-batches", type=int, default=12,
                        help="validation batches (the first K, fixed) for both the reward and the reported "
                             "validation loss; 0 = the whole validation split")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--data-root", type=Path, default=corpora.DEFAULT_DATA_ROOT)
    parser.add_argument("--work-root", type=Path, default=DEFAULT_WORK, help="fairseq save dirs (outside the repo)")
    parser.add_argument("--results-root", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--sources", type=Path, default=corpora.SHARED_DATA)
    parser.add_argument("--tokenizer", choices=corpora.TOKENIZERS, default="char",
                        help="corpus tokenization (see benchmarks/corpora.py)")
    parser.add_argument("--max-lines", type=int, default=None, help="use only the first N lines per split (smoke tests)")
    parser.add_argument("--pilot-only", action="store_true", help="run the pilots and measure the interaction length")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite summary.md and plots")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if any(s < 1 for s in args.seeds):
        raise ValueError(f"--seeds must be >= 1 (seed {PILOT_SEED} is the pilot's), got {args.seeds}")
    if args.budget_updates is not None and args.budget_updates < 1:
        raise ValueError(f"--budget-updates must be >= 1, got {args.budget_updates}")
    if not 1 <= args.pilot_max_updates:
        raise ValueError(f"--pilot-max-updates must be >= 1, got {args.pilot_max_updates}")
    if args.text is not None and len(args.text) > 2:
        raise ValueError(f"--text takes one file or a TRAIN VALID pair, got {len(args.text)} paths")
    base = Settings(budget_updates=args.budget_updates or BUDGET_RANGE[0],
                    interaction_updates=args.interaction_updates or 1, eval_batches=args.eval_batches,
                    threads=args.threads, tokenizer=args.tokenizer)
    base.validate()
    shared = args.corpus if args.corpus is not None else ([] if args.text else list(corpora.CORPORA))
    start = time.perf_counter()
    if not args.summary_only:
        data = {c: corpora.prepare(c, args.data_root, args.sources, max_lines=args.max_lines, tokenizer=args.tokenizer)
                for c in shared}
        if args.text:
            data[args.text_name] = corpora.prepare_text(args.text_name, *args.text, data_root=args.data_root,
                                                        max_lines=args.max_lines, tokenizer=args.tokenizer)
        pilot_base = replace(base, budget_updates=args.pilot_max_updates)
        pilots = {}
        for corpus, data_dir in data.items():  # one at a time: they set the budgets
            pilots[corpus] = run_pilot(corpus, data_dir, pilot_base, args.work_root, args.results_root)
            print(f"pilot {corpus}: U* = {pilots[corpus]['u_star']}, U = {pilots[corpus]['budget_updates_suite']}",
                  flush=True)
        measured = measure_interaction_length(list(pilots.values()), args.results_root, args.eval_batches)
        length = args.interaction_updates or measured["chosen"]
        print(f"interaction length from the pilots: {measured['chosen']}; the suite uses {length}", flush=True)
        if not args.pilot_only:
            if length is None:
                raise ValueError("no interaction length meets the overhead and decision limits on these pilots: "
                                 "give --interaction-updates")
            run_suite(args, replace(base, interaction_updates=length), data, pilots)
    summary = write_summary(args.results_root, work_root=args.work_root)
    print(f"summary: {summary} (wall time {time.perf_counter() - start:.0f} s)")
    return 0


def run_suite(args, base: Settings, data: dict, pilots: dict) -> list[dict]:
    """Seed-major: for seed, for corpus, every policy (so complete same-seed blocks arrive first)."""
    settings = {c: replace(base, budget_updates=args.budget_updates or pilots[c]["budget_updates_suite"]) for c in data}
    for each in settings.values():
        each.validate()
    specs = [run_spec(c, data[c], POLICIES[p], s, settings[c]) for s in args.seeds for c in data for p in args.policies]
    return harness.run_suite(specs, args.results_root, args.work_root, jobs=args.jobs, finish=suite_fields(settings),
                             print_fn=lambda line: print(line, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
