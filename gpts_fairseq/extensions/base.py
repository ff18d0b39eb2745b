"""Training extensions: what one method may do inside gpts_mlm's lifecycle.

Each method (GP-TS masking interactions, subsets, growth, the architecture searches) is one
``TrainingExtension``, registered in ``gpts_fairseq.extensions.EXTENSIONS``; its options are
the fields of its ``config`` dataclass, which the task's config inherits. The task is a generic
driver: it builds the extensions turned on by the task's options (``enabled(cfg)``, in
``__init__``) or by the model (``enabled_for_model(model)``, in ``build_model``: growth and
super-nets are chosen with ``--arch``), in ``EXTENSIONS`` order, and calls their hooks in this
order:

==========================  ===================================================================
task event                  hook (every enabled extension, in registry order)
==========================  ===================================================================
task ``__init__``           ``check_options(cfg)`` (classmethod, *every* registered extension,
                            enabled or not: bad input is refused before any data is read),
                            then ``__init__(cfg, context)`` for the enabled ones
``build_model``             ``model = ext.build_model(model)``: adjust or wrap the model,
                            then ``ext.check_model(model)`` (checks that need the model)
``get_batch_iterator``      ``dataset = ext.epoch_dataset(dataset, epoch, batching)`` for the
  (training split only)     training split: choose the epoch's examples
``begin_epoch``             ``ext.begin_epoch(epoch, model)``
``train_step`` (each;       ``ext.before_update(model, optimizer, update_num)``, then the task
  several per update with   masks the batch with the ψ in force (the first extension whose
  ``--update-freq``)        ``training_psi()`` is not None; else the options' first ψ), then
                            ``sample = ext.transform_batch(sample, model)``, then the forward
                            and backward pass
``optimizer_step`` (once    the optimizer's step, then ``ext.after_update(model, update_num)``
  per update)               (the update is done: fairseq's count is ``update_num + 1``)
``valid_step``              the task masks at the reference ψ (or the ψ in force with
                            ``--gpts-valid-masking train``) and runs the criterion, then
                            ``ext.after_validation(sample, model, criterion, loss, sample_size,
                            logging_output)`` with the batch as fairseq gave it (unmasked)
checkpoint save / resume    ``ext.state_dict()`` / ``ext.load_state_dict(state)``, under the
                            key ``ext.name`` in the task's checkpoint dict; on resume every
                            event log drops the records of the checkpoint's update and later
==========================  ===================================================================

Rules every extension keeps:
- It never imports the task (``gpts_fairseq.tasks``); what it needs from the task comes
  through ``ExtensionContext``.
- Decisions are keyed by (seed, update or epoch) and taken identically on every rank, or taken
  on rank 0 and broadcast (``gpts_fairseq.runtime``); resume is exact.
- Its events go to ``context.events(name, schema)`` (schema-checked JSONL in the save dir), never only
  to log messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Batching:
    """How the task batches an epoch (what an epoch-dataset hook may need to read features)."""

    max_tokens: int | None
    max_sentences: int | None


@dataclass
class ExtensionContext:
    """What the task lends its extensions (so that none imports it).

    ``mask_for_reference(sample)``: the batch masked as validation at the reference masking
    (``ExtensionDriver.mask_for_reference``). ``reference_loss(module, criterion=None,
    update=None)``: the loss in bits of the fixed reward batches (the first
    ``--gpts-reward-batches`` validation batches) at the reference masking, eval mode, on the
    calling rank alone; ``criterion`` None: the one of the training step in progress; with
    ``update`` (the update about to run) fairseq's validation at that point is reused when it
    covered every reward batch. ``events(name, schema)``: the event log of an extension
    (``gpts_fairseq.events.EventLog``; written by the first rank only). ``psi()``: the masking
    in force for training. ``updates()``: fairseq's update count (updates finished).
    ``end_of_epoch()``: whether the training epoch's batches are all used (in ``after_update``:
    the update just done was the epoch's last).
    """

    cfg: Any
    dictionary: Any
    save_dir: str | None
    seed: int
    mask_for_reference: Callable[[dict], dict]
    reference_loss: Callable[[torch.nn.Module, Any], float]
    events: Callable[[str, dict], Any]
    psi: Callable[[], Any]
    updates: Callable[[], int] = lambda: 0
    end_of_epoch: Callable[[], bool] = lambda: False


class ExtensionDriver:
    """A task that runs training extensions (``gpts_mlm``): a model whose training needs an
    extension (``enabled_for_model``) refuses other tasks."""

    def mask_for_reference(self, sample):
        """``sample`` (clean tokens) masked as validation at the reference masking: the same
        masks every call, so losses of different models or sub-nets on it compare."""
        raise NotImplementedError


class TrainingExtension:
    """Base class: every hook does nothing. Subclasses set ``name`` (the checkpoint key and the
    event log's name) and override what their method needs."""

    name: ClassVar[str] = ""
    config: ClassVar[type | None] = None  # the dataclass of its options, mixed into the task's config

    @classmethod
    def enabled(cls, cfg) -> bool:
        """Whether the options turn this method on."""
        return False

    @classmethod
    def enabled_for_model(cls, model: torch.nn.Module) -> bool:
        """Whether the model (unwrapped) needs this method; such an extension is built in
        ``build_model`` and its hooks apply from there on."""
        return False

    @classmethod
    def check_options(cls, cfg) -> None:
        """Raise ValueError naming the option and its valid range; runs before any data is read."""

    def __init__(self, cfg, context: ExtensionContext):
        self.cfg = cfg
        self.context = context

    def build_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ValueError for options that do not fit this model (before training)."""

    def epoch_dataset(self, dataset, epoch: int, batching: Batching):
        return dataset

    def begin_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        pass

    def training_psi(self):
        """The masking ψ this extension puts in force for training, or None (it sets none)."""
        return None

    def before_update(self, model: torch.nn.Module, optimizer, update_num: int) -> None:
        pass

    def transform_batch(self, sample: dict, model: torch.nn.Module) -> dict:
        return sample

    def after_update(self, model: torch.nn.Module, update_num: int) -> None:
        pass

    def after_validation(self, sample: dict, model: torch.nn.Module, criterion, loss, sample_size,
                         logging_output: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
