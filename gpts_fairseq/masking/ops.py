"""The compiled masking op ``torch.ops.gpts.mask_tokens`` (csrc/), if the extension is built.

Importing ``gpts_fairseq._C`` registers the op with its CPU and (when built with CUDA) CUDA
kernels; this module adds the fake kernel that torch.compile / FakeTensor use, which checks
dtypes, dims, shapes and devices as the real kernels do (values it cannot read: sample-id range
and table ends are checked by the real kernels only). ``gpts_fairseq.masking.mask_tokens`` is
the checked public entry point.
"""

import torch

from .arguments import MaskTokensArgs
from .reference import TWO_POW_32

try:
    from gpts_fairseq import _C  # noqa: F401  (registers torch.ops.gpts.mask_tokens)
except ImportError:
    _C = None

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_table(args, name, dtype, aten_name):
    table = getattr(args, name)
    torch._check_type(table.dtype == dtype, lambda: f"mask_tokens: {name} must be {aten_name}, got {table.dtype}")
    torch._check_value(table.dim() == 1, lambda: f"mask_tokens: {name} must be 1-D, got shape {list(table.shape)}")
    torch._check_value(table.is_contiguous(), lambda: f"mask_tokens: {name} must be contiguous")
    torch._check_value(
        table.device == args.tokens.device,
        lambda: f"mask_tokens: {name} must be on the device of tokens ({args.tokens.device}), got {table.device}",
    )


def _check_unit_interval(args, name):
    value = getattr(args, name)
    torch._check_value(0.0 <= value <= 1.0, lambda: f"mask_tokens: {name} must be in [0, 1], got {value}")


def check_metadata(args: MaskTokensArgs) -> None:
    """The real kernels' argument checks that need no tensor values (csrc/mask_tokens.cpp,
    ``check_args``), with the same error types and messages."""
    tokens, sample_ids = args.tokens, args.sample_ids
    torch._check_type(tokens.dtype in _INDEX_DTYPES,
                      lambda: f"mask_tokens: tokens must be int32 or int64, got {tokens.dtype}")
    torch._check_value(tokens.dim() == 2,
                       lambda: f"mask_tokens: tokens must be 2-D [batch, length], got shape {list(tokens.shape)}")
    torch._check_value(tokens.is_contiguous(), lambda: "mask_tokens: tokens must be contiguous")
    torch._check_type(sample_ids.dtype == torch.int64,
                      lambda: f"mask_tokens: sample_ids must be int64, got {sample_ids.dtype}")
    torch._check_value(
        sample_ids.dim() == 1 and sample_ids.shape[0] == tokens.shape[0],
        lambda: f"mask_tokens: sample_ids must have shape [{tokens.shape[0]}] (one id per row of tokens), "
                f"got {list(sample_ids.shape)}",
    )
    torch._check_value(sample_ids.is_contiguous(), lambda: "mask_tokens: sample_ids must be contiguous")
    torch._check_value(
        sample_ids.device == tokens.device,
        lambda: f"mask_tokens: sample_ids must be on the device of tokens ({tokens.device}), got {sample_ids.device}",
    )
    for name, dtype, aten_name in (("maskable", torch.bool, "Bool"), ("word_start", torch.bool, "Bool"),
                                   ("replace_cdf", torch.int64, "Long"), ("span_cdf", torch.int64, "Long")):
        _check_table(args, name, dtype, aten_name)
    vocab_size = args.maskable.shape[0]
    torch._check_value(vocab_size >= 1, lambda: "mask_tokens: maskable must have one entry per vocabulary id (V >= 1)")
    torch._check_value(
        args.word_start.shape[0] in (0, vocab_size),
        lambda: f"mask_tokens: word_start must be empty or have shape [{vocab_size}] (the vocabulary), "
                f"got {list(args.word_start.shape)}",
    )
    torch._check_value(
        args.replace_cdf.shape[0] == vocab_size,
        lambda: f"mask_tokens: replace_cdf must have shape [{vocab_size}] (the vocabulary), "
                f"got {list(args.replace_cdf.shape)}",
    )
    torch._check_value(
        args.span_cdf.shape[0] >= 2,
        lambda: f"mask_tokens: span_cdf must have Lmax + 1 >= 2 entries, got shape {list(args.span_cdf.shape)}",
    )
    torch._check_value(0 <= args.step < TWO_POW_32, lambda: f"mask_tokens: step must be in [0, 2**32), got {args.step}")
    for name in ("mask_prob", "leave_unmasked_prob", "random_token_prob"):
        _check_unit_interval(args, name)
    torch._check_value(
        args.leave_unmasked_prob + args.random_token_prob <= 1.0,
        lambda: f"mask_tokens: leave_unmasked_prob + random_token_prob must be <= 1, got "
                f"{args.leave_unmasked_prob} + {args.random_token_prob}",
    )
    torch._check_value(
        args.mask_multiple_length >= 1,
        lambda: f"mask_tokens: mask_multiple_length must be >= 1, got {args.mask_multiple_length}",
    )
    for name in ("mask_idx", "pad_idx"):
        index = getattr(args, name)
        torch._check_value(
            0 <= index < vocab_size,
            lambda: f"mask_tokens: {name} must be in [0, {vocab_size}) (the vocabulary), got {index}",
        )


if _C is not None:

    @torch.library.register_fake("gpts::mask_tokens")
    def _mask_tokens_fake(*schema_args):
        """Checks the arguments' metadata; source and target are like tokens."""
        args = MaskTokensArgs(*schema_args)
        check_metadata(args)
        return torch.empty_like(args.tokens), torch.empty_like(args.tokens)


def is_available() -> bool:
    """True when the compiled extension is built and loaded."""
    return _C is not None


def mask_tokens(args: MaskTokensArgs):
    """``(source, target)`` from the compiled op; see docs/masking-algorithm.md."""
    return torch.ops.gpts.mask_tokens(*args)
