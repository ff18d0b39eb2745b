"""fairseq architecture ``gpts_flexibert``: a RoBERTa whose layers each have their own
operation, hidden size, heads and feed-forward block (FlexiBERT, Tuli et al., JAIR 2023).

``--flexi-layers`` takes the compact per-layer string of ``gpts_fairseq.flexibert.space`` or a
``.yaml``/``.yml`` file holding a list of such layer strings; it is checked when the command
line is parsed (an error names the option) and stored in the config as the compact string,
so a checkpoint carries its architecture. Each layer is post-LN: ``x = LN(x + mix(x))``, then
``x = LN(x + FFN(x))``. A linear projection joins layers of different hidden sizes; the
embeddings and the tied LM head have the first layer's size (a last projection maps back to it).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from fairseq.models import FairseqEncoder, register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel, base_architecture
from fairseq.modules import LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr
from torch import nn

from .ops import build_mixer
from .space import Architecture, LayerSpec, format_layers, parse_layers

ARCH = "gpts_flexibert"
DEFAULT_LAYERS = "sdp:h128:a2:f512x1,dft:h128:a2:f512x1"
OPTION = "--flexi-layers"


def resolve_layers(value: str) -> Architecture:
    """Layers from the compact string or a YAML file listing layer strings."""
    text = str(value or "").strip()
    if text.endswith((".yaml", ".yml")):
        import yaml

        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{OPTION}: no file {path}")
        items = yaml.safe_load(path.read_text())
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"{OPTION} {path}: expected a YAML list of layer strings")
        text = ",".join(items)
    return parse_layers(text, OPTION)


def _layers_argument(value: str) -> str:
    """argparse type: the canonical compact string, or an error naming the option."""
    try:
        return format_layers(resolve_layers(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"{OPTION}: ")) from error


class FeedForward(nn.Module):
    """``stacks`` linear layers of width ``dim`` (GELU after each), then back to ``hidden``."""

    def __init__(self, hidden: int, dim: int, stacks: int, dropout: float):
        super().__init__()
        widths = [hidden] + [dim] * stacks
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.output = nn.Linear(dim, hidden)
        self.dropout = dropout

    def forward(self, x):
        for layer in self.hidden_layers:
            x = F.dropout(F.gelu(layer(x)), p=self.dropout, training=self.training)
        return self.output(x)


class FlexiLayer(nn.Module):
    def __init__(self, spec: LayerSpec, dropout: float, attention_dropout: float):
        super().__init__()
        self.spec = spec
        self.mixer = build_mixer(spec, attention_dropout)
        self.mixer_norm = LayerNorm(spec.hidden)
        self.ffn = FeedForward(spec.hidden, spec.ffn_dim, spec.ffn_stacks, dropout)
        self.ffn_norm = LayerNorm(spec.hidden)
        self.dropout = dropout

    def forward(self, x, padding_mask):
        x = self.mixer_norm(x + F.dropout(self.mixer(x, padding_mask), p=self.dropout, training=self.training))
        return self.ffn_norm(x + F.dropout(self.ffn(x), p=self.dropout, training=self.training))


class FlexiSentenceEncoder(FairseqEncoder):
    """Embeddings, the heterogeneous layers with projections between sizes; T x B x C out."""

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding, layers: Architecture):
        super().__init__(dictionary)
        embed_dim = embed_tokens.embedding_dim
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.embed_positions = PositionalEmbedding(args.max_positions, embed_dim, self.padding_idx, learned=True)
        self.layernorm_embedding = LayerNorm(embed_dim)
        self.dropout = args.dropout
        self.layers = nn.ModuleList(FlexiLayer(spec, args.dropout, args.attention_dropout) for spec in layers)
        sizes = [embed_dim] + [spec.hidden for spec in layers] + [embed_dim]
        # projections[i] feeds layer i (i = len(layers): the output back to the embedding size)
        self.projections = nn.ModuleDict({str(i): nn.Linear(a, b) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
                                          if a != b})

    def forward(self, src_tokens, return_all_hiddens=False, token_embeddings=None, **unused):
        padding_mask = src_tokens.eq(self.padding_idx)
        x = self.embed_tokens(src_tokens) if token_embeddings is None else token_embeddings
        x = self.layernorm_embedding(x + self.embed_positions(src_tokens))
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.transpose(0, 1)
        states = [x] if return_all_hiddens else []
        for number, layer in enumerate(self.layers):
            if str(number) in self.projections:
                x = self.projections[str(number)](x)
            x = layer(x, padding_mask)
            if return_all_hiddens:
                states.append(x)
        last = str(len(self.layers))
        if last in self.projections:
            x = self.projections[last](x)
        return {"encoder_out": [x], "encoder_padding_mask": [padding_mask], "encoder_states": states}


class FlexiRobertaEncoder(RobertaEncoder):
    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = FlexiSentenceEncoder(args, dictionary, embed_tokens, resolve_layers(args.flexi_layers))
        encoder.apply(init_bert_params)
        return encoder


@register_model(ARCH)
class FlexiRobertaModel(RobertaModel):
    """RoBERTa with heterogeneous layers (see gpts_fairseq.flexibert)."""

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument(OPTION, type=_layers_argument, metavar="LAYERS",
                            help="one token per layer, comma-separated: OP:hHIDDEN:aHEADS:fFFN_DIMxFFN_STACKS "
                                 "with OP in sdp, wma, dft, dct, c5, c9, c13 (e.g. sdp:h256:a4:f1024x1,"
                                 "dft:h256:a2:f512x3); or a .yaml file listing such layer strings")

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf, open_dict

        with open_dict(args) if OmegaConf.is_config(args) else contextlib.nullcontext():
            flexibert_architecture(args)
            layers = resolve_layers(args.flexi_layers)  # direct callers skip argparse's check
            args.flexi_layers = format_layers(layers)
            args.encoder_embed_dim = layers[0].hidden
            args.encoder_layers = len(layers)
            if not safe_getattr(args, "max_positions", None):  # as RobertaModel.build_model
                args.max_positions = safe_getattr(args, "tokens_per_sample", None) or task.max_positions()
            encoder = FlexiRobertaEncoder(args, task.source_dictionary)
        return cls(args, encoder)

    @property
    def layer_specs(self) -> Architecture:
        return tuple(layer.spec for layer in self.encoder.sentence_encoder.layers)


@register_model_architecture(ARCH, ARCH)
def flexibert_architecture(args):
    args.flexi_layers = safe_getattr(args, "flexi_layers", None) or DEFAULT_LAYERS
    args.dropout = safe_getattr(args, "dropout", 0.1)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.1)
    base_architecture(args)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
