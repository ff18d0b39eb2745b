"""Which blocks each epoch trains on: the schedule of selections, their keyed randomness, their
files, their events, and the agreement of all ranks (rank 0 selects, every rank receives its
tensor)."""

import logging
import os
import time

import torch

from ..option_changes import by_option_name, option_changes
from ..runtime import broadcast_from_leader, data_parallel_group, data_parallel_rank_and_size, keyed_generator, single_thread
from .features import block_features
from .selection import (facility_location_orders, facility_location_report, random_partitions, sample_from_gains,
                        subset_size)
from .store import find_subset, new_subset_file, read_subset, save_subset, subset_file, subset_hash

logger = logging.getLogger(__name__)

# The options that define a selection: stored with every selection file and in the checkpoint; a
# resume with another value stops before anything is selected or written (see ``option_changes``)
SETTINGS = ("seed", "subset_selector", "subset_fraction", "subset_warmup_epochs", "subset_resample_epochs",
            "subset_partition_size", "subset_feature_layer", "subset_greedy", "subset_stochastic_epsilon",
            "subset_temperature")
CHANGED_MEANING = "the subset selections"
IF_CHANGES_ALLOWED = ("the epoch in progress keeps its stored selection; later selections follow the new options, "
                      "into new files beside the stored ones")
READ, SELECT, REFUSED = 0, 1, 2  # what the first rank does with an epoch's selection; every rank follows


# what --subset-report-facility-location adds to a selection (None without it, and for other kinds);
# its seconds are counted apart from feature_seconds and greedy_seconds (the selection's cost)
FACILITY_LOCATION_REPORT = {"facility_location": (float, type(None)), "facility_location_random": (list, type(None)),
                            "facility_location_greedy": (float, type(None)), "facility_location_seconds": float}
NO_FACILITY_LOCATION_REPORT = {"facility_location": None, "facility_location_random": None,
                               "facility_location_greedy": None, "facility_location_seconds": 0.0}
# the event of one selection (SAVE_DIR/gpts_subsets_events.jsonl): what benchmarks and reports read
SELECTION_EVENT = {"epoch": int, "kind": str, "selector": str, "fraction": float, "size": int, "count": int,
                   "feature_seconds": float, "greedy_seconds": float, "hash": str, "file": (str, type(None)),
                   **FACILITY_LOCATION_REPORT}
# file: the selection file relative to the save dir (None with --no-save)
EVENT_SCHEMA = {"selection": SELECTION_EVENT}


