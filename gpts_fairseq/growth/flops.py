"""FLOPs of one training update of the active sub-network (matrix products only, as
``torch.utils.flop_counter`` counts them: 2 per multiply-add; the backward pass costs twice
the forward). tests/test_growth.py checks the formula against that counter on the model."""

from __future__ import annotations

import math

from .stages import Stage

BACKWARD_FACTOR = 2  # gradients w.r.t. inputs and weights: two products per forward product


def forward_flops(*, layers: int, embed_dim: int, ffn: int, row_tokens: int, rows: int,
                  masked_tokens: float, vocab: int) -> float:
    """Forward FLOPs: per token and active layer the q/k/v/output projections (8d²), the
    attention scores and their weighted sum (4td) and the FFN (4df); the LM head (dense d×d
    and output d×V) on the masked tokens only, as fairseq's masked_lm criterion asks."""
    d = embed_dim
    tokens = rows * row_tokens  # padding positions are computed too
    per_token_layer = 8 * d * d + 4 * row_tokens * d + 4 * d * ffn
    return float(tokens * layers * per_token_layer + masked_tokens * (2 * d * d + 2 * d * vocab))


def update_flops(stage: Stage, *, embed_dim: int, vocab: int, sequences: int, sample_tokens: int,
                 mask_prob: float) -> float:
    """FLOPs of one update on ``sequences`` rows of ``sample_tokens`` tokens folded into rows of
    the stage's length, with ``mask_prob`` of the tokens predicted (its expectation)."""
    row_tokens = min(stage.tokens, sample_tokens)
    rows = sequences * math.ceil(sample_tokens / row_tokens)
    forward = forward_flops(layers=stage.layers, embed_dim=embed_dim, ffn=stage.ffn, row_tokens=row_tokens,
                            rows=rows, masked_tokens=mask_prob * sequences * sample_tokens, vocab=vocab)
    return forward * (1 + BACKWARD_FACTOR)
