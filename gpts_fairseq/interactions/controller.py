"""The interaction controller: runs the bandit's interaction loop inside fairseq's training.

One job: decide, once per training step, whether an interaction ends, and if so get every
data-parallel rank onto the same new ψ. It owns the ``InteractionLoop`` (the only owner of ψ),
the history file, the rank agreement (rank 0 measures and decides, then broadcasts ψ and the
boundary counters as one small float64 tensor; other ranks keep no bandit state), the RNG fork
around the reward pass, and its checkpoint state. The interactions extension gives it a
"measure the reference loss" callable and calls ``step`` before every update.

The checkpoint keeps the options that define what a reward means (``options``); a resume with
other values stops, naming the option, unless ``allow_option_change``: then the bandit keeps
what it can (its observations when its configuration still fits), the interaction in progress
restarts with a fresh reference loss, and the history's last record gets a ``note``.

Bookkeeping is on a bandit clock = fairseq's (update, epoch) + an offset. The offset is 0 in an
ordinary run and after an ordinary resume; when fairseq's counters restart
(``--reset-optimizer`` sets the update count to 0, ``--reset-dataloader`` the epoch to 1), the
offset keeps the bandit clock running on from the checkpoint, so the interaction in progress
still lasts ``--gpts-interaction-updates`` updates and the history stays in order.
"""

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping

import torch
from fairseq.logging import metrics

from ..bandit.loop import BOUNDARY_COUNTERS, InteractionLoop
from ..masking.spec import PSI_FIELDS, Psi
from ..option_changes import option_changes
from ..report.history import HISTORY_FILE, parse_interaction
from ..report.summary import format_duration
from ..runtime import broadcast_from_leader, data_parallel_rank_and_size, fork_rngs, is_leader, unwrap_model
from .options import ARM_POLICIES

logger = logging.getLogger(__name__)
progress_logger = logging.getLogger("gpts_fairseq.progress")  # one line per interaction, on stderr

STATE_FORMAT = 1


