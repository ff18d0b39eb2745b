"""The search space of the elastic RoBERTa (AutoTinyBERT's): one set of dims for every layer.

A sub-architecture is (layers, hidden, heads, ffn); its attention width is
``d_qkv = heads * head_dim`` (AutoTinyBERT fixes 64 dims per head). Every dim is a range
``MIN:MAX[:STEP]``; the super-net is allocated at the largest value of each.

Tied dims: stock fairseq attention (``MultiheadAttention``) projects q, k and v to the hidden
width, so a sub-net is a plain RoBERTa only when ``heads * head_dim == hidden``. With
``tie_qkv`` the space keeps only such sub-nets (heads follow hidden: ``heads = hidden /
head_dim``, and the heads range is not an independent dim); without it the space is
AutoTinyBERT's, and a sub-net with ``d_qkv != hidden`` is extracted as a single-point
``gpts_roberta_super`` instead of a ``roberta`` checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIMS = ("layers", "hidden", "heads", "ffn")
OPTION = {dim: f"--supernet-{dim}" for dim in DIMS}
# AutoTinyBERT's "fast" development rules (Yin et al. 2021, Sec. 5): d_f in [1.6, 1.9] * d_m,
# d_qkv in [0.7, 1.0] * d_m
FAST_FFN = (1.6, 1.9)
FAST_QKV = (0.7, 1.0)


@dataclass(frozen=True, order=True)
class SubArch:
    layers: int
    hidden: int
    heads: int
    ffn: int

    def __str__(self) -> str:
        return f"{self.layers},{self.hidden},{self.heads},{self.ffn}"

    @classmethod
    def parse(cls, text: str, option: str = "--supernet-arch") -> "SubArch":
        try:
            values = [int(part) for part in str(text).split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise ValueError(f"{option} must be 'LAYERS,HIDDEN,HEADS,FFN' (four integers), got {text!r}")
        return cls(*values)


def parse_range(text: str, option: str) -> tuple[int, ...]:
    """``MIN:MAX[:STEP]`` -> its values; ValueError naming ``option`` unless 1 <= MIN <= MAX,
    STEP >= 1 and STEP divides MAX - MIN."""
    try:
        parts = [int(part) for part in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) not in (2, 3):
        raise ValueError(f"{option} must be MIN:MAX[:STEP] (integers), got {text!r}")
    low, high, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
    if not (1 <= low <= high) or step < 1 or (high - low) % step:
        raise ValueError(f"{option} must satisfy 1 <= MIN <= MAX, STEP >= 1 and STEP dividing MAX - MIN; "
                         f"got {text!r}")
    return tuple(range(low, high + 1, step))


@dataclass(frozen=True)
class Space:
    layers: tuple[int, ...]
    hidden: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    head_dim: int
    tie_qkv: bool

    @classmethod
    def from_options(cls, layers: str, hidden: str, heads: str, ffn: str, head_dim: int, tie_qkv: bool) -> "Space":
        if int(head_dim) != head_dim or head_dim < 1:
            raise ValueError(f"--supernet-head-dim must be an integer >= 1, got {head_dim}")
        ranges = {dim: parse_range(text, OPTION[dim]) for dim, text in
                  dict(layers=layers, hidden=hidden, heads=heads, ffn=ffn).items()}
        if tie_qkv:
            odd = [h for h in ranges["hidden"] if h % head_dim]
            if odd:
                raise ValueError(f"--supernet-tie-qkv needs every --supernet-hidden value divisible by "
                                 f"--supernet-head-dim {head_dim}; {odd[0]} is not")
            ranges["heads"] = tuple(h // head_dim for h in ranges["hidden"])
        return cls(**ranges, head_dim=int(head_dim), tie_qkv=bool(tie_qkv))

    def heads_for(self, hidden: int) -> tuple[int, ...]:
        return (hidden // self.head_dim,) if self.tie_qkv else self.heads

    @property
    def largest(self) -> SubArch:
        return SubArch(max(self.layers), max(self.hidden), max(self.heads_for(max(self.hidden))), max(self.ffn))

    @property
    def smallest(self) -> SubArch:
        return SubArch(min(self.layers), min(self.hidden), min(self.heads_for(min(self.hidden))), min(self.ffn))

    def contains(self, arch: SubArch) -> bool:
        return (arch.layers in self.layers and arch.hidden in self.hidden and arch.ffn in self.ffn
                and arch.heads in self.heads_for(arch.hidden))

    def check(self, arch: SubArch, option: str = "--supernet-arch") -> SubArch:
        if not self.contains(arch):
            raise ValueError(f"{option} {arch} is not in the search space (layers {_span(self.layers)}, hidden "
                             f"{_span(self.hidden)}, heads {'hidden/head_dim' if self.tie_qkv else _span(self.heads)}, "
                             f"ffn {_span(self.ffn)})")
        return arch

    def qkv(self, arch: SubArch) -> int:
        return arch.heads * self.head_dim

    def size(self) -> int:
        heads = 1 if self.tie_qkv else len(self.heads)
        return len(self.layers) * len(self.hidden) * heads * len(self.ffn)

    def sample(self, rng: np.random.Generator) -> SubArch:
        """Each dim uniform over its values (AutoTinyBERT's sampler)."""
        hidden = int(rng.choice(self.hidden))
        return SubArch(int(rng.choice(self.layers)), hidden, int(rng.choice(self.heads_for(hidden))),
                       int(rng.choice(self.ffn)))

    def is_fast(self, arch: SubArch) -> bool:
        """AutoTinyBERT's fast-development rules."""
        d = arch.hidden
        return (FAST_FFN[0] * d <= arch.ffn <= FAST_FFN[1] * d
                and FAST_QKV[0] * d <= self.qkv(arch) <= FAST_QKV[1] * d)

    def mutate(self, arch: SubArch, rng: np.random.Generator) -> SubArch:
        """AutoTinyBERT's mutation: layers +-1, hidden +-1 step, ffn +-2 steps, heads +-2, each
        clipped to its range (heads re-derived from hidden when tied)."""
        def move(values, value, reach):
            index = values.index(value) + int(rng.integers(-reach, reach + 1))
            return values[min(max(index, 0), len(values) - 1)]

        hidden = move(self.hidden, arch.hidden, 1)
        heads = self.heads_for(hidden)[0] if self.tie_qkv else move(self.heads, arch.heads, 2)
        return SubArch(move(self.layers, arch.layers, 1), hidden, heads, move(self.ffn, arch.ffn, 2))


def _span(values: tuple[int, ...]) -> str:
    return f"{values[0]}..{values[-1]}"


def sub_arch_params(space: Space, arch: SubArch, vocab: int, positions: int) -> int:
    """Parameters the sub-net uses: embeddings (tokens, positions, LayerNorm), its layers and the
    LM head (dense, LayerNorm, output bias; the output matrix is tied to the token embeddings).
    ``positions`` is the positional table's row count."""
    d, q, f = arch.hidden, space.qkv(arch), arch.ffn
    layer = 3 * (d * q + q) + (q * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    return vocab * d + positions * d + 2 * d + arch.layers * layer + (d * d + d) + 2 * d + vocab
