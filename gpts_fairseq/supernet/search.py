"""Architecture search over a trained super-net (AutoTinyBERT's, with HAT's fitness).

Fitness: the validation loss (bits per masked token, the task's reference masking) of the
sub-net with the super-net's weights, no further training, on a search split that final numbers
must not use. Feasible: in the space and, under a constraint, with parameters or predicted
latency in ``[window[0], window[1]] * target`` (AutoTinyBERT keeps [0.85, 1.1] of a target
latency); ``fast`` mode also keeps only sub-nets that follow AutoTinyBERT's rules.

Modes:
- ``evolution``: generation 0 is ``population`` random feasible sub-nets; each later one is half
  fresh random feasible sub-nets and half mutants (layers +-1, hidden +-1 step, FFN +-2 steps,
  heads +-2) of parents picked by roulette (weight ``exp(-(loss - best) / spread)``) among the
  ``population`` best so far. The winner is the best sub-net evaluated.
- ``fast``: ``candidates`` random feasible sub-nets that follow the fast rules, best one; no evolution.
- ``random``: ``candidates`` random feasible sub-nets, best one (``candidates 1``: one random pick).

Generation g draws from a generator keyed by (seed, g), and the state (every evaluated sub-net and
its loss, generation by generation) is written atomically after each generation: a killed search
resumes at the next generation and ends as the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .space import Space, SubArch, sub_arch_params

MODES = ("evolution", "fast", "random")
CONSTRAINTS = ("none", "params", "latency")
SEARCH_STREAM = 0xA7B  # separates the search's generators from other (seed, step)-keyed streams
STATE_FILE = "search_state.json"
MUTATION_TRIES = 50


@dataclass(frozen=True)
class SearchSettings:
    mode: str = "evolution"
    constraint: str = "none"
    target: float | None = None
    window: tuple[float, float] = (0.85, 1.1)
    generations: int = 10
    population: int = 25
    candidates: int = 25
    seed: int = 1

    def check(self) -> None:
        """ValueError naming the option for a bad setting (before anything is loaded)."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"--constraint must be one of {', '.join(CONSTRAINTS)}, got {self.constraint!r}")
        if self.constraint != "none" and not (self.target is not None and math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"--target (or --target-arch) must be a number > 0 with --constraint {self.constraint}, "
                             f"got {self.target}")
        low, high = self.window
        if not (0 < low <= 1 <= high):
            raise ValueError(f"--window must be LOW,HIGH with 0 < LOW <= 1 <= HIGH, got {low},{high}")
        for name, minimum in (("generations", 1), ("population", 2), ("candidates", 1)):
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name} must be an integer >= {minimum}, got {getattr(self, name)}")

    def resumable_with(self, other: "SearchSettings") -> None:
        """ValueError naming the first option that differs (the number of generations may grow)."""
        for field in dataclasses.fields(self):
            if field.name != "generations" and getattr(self, field.name) != getattr(other, field.name):
                raise ValueError(f"--{field.name.replace('_', '-')} differs from the search state's "
                                 f"({getattr(other, field.name)!r} there, {getattr(self, field.name)!r} now); "
                                 f"use another --out or the same settings")


def all_archs(space: Space) -> list[SubArch]:
    return [SubArch(layers, hidden, heads, ffn) for layers, hidden, ffn in
            itertools.product(space.layers, space.hidden, space.ffn) for heads in space.heads_for(hidden)]


class Feasibility:
    """Which sub-nets a search may pick; refuses (naming the option) when none can be."""

    def __init__(self, space: Space, settings: SearchSettings, params: Callable[[SubArch], int],
                 latency: Callable[[list[SubArch]], np.ndarray] | None):
        self.space, self.settings = space, settings
        archs = all_archs(space)
        if settings.mode == "fast":
            archs = [a for a in archs if space.is_fast(a)]
            if not archs:
                raise ValueError("--mode fast: no sub-net of the space follows the fast rules "
                                 "(1.6 d_m <= d_f <= 1.9 d_m, 0.7 d_m <= heads*head_dim <= d_m)")
        if settings.constraint != "none":
            values = (np.array([params(a) for a in archs], dtype=float) if settings.constraint == "params"
                      else np.asarray(latency(archs), dtype=float))
            low, high = (bound * settings.target for bound in settings.window)
            inside = (values >= low) & (values <= high)
            if not inside.any():
                unit = "parameters" if settings.constraint == "params" else "ms (predicted)"
                raise ValueError(f"--target {settings.target:g}: no sub-net{' following the fast rules' if settings.mode == 'fast' else ''} "
                                 f"has {low:g}..{high:g} {unit}; the space spans {values.min():g}..{values.max():g}")
            archs = [a for a, ok in zip(archs, inside) if ok]
        self.archs = archs
        self._set = set(archs)

    def __contains__(self, arch: SubArch) -> bool:
        return arch in self._set

    def draw(self, rng: np.random.Generator, exclude: set) -> SubArch | None:
        """A uniform feasible sub-net not in ``exclude`` (None once all are)."""
        left = [a for a in self.archs if a not in exclude]
        return left[int(rng.integers(len(left)))] if left else None