class InteractionController:
    """``loop`` None: the constant policy, ψ = ``first_psi`` for good and no interaction."""

    def __init__(self, loop: InteractionLoop | None, first_psi: Psi, *, interaction_updates: int,
                 max_update: int, max_epoch: int, save_dir: str | None, options: Mapping | None = None,
                 allow_option_change: bool = False):
        self.loop = loop
        self.options = dict(options or {})
        self.allow_option_change = allow_option_change
        self._constant_psi = None if loop is not None else first_psi
        self.interaction_updates = interaction_updates
        self.max_update, self.max_epoch = max_update, max_epoch
        self.save_dir = save_dir
        # bandit clock = fairseq's counter + offset; the last step seen (fairseq's counters)
        self.update_offset, self.epoch_offset = 0, 0
        self.next_update, self.epoch = 0, 1
        self._resumed = False  # set by load_state_dict: compare fairseq's counters at the next step
        self._clock = None  # (time, progress) at this process's first step: the time-left estimate

    @property
    def psi(self) -> Psi:
        """The masking in force."""
        return self._constant_psi if self.loop is None else self.loop.psi

    def progress(self, update: int, epoch: int) -> float:
        """Training progress in [0, 1] by fairseq's counters: by updates when --max-update is
        set, else by epochs (so a schedule restarts with the optimizer after --reset-optimizer)."""
        if self.max_update > 0:
            return min(update / self.max_update, 1.0)
        if self.max_epoch > 0:
            return min((epoch - 1) / self.max_epoch, 1.0)
        return 0.0

    # -- the training step ----------------------------------------------------------------------

    def step(self, model: torch.nn.Module, update: int, epoch: int,
             measure: Callable[[torch.nn.Module], float]) -> Psi:
        """Called before every update (by the extension's ``before_update``); returns the ψ to
        mask with. At an interaction boundary rank 0 calls ``measure(unwrapped_model)`` with the global RNGs
        forked (a resumed run measures at a different moment of the RNG stream than an
        uninterrupted one), finishes the interaction and decides; every rank then agrees."""
        if self._resumed:
            self._continue_clock(update, epoch)
        self.next_update, self.epoch = update + 1, epoch
        if self._clock is None:
            self._clock = (time.monotonic(), self.progress(update, epoch))
        if self.loop is None:
            return self.psi
        clock_update, clock_epoch = update + self.update_offset, epoch + self.epoch_offset
        starting = not self.loop.started
        if not (starting or self._due(clock_update, clock_epoch)):
            return self.psi
        rank, world_size = data_parallel_rank_and_size()
        loss = None
        if rank == 0:
            with fork_rngs():
                loss = measure(unwrap_model(model))
            if starting:
                self.loop.start(loss, update=clock_update, epoch=clock_epoch, progress=self.progress(update, epoch))
                logger.info(f"gpts: reference validation loss before interaction {self.loop.interaction}: {loss:.4f}")
            else:
                record = self.loop.finish(loss, update=clock_update, epoch=clock_epoch,
                                          progress=self.progress(update, epoch))
                self._publish(record, update, epoch)
        if starting and self.loop.policy.name in ARM_POLICIES:
            self._check_measurable(loss, world_size)
        if world_size > 1:
            self._agree()
        return self.psi

    def end(self, model: torch.nn.Module, update: int, epoch: int, measure: Callable[[torch.nn.Module], float]):
        """After the last update of the run (``update`` updates done): the interaction in progress
        ends here with the reward of the loss now (the model the end-of-training validation sees)
        and no decision after it. Rank 0 measures and writes the history; every rank counts it."""
        if self.loop is None or not self.loop.started:
            return
        clock_update, clock_epoch = update + self.update_offset, epoch + self.epoch_offset
        if clock_update <= self.loop.start_update:  # an interaction ended at this very update
            return
        if is_leader():
            with fork_rngs():
                loss = measure(unwrap_model(model))
            record = self.loop.finish(loss, update=clock_update, epoch=clock_epoch,
                                      progress=self.progress(update, epoch), decide=False)
            self._publish(record, update, epoch)
        else:
            self.loop.follow(self.loop.psi, interaction=self.loop.interaction + 1, start_update=clock_update,
                             start_epoch=clock_epoch, started=True)

    def _check_measurable(self, loss: float | None, world_size: int):
        """The loss before the first interaction (rank 0's) must be finite: if the reference masking
        selects no token of the reward batches, no reward can ever be measured, and a policy that
        plays arms would silently keep the first ψ. Every rank stops with the same error."""
        finite = torch.tensor([float(loss is not None and math.isfinite(loss))], dtype=torch.float64)
        if world_size > 1:
            finite = broadcast_from_leader(finite)
        if not finite.item():
            batches = self.options.get("--gpts-reward-batches")
            split = str(self.options.get("--valid-subset")).split(",")[0]
            raise ValueError(
                f"--gpts-policy {self.loop.policy.name}: the reward cannot be measured: the loss of the reward batches "
                f"(--gpts-reward-batches {batches}: {'all' if not batches else 'the first ' + str(batches)} batches of "
                f"the validation split '{split}') at the reference masking is {loss} — it selects no token of them. "
                f"Give the validation split '{split}' more text, or measure on more batches with --gpts-reward-batches")

    def _publish(self, record: dict, update: int, epoch: int):
        """The finished interaction: the history file, fairseq's log and metrics, the progress line."""
        self.write_history()
        _log_interaction(record)
        _log_progress(self._progress_line(record, update, epoch))

    def _progress_line(self, record: dict, update: int, epoch: int) -> str:
        """'update U/N, psi ..., last reward R, T elapsed, ~T' left' (time left from the rate of
        this process's progress)."""
        done = f"update {update}/{self.max_update}" if self.max_update > 0 else \
            f"update {update}, epoch {epoch}/{self.max_epoch or '?'}"
        psi = " ".join(f"{name}={getattr(self.psi, field):.3f}" for name, field in zip(("rho", "gamma", "lambda"),
                                                                                        PSI_FIELDS))
        reward = "none" if record["reward"] is None else f"{record['reward']:.5f}"
        started, progress_then = self._clock
        elapsed, progress = time.monotonic() - started, self.progress(update, epoch)
        left = "?" if progress <= progress_then else format_duration(elapsed * (1 - progress) / (progress - progress_then))
        return f"gpts: {done}, psi {psi}, last reward {reward}, {format_duration(elapsed)} elapsed, ~{left} left"

    def _due(self, update: int, epoch: int) -> bool:
        if self.interaction_updates > 0:
            return update % self.interaction_updates == 0 and update > self.loop.start_update
        return epoch > self.loop.start_epoch

    def _agree(self):
        """Rank 0's ψ and counters, to every data-parallel rank: 7 float64 numbers (exact)."""
        loop = self.loop
        boundary = broadcast_from_leader(torch.tensor([*(getattr(loop.psi, name) for name in PSI_FIELDS),
                                                       *(float(getattr(loop, name)) for name in BOUNDARY_COUNTERS)],
                                                      dtype=torch.float64))
        if not is_leader():
            values = boundary.tolist()
            psi = Psi(**dict(zip(PSI_FIELDS, values)))
            counters = dict(zip(BOUNDARY_COUNTERS, values[len(PSI_FIELDS):]))
            loop.follow(psi, **{name: bool(value) if name == "started" else int(value)
                                for name, value in counters.items()})

    # -- history --------------------------------------------------------------------------------

    def history_path(self) -> str:
        return os.path.join(self.save_dir, HISTORY_FILE)

    def write_history(self):
        """Rewrite SAVE_DIR/gpts_history.jsonl from the loop's history (atomic), so the file
        always matches the bandit state, also after a resume from an older checkpoint. Every
        record is checked against the schema gpts-report reads."""
        self._write_records(self.loop.history)

    def _write_records(self, records):
        if self.save_dir is None:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        tmp = self.history_path() + ".tmp"
        with open(tmp, "w") as handle:
            for number, record in enumerate(records):
                parse_interaction(record, f"interaction record {number}")
                handle.write(json.dumps(record) + "\n")
        os.replace(tmp, self.history_path())

    # -- checkpoint -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Rank 0: the whole loop; other ranks: ψ and the counters (all they hold)."""
        state = {"format": STATE_FORMAT, "update": self.next_update, "epoch": self.epoch,
                 "update_offset": self.update_offset, "epoch_offset": self.epoch_offset, "options": dict(self.options)}
        if self.loop is not None:
            leader = is_leader()
            state["loop"] = self.loop.state_dict() if leader else self.loop.boundary_state()
        return state

    def load_state_dict(self, state: Mapping):
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"interaction controller state format {state.get('format')!r} is not {STATE_FORMAT}")
        self.next_update, self.epoch = int(state["update"]), int(state["epoch"])
        self.update_offset, self.epoch_offset = int(state["update_offset"]), int(state["epoch_offset"])
        self._resumed = True
        changes = self._option_changes(state["options"])
        leader = is_leader()
        saved_loop = state.get("loop")
        if changes:
            self._resume_with_changes(saved_loop, changes, leader)
        elif self.loop is not None:
            if saved_loop is None:  # cannot happen with equal options: a constant run has no loop
                raise ValueError("the checkpoint has no bandit state")
            if leader:
                self.loop.load_state_dict(saved_loop)
                self.write_history()
            else:
                self.loop.load_boundary_state(saved_loop)

    def _option_changes(self, saved: Mapping) -> list[str]:
        """The reward-defining options that differ from the checkpoint's (``option_changes``)."""
        return option_changes(saved, self.options, allowed=self.allow_option_change, meaning="what the rewards mean",
                              if_allowed="the bandit keeps what still fits and notes the change in its history")

    def _resume_with_changes(self, saved_loop: Mapping | None, changes: list[str], leader: bool):
        """Allowed option changes: keep the saved history and interaction count, the bandit's
        observations when its configuration still fits; restart the interaction in progress."""
        note = "resumed with other options: " + "; ".join(changes)
        logger.warning(f"gpts: {note}")
        history = [dict(record) for record in (saved_loop or {}).get("history", [])]
        if history:
            history[-1]["note"] = note
        if self.loop is not None:
            if leader and saved_loop is not None and "policy" in saved_loop:
                try:
                    self.loop.policy.load_state_dict(saved_loop["policy"])
                    self.loop.psi = Psi(**saved_loop["psi"])
                except ValueError as error:
                    logger.warning(f"gpts: the bandit starts afresh from the first psi ({error})")
            if leader:
                self.loop.history = history
            self.loop.interaction = int(saved_loop["interaction"]) if saved_loop is not None else 0
            self.loop.started = False  # measure a new start loss at the next step
        if leader and self.save_dir is not None and (history or self.loop is not None):
            self._write_records(history)

    def _continue_clock(self, update: int, epoch: int):
        """The first step after a resume: keep the bandit clock going where fairseq's counters
        went back (to the checkpoint's ``next_update``/``epoch``)."""
        self._resumed = False
        if update < self.next_update:
            self.update_offset += self.next_update - update
            logger.info(f"gpts: fairseq's update count restarted at {update} (checkpoint: {self.next_update}); "
                        f"the interactions continue from update {update + self.update_offset}")
        if epoch < self.epoch:
            self.epoch_offset += self.epoch - epoch


