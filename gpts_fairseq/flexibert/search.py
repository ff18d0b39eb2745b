"""The search loop: BOSHNAS, GP-BO or random search over a library of architectures.

The library is the design space enumerated, or (when larger) every homogeneous model plus a
seeded sample of heterogeneous ones; it is embedded once (edit distance + MDS). Each query is
trained for real (``runner.train_query`` by default); the budget is the number of trained
models. The first ``initial`` queries are random; after them each query is, with probability
``p_optimise``, the surrogate's optimum (BOSHNAS: GOBI from ``gobi_restarts`` starts, snapped
to the nearest untrained model; GP-BO: the acquisition's minimum over the untrained library),
with ``p_uncertain`` the most uncertain untrained model, otherwise a random one. Random search
always draws at random. The search stops at the budget or after ``patience`` queries in a row
that did not improve the best loss (0 = never).

Resumable: ``search.json`` in the search directory holds the configuration, the library and
every trained query, written atomically after each; the next query is a function of the seed
and the queries so far (its RNG is keyed by (seed, query number)), and a query interrupted
mid-training is recorded as pending and continued from its own checkpoint.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .embedding import classical_mds, distance_matrix, nearest
from .space import DesignSpace, format_layers, is_homogeneous, parse_layers
from .surrogates import Boshnas, GaussianProcess, SurrogateSettings

METHODS = ("boshnas", "gp-bo", "random")
STATE_NAME = "search.json"
SEED_STRIDE = 100_003  # surrogate seeds: seed * stride + query number


@dataclass(frozen=True)
class SearchConfig:
    method: str = "boshnas"
    seed: int = 1
    budget: int = 30
    initial: int = 10
    patience: int = 5
    library_size: int = 1000
    homogeneous_only: bool = False
    transfer: bool = True
    p_optimise: float = 0.8
    p_uncertain: float = 0.1
    space: dict = field(default_factory=lambda: DesignSpace.load().to_dict())
    surrogate: dict = field(default_factory=lambda: asdict(SurrogateSettings()))

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, low in (("budget", 1), ("initial", 1), ("patience", 0), ("library_size", 2)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not (0 <= self.p_optimise and 0 <= self.p_uncertain and self.p_optimise + self.p_uncertain <= 1):
            raise ValueError(f"--p-optimise and --p-uncertain must be >= 0 with a sum <= 1, got "
                             f"{self.p_optimise} and {self.p_uncertain}")
        DesignSpace.from_dict(self.space, "--space")

    def design_space(self) -> DesignSpace:
        return DesignSpace.from_dict(self.space, "--space")


class Search:
    """One search in ``directory``; ``train(layers, directory, transfer_from)`` trains a query
    and returns at least ``{"loss": float, "params": int}``."""

    def __init__(self, directory: Path, config: SearchConfig, train: Callable[..., dict],
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.directory, self.config, self.train, self.log = Path(directory), config, train, log
        self.state_path = self.directory / STATE_NAME
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            if state["config"] != json.loads(json.dumps(asdict(config))):
                raise ValueError(f"{self.state_path} was started with another configuration: use another "
                                 f"--out or the same options")
            self.library = [parse_layers(text) for text in state["library"]]
            self.queries, self.pending = state["queries"], state.get("pending")
        else:
            self.library = self._build_library()
            self.queries, self.pending = [], None
        self.distances = distance_matrix(self.library)
        self.embedding = classical_mds(self.distances)
        self.index = {format_layers(model): i for i, model in enumerate(self.library)}

    def _build_library(self):
        space = self.config.design_space()
        library = space.library(self.config.library_size, self.config.seed)
        if self.config.homogeneous_only:
            library = [model for model in library if is_homogeneous(model)]
        if len(library) < 2:
            raise ValueError("--space: the library has fewer than 2 models")
        return library

    def _save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {"config": asdict(self.config), "library": [format_layers(m) for m in self.library],
                 "queries": self.queries, "pending": self.pending}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.state_path)

    @property
    def trained(self) -> list[int]:
        return [query["index"] for query in self.queries]

    def best(self) -> dict | None:
        return min(self.queries, key=lambda q: q["loss"]) if self.queries else None

    def finished(self) -> bool:
        config = self.config
        if len(self.queries) >= min(config.budget, len(self.library)):
            return True
        if config.patience == 0 or len(self.queries) <= config.initial:
            return False
        losses = [q["loss"] for q in self.queries]
        best_before = min(losses[:-config.patience]) if len(losses) > config.patience else float("inf")
        tail = losses[-config.patience:]
        return len(losses) - config.initial >= config.patience and min(tail) >= best_before

    def next_query(self) -> tuple[int, str]:
        """(library index, how it was chosen) of the next model to train."""
        config, number = self.config, len(self.queries)
        rng = np.random.default_rng([config.seed, number])
        untrained = [i for i in range(len(self.library)) if i not in set(self.trained)]
        draw = rng.random()
        choice = int(rng.choice(untrained))
        if number < config.initial or config.method == "random":
            return choice, "initial" if number < config.initial else "random"
        if draw >= config.p_optimise + config.p_uncertain:
            return choice, "random"
        x = self.embedding[self.trained]
        y = np.array([q["loss"] for q in self.queries])
        candidates = self.embedding[untrained]
        seed = config.seed * SEED_STRIDE + number
        if config.method == "boshnas":
            surrogate = Boshnas(SurrogateSettings(**config.surrogate), seed).fit(x, y)
        else:
            surrogate = GaussianProcess(self.embedding.min(0), self.embedding.max(0), seed).fit(x, y)
        if draw >= config.p_optimise:
            return untrained[int(np.argmax(surrogate.uncertainty(candidates)))], "uncertain"
        if config.method == "gp-bo":
            return untrained[int(np.argmin(surrogate.acquisition(candidates)))], "optimise"
        restarts = config.surrogate["gobi_restarts"]
        best = self.trained[int(np.argmin(y))]
        starts = [best] + [int(i) for i in rng.choice(len(self.library), size=restarts - 1, replace=False)]
        ends = surrogate.gobi(self.embedding[starts])
        snapped = sorted({untrained[int(np.argmin(((candidates - end) ** 2).sum(1)))] for end in ends})
        values = surrogate.acquisition(self.embedding[snapped])
        return snapped[int(np.argmin(values))], "optimise"

    def neighbour(self, index: int) -> int | None:
        """The nearest trained model (edit distance), or None before any."""
        return nearest(self.distances[index], self.trained) if self.queries else None

    def run(self) -> list[dict]:
        while not self.finished():
            if self.pending is None:
                index, kind = self.next_query()
                self.pending = {"index": index, "kind": kind}
                self._save()
            index, kind = self.pending["index"], self.pending["kind"]
            source = self.neighbour(index) if self.config.transfer else None
            record = self.train(self.library[index], len(self.queries),
                                None if source is None else (self.library[source], self._query_of(source)))
            query = {"query": len(self.queries), "index": index, "layers": format_layers(self.library[index]),
                     "kind": kind, "neighbour": None if source is None else format_layers(self.library[source]),
                     **record}
            self.queries.append(query)
            self.pending = None
            self._save()
            best = self.best()
            shared = "" if source is None else f" shared {query.get('shared_fraction', 0.0):.0%}"
            self.log(f"[{self.config.method} seed {self.config.seed}] query {query['query'] + 1}/{self.config.budget} "
                     f"({kind}): {query['layers']} loss {query['loss']:.4f} params {query['params']:,}{shared}; "
                     f"best {best['loss']:.4f} ({best['layers']})")
        self._save()
        return self.queries

    def _query_of(self, index: int) -> int:
        return next(q["query"] for q in self.queries if q["index"] == index)


def transfer_trainer(train_run: Callable[..., dict], checkpoint_of: Callable[[int], Path],
                     init_of: Callable[[int], Path], vocab: int, settings, seed: int) -> Callable[..., dict]:
    """``Search.train`` for real runs. Query n inherits from its nearest trained neighbour's
    checkpoint (``checkpoint_of(neighbour's number)``) through a transfer checkpoint written to
    ``init_of(n)``, and trains ``settings.transfer_updates`` when it inherits at least
    ``settings.transfer_threshold`` of its layers' weights, else ``settings.updates``.
    ``train_run(layers, n, updates, init_checkpoint or None, neighbour's number or None)``
    trains and returns ``{"losses": {subset: bits}, "wall_s": seconds}``."""
    from .transfer import build_model, write_transfer_checkpoint

    def train(layers, number: int, source) -> dict:
        init, fraction, source_number = None, 0.0, None
        if source is not None:
            init = init_of(number)
            source_layers, source_number = source
            transfer = write_transfer_checkpoint(init, layers, source_layers, checkpoint_of(source_number), seed)
            params, fraction = transfer.total_parameters, transfer.shared_fraction
            if not transfer.embeddings:  # nothing inherited
                init.unlink()
                init = None
        else:
            params = sum(p.numel() for p in build_model(layers, vocab, settings.tokens_per_sample, seed).parameters())
        updates = settings.transfer_updates if fraction >= settings.transfer_threshold else settings.updates
        result = train_run(layers, number, updates, init, None if init is None else source_number)
        return {"loss": result["losses"][settings.valid_subsets[0]], "losses": result["losses"], "params": params,
                "updates": updates, "shared_fraction": fraction, "wall_s": result["wall_s"]}

    return train


def fairseq_trainer(directory: Path, data_dir: Path, settings, seed: int) -> Callable[..., dict]:
    """``transfer_trainer`` on ``runner.train_query``: query n trains in ``directory/runs/qNNN``."""
    from .runner import train_query

    def run_dir(number: int) -> Path:
        return Path(directory) / "runs" / f"q{number:03d}"

    def train_run(layers, number, updates, init, _source_number):
        return train_query(layers, data_dir, run_dir(number), updates, seed, settings, init)

    return transfer_trainer(train_run, lambda n: run_dir(n) / "checkpoint_last.pt", lambda n: run_dir(n) / "transfer.pt",
                            dictionary_size(data_dir), settings, seed)


def dictionary_size(data_dir: Path) -> int:
    """fairseq's dictionary of a binarized corpus with the ``<mask>`` symbol gpts_mlm adds."""
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(Path(data_dir) / "dict.txt"))
    dictionary.add_symbol("<mask>")
    return len(dictionary)
