"""Numpy reference of the masking op (docs/masking-algorithm.md), bit-identical to the kernels.

Used by the tests as the definition to compare against, and by ``mask_tokens`` as the fallback
when the compiled extension is not built. Vectorised over the whole batch (no Python loop over
rows or tokens), so it stays usable for training.
"""

import numpy as np
import torch

from .arguments import MaskTokensArgs
from .philox import philox4x32, seed_key

TWO_POW_32 = 2**32
_INV_TWO_POW_32 = 2.3283064365386963e-10  # 2**-32, exactly

STREAM_SELECT, STREAM_RANK, STREAM_TOKEN, STREAM_COUNT = 0, 1, 2, 3


def threshold(probability: float) -> int:
    """``thr(x)``: the uint32 threshold that a uniform word falls below with probability x."""
    return min(int(np.floor(float(probability) * 4294967296.0)), TWO_POW_32)


class _Draws:
    """The Philox words of one batch, keyed by (seed, step, sample id, position)."""

    def __init__(self, seed: int, step: int, sample_ids: np.ndarray):
        self.key = seed_key(seed)
        self.step = step
        self.sample_ids = sample_ids[:, None]

    def _words(self, c0, stream: int):
        return philox4x32((c0, self.sample_ids, self.step, stream), self.key)

    def per_position(self, stream: int, length: int) -> np.ndarray:
        """Streams 0 and 1: position p reads word ``p & 3`` of counter ``p >> 2``; [B, length]."""
        counters = (length + 3) // 4
        words = self._words(np.arange(counters, dtype=np.uint64), stream)
        return np.stack(words, axis=-1).reshape(len(self.sample_ids), 4 * counters)[:, :length]

    def token_words(self, length: int):
        """Stream 2 at counter p: (u_kind, u_repl, u_len) for every position; each [B, length]."""
        return self._words(np.arange(length, dtype=np.uint64), STREAM_TOKEN)[:3]

    def count_word(self) -> np.ndarray:
        """Stream 3, counter 0, word 0: the exact-mode rounding draw of each row; [B, 1]."""
        return self._words(np.uint64(0), STREAM_COUNT)[0]


def _starts_exact(unit_start, unit_index, draws, mask_prob, mask_multiple_length):
    """The k units of each row with the smallest (u_rank << 32 | unit index) are starts."""
    batch, length = unit_start.shape
    num_units = unit_start.sum(axis=1)
    count = np.floor(
        (mask_prob * num_units.astype(np.float64)) / float(mask_multiple_length)
        + draws.count_word()[:, 0].astype(np.float64) * _INV_TWO_POW_32
    )
    count = np.clip(count.astype(np.int64), 0, num_units)
    keys = (draws.per_position(STREAM_RANK, length).astype(np.uint64) << np.uint64(32)) | (
        unit_index.astype(np.uint64)
    )
    keys = np.where(unit_start, keys, np.uint64(np.iinfo(np.uint64).max))
    kth_key = np.sort(keys, axis=1)[np.arange(batch), np.maximum(count - 1, 0)]
    return unit_start & (keys <= kth_key[:, None]) & (count > 0)[:, None]


def _span_lengths(span_cdf: np.ndarray, u_len: np.ndarray):
    """ℓ = smallest m with u_len < span_cdf[m]; a constant when the table has a single step."""
    if len(span_cdf) < 2 or span_cdf[-2] == 0:
        return len(span_cdf) - 1
    return np.searchsorted(span_cdf, u_len, side="right")


def mask_tokens_reference(args: MaskTokensArgs):
    """``(source, target)`` per docs/masking-algorithm.md, on the device and dtype of the tokens.

    Takes the compiled op's arguments and trusts them; ``gpts_fairseq.masking.mask_tokens``
    validates them.
    """
    tokens = args.tokens
    device, dtype = tokens.device, tokens.dtype
    if tokens.numel() == 0:
        return tokens.clone(), tokens.clone()
    ids = tokens.detach().cpu().numpy().astype(np.int64, copy=False)
    batch, length = ids.shape
    maskable_table = args.maskable.detach().cpu().numpy().astype(bool, copy=False)
    word_start_table = args.word_start.detach().cpu().numpy().astype(bool, copy=False)
    replace_table = args.replace_cdf.detach().cpu().numpy().astype(np.int64, copy=False)
    span_table = args.span_cdf.detach().cpu().numpy().astype(np.int64, copy=False)
    draws = _Draws(int(args.seed), int(args.step), args.sample_ids.detach().cpu().numpy().astype(np.uint64))

    in_vocab = (ids >= 0) & (ids < len(maskable_table))
    safe_ids = np.where(in_vocab, ids, 0)
    is_maskable = in_vocab & maskable_table[safe_ids]

    whole_words = len(word_start_table) > 0
    if whole_words:
        previous_maskable = np.zeros_like(is_maskable)
        previous_maskable[:, 1:] = is_maskable[:, :-1]
        unit_start = is_maskable & (word_start_table[safe_ids] | ~previous_maskable)
    else:
        unit_start = is_maskable
    unit_index = np.cumsum(unit_start, axis=1) - 1

    if args.exact:
        starts = _starts_exact(unit_start, unit_index, draws, args.mask_prob, args.mask_multiple_length)
    else:
        select_threshold = threshold(args.mask_prob / float(args.mask_multiple_length))
        u_sel = draws.per_position(STREAM_SELECT, length)
        starts = unit_start & (u_sel.astype(np.int64) < select_threshold)

    u_kind, u_repl, u_len = draws.token_words(length)
    span_length = _span_lengths(span_table, u_len)
    if not whole_words and np.all(span_length == 1):
        selected = starts
    else:
        span_end = np.where(starts, unit_index + span_length, 0)
        selected = is_maskable & (unit_index < np.maximum.accumulate(span_end, axis=1))

    if whole_words:
        unit_position = np.where(unit_start, np.arange(length), -1)
        unit_position = np.maximum.accumulate(unit_position, axis=1)
        u_kind = np.take_along_axis(u_kind, np.maximum(unit_position, 0), axis=1)
    u_kind = u_kind.astype(np.int64)
    keep = u_kind < threshold(args.leave_unmasked_prob)
    randomise = ~keep & (u_kind < threshold(args.leave_unmasked_prob + args.random_token_prob))

    source = ids.copy()
    source[selected & ~keep & ~randomise] = args.mask_idx
    random_positions = selected & randomise
    source[random_positions] = np.searchsorted(
        replace_table, u_repl[random_positions], side="right"
    )
    target = np.where(selected, ids, args.pad_idx)

    def to_torch(array):
        return torch.from_numpy(array).to(device=device, dtype=dtype)

    return to_torch(source), to_torch(target)
