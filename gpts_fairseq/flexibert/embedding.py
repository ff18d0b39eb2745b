"""Architecture embedding: a weighted edit distance between models, classical MDS, neighbours.

FlexiBERT's Transformer2vec embeds model graphs by graph-edit distance (node cost = distance in
an ordered list of operations) and multidimensional scaling. The graphs are chains of layers,
so an edit distance over per-layer tokens orders models the same and costs microseconds:

- substituting layer a by b costs the sum of per-field costs, each in [0, 1]: the operations'
  distance in ``OPS`` divided by its length - 1 (weight 1), min(1, |log2| ratio) of the hidden
  sizes (weight 1), of the heads, of the FFN widths (weight 0.5 each), and min(1, |difference|
  / 2) of the FFN stack counts (weight 0.5);
- inserting or deleting a layer costs ``INDEL_COST`` = 2, at least half the largest
  substitution (3.5), so the edit distance is a metric (each field cost is a capped metric).
"""

from __future__ import annotations

import numpy as np

from .space import OPS, Architecture, LayerSpec, log2_ratio

FIELD_WEIGHTS = {"op": 1.0, "hidden": 1.0, "heads": 0.5, "ffn_dim": 0.5, "ffn_stacks": 0.5}
INDEL_COST = 2.0
EMBEDDING_DIMS = 16


def substitution_cost(a: LayerSpec, b: LayerSpec) -> float:
    costs = {
        "op": abs(OPS.index(a.op) - OPS.index(b.op)) / (len(OPS) - 1),
        "hidden": min(1.0, log2_ratio(a.hidden, b.hidden)),
        "heads": min(1.0, log2_ratio(a.heads, b.heads)),
        "ffn_dim": min(1.0, log2_ratio(a.ffn_dim, b.ffn_dim)),
        "ffn_stacks": min(1.0, abs(a.ffn_stacks - b.ffn_stacks) / 2),
    }
    return sum(FIELD_WEIGHTS[name] * cost for name, cost in costs.items())


def edit_distance(a: Architecture, b: Architecture) -> float:
    """Weighted Levenshtein distance between two layer sequences."""
    previous = [j * INDEL_COST for j in range(len(b) + 1)]
    for i, layer_a in enumerate(a, 1):
        current = [i * INDEL_COST]
        for j, layer_b in enumerate(b, 1):
            current.append(min(previous[j] + INDEL_COST, current[j - 1] + INDEL_COST,
                               previous[j - 1] + substitution_cost(layer_a, layer_b)))
        previous = current
    return previous[-1]


def distance_matrix(models: list[Architecture]) -> np.ndarray:
    """All pairwise edit distances (the same dynamic programme, vectorised over one row)."""
    layers = sorted({layer for model in models for layer in model})
    index = {layer: i for i, layer in enumerate(layers)}
    substitution = np.array([[substitution_cost(a, b) for b in layers] for a in layers])
    depth = max(len(model) for model in models)
    codes = np.full((len(models), depth), -1)
    for row, model in enumerate(models):
        codes[row, :len(model)] = [index[layer] for layer in model]
    lengths = np.array([len(model) for model in models])
    out = np.zeros((len(models), len(models)))
    columns = np.arange(len(models))
    for row, model in enumerate(models):
        # table[j] = distance from model[:i] to every other model's first j layers
        table = [np.full(len(models), j * INDEL_COST) for j in range(depth + 1)]
        for i in range(1, len(model) + 1):
            cost = substitution[codes[row, i - 1]][codes.clip(min=0)]  # N x depth
            current = [np.full(len(models), i * INDEL_COST)]
            for j in range(1, depth + 1):
                current.append(np.minimum(np.minimum(table[j] + INDEL_COST, current[j - 1] + INDEL_COST),
                                          table[j - 1] + cost[:, j - 1]))
            table = current
        out[row] = np.stack(table)[lengths, columns]
    return out


def classical_mds(distances: np.ndarray, dims: int = EMBEDDING_DIMS) -> np.ndarray:
    """Torgerson's classical MDS: coordinates whose Euclidean distances approximate
    ``distances`` (eigenvectors of the double-centred squared distances), signs fixed so that
    each axis' largest entry is positive; axes beyond the positive eigenvalues are zero."""
    n = distances.shape[0]
    centring = np.eye(n) - np.full((n, n), 1.0 / n)
    gram = -0.5 * centring @ (distances ** 2) @ centring
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:dims]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    coordinates = vectors * signs * np.sqrt(values)
    if coordinates.shape[1] < dims:
        coordinates = np.pad(coordinates, ((0, 0), (0, dims - coordinates.shape[1])))
    return coordinates


def nearest(distances_from: np.ndarray, candidates: list[int]) -> int:
    """The candidate at the smallest distance (the first of equals, in ``candidates`` order)."""
    if not candidates:
        raise ValueError("nearest: no candidates")
    return min(candidates, key=lambda c: (distances_from[c], candidates.index(c)))
