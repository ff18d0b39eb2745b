"""Which blocks each epoch trains on: the schedule of selections, their keyed randomness, their
files, their events, and the agreement of all ranks (rank 0 selects, every rank receives its
tensor)."""

import logging
import time

import torch

from ..runtime import broadcast_from_leader, data_parallel_group, data_parallel_rank_and_size, keyed_generator, single_thread
from .features import block_features
from .selection import facility_location_orders, random_partitions, sample_from_gains, subset_size
from .store import load_subset, save_subset, subset_file, subset_hash, subset_path

logger = logging.getLogger(__name__)

SETTINGS = ("seed", "subset_selector", "subset_fraction", "subset_warmup_epochs", "subset_resample_epochs",
            "subset_partition_size", "subset_feature_layer", "subset_greedy", "subset_stochastic_epsilon",
            "subset_temperature")


# the event of one selection (SAVE_DIR/gpts_subsets_events.jsonl): what benchmarks and reports read
SELECTION_EVENT = {"epoch": int, "kind": str, "selector": str, "fraction": float, "size": int, "count": int,
                   "feature_seconds": float, "greedy_seconds": float, "hash": str, "file": (str, type(None))}
# file: the selection file relative to the save dir (None with --no-save)
EVENT_SCHEMA = {"selection": SELECTION_EVENT}


