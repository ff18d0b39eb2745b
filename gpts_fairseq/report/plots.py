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


def choose_interactions(run: Run, wanted: Sequence[int] | None) -> list[Interaction]:
    """Interactions with a posterior: the requested indices (negative from the end), or first/middle/last."""
    with_post = [i for i in run.interactions if i.posterior is not None]
    if not with_post:
        return []
    if wanted is None:
        picks = sorted({0, len(with_post) // 2, len(with_post) - 1})
        return [with_post[k] for k in picks]
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
    """GP posterior mean ± std over rho (1-D) or a 2-D slice of psi, at chosen interactions."""
    chosen = choose_interactions(run, wanted)
    if not chosen:
        return None
    dims = chosen[0].posterior.dims
    if len(dims) == 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        cmap = plt.get_cmap("viridis")
        for k, inter in enumerate(chosen):
            post = inter.posterior
            order = np.argsort(post.arms[:, 0])
            x, m, s = post.arms[order, 0], post.mean[order], post.std[order]
            colour = cmap(k / max(1, len(chosen) - 1))
            fixed = ", ".join(f"{DIM_LABELS.get(k, k).split()[0]}={v:g}" for k, v in post.fixed.items())
            ax.plot(x, m, color=colour, lw=1.6,
                    label=f"after interaction {inter.interaction}" + (f" ({fixed})" if fixed else ""))
            ax.fill_between(x, m - s, m + s, color=colour, alpha=0.18)
        ax.set_xlabel(DIM_LABELS.get(dims[0], dims[0]))
        ax.set_ylabel("GP posterior of the reward")
        ax.legend(fontsize=7)
        ax.set_title(f"GP posterior mean ± std — {run_display_name(run)}", fontsize=9)
        return _save(fig, path)
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
    fig.suptitle(f"GP posterior — {run_display_name(run)}" + (f" (slice: {fixed} at the chosen arm)" if fixed else ""),
                 fontsize=9)
    return _save(fig, path)