def generation_rng(seed: int, generation: int) -> np.random.Generator:
    return np.random.default_rng([SEARCH_STREAM, int(seed), int(generation)])


def propose(generation: int, settings: SearchSettings, feasible: Feasibility, space: Space,
            evaluated: dict[SubArch, float]) -> list[SubArch]:
    """The sub-nets generation ``generation`` evaluates (none already evaluated)."""
    rng = generation_rng(settings.seed, generation)
    seen = set(evaluated)
    chosen: list[SubArch] = []

    def add(arch):
        if arch is not None and arch not in seen:
            seen.add(arch)
            chosen.append(arch)

    size = settings.population if settings.mode == "evolution" else settings.candidates
    if settings.mode == "evolution" and generation > 0 and evaluated:
        ranked = sorted(evaluated, key=lambda a: (evaluated[a], a))[:settings.population]
        losses = np.array([evaluated[a] for a in ranked])
        weights = np.exp(-(losses - losses.min()) / max(float(losses.std()), 1e-12))
        for _ in range(size // 2):
            parent = ranked[int(rng.choice(len(ranked), p=weights / weights.sum()))]
            for _ in range(MUTATION_TRIES):
                child = space.mutate(parent, rng)
                if child in feasible and child not in seen:
                    add(child)
                    break
    while len(chosen) < size:
        arch = feasible.draw(rng, seen)
        if arch is None:
            break
        add(arch)
    return chosen


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, loss) no other point beats on both, by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for index in order:
        if points[index][1] < best:
            front.append(index)
            best = points[index][1]
    return front


def run_search(settings: SearchSettings, space: Space, fitness: Callable[[SubArch], float], feasible: Feasibility,
               state_path: str, progress: Callable[[str], None] = print,
               describe: Callable[[SubArch], str] = str) -> dict[SubArch, float]:
    """Evaluate generations until ``settings.generations`` (1 for fast/random) are done; resumes
    from ``state_path``. Returns every evaluated sub-net and its loss."""
    evaluated: dict[SubArch, float] = {}
    generations: list[list[str]] = []
    if os.path.exists(state_path):
        with open(state_path) as handle:
            state = json.load(handle)
        stored = state["settings"]
        settings.resumable_with(SearchSettings(**{**stored, "window": tuple(stored["window"])}))
        generations = state["generations"]
        evaluated = {SubArch.parse(key): loss for key, loss in state["evaluated"].items()}
        progress(f"resuming after generation {len(generations) - 1} ({len(evaluated)} sub-nets evaluated)")
    total = settings.generations if settings.mode == "evolution" else 1
    for generation in range(len(generations), total):
        batch = propose(generation, settings, feasible, space, evaluated)
        for arch in batch:
            evaluated[arch] = float(fitness(arch))
        generations.append([str(a) for a in batch])
        _write_json(state_path, {"settings": dataclasses.asdict(settings), "generations": generations,
                                 "evaluated": {str(a): loss for a, loss in evaluated.items()}})
        best = min(evaluated, key=lambda a: (evaluated[a], a))
        progress(f"generation {generation + 1}/{total}: {len(batch)} evaluated ({len(evaluated)} in all); "
                 f"best {evaluated[best]:.4f} bits: {describe(best)}")
    return evaluated


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=1)
    os.replace(tmp, path)


def plot_front(path: str, latencies, losses, front: list[int], chosen: int, title: str) -> None:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.2))
    axes.scatter(latencies, losses, s=12, color="0.6", label="evaluated sub-nets")
    axes.plot([latencies[i] for i in front], [losses[i] for i in front], "o-", color="C0", ms=4, label="Pareto front")
    axes.plot([latencies[chosen]], [losses[chosen]], "*", color="C3", ms=14, label="chosen")
    axes.set_xlabel("latency (ms, predicted; 1 thread, batch 1)")
    axes.set_ylabel("inherited-weight loss (bits / masked token)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def params_counter(space: Space, vocab: int, positions: int) -> Callable[[SubArch], int]:
    return lambda arch: sub_arch_params(space, arch, vocab, positions)