class EpochSubsets:
    """The subset of every epoch for the ``--subset-*`` options in ``cfg``.

    Epochs 1..W (``--subset-warmup-epochs``) draw a fresh uniform subset each; then a selection
    is made at epoch W+1 and every ``--subset-resample-epochs`` epochs after it (once for
    ``random-fixed``), and kept until the next. A selection is keyed by (seed, epoch), saved
    to ``SAVE_DIR/subset/epoch_E.pt`` by rank 0 (unless ``write`` is False) and read back
    instead of being recomputed. Each selection made is one ``selection`` record of ``events``
    (``update()``: fairseq's update count at the time); a selection read back whose record
    the log lost (a resume drops records after its checkpoint) is recorded again from its file.
    """

    def __init__(self, cfg, save_dir: str, pad_idx: int, write: bool = True, events=None, update=lambda: 0):
        self.cfg = cfg
        self.save_dir = save_dir
        self.pad_idx = pad_idx
        self.write = write
        self.events, self.update = events, update
        self.selection_epoch = None  # the selection in force, and its indices and hash
        self.indices = None
        self.hash = None

    def settings(self) -> dict:
        """What a stored selection depends on besides the model: a file made with other values
        is not reused."""
        return {name: str(getattr(self.cfg, name)) for name in SETTINGS}

    def selection_epoch_of(self, epoch: int) -> int:
        warmup = self.cfg.subset_warmup_epochs
        if epoch <= warmup:
            return epoch
        if self.cfg.subset_selector == "random-fixed":
            return warmup + 1
        every = self.cfg.subset_resample_epochs
        return warmup + 1 + (epoch - warmup - 1) // every * every

    def kind_of(self, selection_epoch: int) -> str:
        return "warmup" if selection_epoch <= self.cfg.subset_warmup_epochs else str(self.cfg.subset_selector)

    def for_epoch(self, epoch: int, dataset, model, feature_batches) -> torch.Tensor:
        """The sorted block indices epoch ``epoch`` trains on (the same on every rank).
        ``feature_batches()`` gives the fixed batches features are computed on (ingenious only)."""
        selection_epoch = self.selection_epoch_of(epoch)
        if selection_epoch == self.selection_epoch:
            return self.indices
        rank, world_size = data_parallel_rank_and_size()
        kind = self.kind_of(selection_epoch)
        record = load_subset(self.save_dir, selection_epoch) if rank == 0 and self.write else None
        if record is not None and record.get("settings") != self.settings():
            logger.warning(f"{subset_path(self.save_dir, selection_epoch)} was made with other --subset-* "
                           f"options or seed; selecting again")
            record = None
        # every rank takes part in a feature pass, or none does
        missing = broadcast_from_leader(torch.tensor([int(record is None)]))
        if int(missing):
            indices = self._select(selection_epoch, kind, dataset, model, feature_batches, rank, world_size)
        else:
            indices = record["indices"] if rank == 0 else None
            if rank == 0:
                logger.info(f"subset of epoch {epoch}: {kind} selection of epoch {selection_epoch} read from "
                            f"{subset_path(self.save_dir, selection_epoch)} ({len(indices)} blocks)")
                self._record_again(record)
        if world_size > 1:
            size = broadcast_from_leader(torch.tensor([0 if indices is None else len(indices)]))
            indices = broadcast_from_leader(indices if rank == 0 else torch.zeros(int(size), dtype=torch.long))
        self.selection_epoch, self.indices, self.hash = selection_epoch, indices, subset_hash(indices)
        return indices

    def _select(self, selection_epoch, kind, dataset, model, feature_batches, rank, world_size):
        seed = int(self.cfg.seed)
        count = len(dataset)
        total = subset_size(count, self.cfg.subset_fraction)
        info = {"kind": kind, "count": count, "settings": self.settings(), "feature_seconds": 0.0,
                "greedy_seconds": 0.0, "update": self.update()}
        if kind == "ingenious":
            start = time.perf_counter()
            group, leader = data_parallel_group() if world_size > 1 else (None, 0)
            features = block_features(model, dataset, feature_batches(), layer=self.cfg.subset_feature_layer,
                                      pad_idx=self.pad_idx, rank=rank, world_size=world_size, group=group, dst=leader)
            info["feature_seconds"] = time.perf_counter() - start
            if rank != 0:
                return None
            start = time.perf_counter()
            with single_thread():
                partitions = random_partitions(count, self.cfg.subset_partition_size, keyed_generator(seed, "partitions"))
                orders, gains = facility_location_orders(
                    features, partitions, greedy=str(self.cfg.subset_greedy),
                    epsilon=self.cfg.subset_stochastic_epsilon,
                    generator=keyed_generator(seed, "greedy", selection_epoch))
                indices = sample_from_gains(orders, gains, total, self.cfg.subset_temperature,
                                            keyed_generator(seed, "sample", selection_epoch))
            info["greedy_seconds"] = time.perf_counter() - start
        elif rank == 0:
            key = ("fixed",) if kind == "random-fixed" else ("uniform", selection_epoch)
            indices = torch.randperm(count, generator=keyed_generator(seed, *key))[:total].sort().values
        else:
            return None
        logger.info(f"subset of epoch {selection_epoch}: {kind}, {len(indices)} of {count} blocks "
                    f"(features {info['feature_seconds']:.2f} s, greedy {info['greedy_seconds']:.2f} s)")
        if self.write:
            save_subset(self.save_dir, selection_epoch, indices, info)
        self._record(selection_epoch, indices, info, subset_file(selection_epoch) if self.write else None)
        return indices

    def _record(self, selection_epoch: int, indices: torch.Tensor, info: dict, file: str | None):
        if self.events is None:
            return
        self.events.write({
            "event": "selection", "update": int(info["update"]), "epoch": selection_epoch, "kind": info["kind"],
            "selector": str(self.cfg.subset_selector), "fraction": float(self.cfg.subset_fraction),
            "size": len(indices), "count": int(info["count"]), "feature_seconds": float(info["feature_seconds"]),
            "greedy_seconds": float(info["greedy_seconds"]), "hash": subset_hash(indices), "file": file})

    def _record_again(self, stored: dict):
        """The record of a stored selection, written again if the event log lacks it."""
        if self.events is None or self.events.path is None or "update" not in stored:
            return
        epochs = {record["epoch"] for record in self.events.read(kinds=("selection",))}
        if stored["epoch"] not in epochs:
            self._record(stored["epoch"], stored["indices"], stored, subset_file(stored["epoch"]))

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"epoch": self.selection_epoch, "hash": self.hash}

    def check_state(self, state: dict) -> None:
        """Resume must continue on the subset the checkpoint trained on."""
        if state["epoch"] == self.selection_epoch and state["hash"] != self.hash:
            raise ValueError(
                f"the subset of epoch {self.selection_epoch} ({subset_path(self.save_dir, self.selection_epoch)}, "
                f"hash {self.hash[:12]}) is not the one this checkpoint trained on (hash {state['hash'][:12]}): "
                f"the file was replaced or recomputed; restore it, or resume with --reset-dataloader")
