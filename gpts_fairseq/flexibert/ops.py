"""The token-mixing operations of a FlexiBERT layer.

Every mixer maps ``x`` (T x B x C) and ``padding_mask`` (B x T, True at padding, or None) to
T x B x C, and keeps padding out of its result: the output at real positions is what the
sequence alone (without its padding) would give, and the output at padded positions is zero.

- ``sdp``: fairseq's ``MultiheadAttention`` (scaled dot-product), padded keys masked.
- ``wma``: weighted multiplicative attention, score ``q W_h kᵀ / √d`` with a learned
  d x d matrix per head (Luong et al. 2015, "general" score), W initialised to the identity.
- ``dft``: FNet's mixing (Lee-Thorp et al. 2022): the real part of the 2-D DFT over the
  sequence and each head's slice of the hidden size, over the sequence's own length.
- ``dct``: the orthonormal 2-D DCT-II over the same axes.
- ``c5``/``c9``/``c13``: input projection, fairseq's ``DynamicConv1dTBC`` (kernels predicted
  per position, softmax-normalised, shared within a head: Wu et al. 2019), output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .space import ATTENTION_OPS, CONV_KERNELS, TRANSFORM_OPS, LayerSpec


def _valid(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """B x T boolean: True at real positions."""
    if padding_mask is None:
        return torch.ones(x.shape[1], x.shape[0], dtype=torch.bool, device=x.device)
    return ~padding_mask


def _zero_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return x * valid.transpose(0, 1).unsqueeze(-1).to(x.dtype)


def sequence_positions(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each position among its sequence's real positions, B x T; lengths, B)."""
    positions = valid.long().cumsum(1) - 1
    return positions.clamp(min=0), valid.sum(1)


