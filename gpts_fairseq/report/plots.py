"""PNG figures of the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from ..psi_names import PSI_FIELDS  # noqa: E402
from .history import Interaction, Posterior, Run  # noqa: E402
from .summary import group_by_label, mean_curve, run_display_name  # noqa: E402

DIM_LABELS = {"mask_prob": "ρ (mask_prob)", "leave_unmasked_prob": "γ (leave_unmasked_prob)",
              "random_token_prob": "λ (random_token_prob)"}


def _colours(labels: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(k % 10) for k, label in enumerate(labels)}


def _save(fig, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _psi_steps(run: Run, dim: str) -> tuple[list[int], list[float]]:
    """Step-plot coordinates of one psi dimension: each value held over [update, end_update)."""
    xs, ys = [], []
    for seg in run.psi_sequence:
        end = seg["end_update"] if seg["end_update"] is not None else seg["update"]
        xs += [seg["update"], end]
        ys += [seg["psi"].get(dim, np.nan)] * 2
    return xs, ys


def plot_psi(runs: Sequence[Run], path: Path) -> Path:
    """psi over updates, one panel per dimension (constant runs as flat lines); faint
    verticals at the interaction boundaries."""
    with_psi = [r for r in runs if r.psi_sequence]
    psis = [seg["psi"] for r in with_psi for seg in r.psi_sequence]
    dims = [d for d in PSI_FIELDS if any(d in p for p in psis)]
    dims += sorted({d for p in psis for d in p} - set(dims))
    dims = dims or list(PSI_FIELDS)
    groups = group_by_label(with_psi)
    colours = _colours(list(groups))
    fig, axes = plt.subplots(len(dims), 1, figsize=(8, 2.4 * len(dims)), sharex=True, squeeze=False)
    boundaries = sorted({i.update for r in with_psi for i in r.interactions})
    for ax, dim in zip(axes[:, 0], dims):
        for b in boundaries if len(boundaries) <= 200 else []:
            ax.axvline(b, color="0.85", lw=0.6, zorder=0)
        for label, members in groups.items():
            for k, run in enumerate(members):
                xs, ys = _psi_steps(run, dim)
                ax.plot(xs, ys, color=colours[label], lw=1.2, alpha=0.8, label=label if k == 0 else None)
        top = max((p.get(dim, 0.0) for p in psis), default=0.5)
        ax.set_ylim(-0.02, max(0.3, top) + 0.05)  # psi lives in [0, 1]: no zoom onto a constant
        ax.set_ylabel(DIM_LABELS.get(dim, dim))
    axes[-1, 0].set_xlabel("update")
    axes[0, 0].set_title("masking hyperparameters ψ over training (grey: interaction boundaries)")
    if groups:
        axes[0, 0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def _thin_and_mean(ax, groups: dict[str, list[Run]], series, colours) -> None:
    """Each run as a thin line, the label's mean as a thick one."""
    for label, members in groups.items():
        for run in members:
            xs, ys = series(run)
            ax.plot(xs, ys, color=colours[label], lw=0.7, alpha=0.45)
        xs, ys = series.mean(members)
        ax.plot(xs, ys, color=colours[label], lw=2.4, label=f"{label} (n={len(members)})")


