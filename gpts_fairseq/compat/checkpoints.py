"""Checkpoints on every rank under torch >= 2.6.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which unpickles only tensors,
primitive containers and allowlisted classes. fairseq 0.12 calls it without the argument at both
places a resumed run passes through:

- ``checkpoint_utils.load_checkpoint_to_cpu``: rank 0 reads the file; a command-line run
  stores its options there as an ``argparse.Namespace``;
- ``distributed.utils._broadcast_object_slow``: every other rank receives rank 0's loaded
  state, in which tensors are ``_TensorPlaceholder`` markers and ``cfg`` is now an omegaconf
  ``DictConfig``; a DictConfig pickles its nodes (``AnyNode``), nested ``ListConfig``\\ s,
  their ``ContainerMetadata``/``Metadata`` (which name ``typing.Any``, ``dict``, ``list`` and
  ``int`` as key/element types) and a ``defaultdict`` resolver cache.

Without the allowlist a 2-rank run cannot be resumed (rank 1 dies with "Unsupported global:
omegaconf.dictconfig.DictConfig"; stock ``masked_lm`` fails the same way).
``FAIRSEQ_CHECKPOINT_GLOBALS`` is exactly what checkpoints of command-line and
``fairseq-hydra-train`` runs hold, in file and in broadcast form (listed with
``torch.serialization.get_unsafe_globals_in_checkpoint``): plain data holders, none of which
runs code when unpickled. ``weights_only=False`` is never used. A script that loads a gpts_mlm
checkpoint without building the task first (e.g. ``checkpoint_utils.load_model_ensemble_and_task``)
calls ``allow_fairseq_checkpoints()``.
"""

import argparse
import collections
import typing

import torch
from fairseq.distributed.utils import _TensorPlaceholder
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

FAIRSEQ_CHECKPOINT_GLOBALS = (
    argparse.Namespace, _TensorPlaceholder,
    DictConfig, ListConfig, AnyNode, ContainerMetadata, Metadata,
    typing.Any, dict, list, int, collections.defaultdict,
)


def allow_fairseq_checkpoints() -> None:
    """Allow ``torch.load(weights_only=True)`` to read fairseq checkpoints and their broadcast
    (torch keeps the allowlist as a set: calling again changes nothing)."""
    torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))
