"""What fairseq's RoBERTa does around its encoder, for encoders of our own.

- ``default_max_positions``: the defaulting of ``RobertaModel.build_model`` (``max_positions``
  from ``tokens_per_sample`` or the task) for a model that builds its own encoder;
- ``wrap_encoder_layer``: the FSDP wrapping of ``TransformerEncoderBase.build_encoder_layer``
  for a layer of our own class (activation checkpointing is refused by its users);
- ``truncatable_encoder`` / ``truncated_states``: the steps of
  ``TransformerEncoderBase.forward_scriptable`` up to one layer, for features that need the
  encoder only that far.
"""

import torch
from fairseq.distributed import fsdp_wrap
from fairseq.models.roberta.model import RobertaEncoder
from fairseq.models.transformer import TransformerEncoderBase
from fairseq.utils import safe_hasattr


def default_max_positions(args, task) -> None:
    """``args.max_positions`` as ``RobertaModel.build_model`` sets it when it is missing."""
    if not safe_hasattr(args, "max_positions"):
        if not safe_hasattr(args, "tokens_per_sample"):
            args.tokens_per_sample = task.max_positions()
        args.max_positions = args.tokens_per_sample


def wrap_encoder_layer(layer: torch.nn.Module, cfg) -> torch.nn.Module:
    """``layer`` wrapped as ``TransformerEncoderBase.build_encoder_layer`` wraps its own layers
    (FSDP when it is active; the layer itself otherwise)."""
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap)


def truncatable_encoder(model) -> TransformerEncoderBase | None:
    """The TransformerEncoder of a RoBERTa-style model whose forward is fairseq's own (so
    ``truncated_states`` runs the same steps), or None."""
    outer = getattr(model, "encoder", None)
    inner = getattr(outer, "sentence_encoder", None)
    stock = (isinstance(outer, RobertaEncoder) and isinstance(inner, TransformerEncoderBase)
             and type(outer).extract_features is RobertaEncoder.extract_features
             and type(inner).forward_scriptable is TransformerEncoderBase.forward_scriptable
             and type(inner).forward_embedding is TransformerEncoderBase.forward_embedding)
    return inner if stock else None


def truncated_states(encoder: TransformerEncoderBase, tokens: torch.Tensor, index: int) -> torch.Tensor:
    """T x B x C: the state after layer ``index``, by the steps of fairseq's
    ``TransformerEncoderBase.forward_scriptable`` up to it (embeddings, pads zeroed, the padding
    mask when a block is padded, always on XLA): equal to its ``encoder_states[index]`` bit for bit."""
    padding = tokens.eq(encoder.padding_idx)
    has_pads = torch.tensor(tokens.device.type == "xla") or padding.any()
    x, _ = encoder.forward_embedding(tokens)
    x = (x * (1 - padding.unsqueeze(-1).type_as(x) * has_pads.type_as(x))).transpose(0, 1)
    mask = padding if has_pads else None
    for i in range(index):
        out = encoder.layers[i](x, encoder_padding_mask=mask)
        x = out[0] if isinstance(out, tuple) else out  # layers built with return_fc give (x, fc)
    return x
