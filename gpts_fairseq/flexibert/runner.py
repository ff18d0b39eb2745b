"""One query of the search: a short ``fairseq-train`` run of one architecture (task gpts_mlm).

The run validates once, at its last update, on every subset of ``valid_subsets`` (the search
reads the first), and saves ``checkpoint_last.pt`` (kept for weight transfer) when it stops.
A killed run is started again from its beginning (or, when it had finished, fairseq finds its
last checkpoint and stops at once); seeded, so a query's result does not depend on interruptions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..report.history import read_valid_curve
from .space import Architecture, format_layers

LOG_NAME = "train.log"


@dataclass(frozen=True)
class TrainSettings:
    """The fairseq options every query shares (a tiny CPU pre-training recipe by default)."""

    updates: int = 300
    transfer_updates: int = 150  # when >= transfer_threshold of the weights were inherited
    transfer_threshold: float = 0.8
    tokens_per_sample: int = 64
    batch_size: int = 16
    lr: float = 0.001
    warmup_fraction: float = 0.1
    dropout: float = 0.0
    mask_prob: float = 0.15
    max_valid_steps: int = 20
    valid_subsets: tuple[str, ...] = ("valid",)
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for name in ("updates", "transfer_updates", "tokens_per_sample", "batch_size", "max_valid_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0.0 < self.transfer_threshold <= 1.0:
            raise ValueError(f"--transfer-threshold must be in (0, 1], got {self.transfer_threshold}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["valid_subsets"], data["extra_args"] = list(self.valid_subsets), list(self.extra_args)
        return data


def recipe_options(settings: TrainSettings, updates: int) -> list[str]:
    """The model family and training recipe of a run of ``updates`` updates (LR decaying to 0
    at its end), without the architecture, validation and run-specific options."""
    return [
        "--arch", "gpts_flexibert", "--dropout", str(settings.dropout), "--attention-dropout", str(settings.dropout),
        "--tokens-per-sample", str(settings.tokens_per_sample), "--max-positions", str(settings.tokens_per_sample),
        "--sample-break-mode", "none", "--batch-size", str(settings.batch_size), "--required-batch-size-multiple", "1",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.01",
        "--clip-norm", "1.0", "--lr", str(settings.lr), "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", str(max(1, int(updates * settings.warmup_fraction))), "--total-num-update", str(updates),
        "--mask-prob", str(settings.mask_prob), "--no-epoch-checkpoints", "--save-interval", "1000000",
        "--log-interval", str(max(1, updates // 10)), *settings.extra_args,
    ]


def validation_options(settings: TrainSettings, every: int) -> list[str]:
    """Validate every ``every`` updates (and never at epoch ends) on ``settings.valid_subsets``."""
    return ["--valid-subset", ",".join(settings.valid_subsets), "--max-valid-steps", str(settings.max_valid_steps),
            "--validate-interval-updates", str(every), "--validate-interval", "1000000"]


def fairseq_command(layers: Architecture, data_dir: Path, save_dir: Path, updates: int, seed: int,
                    settings: TrainSettings, init_checkpoint: Path | None = None) -> list[str]:
    command = [
        sys.executable, "-m", "fairseq_cli.train", str(data_dir), "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
        *recipe_options(settings, updates), *validation_options(settings, updates), "--flexi-layers", format_layers(layers),
        "--max-update", str(updates), "--seed", str(seed), "--cpu", "--num-workers", "0", "--save-dir", str(save_dir),
        "--log-format", "json", "--log-file", str(save_dir / LOG_NAME),
    ]
    return command + (["--finetune-from-model", str(init_checkpoint)] if init_checkpoint is not None else [])


def train_query(layers: Architecture, data_dir: Path, save_dir: Path, updates: int, seed: int,
                settings: TrainSettings, init_checkpoint: Path | None = None) -> dict:
    """Train (or finish training) one architecture; its losses at ``updates`` per subset."""
    data_dir, save_dir = Path(data_dir).resolve(), Path(save_dir).resolve()
    init_checkpoint = None if init_checkpoint is None else Path(init_checkpoint).resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    command = fairseq_command(layers, data_dir, save_dir, updates, seed, settings, init_checkpoint)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    with open(save_dir / "stdout.log", "a") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=save_dir)
    wall = time.perf_counter() - start
    log_file = save_dir / LOG_NAME
    losses = {subset: dict(read_valid_curve(log_file, subset)).get(updates) if log_file.exists() else None
              for subset in settings.valid_subsets}
    if proc.returncode != 0 or losses.get(settings.valid_subsets[0]) is None:
        tail = (save_dir / "stdout.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"fairseq-train failed for {format_layers(layers)} (exit {proc.returncode}), "
                           f"see {save_dir}/stdout.log:\n{tail}")
    (save_dir / "checkpoint_best.pt").unlink(missing_ok=True)
    return {"losses": losses, "wall_s": wall}
