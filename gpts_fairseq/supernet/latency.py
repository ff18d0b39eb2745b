"""Latency of sub-networks on this machine, and an MLP that predicts it (AutoTinyBERT's
constraint: single thread, batch 1, sequence length 128).

A measurement builds the sub-net as a standalone model (a single-point ``gpts_roberta_super``
of its dims, random weights: latency does not depend on their values), runs the encoder
(``features_only``) in eval mode without gradients, discards ``WARMUP_RUNS`` runs and keeps the
median of ``runs`` (>= ``MIN_RUNS``) timed runs. Results are cached in a JSON file keyed by the
sub-net and the measuring conditions, so a resumed or repeated search re-measures nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from ..runtime import single_thread
from .space import Space, SubArch

MIN_RUNS = 20
WARMUP_RUNS = 3
PREDICTOR_HIDDEN = 64
PREDICTOR_STEPS = 1000


@contextlib.contextmanager
def fixed_threads(count: int):
    """torch's intra-op threads set to ``count`` inside, restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LatencyTable:
    """Measured latencies (ms) of sub-nets, cached in ``path`` (None: memory only)."""

    def __init__(self, space: Space, vocab: int, path: str | None, *, threads: int = 1, length: int = 128,
                 runs: int = MIN_RUNS):
        if runs < MIN_RUNS:
            raise ValueError(f"--latency-runs must be >= {MIN_RUNS} (a median of fewer runs is too noisy), got {runs}")
        if threads < 1 or length < 1:
            raise ValueError(f"--latency-threads and --latency-length must be >= 1, got {threads}, {length}")
        self.space, self.vocab, self.path = space, vocab, path
        self.threads, self.length, self.runs = threads, length, runs
        self.condition = (f"threads={threads},batch=1,length={length},runs={runs},vocab={vocab},head_dim={space.head_dim},"
                          f"torch={torch.__version__},cpu={platform.processor() or platform.machine()}")
        self.cache: dict[str, float] = {}
        if path and os.path.exists(path):
            with open(path) as handle:
                self.cache = json.load(handle).get(self.condition, {})

    def __call__(self, arch: SubArch) -> float:
        key = str(arch)
        if key not in self.cache:
            self.cache[key] = self._measure(arch)
            self._save()
        return self.cache[key]

    def _measure(self, arch: SubArch) -> float:
        model = standalone_model(self.space, arch, self.vocab, self.length)
        tokens = torch.randint(4, self.vocab, (1, self.length), generator=torch.Generator().manual_seed(0))
        times = []
        with fixed_threads(self.threads), torch.no_grad():
            for run in range(WARMUP_RUNS + self.runs):
                start = time.perf_counter()
                model(tokens, features_only=True)
                if run >= WARMUP_RUNS:
                    times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)

    def _save(self) -> None:
        if not self.path:
            return
        everything = {}
        if os.path.exists(self.path):
            with open(self.path) as handle:
                everything = json.load(handle)
        everything[self.condition] = self.cache
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(everything, handle, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def standalone_model(space: Space, arch: SubArch, vocab: int, length: int):
    """A single-point gpts_roberta_super of ``arch`` (eval mode, random weights)."""
    from .model import build_supernet

    options = {f"supernet_{dim}": str(getattr(arch, dim)) for dim in ("layers", "hidden", "heads", "ffn")}
    return build_supernet(vocab, length, supernet_head_dim=space.head_dim, **options).eval()


def features(space: Space, archs) -> np.ndarray:
    """Predictor inputs: each dim scaled by its maximum in the space."""
    largest = space.largest
    return np.array([[a.layers / largest.layers, a.hidden / largest.hidden, a.heads / max(space.heads),
                      a.ffn / largest.ffn] for a in archs], dtype=np.float32)


class LatencyPredictor:
    """A two-hidden-layer MLP from (layers, hidden, heads, ffn) to log latency, fitted on measured
    sub-nets; ``held_out_error`` is its mean absolute relative error on sub-nets it never saw."""

    def __init__(self, space: Space, seed: int):
        self.space, self.seed = space, seed
        self.held_out_error: float | None = None
        generator = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, PREDICTOR_HIDDEN), torch.nn.ReLU(),
                                       torch.nn.Linear(PREDICTOR_HIDDEN, PREDICTOR_HIDDEN), torch.nn.ReLU(),
                                       torch.nn.Linear(PREDICTOR_HIDDEN, 1))
        with torch.no_grad():
            for param in self.net.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / max(1, param.shape[-1]) ** 0.5))

    def fit(self, archs, latencies, held_out_archs=(), held_out_latencies=()) -> "LatencyPredictor":
        x = torch.from_numpy(features(self.space, archs))
        y = torch.log(torch.tensor(latencies, dtype=torch.float32)).unsqueeze(1)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        with single_thread():  # the fit must not depend on the thread count
            for _ in range(PREDICTOR_STEPS):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(self.net(x), y).backward()
                optimizer.step()
        if len(held_out_archs):
            predicted = self.predict(held_out_archs)
            truth = np.asarray(held_out_latencies)
            self.held_out_error = float(np.mean(np.abs(predicted - truth) / truth))
        return self

    def predict(self, archs) -> np.ndarray:
        with single_thread(), torch.no_grad():
            return torch.exp(self.net(torch.from_numpy(features(self.space, archs)))).squeeze(1).numpy().astype(float)
