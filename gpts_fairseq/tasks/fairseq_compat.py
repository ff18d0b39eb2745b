"""Two workarounds for fairseq 0.12 under torch >= 2.6 and CPython 3.11, installed by the task.

**Checkpoints on every rank.** Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``,
which unpickles only tensors, primitive containers and allowlisted classes. fairseq 0.12 calls it
without the argument at both places a resumed run passes through:

- ``checkpoint_utils.load_checkpoint_to_cpu``: rank 0 reads the file; a command-line run
  stores its options there as an ``argparse.Namespace``;
- ``distributed.utils._broadcast_object_slow``: every other rank receives rank 0's loaded
  state, in which tensors are ``_TensorPlaceholder`` markers and ``cfg`` is now an omegaconf
  ``DictConfig``; a DictConfig pickles its nodes (``AnyNode``), nested ``ListConfig``\\ s,
  their ``ContainerMetadata``/``Metadata`` (which name ``typing.Any``, ``dict``, ``list`` and
  ``int`` as key/element types) and a ``defaultdict`` resolver cache.

Without them a 2-rank run cannot be resumed (rank 1 dies with "Unsupported global:
omegaconf.dictconfig.DictConfig"; stock ``masked_lm`` fails the same way).
``FAIRSEQ_CHECKPOINT_GLOBALS`` is exactly what checkpoints of command-line and
``fairseq-hydra-train`` runs hold, in file and in broadcast form (listed with
``torch.serialization.get_unsafe_globals_in_checkpoint``): plain data holders, none of which
runs code when unpickled. ``weights_only=False`` is never used.

**Exit code 0 after training.** fairseq prefetches batches in a daemon thread
(``data.iterators.BackgroundConsumer``, one per train or valid pass, ``--data-buffer-size`` >
0). A pass that stops early (``--max-update``, ``--max-valid-steps``) leaves it collating the
next batches. If the interpreter finalises while it is inside a torch op, CPython 3.11 ends it
with ``pthread_exit`` when the op re-takes the GIL; the unwinding meets pybind11's noexcept
``gil_scoped_release`` destructor and the process aborts after "done training" ("terminate
called without an active exception", exit -6). ``stop_prefetch_threads`` runs at exit, before
finalisation: it tells each live consumer to stop after the batch in hand and drains its queue
until it has ended (``benchmarks/exit_stress.py`` measures it; ``--data-buffer-size 0`` also
avoids it, without prefetching).

Both change process-wide state, so ``install`` runs when the task is built (fairseq builds the
task before it loads a checkpoint), never at import, and calling it again changes nothing. A
script that loads a gpts_mlm checkpoint without building the task first (e.g.
``checkpoint_utils.load_model_ensemble_and_task``) calls ``allow_fairseq_checkpoints()``.
"""

import argparse
import atexit
import collections
import queue
import threading
import time
import typing

import torch
from fairseq.data.iterators import BackgroundConsumer
from fairseq.distributed.utils import _TensorPlaceholder
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

FAIRSEQ_CHECKPOINT_GLOBALS = (
    argparse.Namespace, _TensorPlaceholder,
    DictConfig, ListConfig, AnyNode, ContainerMetadata, Metadata,
    typing.Any, dict, list, int, collections.defaultdict,
)
PREFETCH_STOP_TIMEOUT_S = 60.0  # for all of them: each finishes one batch; a stuck one cannot hang the exit


def install() -> None:
    """Both workarounds, for this process; idempotent."""
    allow_fairseq_checkpoints()
    atexit.unregister(stop_prefetch_threads)  # registered once, however often the task is built
    atexit.register(stop_prefetch_threads)


def allow_fairseq_checkpoints() -> None:
    """Allow ``torch.load(weights_only=True)`` to read fairseq checkpoints and their broadcast
    (torch keeps the allowlist as a set: calling again changes nothing)."""
    torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_GLOBALS))


def stop_prefetch_threads() -> None:
    """End every live fairseq prefetch thread, so none is inside a torch op at finalisation."""
    deadline = time.monotonic() + PREFETCH_STOP_TIMEOUT_S
    for thread in threading.enumerate():
        if not isinstance(thread, BackgroundConsumer):
            continue
        thread._max_len = 0  # its loop ends after the next put (fairseq 0.12's stop condition)
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                thread._queue.get_nowait()  # room for that put and the end marker
            except queue.Empty:
                thread.join(0.01)
