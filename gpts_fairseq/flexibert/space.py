"""Heterogeneous encoder descriptions: the per-layer string grammar and the design space.

A model is a tuple of ``LayerSpec``; its compact form (``--flexi-layers``) is one token per
layer, separated by commas::

    LAYERS := LAYER ("," LAYER)*
    LAYER  := OP ":h" HIDDEN ":a" HEADS ":f" FFN_DIM "x" FFN_STACKS
    OP     := sdp | wma | dft | dct | c5 | c9 | c13

e.g. ``sdp:h256:a4:f1024x1,dft:h256:a2:f512x3``. ``sdp`` is scaled dot-product self-attention,
``wma`` weighted multiplicative attention, ``dft`` the real part of a 2-D Fourier transform
(FNet), ``dct`` a 2-D orthonormal DCT-II, ``cK`` a dynamic separable convolution of kernel K.
``HEADS`` splits the hidden size into groups for every op (the transforms act on each head's
slice). The feed-forward block is ``FFN_STACKS`` linear layers of width ``FFN_DIM`` (GELU after
each) and a projection back to ``HIDDEN``.

A design space (``DesignSpace``, a YAML file such as ``space.yaml`` beside this module) lists
the allowed depths and, per layer, the allowed values of each field; a model is in the space
when every layer takes allowed values.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

OPS = ("sdp", "wma", "dft", "dct", "c5", "c9", "c13")  # ordered: neighbours are alike (edit costs)
ATTENTION_OPS = ("sdp", "wma")
TRANSFORM_OPS = ("dft", "dct")
CONV_KERNELS = {"c5": 5, "c9": 9, "c13": 13}
SPACE_FIELDS = ("layers", "ops", "hidden", "heads", "ffn_dim", "ffn_stacks")
DEFAULT_SPACE = Path(__file__).with_name("space.yaml")

_LAYER = re.compile(r"(?P<op>[a-z0-9]+):h(?P<hidden>\d+):a(?P<heads>\d+):f(?P<ffn_dim>\d+)x(?P<ffn_stacks>\d+)")
_GRAMMAR = "OP:hHIDDEN:aHEADS:fFFN_DIMxFFN_STACKS, e.g. sdp:h256:a4:f1024x1"


@dataclass(frozen=True, order=True)
class LayerSpec:
    op: str
    hidden: int
    heads: int
    ffn_dim: int
    ffn_stacks: int

    def __str__(self) -> str:
        return f"{self.op}:h{self.hidden}:a{self.heads}:f{self.ffn_dim}x{self.ffn_stacks}"


Architecture = tuple[LayerSpec, ...]


def format_layers(layers: Architecture) -> str:
    return ",".join(str(layer) for layer in layers)


def check_layer(layer: LayerSpec, option: str = "--flexi-layers") -> LayerSpec:
    """ValueError naming ``option`` when a layer cannot be built (whatever the design space)."""
    if layer.op not in OPS:
        raise ValueError(f"{option}: unknown operation {layer.op!r} in {layer}; valid: {', '.join(OPS)}")
    for name in ("hidden", "heads", "ffn_dim", "ffn_stacks"):
        if getattr(layer, name) < 1:
            raise ValueError(f"{option}: {name} must be >= 1 in {layer}")
    if layer.hidden % layer.heads:
        raise ValueError(f"{option}: hidden {layer.hidden} is not divisible by heads {layer.heads} in {layer}")
    return layer


def parse_layers(text: str, option: str = "--flexi-layers") -> Architecture:
    """The layers of a compact string; ValueError naming ``option`` and the grammar when bad."""
    tokens = [token.strip() for token in str(text or "").split(",")]
    if not any(tokens):
        raise ValueError(f"{option}: empty; expected comma-separated layers {_GRAMMAR}")
    layers = []
    for number, token in enumerate(tokens):
        match = _LAYER.fullmatch(token)
        if match is None:
            raise ValueError(f"{option}: layer {number} {token!r} does not read as {_GRAMMAR}")
        fields = match.groupdict()
        layers.append(check_layer(LayerSpec(fields.pop("op"), **{k: int(v) for k, v in fields.items()}), option))
    return tuple(layers)


def is_homogeneous(layers: Architecture) -> bool:
    return len(set(layers)) == 1


@dataclass(frozen=True)
class DesignSpace:
    """Allowed depths and per-layer field values (every layer draws from the same lists)."""

    layers: tuple[int, ...]
    ops: tuple[str, ...]
    hidden: tuple[int, ...]
    heads: tuple[int, ...]
    ffn_dim: tuple[int, ...]
    ffn_stacks: tuple[int, ...]

    @classmethod
    def from_dict(cls, data, source: str = "design space") -> "DesignSpace":
        """Checked design space; ValueError naming the field and its valid range."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping with fields {', '.join(SPACE_FIELDS)}")
        unknown = sorted(set(data) - set(SPACE_FIELDS))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(SPACE_FIELDS)}")
        values = {}
        for name in SPACE_FIELDS:
            items = data.get(name)
            if not isinstance(items, list) or not items:
                raise ValueError(f"{source}: field '{name}' must be a non-empty list")
            if len(set(map(str, items))) != len(items):
                raise ValueError(f"{source}: field '{name}' repeats a value: {items}")
            if name == "ops":
                bad = [op for op in items if op not in OPS]
                if bad:
                    raise ValueError(f"{source}: field 'ops' has unknown operation(s) {bad}; valid: {', '.join(OPS)}")
                values[name] = tuple(op for op in OPS if op in items)  # the ordered list's order
            else:
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
                    raise ValueError(f"{source}: field '{name}' must hold integers >= 1, got {items}")
                values[name] = tuple(sorted(items))
        bad = [(h, a) for h in values["hidden"] for a in values["heads"] if h % a]
        if bad:
            raise ValueError(f"{source}: fields 'hidden' and 'heads': hidden {bad[0][0]} is not divisible by "
                             f"heads {bad[0][1]}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_SPACE) -> "DesignSpace":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--space: no file {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"--space {path}: not valid YAML ({error})") from error
        return cls.from_dict(data, f"--space {path}")

    def to_dict(self) -> dict:
        return {name: list(getattr(self, name)) for name in SPACE_FIELDS}

    def layer_choices(self) -> list[LayerSpec]:
        return [LayerSpec(*values) for values in itertools.product(
            self.ops, self.hidden, self.heads, self.ffn_dim, self.ffn_stacks)]

    def size(self) -> int:
        per_layer = len(self.layer_choices())
        return sum(per_layer ** depth for depth in self.layers)

    def contains(self, layers: Architecture) -> bool:
        choices = set(self.layer_choices())
        return len(layers) in self.layers and all(layer in choices for layer in layers)

    def library(self, size: int, seed: int) -> list[Architecture]:
        """Every model when the space has at most ``size``; otherwise every homogeneous model
        plus distinct random heterogeneous ones (seeded) up to ``size``, sorted."""
        choices = self.layer_choices()
        if self.size() <= size:
            return sorted(tuple(layers) for depth in self.layers for layers in itertools.product(choices, repeat=depth))
        models = {tuple([layer] * depth) for depth in self.layers for layer in choices}
        if len(models) > size:
            raise ValueError(f"--library-size {size} is below the {len(models)} homogeneous models of the space")
        rng = random.Random(seed)
        limit = self.size()
        while len(models) < min(size, limit):
            depth = rng.choice(self.layers)
            models.add(tuple(rng.choice(choices) for _ in range(depth)))
        return sorted(models)


def log2_ratio(a: int, b: int) -> float:
    return abs(math.log2(a) - math.log2(b))