def _log_progress(line: str):
    """INFO on stderr (fairseq-train logs to stdout, often into a file), whatever the logging set-up."""
    if not progress_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
        progress_logger.addHandler(handler)
        progress_logger.setLevel(logging.INFO)
        progress_logger.propagate = False
    progress_logger.info(line)


def _log_interaction(record):
    psi = "no decision (end of training)" if record["next_psi"] is None else \
        "next " + ", ".join(f"{k}={v:.3f}" for k, v in record["next_psi"].items())
    reward = "none" if record["reward"] is None else f"{record['reward']:.5f}"
    logger.info(f"gpts: interaction {record['interaction']} (updates {record['update']}-"
                f"{record['end_update']}): val loss {record['val_loss']}, reward {reward}, "
                f"decision {1000 * record['decision_time_s']:.1f} ms; {psi}")
    decided = record["next_psi"] is not None
    values = {"gpts_reward": record["reward"], "gpts_decision_ms": 1000 * record["decision_time_s"] if decided else None,
              "gpts_posterior_mean": record["posterior_mean"], "gpts_posterior_std": record["posterior_std"],
              **{f"gpts_next_{name}": value for name, value in (record["next_psi"] or {}).items()}}
    for name, value in values.items():
        if value is not None:
            metrics.log_scalar(name, value, round=5)