class EpochSubsets:
    """The subset of every epoch for the ``--subset-*`` options in ``cfg``.

    Epochs 1..W (``--subset-warmup-epochs``) draw a fresh uniform subset each; then a selection
    is made at epoch W+1 and every ``--subset-resample-epochs`` epochs after it (once for
    ``random-fixed``), and kept until the next. A selection is keyed by (seed, epoch), saved
    to ``SAVE_DIR/subset/epoch_E.pt`` by rank 0 (unless ``write`` is False) and read back
    instead of being recomputed; a stored selection is never replaced. The first selection of
    a process (a resume) refuses stored selections made with other ``SETTINGS`` before it
    selects or writes anything, unless ``--gpts-allow-option-change``. Each selection made is
    one ``selection`` record of ``events`` (``update()``: fairseq's update count at the time);
    a selection read back whose record the log lost (a resume drops records after its
    checkpoint) is recorded again from its file. With ``--subset-report-facility-location N``
    an ingenious selection also measures itself (``selection.facility_location_report``, N
    uniform subsets keyed by (seed, epoch)) after it is made: into its record and file, timed
    apart from its cost, the selection itself unchanged.
    """

    def __init__(self, cfg, save_dir: str, pad_idx: int, write: bool = True, events=None, update=lambda: 0):
        self.cfg = cfg
        self.save_dir = save_dir
        self.pad_idx = pad_idx
        self.write = write
        self.events, self.update = events, update
        self.allow_option_change = bool(getattr(cfg, "gpts_allow_option_change", False))
        self.changes_noted = False  # allowed option changes are logged once
        self.selection_epoch = None  # the selection in force: its epoch, indices, hash and file
        self.indices = None
        self.hash = None
        self.file = None

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
        stored, refusal = None, None
        if rank == 0 and self.write:
            try:
                stored = self._stored(selection_epoch)
            except ValueError as error:  # raised below, once every rank knows to stop
                refusal = error
        # every rank takes part in a feature pass, or none does
        action = int(broadcast_from_leader(torch.tensor([REFUSED if refusal else SELECT if stored is None else READ])))
        if action == REFUSED:
            raise refusal or ValueError("the first data-parallel rank refused the stored subset selections "
                                        "(see its log)")
        if action == SELECT:
            file, indices = self._select(selection_epoch, kind, dataset, model, feature_batches, rank, world_size)
        else:
            file, record = stored if rank == 0 else (None, None)
            indices = record["indices"] if rank == 0 else None
            if rank == 0:
                logger.info(f"subset of epoch {epoch}: {kind} selection of epoch {selection_epoch} read from "
                            f"{os.path.join(self.save_dir, file)} ({len(indices)} blocks)")
                self._record_again(record, file)
        if world_size > 1:
            size = broadcast_from_leader(torch.tensor([0 if indices is None else len(indices)]))
            indices = broadcast_from_leader(indices if rank == 0 else torch.zeros(int(size), dtype=torch.long))
        self.selection_epoch, self.indices, self.hash, self.file = selection_epoch, indices, subset_hash(indices), file
        return indices

    def _stored(self, selection_epoch: int) -> tuple[str, dict] | None:
        """(file, record) of the stored selection epoch ``selection_epoch`` trains on, or None
        (select). The first selection of this process (a resume, or a run in a save dir that
        holds selections) checks the stored ones, before anything is selected or written: the
        selection of this epoch, else the one in force before it, made with other options is
        refused (``option_changes``); when allowed, the epoch in progress keeps its stored
        selection and later selections follow the new options."""
        settings = self.settings()
        found = find_subset(self.save_dir, selection_epoch, settings)
        if found is not None or self.selection_epoch is not None:
            return found
        file = subset_file(selection_epoch)
        record = read_subset(os.path.join(self.save_dir, file))
        if record is not None:  # made with other options
            self._check_settings(record.get("settings", {}), "stored selection", file)
            return file, record
        if selection_epoch > 1:
            before = self.selection_epoch_of(selection_epoch - 1)
            if find_subset(self.save_dir, before, settings) is None:
                file = subset_file(before)
                record = read_subset(os.path.join(self.save_dir, file))
                if record is not None:
                    self._check_settings(record.get("settings", {}), "stored selection", file)
        return None

    def _check_settings(self, saved: dict, source: str, file: str | None = None) -> None:
        """A ValueError naming every changed option of ``SETTINGS`` and both values, unless
        changes are allowed (then a warning)."""
        where = f": {os.path.join(self.save_dir, file)} was made with other options" if file else ""
        changes = option_changes(by_option_name(saved), by_option_name(self.settings()),
                                 allowed=self.allow_option_change, meaning=CHANGED_MEANING + where,
                                 if_allowed=IF_CHANGES_ALLOWED, source=source)
        if changes and not self.changes_noted:
            logger.warning(f"subsets: resumed with other options ({'; '.join(changes)}): {IF_CHANGES_ALLOWED}")
            self.changes_noted = True

    def _select(self, selection_epoch, kind, dataset, model, feature_batches, rank, world_size):
        seed = int(self.cfg.seed)
        count = len(dataset)
        total = subset_size(count, self.cfg.subset_fraction)
        info = {"kind": kind, "count": count, "settings": self.settings(), "feature_seconds": 0.0,
                "greedy_seconds": 0.0, "update": self.update(), **NO_FACILITY_LOCATION_REPORT}
        if kind == "ingenious":
            start = time.perf_counter()
            group, leader = data_parallel_group() if world_size > 1 else (None, 0)
            features = block_features(model, dataset, feature_batches(), layer=self.cfg.subset_feature_layer,
                                      pad_idx=self.pad_idx, rank=rank, world_size=world_size, group=group, dst=leader)
            info["feature_seconds"] = time.perf_counter() - start
            if rank != 0:
                return None, None  # only the first rank holds the selection
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
            if self.cfg.subset_report_facility_location:
                start = time.perf_counter()
                with single_thread():
                    info.update(facility_location_report(
                        features, partitions, indices, random_count=int(self.cfg.subset_report_facility_location),
                        generator=keyed_generator(seed, "facility-location-random", selection_epoch)))
                info["facility_location_seconds"] = time.perf_counter() - start
        elif rank == 0:
            key = ("fixed",) if kind == "random-fixed" else ("uniform", selection_epoch)
            indices = torch.randperm(count, generator=keyed_generator(seed, *key))[:total].sort().values
        else:
            return None, None  # only the first rank holds the selection
        logger.info(f"subset of epoch {selection_epoch}: {kind}, {len(indices)} of {count} blocks "
                    f"(features {info['feature_seconds']:.2f} s, greedy {info['greedy_seconds']:.2f} s)")
        file = None
        if self.write:
            file = new_subset_file(self.save_dir, selection_epoch, info["settings"])
            save_subset(self.save_dir, selection_epoch, indices, info, file)
        self._record(selection_epoch, indices, info, file)
        return file, indices

    def _record(self, selection_epoch: int, indices: torch.Tensor, info: dict, file: str | None):
        if self.events is None:
            return
        self.events.write({
            "event": "selection", "update": int(info["update"]), "epoch": selection_epoch, "kind": info["kind"],
            "selector": str(self.cfg.subset_selector), "fraction": float(self.cfg.subset_fraction),
            "size": len(indices), "count": int(info["count"]), "feature_seconds": float(info["feature_seconds"]),
            "greedy_seconds": float(info["greedy_seconds"]), "hash": subset_hash(indices), "file": file,
            **{key: info.get(key, default) for key, default in NO_FACILITY_LOCATION_REPORT.items()}})

    def _record_again(self, stored: dict, file: str):
        """The record of a stored selection, written again if the event log lacks it."""
        if self.events is None or self.events.path is None or "update" not in stored:
            return
        epochs = {record["epoch"] for record in self.events.read(kinds=("selection",))}
        if stored["epoch"] not in epochs:
            self._record(stored["epoch"], stored["indices"], stored, file)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"epoch": self.selection_epoch, "hash": self.hash, "options": self.settings()}

    def check_state(self, state: dict) -> None:
        """Resume must continue with the checkpoint's ``SETTINGS`` (unless changes are allowed)
        and on the subset it trained on."""
        if "options" in state:  # checkpoints written before the options were kept have none
            self._check_settings(state["options"], "checkpoint")
        if state["epoch"] == self.selection_epoch and state["hash"] != self.hash:
            path = os.path.join(self.save_dir, self.file) if self.file else "not saved"
            raise ValueError(
                f"the subset of epoch {self.selection_epoch} ({path}, "
                f"hash {self.hash[:12]}) is not the one this checkpoint trained on (hash {state['hash'][:12]}): "
                f"the file was replaced or recomputed; restore it, or resume with --reset-dataloader")