def dft_matrices(valid: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the real and imaginary parts' magnitudes (cos, sin; B x T x T) of the DFT
    over its real positions, zero in every row or column of a padded position."""
    positions, lengths = sequence_positions(valid)
    length = lengths.clamp(min=1).view(-1, 1, 1)
    phase = (positions.unsqueeze(2) * positions.unsqueeze(1)) % length  # exact integers
    angle = phase.to(torch.float64) * (2 * math.pi) / length
    keep = (valid.unsqueeze(2) & valid.unsqueeze(1)).to(torch.float64)
    return (torch.cos(angle) * keep).to(dtype), (torch.sin(angle) * keep).to(dtype)


def dct_matrices(valid: torch.Tensor, dtype) -> torch.Tensor:
    """Per sequence, the orthonormal DCT-II matrix (B x T x T, row = frequency) over its real
    positions, zero in every row or column of a padded position."""
    positions, lengths = sequence_positions(valid)
    length = lengths.clamp(min=1).view(-1, 1, 1).to(torch.float64)
    k = positions.unsqueeze(2).to(torch.float64)
    n = positions.unsqueeze(1).to(torch.float64)
    scale = torch.where(k == 0, torch.sqrt(1.0 / length), torch.sqrt(2.0 / length))
    matrix = scale * torch.cos(math.pi * (2 * n + 1) * k / (2 * length))
    keep = (valid.unsqueeze(2) & valid.unsqueeze(1)).to(torch.float64)
    return (matrix * keep).to(dtype)


class TransformMixer(nn.Module):
    """``dft`` or ``dct`` over (sequence, head slice); no parameters."""

    def __init__(self, op: str, hidden: int, heads: int):
        super().__init__()
        if op not in TRANSFORM_OPS:
            raise ValueError(f"TransformMixer: op must be one of {TRANSFORM_OPS}, got {op!r}")
        self.op, self.heads, self.head_dim = op, heads, hidden // heads

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        valid = _valid(x, padding_mask)
        seq_len, batch, _ = x.shape
        slices = x.permute(1, 0, 2).reshape(batch, seq_len, self.heads, self.head_dim)
        ones = torch.ones(1, self.head_dim, dtype=torch.bool, device=x.device)
        if self.op == "dft":
            cos_t, sin_t = dft_matrices(valid, x.dtype)
            cos_h, sin_h = (m[0] for m in dft_matrices(ones, x.dtype))
            out = (torch.einsum("bij,bjar,rs->bias", cos_t, slices, cos_h)
                   - torch.einsum("bij,bjar,rs->bias", sin_t, slices, sin_h))
        else:
            seq_dct, head_dct = dct_matrices(valid, x.dtype), dct_matrices(ones, x.dtype)[0]
            out = torch.einsum("bij,bjar,sr->bias", seq_dct, slices, head_dct)
        return out.reshape(batch, seq_len, -1).transpose(0, 1)


class AttentionMixer(nn.Module):
    """``sdp`` (fairseq's MultiheadAttention) or ``wma`` (a learned bilinear score per head)."""

    def __init__(self, op: str, hidden: int, heads: int, attention_dropout: float):
        super().__init__()
        from fairseq.modules import MultiheadAttention

        if op not in ATTENTION_OPS:
            raise ValueError(f"AttentionMixer: op must be one of {ATTENTION_OPS}, got {op!r}")
        self.op = op
        self.attention = MultiheadAttention(hidden, heads, dropout=attention_dropout, self_attention=True)
        if op == "wma":
            head_dim = hidden // heads
            self.score_weight = nn.Parameter(torch.eye(head_dim).repeat(heads, 1, 1))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        valid = _valid(x, padding_mask)
        key_padding = ~valid
        if self.op == "sdp":
            out, _ = self.attention(x, x, x, key_padding_mask=key_padding, need_weights=False)
        else:
            out = self._weighted(x, key_padding)
        return _zero_padding(out, valid)

    def _weighted(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        attn = self.attention
        seq_len, batch, hidden = x.shape
        heads, head_dim = attn.num_heads, attn.head_dim

        def split(t):  # T x B x C -> B x H x T x d
            return t.reshape(seq_len, batch, heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        scores = torch.einsum("bhid,hde,bhje->bhij", q, self.score_weight, k) / math.sqrt(head_dim)
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        weights = F.dropout(torch.softmax(scores, dim=-1), p=attn.dropout_module.p, training=self.training)
        out = torch.einsum("bhij,bhjd->ibhd", weights, v).reshape(seq_len, batch, hidden)
        return attn.out_proj(out)


class ConvMixer(nn.Module):
    """Input projection, dynamic lightweight convolution (centred kernel), output projection."""

    def __init__(self, op: str, hidden: int, heads: int, weight_dropout: float):
        super().__init__()
        from fairseq.modules.dynamic_convolution import DynamicConv1dTBC

        if op not in CONV_KERNELS:
            raise ValueError(f"ConvMixer: op must be one of {tuple(CONV_KERNELS)}, got {op!r}")
        kernel = CONV_KERNELS[op]
        self.in_proj = nn.Linear(hidden, hidden)
        self.conv = DynamicConv1dTBC(hidden, kernel_size=kernel, padding_l=kernel // 2, num_heads=heads,
                                     weight_dropout=weight_dropout, weight_softmax=True, bias=False)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        valid = _valid(x, padding_mask)
        # zeros at padding = the zeros the convolution reads beyond a sequence's ends
        hidden = _zero_padding(self.in_proj(x), valid)
        return _zero_padding(self.out_proj(self.conv(hidden)), valid)


def build_mixer(layer: LayerSpec, attention_dropout: float = 0.0) -> nn.Module:
    if layer.op in ATTENTION_OPS:
        return AttentionMixer(layer.op, layer.hidden, layer.heads, attention_dropout)
    if layer.op in TRANSFORM_OPS:
        return TransformMixer(layer.op, layer.hidden, layer.heads)
    return ConvMixer(layer.op, layer.hidden, layer.heads, attention_dropout)

