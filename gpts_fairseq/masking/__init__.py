"""Per-batch MLM masking: ``mask_tokens(tokens, spec, psi, seed=, step=, sample_ids=)``.

Runs the compiled op (``torch.ops.gpts.mask_tokens``) when the extension is built, else the
bit-identical numpy reference with one warning. The algorithm: docs/masking-algorithm.md.
"""

import importlib
import operator
import warnings

import torch

from .arguments import MaskTokensArgs
from .reference import mask_tokens_reference
from .spec import MaskingSpec, Psi

__all__ = ["MaskTokensArgs", "MaskingSpec", "Psi", "mask_tokens", "mask_tokens_reference"]

_MAX_STEP = 2**32
_MAX_SEED = 2**63
_BUILD_HINT = (
    "the gpts_fairseq C++/CUDA masking extension is not built; masking falls back to the "
    "numpy reference (same output, slower). Build it with: pip install --no-build-isolation -e ."
)
_fallback_warned = False


def _compiled_op():
    """``ops.mask_tokens`` when the extension is built, else None."""
    try:
        ops = importlib.import_module(__name__ + ".ops")
    except ModuleNotFoundError as error:
        if error.name != __name__ + ".ops":
            raise
        return None
    return ops.mask_tokens if ops.is_available() else None


def _check_int(name, value, upper):
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer in [0, {upper}), got {value!r}") from None
    if not 0 <= value < upper:
        raise ValueError(f"{name} must be in [0, {upper}), got {value}")
    return value


def _checked_inputs(tokens, sample_ids):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"tokens must be int32 or int64, got {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be 2-D [batch, length], got shape {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"tokens must be a non-empty batch, got shape {tuple(tokens.shape)}")
    sample_ids = torch.as_tensor(sample_ids, device=tokens.device)
    if sample_ids.is_floating_point() or sample_ids.is_complex() or sample_ids.dtype == torch.bool:
        raise TypeError(f"sample_ids must be integers, got {sample_ids.dtype}")
    if sample_ids.shape != (tokens.shape[0],):
        raise ValueError(
            f"sample_ids must have shape [{tokens.shape[0]}] (one id per row of tokens), "
            f"got {tuple(sample_ids.shape)}"
        )
    if sample_ids.device.type == "cpu":  # checking a GPU tensor would synchronise the host
        low, high = int(sample_ids.min()), int(sample_ids.max())
        if low < 0 or high >= 2**32:
            raise ValueError(f"sample_ids must be in [0, 2**32), got values in [{low}, {high}]")
    return tokens.contiguous(), sample_ids.to(torch.int64).contiguous()


def mask_tokens(tokens, spec: MaskingSpec, psi: Psi, *, seed: int, step: int, sample_ids):
    """Mask a right-padded batch: returns ``(source, target)`` like fairseq's MaskTokensDataset.

    ``tokens``: int32/int64 [B, T] on any device (non-contiguous input is copied);
    ``sample_ids``: one stable id per row in [0, 2**32) (fairseq: the dataset index);
    ``seed`` in [0, 2**63); ``step`` in [0, 2**32) (training: the epoch, validation: 0).
    The output depends only on these and each row's tokens, not on batch order or padding.
    """
    if not isinstance(spec, MaskingSpec):
        raise TypeError(f"spec must be a MaskingSpec, got {type(spec).__name__}")
    if not isinstance(psi, Psi):
        raise TypeError(f"psi must be a Psi, got {type(psi).__name__}")
    seed = _check_int("seed", seed, _MAX_SEED)
    step = _check_int("step", step, _MAX_STEP)
    tokens, sample_ids = _checked_inputs(tokens, sample_ids)

    op = _compiled_op()
    if op is None:
        global _fallback_warned
        if not _fallback_warned:
            warnings.warn(_BUILD_HINT, RuntimeWarning, stacklevel=2)
            _fallback_warned = True
        op = mask_tokens_reference
    return op(MaskTokensArgs.build(tokens, sample_ids, spec, psi, seed=seed, step=step))