class _RewardSeries:
    """Reward per interaction; the mean skips missing rewards."""

    def __call__(self, run: Run):
        pts = [(i.interaction, i.reward) for i in run.interactions if i.reward is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    @staticmethod
    def mean(runs: Sequence[Run]):
        by_k: dict[int, list[float]] = {}
        for run in runs:
            for i in run.interactions:
                if i.reward is not None:
                    by_k.setdefault(i.interaction, []).append(i.reward)
        ks = sorted(by_k)
        return ks, [float(np.mean(by_k[k])) for k in ks]


class _LossSeries:
    def __call__(self, run: Run):
        return [u for u, _ in run.val_curve], [loss for _, loss in run.val_curve]

    @staticmethod
    def mean(runs: Sequence[Run]):
        curve = mean_curve(runs)
        return [u for u, _ in curve], [loss for _, loss in curve]


def plot_rewards(runs: Sequence[Run], path: Path) -> Path:
    groups = group_by_label([r for r in runs if r.interactions])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    _thin_and_mean(ax, groups, _RewardSeries(), _colours(list(groups)))
    ax.axhline(0.0, color="0.5", lw=0.6)
    # the first reward (from the untrained model's loss) is often many times the rest: the
    # y range then comes from the later ones, and the first is written where it leaves the axes
    later = [i.reward for r in runs for i in r.interactions[1:] if i.reward is not None]
    first = [r.interactions[0].reward for r in runs if r.interactions and r.interactions[0].reward is not None]
    if later and first:
        low, high = min(later + [0.0]), max(later)
        pad = 0.08 * (high - low or 1e-9)
        if max(first) > high + 3 * (high - low):
            ax.set_ylim(low - pad, high + pad)
            ax.annotate(f"interaction 0: {max(first):+.3f} (off the scale)", (0, high + pad), xytext=(4, -10),
                        textcoords="offset points", fontsize=7, va="top", arrowprops={"arrowstyle": "->"})
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("interaction")
    ax.set_ylabel("reward")
    ax.set_title("reward per interaction (thin: seeds, thick: mean)")
    if groups:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_val_loss(runs: Sequence[Run], path: Path, target: float | None = None) -> Path:
    groups = group_by_label([r for r in runs if r.val_curve])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _thin_and_mean(ax, groups, _LossSeries(), _colours(list(groups)))
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (reference masking, bits)")
    ax.set_title("reference-masking validation loss (thin: seeds, thick: mean)")
    if groups:
        ax.legend(fontsize=7)
    # the first validations sit far above the rest: zoom on the informative part
    finals = [loss for r in runs for _, loss in r.val_curve[len(r.val_curve) // 4:]]
    if finals:
        lo, hi = min(finals), max(finals)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    return _save(fig, path)


POSTERIOR_PANELS = 4  # line panels of a 1-D posterior figure, by default
BAND_SDS = 1.0  # half-width of the posterior band, in posterior standard deviations
QUANTITY_LABELS = {"reward": "reward", "arm_effect": "arm effect on the reward"}


def choose_interactions(run: Run, wanted: Sequence[int] | None) -> list[Interaction]:
    """Interactions with a posterior: the requested indices (negative from the end), or by
    default up to POSTERIOR_PANELS spread evenly from the second to the last (the first
    posterior has one observation: it is the prior, flat, with its whole width)."""
    with_post = [i for i in run.interactions if i.posterior is not None]
    if not with_post:
        return []
    if wanted is None:
        first = 1 if len(with_post) > 1 else 0
        picks = np.linspace(first, len(with_post) - 1, min(POSTERIOR_PANELS, len(with_post) - first))
        return [with_post[k] for k in sorted({int(round(x)) for x in picks})]
    by_index = {i.interaction: i for i in with_post}
    last = run.interactions[-1].interaction
    indices = dict.fromkeys(k if k >= 0 else last + 1 + k for k in wanted)
    return [by_index[k] for k in indices if k in by_index]


def _slice(post: Posterior, at: dict[str, float] | None) -> tuple[np.ndarray, Posterior]:
    """Rows varying only in the first two dims, the others fixed at (nearest to) ``at``."""
    keep = np.ones(len(post.arms), dtype=bool)
    for col, dim in enumerate(post.dims[2:], start=2):
        values = post.arms[:, col]
        anchor = (at or {}).get(dim, float(np.median(values)))
        nearest = values[np.argmin(np.abs(values - anchor))]
        keep &= np.isclose(values, nearest)
    return keep, Posterior(post.dims, post.arms[keep], post.mean[keep], post.std[keep])


def plot_posterior(run: Run, path: Path, wanted: Sequence[int] | None = None) -> Path | None:
    """The GP posterior of a run: over ρ (1-D, see :func:`_plot_posterior_1d`) or a 2-D slice
    of ψ (mean and std per arm, one colour scale per panel), at chosen interactions."""
    chosen = choose_interactions(run, wanted)
    if not chosen:
        return None
    if len(chosen[0].posterior.dims) == 1:
        return _save(_plot_posterior_1d(run, chosen), path)
    return _save(_plot_posterior_2d(run, chosen), path)


def _sorted_1d(post: Posterior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(post.arms[:, 0])
    return post.arms[order, 0], post.mean[order], post.std[order]


def _fixed_note(post: Posterior) -> str:
    return ", ".join(f"{DIM_LABELS.get(k, k).split()[0]}={v:g}" for k, v in post.fixed.items())


def _plot_posterior_1d(run: Run, chosen: Sequence[Interaction]):
    """Left: interactions × arms, the posterior mean after each interaction minus its mean over
    the arms (one colour scale, symmetric, from the largest deviation in the later half of the
    rows: earlier, larger swings saturate, the colour bar then has arrows), its highest arm
    (◆), the arm played in that interaction (○, its reward at the right) and the arm drawn
    for the next (▲). Right:
    the posterior at the chosen interactions, mean ± BAND_SDS sd, each panel on its own y
    range (from the band it shows), the arms played so far as ticks with their counts."""
    rows = [i for i in run.interactions if i.posterior is not None]
    dim = rows[0].posterior.dims[0]
    quantity = QUANTITY_LABELS[rows[0].posterior.quantity]
    fig = plt.figure(figsize=(12, 1.4 + 2.6 * max(2, (len(chosen) + 1) // 2)), layout="constrained")
    grid = fig.add_gridspec(max(2, (len(chosen) + 1) // 2), 3, width_ratios=[1.25, 1, 1])
    heat = fig.add_subplot(grid[:, 0])
    # cells: one row per interaction, columns centred on the arms (assumed on one shared grid)
    xs = _sorted_1d(rows[0].posterior)[0]
    deviations = np.array([m - m.mean() for m in (_sorted_1d(i.posterior)[1] for i in rows)])
    # the scale of the settled belief (the later half of the rows); earlier, larger swings saturate
    limit = float(np.abs(deviations[len(rows) // 2:]).max()) or 1.0
    extend = "both" if np.abs(deviations).max() > limit else "neither"
    edges = np.concatenate([[xs[0] - (xs[1] - xs[0]) / 2 if len(xs) > 1 else xs[0] - 0.025],
                            (xs[1:] + xs[:-1]) / 2, [xs[-1] + (xs[-1] - xs[-2]) / 2 if len(xs) > 1 else xs[0] + 0.025]])
    ks = np.array([i.interaction for i in rows])
    mesh = heat.pcolormesh(edges, np.concatenate([ks - 0.5, [ks[-1] + 0.5]]), deviations, cmap="RdBu_r",
                           vmin=-limit, vmax=limit, shading="flat")
    bar = fig.colorbar(mesh, ax=heat, orientation="horizontal", fraction=0.04, pad=0.09, aspect=30, extend=extend)
    bar.set_label(f"posterior mean − its mean over the arms ({quantity})", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    shaped = np.ptp(deviations, axis=1) > 1e-9 * limit  # a flat row (the prior) has no highest arm
    heat.scatter(xs[deviations.argmax(axis=1)][shaped], ks[shaped], s=30, marker="D", color="gold", edgecolors="k",
                 lw=0.5, label="highest posterior mean")
    played = [i.psi.get(dim, np.nan) for i in rows]
    heat.scatter(played, ks, s=28, facecolors="none", edgecolors="k", lw=1.2, label="played (reward →)")
    nexts = [(i.next_psi or {}).get(dim, np.nan) for i in rows]
    heat.scatter(nexts, ks, s=16, marker="^", color="k", label="drawn next")
    for i in rows if len(rows) <= 40 else rows[:: len(rows) // 20 + 1]:
        if i.reward is not None:
            heat.annotate(f"{i.reward:+.4f}", (1.01, i.interaction), xycoords=("axes fraction", "data"),
                          va="center", fontsize=6)
    heat.annotate("reward", (1.01, 1.0), xycoords="axes fraction", va="bottom", fontsize=6)
    heat.set_ylim(ks[-1] + 0.5, ks[0] - 0.5)
    heat.yaxis.get_major_locator().set_params(integer=True)
    heat.set_xlabel(DIM_LABELS.get(dim, dim), fontsize=8)
    heat.set_ylabel("posterior after interaction", fontsize=8)
    heat.tick_params(labelsize=7)
    heat.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    for n, inter in enumerate(chosen):
        ax = fig.add_subplot(grid[n // 2, 1 + n % 2])
        x, m, sd = _sorted_1d(inter.posterior)
        low, high = m - BAND_SDS * sd, m + BAND_SDS * sd
        fixed = _fixed_note(inter.posterior)
        ax.plot(x, m, color="C0", lw=1.6,
                label=f"posterior mean after interaction {inter.interaction}" + (f" ({fixed})" if fixed else ""))
        ax.fill_between(x, low, high, color="C0", alpha=0.2, label=f"± {BAND_SDS:g} sd")
        span = float(high.max() - low.min()) or 1e-9
        bottom, top = float(low.min()) - 0.18 * span, float(high.max()) + 0.06 * span
        ax.set_ylim(bottom, top)
        so_far = [i.psi.get(dim) for i in run.interactions if i.interaction <= inter.interaction]
        values, counts = np.unique([v for v in so_far if v is not None], return_counts=True)
        ax.plot(values, np.full(len(values), bottom + 0.06 * span), "|", color="k", ms=9,
                label="arms played so far (count)")
        for v, c in zip(values, counts):
            ax.annotate(str(c), (v, bottom + 0.11 * span), ha="center", fontsize=6)
        if inter.next_psi and dim in inter.next_psi:
            ax.plot([inter.next_psi[dim]], [np.interp(inter.next_psi[dim], x, m)], "^", color="C3", ms=6,
                    label="drawn for the next interaction")
        ax.set_title(f"after interaction {inter.interaction} (update {inter.end_update})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(DIM_LABELS.get(dim, dim), fontsize=7)
        if n == 0:
            handles, labels = ax.get_legend_handles_labels()
            labels[0] = "posterior mean" + (f" ({fixed})" if fixed else "")
            fig.legend(handles, labels, loc="outside lower right", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"GP posterior of the {quantity} — {run_display_name(run)}", fontsize=10)
    return fig


def _plot_posterior_2d(run: Run, chosen: Sequence[Interaction]):
    dims = chosen[0].posterior.dims
    fig, axes = plt.subplots(2, len(chosen), figsize=(3.6 * len(chosen), 6.2), squeeze=False)
    for col, inter in enumerate(chosen):
        _, post = _slice(inter.posterior, inter.psi)
        for row, (values, name) in enumerate(((post.mean, "mean"), (post.std, "std"))):
            ax = axes[row, col]
            sc = ax.scatter(post.arms[:, 0], post.arms[:, 1], c=values, cmap="viridis", s=40, marker="s")
            fig.colorbar(sc, ax=ax, shrink=0.8)
            ax.set_title(f"{name}, after interaction {inter.interaction}", fontsize=8)
            ax.set_xlabel(DIM_LABELS.get(dims[0], dims[0]), fontsize=7)
            ax.set_ylabel(DIM_LABELS.get(dims[1], dims[1]), fontsize=7)
    fixed = ", ".join(dims[2:])
    quantity = QUANTITY_LABELS[chosen[0].posterior.quantity]
    fig.suptitle(f"GP posterior of the {quantity} — {run_display_name(run)}"
                 + (f" (slice: {fixed} at the chosen arm)" if fixed else ""), fontsize=9)
    return fig
