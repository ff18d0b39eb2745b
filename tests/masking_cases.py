"""Batches and specs shared by the masking tests (fairseq-like: bos ... eos, right padding)."""

import numpy as np
import torch

from gpts_fairseq.masking import MaskingSpec, MaskTokensArgs, Psi
from gpts_fairseq.masking.reference import mask_tokens_reference

BOS, PAD, EOS, UNK = 0, 1, 2, 3
VOCAB = 1000
MASK = VOCAB - 1
SPECIALS = (BOS, PAD, EOS, UNK)


def make_spec(**options) -> MaskingSpec:
    settings = dict(vocab_size=VOCAB, special_ids=SPECIALS, mask_idx=MASK, pad_idx=PAD)
    settings.update(options)
    return MaskingSpec.build(**settings)


def random_batch(seed, batch, max_len, *, min_len=3, dtype=torch.int64):
    """Rows ``bos w... eos`` of random lengths, right-padded; ordinary ids in [4, MASK)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((batch, max_len), PAD, dtype=np.int64)
    for row, length in enumerate(rng.integers(min_len, max_len + 1, size=batch)):
        tokens[row, :length] = rng.integers(4, MASK, size=length)
        tokens[row, 0], tokens[row, length - 1] = BOS, EOS
    return torch.from_numpy(tokens).to(dtype)


def run_reference(tokens, spec, psi, *, seed=7, step=1, sample_ids=None):
    """The raw reference with the spec's tables (no public-API checks in the way)."""
    if sample_ids is None:
        sample_ids = torch.arange(tokens.shape[0], dtype=torch.int64)
    return mask_tokens_reference(
        MaskTokensArgs.build(tokens, sample_ids, spec, psi, seed=seed, step=step)
    )


DEFAULT_PSI = Psi(0.15, 0.1, 0.1)
