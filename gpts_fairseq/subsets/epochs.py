"""Which blocks each epoch trains on: the schedule of selections, their keyed randomness, their
files, and the agreement of all ranks (rank 0 selects, every rank receives its tensor)."""

import hashlib
import logging
import time

import torch
from fairseq.distributed import utils as distributed_utils

from ..distributed import data_parallel_rank_and_size
from .features import block_features
from .selection import facility_location_orders, one_thread, random_partitions, sample_from_gains, subset_size
from .store import load_subset, save_subset, subset_hash, subset_path

logger = logging.getLogger(__name__)

SETTINGS = ("seed", "subset_selector", "subset_fraction", "subset_warmup_epochs", "subset_resample_epochs",
            "subset_partition_size", "subset_feature_layer", "subset_greedy", "subset_stochastic_epsilon",
            "subset_temperature")


def keyed_generator(seed: int, *key) -> torch.Generator:
    """A generator seeded by (seed, *key) only: a draw never depends on what ran before it."""
    digest = hashlib.sha256(repr((int(seed), *key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _rank_and_group():
    rank, world_size = data_parallel_rank_and_size()
    if world_size == 1:
        return 0, 1, None, 0
    group = distributed_utils.get_data_parallel_group()
    return rank, world_size, group, torch.distributed.get_global_rank(group, 0)


class EpochSubsets:
    """The subset of every epoch for the ``--subset-*`` options in ``cfg``.

    Epochs 1..W (``--subset-warmup-epochs``) draw a fresh uniform subset each; then a selection
    is made at epoch W+1 and every ``--subset-resample-epochs`` epochs after it (once for
    ``random-fixed``), and kept until the next. A selection is keyed by (seed, epoch), saved
    to ``SAVE_DIR/subset/epoch_E.pt`` by rank 0 and read back instead of being recomputed.
    """

    def __init__(self, cfg, save_dir: str, pad_idx: int, write: bool = True):
        self.cfg = cfg
        self.save_dir = save_dir
        self.pad_idx = pad_idx
        self.write = write
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
        rank, world_size, group, src = _rank_and_group()
        kind = self.kind_of(selection_epoch)
        record = load_subset(self.save_dir, selection_epoch) if rank == 0 and self.write else None
        if record is not None and record.get("settings") != self.settings():
            logger.warning(f"{subset_path(self.save_dir, selection_epoch)} was made with other --subset-* "
                           f"options or seed; selecting again")
            record = None
        missing = torch.tensor([int(record is None)])
        if world_size > 1:  # every rank takes part in a feature pass, or none does
            missing = self._broadcast(missing, src, group, model)
        if int(missing):
            indices = self._select(selection_epoch, kind, dataset, model, feature_batches, rank, world_size,
                                   group, src)
        else:
            indices = record["indices"] if rank == 0 else None
            if rank == 0:
                logger.info(f"subset of epoch {epoch}: {kind} selection of epoch {selection_epoch} read from "
                            f"{subset_path(self.save_dir, selection_epoch)} ({len(indices)} blocks)")
        if world_size > 1:
            indices = self._broadcast_indices(indices, rank, src, group, model)
        self.selection_epoch, self.indices, self.hash = selection_epoch, indices, subset_hash(indices)
        return indices

    def _select(self, selection_epoch, kind, dataset, model, feature_batches, rank, world_size, group, src):
        seed = int(self.cfg.seed)
        count = len(dataset)
        total = subset_size(count, self.cfg.subset_fraction)
        info = {"kind": kind, "count": count, "settings": self.settings(), "feature_seconds": 0.0,
                "greedy_seconds": 0.0}
        if kind == "ingenious":
            start = time.perf_counter()
            features = block_features(model, dataset, feature_batches(), layer=self.cfg.subset_feature_layer,
                                      pad_idx=self.pad_idx,
                                      rank=rank, world_size=world_size, group=group, dst=src)
            info["feature_seconds"] = time.perf_counter() - start
            if rank != 0:
                return None
            start = time.perf_counter()
            with one_thread():
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
        return indices

    @staticmethod
    def _broadcast(tensor, src, group, model):
        device = next(model.parameters()).device
        tensor = tensor.to(device)
        torch.distributed.broadcast(tensor, src=src, group=group)
        return tensor.cpu()

    def _broadcast_indices(self, indices, rank, src, group, model):
        size = self._broadcast(torch.tensor([0 if indices is None else len(indices)]), src, group, model)
        buffer = indices if rank == 0 else torch.zeros(int(size), dtype=torch.long)
        return self._broadcast(buffer, src, group, model)

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
