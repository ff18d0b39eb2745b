"""The masking hyperparameters ψ and the fixed tables of a masking set-up.

``Psi`` changes while training runs (the bandit picks it); ``MaskingSpec`` is built once per
vocabulary and options, and holds the lookup tables the op reads (docs/masking-algorithm.md).
"""

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..psi_names import PSI_FIELDS
from .reference import TWO_POW_32, threshold


def check_probability(option: str, value) -> float:
    """``value`` as a float in [0, 1]; ValueError naming ``option`` otherwise (NaN included)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{option} must be in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class Psi:
    """ψ = (ρ, γ, λ): select with probability ρ; a selected token is kept with probability γ,
    replaced by a random token with probability λ, and becomes ``<mask>`` otherwise."""

    mask_prob: float
    leave_unmasked_prob: float
    random_token_prob: float

    def __post_init__(self):
        values = self.validate(self.mask_prob, self.leave_unmasked_prob, self.random_token_prob)
        for name, value in zip(PSI_FIELDS, values):
            object.__setattr__(self, name, value)

    @classmethod
    def from_options(cls, mask_prob, leave_unmasked_prob, random_token_prob, *, names=PSI_FIELDS):
        """Build ψ, naming ``names`` (e.g. ``("--mask-prob", ...)``) in error messages."""
        return cls(*cls.validate(mask_prob, leave_unmasked_prob, random_token_prob, names=names))

    @staticmethod
    def validate(mask_prob, leave_unmasked_prob, random_token_prob, *, names=PSI_FIELDS):
        """The three values as floats; ValueError naming the option when one is out of range."""
        values = []
        for name, value in zip(names, (mask_prob, leave_unmasked_prob, random_token_prob)):
            values.append(check_probability(name, value))
        if values[1] + values[2] > 1.0:
            raise ValueError(
                f"{names[1]} + {names[2]} must be <= 1, got {values[1]} + {values[2]} = "
                f"{values[1] + values[2]}"
            )
        return tuple(values)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in PSI_FIELDS}


def span_length_cdf(mask_multiple_length: int, mask_stdev: float) -> np.ndarray:
    """``span_cdf``: fixed length L, or fairseq's ``max(0, round(normal(L, σ)))`` truncated at
    ``ceil(L + 6σ)`` with the tail lumped into the last length."""
    if mask_stdev == 0.0:
        return np.array([0] * mask_multiple_length + [TWO_POW_32], dtype=np.int64)
    longest = math.ceil(mask_multiple_length + 6.0 * mask_stdev)

    def at_most(length):  # P(max(0, round(N(L, σ))) <= length)
        z = (length + 0.5 - mask_multiple_length) / (mask_stdev * math.sqrt(2.0))
        return 0.5 * math.erfc(-z)

    cdf = [threshold(at_most(length)) for length in range(longest)] + [TWO_POW_32]
    return np.array(cdf, dtype=np.int64)


def replacement_cdf(weights: np.ndarray) -> np.ndarray:
    """``replace_cdf`` from non-negative weights (zero for ids that must never be drawn)."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    cdf = np.floor(cumulative / cumulative[-1] * 4294967296.0).astype(np.int64)
    cdf[int(np.flatnonzero(weights > 0)[-1]) :] = TWO_POW_32
    return cdf


