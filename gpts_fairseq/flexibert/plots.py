"""PNG figures of searches: best-so-far loss per trained model, and loss against size with the
Pareto front (matplotlib, Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging set-up lets its DEBUG through
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402


def best_so_far(queries: list[dict]) -> list[float]:
    return list(np.minimum.accumulate([q["loss"] for q in queries])) if queries else []


def pareto_front(queries: list[dict]) -> list[dict]:
    """The queries no other query beats in both loss and parameters, by size."""
    front, best = [], float("inf")
    for query in sorted(queries, key=lambda q: (q["params"], q["loss"])):
        if query["loss"] < best:
            front.append(query)
            best = query["loss"]
    return front


def plot_searches(searches: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """Two panels: best-so-far loss against the number of trained models, per search; every
    trained model's loss against its parameters, with each search's front."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for number, (label, queries) in enumerate(searches.items()):
        colour = plt.get_cmap("tab10")(number % 10)
        curve = best_so_far(queries)
        left.plot(range(1, len(curve) + 1), curve, marker=".", color=colour, label=label)
        right.scatter([q["params"] for q in queries], [q["loss"] for q in queries], s=12, alpha=0.5, color=colour)
        front = pareto_front(queries)
        right.step([q["params"] for q in front], [q["loss"] for q in front], where="post", color=colour, label=label)
    left.set(xlabel="trained models", ylabel="best validation loss so far (bits)", title=title or "best so far")
    right.set(xlabel="parameters", ylabel="validation loss (bits)", title="loss against size (front)", xscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
