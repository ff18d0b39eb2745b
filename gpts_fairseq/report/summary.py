"""Numbers of the report: final losses, updates to reach a target loss, per-label aggregates.

"Updates to reach" a target is the first validated update whose loss is <= target (so its
resolution is the validation interval); ``None`` means not reached. Per label, runs are
summarised by the mean and sample std of their final losses, and by when the seed-mean
curve (mean over runs at the updates they all validated) first reaches the target.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from ..psi_names import FAIRSEQ_DEFAULT_PSI
from .history import Run


def updates_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """First update whose validation loss is <= target, or None."""
    return next((update for update, loss in curve if loss <= target), None)


def final_loss(run: Run, last: int = 1) -> float | None:
    """Mean loss of the run's last ``last`` validations (None without any): averaging a few
    damps the validation-to-validation wobble a single last point carries."""
    if not run.val_curve:
        return None
    return statistics.fmean(loss for _, loss in run.val_curve[-last:])


def one_sided_upper_bound(values: Sequence[float], level: float = 0.9) -> float:
    """Upper ``level`` confidence bound of the mean (Student t, n - 1 degrees of freedom)."""
    from scipy.stats import t  # scipy comes with gpytorch

    if len(values) < 2:
        raise ValueError(f"one_sided_upper_bound: need at least 2 values, got {len(values)}")
    if not 0.5 <= level < 1:
        raise ValueError(f"one_sided_upper_bound: level must be in [0.5, 1), got {level}")
    n = len(values)
    return statistics.fmean(values) + float(t.ppf(level, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def mean_curve(runs: Sequence[Run]) -> list[tuple[int, float]]:
    """Mean loss over runs at the updates every run validated."""
    curves = [dict(run.val_curve) for run in runs if run.val_curve]
    if not curves:
        return []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    return [(u, statistics.fmean(c[u] for c in curves)) for u in common]


def reference_target(runs: Sequence[Run]) -> float | None:
    """Mean final loss of the constant rho=0.15 (gamma=lambda=0.1) runs, if any."""
    finals = [r.final_val_loss for r in runs if r.is_reference_constant() and r.final_val_loss is not None]
    return statistics.fmean(finals) if finals else None


def group_by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs per label, labels in first-seen order, runs sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.info.label, []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: (r.info.seed is None, r.info.seed or 0, r.name))
    return groups


def budget_of(runs: Sequence[Run]) -> int | None:
    """The update budget: from run.json, else the last validated/interaction update."""
    budgets = [r.info.budget_updates for r in runs if r.info.budget_updates]
    if budgets:
        return max(budgets)
    ends = [r.val_curve[-1][0] for r in runs if r.val_curve]
    ends += [i.end_update for r in runs for i in r.interactions if i.end_update is not None]
    return max(ends) if ends else None


@dataclass(frozen=True)
class LabelSummary:
    label: str
    runs: int
    final_mean: float | None
    final_std: float | None  # sample std; None with fewer than two runs
    updates_to_target: int | None  # of the seed-mean curve
    budget: int | None


def summarise_label(label: str, runs: Sequence[Run], target: float | None, budget: int | None) -> LabelSummary:
    finals = [r.final_val_loss for r in runs if r.final_val_loss is not None]
    curve = mean_curve(runs)
    return LabelSummary(
        label=label,
        runs=len(runs),
        final_mean=statistics.fmean(finals) if finals else None,
        final_std=statistics.stdev(finals) if len(finals) > 1 else None,
        updates_to_target=updates_to_reach(curve, target) if target is not None else None,
        budget=budget,
    )


def run_display_name(run: Run) -> str:
    return f"{run.info.label} seed {run.info.seed}" if run.info.seed is not None else f"{run.info.label} ({run.name})"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def format_loss(mean: float | None, std: float | None) -> str:
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {_fmt(std)}"


def format_duration(seconds: float) -> str:
    """``1h05m`` from an hour on, else ``4m07s``: every elapsed and time-left figure the package
    and the benchmarks print."""
    minutes, seconds = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_reach(updates: int | None, budget: int | None, target: float | None) -> str:
    if target is None:
        return "no target"
    if updates is None:
        return "not reached"
    return f"{updates} ({updates / budget:.2f})" if budget else str(updates)


def runs_table(runs: Sequence[Run], target: float | None) -> str:
    """Markdown: one row per run."""
    rows = [
        "| run | policy | seed | last update | final val loss | updates to target |",
        "|---|---|---|---:|---:|---:|",
    ]
    for label, members in group_by_label(runs).items():
        for run in members:
            last = run.val_curve[-1][0] if run.val_curve else None
            reach = updates_to_reach(run.val_curve, target) if target is not None else None
            rows.append(
                f"| {run_display_name(run)} | {label} | {'–' if run.info.seed is None else run.info.seed} | "
                f"{'–' if last is None else last} | {_fmt(run.final_val_loss)} | "
                f"{format_reach(reach, budget_of([run]), target)} |"
            )
    return "\n".join(rows)


def paired_differences(runs: Sequence[Run], reference: Sequence[Run]) -> list[float]:
    """Final loss minus the reference's final loss, per seed both have (same seed: same
    initialisation, data order and validation masks, so the pair shares most of the noise)."""
    ref = {r.info.seed: r.final_val_loss for r in reference if r.info.seed is not None and r.final_val_loss is not None}
    return [r.final_val_loss - ref[r.info.seed] for r in runs
            if r.info.seed in ref and r.final_val_loss is not None]


def label_table(runs: Sequence[Run], target: float | None, budget: int | None = None,
                paired_with: str | None = None) -> str:
    """Markdown: one row per label (policy), seeds aggregated. With ``paired_with`` (a label),
    a column of the per-seed difference of final losses to that label (mean ± std, and how
    many seeds are lower)."""
    budget = budget if budget is not None else budget_of(runs)
    groups = group_by_label(runs)
    reference = groups.get(paired_with, []) if paired_with else []
    head = "| policy | runs | final val loss (mean ± std) | updates to target, seed-mean curve (fraction of budget) |"
    rule = "|---|---:|---:|---:|"
    if paired_with:
        head += f" Δ final vs {paired_with}, same seed (mean ± std; seeds lower) |"
        rule += "---:|"
    rows = [head, rule]
    for label, members in groups.items():
        s = summarise_label(label, members, target, budget)
        row = (f"| {label} | {s.runs} | {format_loss(s.final_mean, s.final_std)} | "
               f"{format_reach(s.updates_to_target, budget, target)} |")
        if paired_with:
            diffs = paired_differences(members, reference) if label != paired_with else []
            cell = "–" if not diffs else (
                f"{_signed(statistics.fmean(diffs))}"
                + (f" ± {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else "")
                + f"; {sum(d < 0 for d in diffs)}/{len(diffs)}")
            row += f" {cell} |"
        rows.append(row)
    return "\n".join(rows)


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def played_rhos(run: Run) -> list[float]:
    """ρ of every interaction the run trained with, in order (see ``Run.psi_sequence``)."""
    return [seg["psi"]["mask_prob"] for seg in run.psi_sequence if "mask_prob" in seg["psi"]]


def rho_threshold(runs: Sequence[Run]) -> float:
    """The ρ a played ρ is compared with: the largest ρ of a constant run other than the
    reference (0.15), else the reference's."""
    constants = [r.info.psi["mask_prob"] for r in runs
                 if r.info.policy == "constant" and r.info.psi and "mask_prob" in r.info.psi]
    return max([FAIRSEQ_DEFAULT_PSI["mask_prob"], *constants])


