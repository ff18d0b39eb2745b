"""The arguments of ``torch.ops.gpts.mask_tokens`` as one bundle, in schema order.

One definition shared by the compiled op's caller (``ops.py``), its fake kernel, the numpy
reference and the tests; adding an option touches this class, the schema and
``MaskTokensArgs`` in csrc/mask_tokens_args.h (a test checks the names against the schema).
"""

from typing import NamedTuple

import torch


class MaskTokensArgs(NamedTuple):
    """``gpts::mask_tokens``'s arguments (docs/masking-algorithm.md, Inputs); a tuple, so
    ``torch.ops.gpts.mask_tokens(*args)`` is the call."""

    tokens: torch.Tensor
    sample_ids: torch.Tensor
    maskable: torch.Tensor
    word_start: torch.Tensor
    replace_cdf: torch.Tensor
    span_cdf: torch.Tensor
    seed: int
    step: int
    mask_prob: float
    leave_unmasked_prob: float
    random_token_prob: float
    mask_multiple_length: int
    exact: bool
    mask_idx: int
    pad_idx: int

    @classmethod
    def build(cls, tokens, sample_ids, spec, psi, *, seed, step) -> "MaskTokensArgs":
        """The call for a batch under a ``MaskingSpec`` (its tables on ``tokens``' device) and a
        ``Psi``. Trusts its inputs: ``gpts_fairseq.masking.mask_tokens`` validates them."""
        maskable, word_start, replace_cdf, span_cdf = spec.tables(tokens.device)
        return cls(
            tokens=tokens, sample_ids=sample_ids, maskable=maskable, word_start=word_start,
            replace_cdf=replace_cdf, span_cdf=span_cdf, seed=int(seed), step=int(step),
            **{name: float(value) for name, value in psi.as_dict().items()},
            mask_multiple_length=int(spec.mask_multiple_length), exact=bool(spec.exact),
            mask_idx=int(spec.mask_idx), pad_idx=int(spec.pad_idx),
        )
