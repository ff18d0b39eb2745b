"""Does GP-TS pre-train faster? A pre-registered comparison of masking policies past the
previous-character plateau.

Protocol and pass criteria: docs/experiments/pretrain.md; the pre-registered text, verbatim, is
this module's docstring at commit 392b41a (``git show 392b41a:benchmarks/pretrain.py``). The
constants below are that protocol: a pilot per corpus sets the budget (``budget_from_crossing``)
and the interaction length (``choose_interaction_length``), then every policy of ``POLICIES``
runs on 3 corpora x ``SUITE_SEEDS`` through ``benchmarks.harness``, scored by ``score``.
``--text FILE`` (or ``--text TRAIN VALID`` with ``--text-name``) runs it on a user's own text.

    python -m benchmarks.pretrain --pilot-only                # the three pilots
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
from benchmarks.harness import Verdict, cell, check, md_table, verdict
from gpts_fairseq.report.cli import write_report
from gpts_fairseq.report.history import load_run, run_from_result
from gpts_fairseq.report.summary import format_loss, label_table, one_sided_upper_bound, \
    reference_target

DEFAULT_RESULTS = harness.RESULTS_ROOT / "pretrain-prereg"
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
        return ["--gpts-policy", self.gpts_policy, "--mask-prob", str(rho), "--leave-unmasked-prob", str(gamma),
                "--random-token-prob", str(lam), *(["--gpts-arms", self.arms] if self.arms else []),
                *(["--gpts-reward-model", self.reward_model] if self.reward_model else []),
                *(["--gpts-schedule", "linear", "--gpts-schedule-end", ",".join(map(str, self.schedule_end))]
                  if self.schedule_end else [])]


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
    """What every run of a corpus shares; recorded in each result JSON. The reward and the reported
    validation loss use the same first ``eval_batches`` validation batches (the same masks every time)."""

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
        check((self.budget_updates >= 1, f"--budget-updates must be >= 1, got {self.budget_updates}"),
              (1 <= self.interaction_updates <= self.budget_updates, "--interaction-updates must be in "
               f"[1, --budget-updates={self.budget_updates}], got {self.interaction_updates}"),
              (self.eval_batches >= 0, f"--eval-batches must be >= 0 (0 = all), got {self.eval_batches}"))


def model_args(settings: Settings) -> list[str]:
    """The tiny RoBERTa and its optimiser: 2 layers, 128 wide, 4 heads, FFN 512."""
    return ["--arch", settings.arch, "--dropout", str(settings.dropout), "--attention-dropout", str(settings.dropout),
            "--encoder-layers", "2", "--encoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
            "--encoder-attention-heads", "4",
            *training_args(settings.tokens_per_sample, settings.batch_size, settings.lr, settings.budget_updates)]


def training_args(tokens: int, batch_size: int, lr: float, updates: int) -> list[str]:
    """Rows of ``tokens``, batches of ``batch_size``; Adam, lr warming up over 10 % of ``updates``, then
    decaying linearly to 0 at ``updates``."""
    return ["--max-positions", str(tokens), "--tokens-per-sample", str(tokens), "--sample-break-mode", "none",
            "--batch-size", str(batch_size), "--required-batch-size-multiple", "1", "--optimizer", "adam",
            "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.01", "--clip-norm", "1.0",
            "--lr", str(lr), "--lr-scheduler", "polynomial_decay", "--warmup-updates", str(updates // 10),
            "--total-num-update", str(updates)]


def validation_args(settings: Settings) -> list[str]:
    """Reference-masking validation on the reward's first K batches (fairseq evaluates steps 0..N),
    every interaction."""
    return ["--gpts-valid-masking", "reference", "--gpts-ref-mask-prob", "0.15",
            "--gpts-ref-leave-unmasked-prob", "0.1", "--gpts-ref-random-token-prob", "0.1",
            "--gpts-interaction-updates", str(settings.interaction_updates),
            "--gpts-reward-batches", str(settings.eval_batches),
            *(["--max-valid-steps", str(settings.eval_batches - 1)] if settings.eval_batches else []),
            "--validate-interval-updates", str(settings.validate_updates or settings.interaction_updates),
            "--validate-interval", "1000000", "--log-interval", "50"]


def run_spec(corpus: str, data_dir: Path, policy: Policy, seed: int, settings: Settings) -> harness.RunSpec:
    """One run of the comparison, for the harness."""
    return harness.RunSpec(
        corpus=corpus, data_dir=data_dir, arm=policy.name, seed=seed, budget_updates=settings.budget_updates,
        model=tuple(model_args(settings)), fairseq=tuple(validation_args(settings)),
        arm_args=tuple(policy.fairseq_args()), tokenizer=settings.tokenizer, threads=settings.threads,
        report_info={"policy": policy.gpts_policy, "arms": policy.arms,
                     "psi": dict(zip(("mask_prob", "leave_unmasked_prob", "random_token_prob"), policy.psi))})


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


def compute_accounting(costs: dict, interactions, settings: Settings, policy: Policy) -> dict:
    """Update-equivalents of one run: updates, plus (for policies that use rewards) every
    reward pass at the measured forward cost and every decision at the measured update time.
    ``costs``: the harness' measured ``update_s`` and ``forward_cost_updates``. The task measures
    the reward before update 0 and at every interaction boundary inside the budget."""
    update_s, forward_cost = costs["update_s"], costs["forward_cost_updates"]
    if not update_s:
        raise ValueError("compute_accounting: no train throughput lines to measure the update time from")
    passes = 1 + (settings.budget_updates - 1) // settings.interaction_updates
    decision_s = sum(i.decision_time_s or 0.0 for i in interactions)
    batches = settings.eval_batches
    reward_ue = passes * batches * forward_cost + decision_s / update_s
    per_interaction = batches * forward_cost + (decision_s / max(len(interactions), 1)) / update_s
    return {"update_s": update_s, "forward_cost_updates": forward_cost, "reward_passes": passes,
            "reward_batches": batches, "decision_s": decision_s, "reward_update_equivalents": reward_ue,
            "charged_update_equivalents": settings.budget_updates + (reward_ue if policy.uses_rewards else 0.0),
            "interaction_overhead_share": per_interaction / settings.interaction_updates}


def charged_compute(result_compute: dict | None, policy: Policy, update: int, interaction_updates: int,
                    batches: int) -> float:
    """Update-equivalents a run has spent by ``update`` (its reward passes so far included)."""
    if not policy.uses_rewards or not result_compute:
        return float(update)
    per_pass = batches * result_compute["forward_cost_updates"]
    decisions = result_compute["decision_s"] / max(result_compute["reward_passes"] - 1, 1)
    return update + (1 + update // interaction_updates) * (per_pass + decisions / result_compute["update_s"])


def crossing_update(curve: Sequence[tuple[int, float]], entropy_bits: float) -> int | None:
    """U*: the first validated update whose loss is below ``entropy_bits``."""
    return next((u for u, loss in curve if loss < entropy_bits), None)


def budget_from_crossing(u_star: int | None) -> int:
    """U = 1.25 U*, rounded up to a multiple of 50 and clamped to [1500, 4000]; 4000 when the
    pilot never crossed."""
    low, high = BUDGET_RANGE
    return high if u_star is None else int(min(max(50 * math.ceil(BUDGET_FACTOR * u_star / 50), low), high))


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
    ``window`` updates of each point), differenced ``length`` apart, divided by the earlier loss."""
    points = [(u, loss) for u, loss in curve if start < u <= end]
    if len(points) < 8:
        raise ValueError(f"reward_noise: {len(points)} validations in ({start}, {end}], need >= 8")
    updates, losses = np.array([u for u, _ in points], dtype=float), np.array([loss for _, loss in points])
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
    decisions per run (the rule's inputs)."""
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
            rows.append({"corpus": pilot["corpus"], "interaction_updates": length, "budget_updates": budget,
                         "reward_noise_sd": sigma, "arm_effect": effect,
                         "effect_to_noise": effect / sigma if sigma else None,
                         "overhead_share": per_interaction / length, "decisions": budget // length - 1})
    return rows


def choose_interaction_length(rows: Sequence[dict]) -> tuple[int | None, bool]:
    """(L, whether the effect-to-noise condition held too) by the pre-registered rule."""
    def ok(length, with_effect):
        mine = [r for r in rows if r["interaction_updates"] == length]
        return bool(mine) and all(
            r["overhead_share"] <= OVERHEAD_GOAL and r["decisions"] >= MIN_DECISIONS
            and (not with_effect or (r["effect_to_noise"] or 0.0) >= 1.0) for r in mine)
    return next(((length, with_effect) for with_effect in (True, False) for length in INTERACTION_CANDIDATES
                 if ok(length, with_effect)), (None, False))


def _finals(runs) -> dict[str, dict[int, float]]:
    """{label: {seed: final loss}} of the runs that validated, in their order."""
    finals: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.val_curve:
            finals.setdefault(r.info.label, {})[r.info.seed] = final(r.result)
    return finals


def final(result: dict) -> float:
    """A result's final loss: the mean of its last FINAL_VALIDATIONS validations."""
    return statistics.fmean(x for _, x in result["val_curve"][-FINAL_VALIDATIONS:])


def best_fixed_rho(by: dict, group: str) -> str | None:
    """The constant policy of ``group`` with the lowest seed-mean final loss (criterion (b)'s
    yardstick; ``by``: result dicts keyed (group, arm, seed))."""
    finals = {label: [final(r) for (g, arm, _), r in by.items() if (g, arm) == (group, label)] for label in FIXED_RHO}
    return min((label for label in finals if finals[label]), key=lambda label: statistics.fmean(finals[label]),
               default=None)


@dataclass(frozen=True)
class MaskingCriteria:
    """Criteria (a)-(c) of the masking suite for one policy: each one's status (PASS, FAIL or
    incomplete) and the numbers behind it."""

    a: str
    a_passed: int
    a_notes: dict[str, str]  # per group with every seed of the policy and constant-0.15: its compute
    b: str
    gaps: list[float]  # same-seed final-loss differences to the group's best fixed rho
    bound: float | None  # their one-sided BOUND_LEVEL upper bound
    c: str
    wins: int  # same-seed pairs with a lower final loss than random
    pairs: int


def masking_criteria(by: dict, groups: Sequence[str], seeds: Sequence[int], policy: str, charged,
                     groups_to_pass: int, wins_to_pass: int) -> MaskingCriteria:
    """The masking suite's criteria for ``policy`` over ``groups`` (corpora or directions) x
    ``seeds``; ``by``: result dicts (with ``val_curve``) keyed (group, arm, seed);
    ``charged(result, update)``: the update-equivalents that run had spent by ``update``.
    (a) at the first update where the seed-mean curve reaches constant-0.15's seed-mean final
    loss, the seed-mean charged compute is <= COMPUTE_SHARE of the budget, on >= ``groups_to_pass``
    groups; (b) the upper bound of the gaps to the best fixed rho is <= BOUND_BITS; (c) lower
    than random on >= ``wins_to_pass`` pairs. Each is incomplete until all its pairs are in."""
    notes, passed, gaps, wins, pairs = {}, 0, [], 0, 0
    for group in groups:
        mine, ref = ([by.get((group, arm, s)) for s in seeds] for arm in (policy, REFERENCE_POLICY))
        if all(mine) and all(ref):
            target = statistics.fmean(final(r) for r in ref)
            curves = [dict(r["val_curve"]) for r in mine]
            shared = sorted(set.intersection(*map(set, curves)))
            reached = next((u for u in shared if statistics.fmean(c[u] for c in curves) <= target), None)
            budget = ref[0]["budget_updates"]
            spent = None if reached is None else statistics.fmean(charged(r, reached) for r in mine)
            passed += spent is not None and spent <= COMPUTE_SHARE * budget
            notes[group] = f"{group}: " + (f"target {target:.3f} not reached" if spent is None else
                                           f"{spent / budget:.2f} of constant-0.15's compute (update {reached} of {budget})")
        best = best_fixed_rho(by, group)
        for seed in seeds:
            if (r := by.get((group, policy, seed))) is not None:
                if (other := by.get((group, best, seed))) is not None:
                    gaps.append(final(r) - final(other))
                if (other := by.get((group, "random", seed))) is not None:
                    pairs, wins = pairs + 1, wins + (final(r) < final(other))
    wanted = len(groups) * len(seeds)
    bound = one_sided_upper_bound(gaps, BOUND_LEVEL) if len(gaps) >= 2 else None
    return MaskingCriteria(verdict(len(notes) == len(groups), passed >= groups_to_pass), passed, notes,
                           verdict(len(gaps) >= wanted, bound is not None and bound <= BOUND_BITS), gaps, bound,
                           verdict(pairs >= wanted, wins >= wins_to_pass), wins, pairs)


def keyed_results(per_corpus: dict) -> dict:
    """The result dicts of ``per_corpus``' runs (with validations) keyed (corpus, policy, seed)."""
    return {(corpus, r.info.label, r.info.seed): r.result for corpus, runs in per_corpus.items() for r in runs
            if r.val_curve}


def score(per_corpus: dict, corpora_names: Sequence[str], seeds: Sequence[int] = SUITE_SEEDS,
          policy: str = SCORED_POLICY) -> list[Verdict]:
    """The three pre-registered criteria (:func:`masking_criteria`) for ``policy`` over
    ``corpora_names`` x ``seeds``: (a) on >= CORPORA_TO_PASS corpora, (c) >= PAIRS_TO_BEAT_RANDOM wins."""
    wanted = len(corpora_names) * len(seeds)

    def charged(result: dict, update: int) -> float:
        return charged_compute(result.get("compute"), POLICIES[policy], update,
                               int(result["settings"]["interaction_updates"]), int(result["settings"]["eval_batches"]))

    m = masking_criteria(keyed_results(per_corpus), corpora_names, seeds, policy, charged, CORPORA_TO_PASS,
                         PAIRS_TO_BEAT_RANDOM)
    a = Verdict("a", m.a, f"≤ {COMPUTE_SHARE:.0%} of the compute on ≥ {CORPORA_TO_PASS} of {len(corpora_names)} "
                  f"corpora; {m.a_passed} of {len(m.a_notes)} complete corpora pass — "
                  + "; ".join(m.a_notes.get(c, f"{c}: incomplete") for c in corpora_names))
    numbers = (f"mean gap {statistics.fmean(m.gaps):+.4f} bits, {BOUND_LEVEL:.0%} upper bound {m.bound:+.4f} "
               f"(limit +{BOUND_BITS}) over {len(m.gaps)} pairs") if m.bound is not None else f"{len(m.gaps)} pairs"
    b = Verdict("b", m.b, numbers + (f" (incomplete: {len(m.gaps)} of {wanted} pairs)" if len(m.gaps) < wanted else ""))
    c = Verdict("c", m.c, f"lower final loss than random on {m.wins} of {m.pairs} same-seed pairs "
                  f"(need ≥ {PAIRS_TO_BEAT_RANDOM} of {wanted})"
                  + (f" (incomplete: {m.pairs} of {wanted} pairs)" if m.pairs < wanted else ""))
    return [a, b, c]


def _policy_order(name: str) -> int:
    return list(POLICIES).index(name) if name in POLICIES else len(POLICIES)


def load_results(results_root: Path, corpus: str):
    """The corpus' runs; each keeps its result dict as ``run.result`` (settings, compute)."""
    runs = []
    for path in sorted((Path(results_root) / corpus).glob("*/seed*.json")):
        run = run_from_result(data := json.loads(path.read_text()), str(path))
        run.result = data
        runs.append(run)
    return sorted(runs, key=lambda r: (_policy_order(r.info.label), r.info.label, r.info.seed or 0))


def result_corpora(results_root: Path) -> list[str]:
    """Corpora with results: the shared ones first, then users' texts."""
    found = sorted({p.parent.parent.name for p in Path(results_root).glob("*/*/seed*.json")})
    return [c for c in corpora.CORPORA if c in found] + [c for c in found if c not in corpora.CORPORA]


def pilot_table(pilots: Sequence[dict]) -> str:
    return md_table(["corpus", "H(X_i∣X_i−1), bits", "U* (first validation below it)", "budget U", "pilot stopped at",
                     "loss there", "s/update", "forward pass, updates"], "lrrrrrrr", [
        [p["corpus"], f"{p['previous_token_entropy_bits']:.3f}", "not reached" if p["u_star"] is None else p["u_star"],
         p["budget_updates_suite"], p["stopped_at"], f"{p['val_curve'][-1][1] if p['val_curve'] else math.nan:.3f}",
         f"{p['update_s']:.3f}", f"{p['forward_cost_updates']:.2f}"] for p in pilots])


def interaction_table(rows: Sequence[dict]) -> str:
    return md_table(["corpus", "L", "decisions", "reward noise sd", "arm effect (Δρ 0.15)", "effect / noise",
                     "overhead"], "lrrrrrr", [
        [r["corpus"], r["interaction_updates"], r["decisions"], cell(r["reward_noise_sd"], ".4f"),
         f"{r['arm_effect']:.4f}", cell(r["effect_to_noise"], ".2f"), f"{r['overhead_share']:.1%}"] for r in rows])


def _labels(runs) -> list[str]:
    """The labels of ``runs`` (sorted as :func:`load_results` sorts them) in their order."""
    return list(dict.fromkeys(r.info.label for r in runs))


def compute_table(per_corpus: dict) -> str:
    """Per corpus and policy: mean update time, reward passes, their update-equivalents and
    the interaction overhead share (reward pass + decision over L updates)."""
    rows = []
    for corpus, runs in per_corpus.items():
        for label in _labels(runs):
            if comp := [r.result["compute"] for r in runs if r.info.label == label and r.result.get("compute")]:
                mean = {k: statistics.fmean(c[k] for c in comp) for k in comp[0] if isinstance(comp[0][k], (int, float))}
                rows.append([corpus, label, len(comp), f"{mean['update_s']:.3f}", f"{mean['reward_passes']:.0f}",
                             f"{mean['reward_update_equivalents']:.0f}", f"{mean['charged_update_equivalents']:.0f}",
                             f"{mean['interaction_overhead_share']:.1%}"])
    return md_table(["corpus", "policy", "runs", "s/update", "reward passes", "reward cost, update-eq.",
                     "charged compute, update-eq.", "interaction overhead"], "llrrrrrr", rows)


def final_table(per_corpus: dict) -> str:
    """Per corpus and policy: final loss (mean of the last 3 validations; mean ± std over
    seeds) and its same-seed difference to constant-0.15 (mean; seeds lower)."""
    rows = []
    for corpus, runs in per_corpus.items():
        finals = _finals(runs)
        for label, mine in finals.items():
            diffs = [x - finals[REFERENCE_POLICY][s] for s, x in mine.items() if s in finals.get(REFERENCE_POLICY, {})]
            delta = "–" if label == REFERENCE_POLICY or not diffs else \
                f"{statistics.fmean(diffs):+.4f} ({sum(d < 0 for d in diffs)}/{len(diffs)})"
            std = statistics.stdev(mine.values()) if len(mine) > 1 else None
            rows.append([corpus, label, len(mine), format_loss(statistics.fmean(mine.values()), std), delta])
    return md_table(["corpus", "policy", "runs", "final loss (last 3 validations)",
                     "Δ vs constant-0.15, same seed (seeds lower)"], "llrrr", rows)


def block_table(per_corpus: dict, policy: str = SCORED_POLICY) -> str:
    """One row per (corpus, seed) block: every policy's final loss, and ``policy``'s gap to the
    best fixed ρ of the corpus and to random in that block — the pairs criteria (b), (c) score."""
    labels, rows = list(POLICIES), []
    for corpus, runs in per_corpus.items():
        by_label, best = _finals(runs), best_fixed_rho(keyed_results({corpus: runs}), corpus)
        for seed in sorted({s for label in labels for s in by_label.get(label, {})}):
            finals = {label: by_label[label][seed] for label in labels if seed in by_label.get(label, {})}
            gaps = [f"{finals[policy] - finals[other]:+.3f}" if policy in finals and other in finals else "–"
                    for other in (best, "random")]
            rows.append([corpus, seed, *(cell(finals.get(label), ".3f") for label in labels), *gaps])
    return md_table(["corpus", "seed", *labels, f"{policy} − best fixed ρ", f"{policy} − random"],
                    "lr" + "r" * (len(labels) + 2), rows)


def write_summary(results_root: Path, work_root: Path = DEFAULT_WORK) -> Path:
    """summary.md: pilots, interaction length, the criteria, tables and gpts-report plots."""
    results_root = Path(results_root)
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
    per_corpus = {c: load_results(results_root, c) for c in result_corpora(results_root)}
    if per_corpus:
        scored = list(corpora.CORPORA) if any(c in per_corpus for c in corpora.CORPORA) else list(per_corpus)
        lines += ["## Pre-registered criteria (gp-ts-trend)", "", *[c.line() for c in score(per_corpus, scored)],
                  "", "## Final losses", "", final_table(per_corpus), "",
                  "## Same-seed blocks (final loss, bits)", "", block_table(per_corpus), "",
                  "## Compute", "", compute_table(per_corpus), ""]
        figure = harness.plot_paired_deltas(
            {corpus: {label: {r.info.seed: r.val_curve for r in runs if r.info.label == label} for label in _labels(runs)}
             for corpus, runs in per_corpus.items()}, REFERENCE_POLICY, results_root / "delta_vs_constant.png",
            "val loss − constant-0.15 (same seed), bits", bold=lambda label: label.startswith("gp-ts"),
            symlog=SYMLOG_LINEAR_BITS,  # plateau gaps are hundredths of a bit, after the escape whole bits
            title="validation loss relative to constant-0.15 (same seed, mean over seeds; < 0 = better)")
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
                  _settings_line(runs),
                  "", label_table(runs, target, paired_with=REFERENCE_POLICY), "",
                  f"![validation loss on {corpus}]({report.parent.relative_to(results_root)}/val_loss.png)", ""]
    summary = results_root / "summary.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(lines))
    return summary


def _settings_line(runs) -> str:
    """The settings of the runs (or a note that they differ)."""
    found = {json.dumps(r.result.get("settings"), sort_keys=True) for r in runs}
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
    rows = interaction_length_table(pilots, batches, GP_DECISION_S)
    chosen, with_effect = choose_interaction_length(rows)
    data = {"rule": "see benchmarks/pretrain.py docstring, step 2", "decision_s": GP_DECISION_S,
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
    parser.add_argument("--pilot-only", action="store_true", help="run the pilots and measure the interaction length")
    harness.add_suite_arguments(parser, DEFAULT_RESULTS, DEFAULT_WORK, data=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check((args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}"),
          (all(s >= 1 for s in args.seeds), f"--seeds must be >= 1 (seed {PILOT_SEED} is the pilot's), got {args.seeds}"),
          (args.pilot_max_updates >= 1, f"--pilot-max-updates must be >= 1, got {args.pilot_max_updates}"),
          (args.text is None or len(args.text) <= 2,
           f"--text takes one file or a TRAIN VALID pair, got {len(args.text or [])} paths"))
    base = Settings(budget_updates=BUDGET_RANGE[0] if args.budget_updates is None else args.budget_updates,
                    interaction_updates=args.interaction_updates or 1, eval_batches=args.eval_batches)
    base.validate()
    shared = args.corpus if args.corpus is not None else ([] if args.text else list(corpora.CORPORA))
    start = time.perf_counter()
    if not args.summary_only:
        data = {c: corpora.prepare(c, args.data_root, max_lines=args.max_lines, tokenizer=base.tokenizer)
                for c in shared}
        if args.text:
            data[args.text_name] = corpora.prepare_text(args.text_name, *args.text, data_root=args.data_root,
                                                        max_lines=args.max_lines, tokenizer=base.tokenizer)
        pilot_base, pilots = replace(base, budget_updates=args.pilot_max_updates), {}
        for corpus, data_dir in data.items():  # one at a time: they set the budgets
            pilots[corpus] = run_pilot(corpus, data_dir, pilot_base, args.work_root, args.results_root)
            print(f"pilot {corpus}: U* = {pilots[corpus]['u_star']}, U = {pilots[corpus]['budget_updates_suite']}",
                  flush=True)
        measured = measure_interaction_length(list(pilots.values()), args.results_root, args.eval_batches)
        length = args.interaction_updates or measured["chosen"]
        print(f"interaction length from the pilots: {measured['chosen']}; the suite uses {length}", flush=True)
        if not args.pilot_only:
            check((length is not None, "no interaction length meets the overhead and decision limits on these "
                                       "pilots: give --interaction-updates"))
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