def played_table(runs: Sequence[Run]) -> str:
    """Markdown: per label, the ρ played (over all its runs' interactions) and the rewards."""
    threshold = rho_threshold(runs)
    rows = [f"| policy | interactions | ρ played: mean (min–max) | ρ ≥ {threshold:.2f} in | "
            "reward: mean (first → last) |", "|---|---:|---:|---:|---:|"]
    for label, members in group_by_label(runs).items():
        rhos = [rho for run in members for rho in played_rhos(run)]
        if all(run.info.policy == "constant" for run in members) and len(set(rhos)) == 1:
            rows.append(f"| {label} | – | {rhos[0]:.3f} (fixed) | {'all' if rhos[0] >= threshold - 1e-9 else 'none'} "
                        "| – |")
            continue
        rewards = [[i.reward for i in run.interactions if i.reward is not None] for run in members]
        flat = [r for rs in rewards for r in rs]
        reward_cell = "–" if not flat else (
            f"{statistics.fmean(flat):+.4f} ({statistics.fmean(rs[0] for rs in rewards if rs):+.4f} → "
            f"{statistics.fmean(rs[-1] for rs in rewards if rs):+.4f})")
        rho_cell = "–" if not rhos else f"{statistics.fmean(rhos):.3f} ({min(rhos):.2f}–{max(rhos):.2f})"
        high = sum(rho >= threshold - 1e-9 for rho in rhos)
        rows.append(f"| {label} | {len(rhos)} | {rho_cell} | {f'{high} of {len(rhos)}' if rhos else '–'} | "
                    f"{reward_cell} |")
    return "\n".join(rows)


def reference_label(runs: Sequence[Run]) -> str | None:
    """The label of the constant ρ=0.15 runs (the first such), if any."""
    return next((r.info.label for r in runs if r.is_reference_constant()), None)


def verdict(runs: Sequence[Run], target: float | None, budget: int | None = None,
            target_name: str = "the target loss", reference: str | None = None) -> list[str]:
    """Sentences that say what happened: per policy other than ``reference`` (a label),
    whether and when (seed-mean curve) it reached ``target``, its final loss against the
    target, and how often it played a ρ ≥ :func:`rho_threshold`; then the policies by final loss."""
    budget = budget if budget is not None else budget_of(runs)
    groups = group_by_label(runs)
    named = target_name
    threshold = rho_threshold(runs)
    sentences = []
    summaries = {label: summarise_label(label, members, target, budget) for label, members in groups.items()}
    for label, s in summaries.items():
        if label == reference or s.final_mean is None:
            continue
        seeds = f" (mean of {s.runs} seeds)" if s.runs > 1 else ""
        parts = []
        if target is not None:
            reached = (f"reached {named} ({target:.3f}) at update {s.updates_to_target} of {budget}"
                       if s.updates_to_target is not None
                       else f"did not reach {named} ({target:.3f}) in {budget} updates")
            parts.append(f"{label}{seeds} {reached} and ended at {s.final_mean:.3f} "
                         f"({s.final_mean - target:+.3f} bits)")
        else:
            parts.append(f"{label}{seeds} ended at {s.final_mean:.3f}")
        rhos = [rho for run in groups[label] for rho in played_rhos(run)]
        if len(set(rhos)) > 1:
            high = sum(rho >= threshold - 1e-9 for rho in rhos)
            parts.append(f"it played ρ ≥ {threshold:.2f} in {high} of {len(rhos)} interactions "
                         f"(mean ρ {statistics.fmean(rhos):.3f})")
        sentences.append("; ".join(parts) + ".")
    ranked = sorted((s.final_mean, label) for label, s in summaries.items() if s.final_mean is not None)
    if len(ranked) > 1:
        sentences.append("By final loss: " + ", ".join(f"{label} {loss:.3f}" for loss, label in ranked) + ".")
    return sentences