def _integer(name, value) -> int:
    """``value`` as an int (ints, numpy ints, one-element integer tensors; not bools)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def validate_span(mask_multiple_length, mask_stdev, *, names=("mask_multiple_length", "mask_stdev")):
    """The span options as (int >= 1, finite float >= 0); ValueError naming ``names`` (e.g. the
    command-line options) otherwise."""
    length = _integer(names[0], mask_multiple_length)
    if length < 1:
        raise ValueError(f"{names[0]} must be >= 1, got {length}")
    try:
        stdev = float(mask_stdev)
    except (TypeError, ValueError):
        raise ValueError(f"{names[1]} must be a number >= 0, got {mask_stdev!r}") from None
    if not 0.0 <= stdev < math.inf:
        raise ValueError(f"{names[1]} must be finite and >= 0, got {stdev}")
    return length, stdev


def _check_index(name, value, vocab_size):
    value = _integer(name, value)
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}) (the vocabulary), got {value}")
    return value


@dataclass(frozen=True, eq=False)
class MaskingSpec:
    """Everything about masking that stays fixed during a run, as the op's lookup tables."""

    vocab_size: int
    mask_idx: int
    pad_idx: int
    exact: bool
    mask_multiple_length: int
    mask_stdev: float
    maskable: torch.Tensor  # bool [V]
    word_start: torch.Tensor  # bool [V], or [0] without whole-word masking
    replace_cdf: torch.Tensor  # int64 [V]
    span_cdf: torch.Tensor  # int64 [Lmax + 1]
    _device_tables: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        *,
        vocab_size: int,
        special_ids,
        mask_idx: int,
        pad_idx: int,
        exact: bool = True,
        word_start=None,
        counts=None,
        freq_weighted: bool = False,
        mask_multiple_length: int = 1,
        mask_stdev: float = 0.0,
    ) -> "MaskingSpec":
        """Validate the options and build the tables.

        ``special_ids``: ids never selected nor drawn as replacements (pad and mask are added).
        ``word_start``: per-id "begins a word" flags for whole-word masking, or None.
        ``counts``: per-id frequencies, used when ``freq_weighted`` (fairseq's
        ``--freq-weighted-replacement``); otherwise replacements are uniform.
        """
        vocab_size = _integer("vocab_size", vocab_size)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        mask_idx = _check_index("mask_idx", mask_idx, vocab_size)
        pad_idx = _check_index("pad_idx", pad_idx, vocab_size)
        mask_multiple_length, mask_stdev = validate_span(mask_multiple_length, mask_stdev)

        maskable = np.ones(vocab_size, dtype=bool)
        for special in list(special_ids) + [mask_idx, pad_idx]:
            maskable[_check_index("special_ids entry", special, vocab_size)] = False
        if not maskable.any():
            raise ValueError("no maskable token id: special_ids, mask_idx and pad_idx cover the vocabulary")

        if word_start is None:
            word_start_table = np.zeros(0, dtype=bool)
        else:
            word_start_table = np.asarray(
                word_start.cpu() if isinstance(word_start, torch.Tensor) else word_start
            ).astype(bool)
            if word_start_table.shape != (vocab_size,):
                raise ValueError(
                    f"word_start must have one flag per vocabulary id ({vocab_size}), "
                    f"got shape {tuple(word_start_table.shape)}"
                )

        if freq_weighted:
            if counts is None:
                raise ValueError("freq_weighted replacement needs counts (one per vocabulary id)")
            weights = np.asarray(
                counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64
            )
            if weights.shape != (vocab_size,):
                raise ValueError(
                    f"counts must have one entry per vocabulary id ({vocab_size}), "
                    f"got shape {tuple(weights.shape)}"
                )
            if not np.all(np.isfinite(weights) & (weights >= 0)):
                raise ValueError("counts must be finite and >= 0")
        else:
            weights = np.ones(vocab_size, dtype=np.float64)
        weights = np.where(maskable, weights, 0.0)
        if not (weights > 0).any():
            raise ValueError("no maskable token id has a positive count: nothing to draw random replacements from")

        return cls(
            vocab_size=vocab_size,
            mask_idx=mask_idx,
            pad_idx=pad_idx,
            exact=bool(exact),
            mask_multiple_length=mask_multiple_length,
            mask_stdev=mask_stdev,
            maskable=torch.from_numpy(maskable),
            word_start=torch.from_numpy(word_start_table),
            replace_cdf=torch.from_numpy(replacement_cdf(weights)),
            span_cdf=torch.from_numpy(span_length_cdf(mask_multiple_length, mask_stdev)),
        )

    def tables(self, device) -> tuple:
        """(maskable, word_start, replace_cdf, span_cdf) on ``device``, copied once per device."""
        device = torch.device(device)
        if device not in self._device_tables:
            self._device_tables[device] = tuple(
                table.to(device)
                for table in (self.maskable, self.word_start, self.replace_cdf, self.span_cdf)
            )
        return self._device_tables[device]
