"""The one boundary to fairseq's private or copied internals (the releases of
``gpts_fairseq.FAIRSEQ_REQUIREMENT``). Every use of something fairseq does not offer as public API lives here,
and tests/test_compat.py holds a contract test per touchpoint that fails naming it when a
fairseq version changes it:

- ``checkpoints``: ``torch.load(weights_only=True)`` allowlist for fairseq's checkpoints and
  their broadcast (``distributed.utils._TensorPlaceholder``);
- ``prefetch``: stopping ``data.iterators.BackgroundConsumer`` threads at exit (``_max_len``,
  ``_queue``);
- ``data``: masked_lm's token blocks (``MaskedLMTask._load_dataset_split``) and its dataset
  layout, unmasked; word starts for whole-word masking; the arguments of
  ``FairseqTask.get_batch_iterator`` however they are passed;
- ``models``: what ``RobertaModel.build_model`` and ``TransformerEncoderBase.build_encoder_layer``
  do around a custom encoder, and ``TransformerEncoderBase.forward_scriptable`` run up to a layer.

``install()`` applies the process-wide workarounds and warns once about a fairseq outside the
supported releases; the task calls it when it is built (fairseq builds the task before it loads
a checkpoint), never at import, and calling it again changes nothing.
"""

import atexit
import functools
import warnings

import fairseq
from packaging.requirements import Requirement

from .. import FAIRSEQ_REQUIREMENT
from .checkpoints import allow_fairseq_checkpoints
from .prefetch import stop_prefetch_threads


def install() -> None:
    """Both process-wide workarounds, for this process; idempotent."""
    check_fairseq_version()
    allow_fairseq_checkpoints()
    atexit.unregister(stop_prefetch_threads)  # registered once, however often the task is built
    atexit.register(stop_prefetch_threads)


@functools.cache
def check_fairseq_version(version: str = fairseq.__version__) -> bool:
    """Whether ``version`` is a supported fairseq release; a warning (once) when it is not."""
    supported = Requirement(FAIRSEQ_REQUIREMENT).specifier.contains(version, prereleases=True)
    if not supported:
        warnings.warn(f"gpts-fairseq follows the internals of {FAIRSEQ_REQUIREMENT}, not fairseq {version}: "
                      "run tests/test_compat.py, which names every touchpoint that changed", RuntimeWarning)
    return supported


__all__ = ["allow_fairseq_checkpoints", "check_fairseq_version", "install", "stop_prefetch_threads"]
