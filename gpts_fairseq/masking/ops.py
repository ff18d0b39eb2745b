"""The compiled masking op ``torch.ops.gpts.mask_tokens`` (csrc/), if the extension is built.

Importing ``gpts_fairseq._C`` registers the op with its CPU and (when built with CUDA) CUDA
kernels; this module adds the fake kernel that torch.compile / FakeTensor use. The arguments are the raw positional signature of docs/masking-algorithm.md;
``gpts_fairseq.masking.mask_tokens`` is the checked public entry point.
"""

import torch

try:
    from gpts_fairseq import _C  # noqa: F401  (registers torch.ops.gpts.mask_tokens)
except ImportError:
    _C = None


if _C is not None:

    @torch.library.register_fake("gpts::mask_tokens")
    def _mask_tokens_fake(tokens, *_):
        """Shapes only: source and target are like tokens (the real kernels check arguments)."""
        return torch.empty_like(tokens), torch.empty_like(tokens)


def is_available() -> bool:
    """True when the compiled extension is built and loaded."""
    return _C is not None


def mask_tokens(
    tokens, sample_ids, maskable, word_start, replace_cdf, span_cdf, seed, step,
    mask_prob, leave_unmasked_prob, random_token_prob, mask_multiple_length, exact,
    mask_idx, pad_idx,
):
    """``(source, target)`` from the compiled op; see docs/masking-algorithm.md."""
    return torch.ops.gpts.mask_tokens(
        tokens, sample_ids, maskable, word_start, replace_cdf, span_cdf, int(seed), int(step),
        float(mask_prob), float(leave_unmasked_prob), float(random_token_prob),
        int(mask_multiple_length), bool(exact), int(mask_idx), int(pad_idx),
    )
