"""fairseq architecture ``gpts_roberta_super``: a RoBERTa allocated at the largest point of a
search space that runs any sub-architecture of it by first-k slicing of every weight.

Slicing (AutoTinyBERT's and HAT's inheritance): the first ``layers`` layers; the first
``hidden`` columns of the token and positional embeddings and of every LayerNorm; the first
``heads * head_dim`` rows of q/k/v (whole heads) and columns of the attention output; the first
``ffn`` units of the FFN; the first ``hidden`` rows/columns of the LM head's dense layer and
columns of its (tied) output matrix. Parameter names are stock RoBERTa's, so a tied-shape
sub-net's sliced state dict loads into ``--arch roberta`` of those dims.

The forward repeats fairseq's RoBERTa encoder op for op on the sliced tensors (attention through
``F.multi_head_attention_forward`` as fairseq's ``MultiheadAttention`` does when
``d_qkv == hidden``), so a sub-net equals the standalone model holding the same weights bit for
bit. ``set_archs`` makes the model run one sub-net, or several on equal slices of the batch (the
sandwich rule: each slice gets its own sub-net in one forward). Shapes never change, so fairseq's
optimizer, checkpoints and DDP see one fixed model.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel, base_architecture
from fairseq.models.transformer import TransformerConfig, TransformerEncoder
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.tasks import FairseqTask
from fairseq.utils import safe_getattr

from ..extensions.base import ExtensionDriver
from .space import DIMS, Space, SubArch

ARCH = "gpts_roberta_super"
SAMPLERS = ("random", "sandwich")
# the super-net's options besides the --supernet-<dim> ranges: (flag, type or choices, help)
MODEL_OPTIONS = (
    ("--supernet-head-dim", int, "dims per attention head (d_qkv = heads * N)"),
    ("--supernet-tie-qkv", bool, "only sub-nets with heads * head_dim == hidden (stock RoBERTa shapes; heads follow hidden)"),
    ("--supernet-space", str, "the space as a YAML file (keys layers, hidden, heads, ffn: 'MIN:MAX[:STEP]'; head_dim; "
                              "tie_qkv); overrides the --supernet-<dim> options"),
    ("--supernet-sampler", SAMPLERS, "random: one uniform sub-net per update (AutoTinyBERT); sandwich: largest + "
                                     "smallest + random on three copies of the batch in one update (BigNAS)"),
    ("--supernet-distill", bool, "sandwich only: smaller sub-nets learn the largest's predictions (in-place "
                                 "distillation; needs --criterion gpts_supernet_masked_lm)"),
    ("--supernet-arch", str, "L,D,H,F: the sub-net run outside training updates (validation, inference); default largest"),
)
SPACE_KEYS = {"layers", "hidden", "heads", "ffn", "head_dim", "tie_qkv"}


class ElasticSelfAttention(torch.nn.Module):
    """Self-attention with q/k/v of width ``qkv_dim`` (may differ from ``embed_dim``), named as
    fairseq's ``MultiheadAttention`` (q_proj, k_proj, v_proj, out_proj)."""

    def __init__(self, embed_dim: int, qkv_dim: int, dropout: float):
        super().__init__()
        self.q_proj = torch.nn.Linear(embed_dim, qkv_dim)
        self.k_proj = torch.nn.Linear(embed_dim, qkv_dim)
        self.v_proj = torch.nn.Linear(embed_dim, qkv_dim)
        self.out_proj = torch.nn.Linear(qkv_dim, embed_dim)
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)

    def elastic(self, x, padding_mask, hidden: int, heads: int, head_dim: int):
        """x: (T, B, hidden) -> (T, B, hidden), using the first ``heads`` heads."""
        qkv = heads * head_dim
        weights = [proj.weight[:qkv, :hidden] for proj in (self.q_proj, self.k_proj, self.v_proj)]
        biases = [proj.bias[:qkv] for proj in (self.q_proj, self.k_proj, self.v_proj)]
        out_weight, out_bias = self.out_proj.weight[:hidden, :qkv], self.out_proj.bias[:hidden]
        key_padding_mask = padding_mask.bool() if padding_mask is not None else None
        dropout = self.dropout_module.p if (self.training or self.dropout_module.apply_during_inference) else 0.0
        if qkv == hidden:  # fairseq MultiheadAttention's own path
            return F.multi_head_attention_forward(
                x, x, x, hidden, heads, torch.empty([0]), torch.cat(biases), None, None, False,
                self.dropout_module.p, out_weight, out_bias,
                self.training or self.dropout_module.apply_during_inference, key_padding_mask, False, None,
                use_separate_proj_weight=True, q_proj_weight=weights[0], k_proj_weight=weights[1],
                v_proj_weight=weights[2])[0]
        length, batch, _ = x.shape
        q, k, v = (F.linear(x, w, b).view(length, batch * heads, head_dim).transpose(0, 1).view(batch, heads, length, head_dim)
                   for w, b in zip(weights, biases))
        mask = None if key_padding_mask is None else ~key_padding_mask.view(batch, 1, 1, length)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        attended = attended.permute(2, 0, 1, 3).reshape(length, batch, qkv)
        return F.linear(attended, out_weight, out_bias)


class ElasticEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's (post-LN) encoder layer whose attention is ``ElasticSelfAttention``."""

    def __init__(self, cfg, qkv_dim: int, return_fc: bool = False):
        self.qkv_dim = qkv_dim  # read by build_self_attention during the base __init__
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        return ElasticSelfAttention(embed_dim, self.qkv_dim, cfg.attention_dropout)

    def elastic(self, x, padding_mask, arch: SubArch, head_dim: int):
        """TransformerEncoderLayerBase.forward (post-LN) on the sliced weights."""
        d, f = arch.hidden, arch.ffn
        residual = x
        x = self.self_attn.elastic(x, padding_mask, d, arch.heads, head_dim)
        x = self.dropout_module(x)
        x = _layer_norm(self.self_attn_layer_norm, residual + x, d)
        residual = x
        x = self.activation_fn(F.linear(x, self.fc1.weight[:f, :d], self.fc1.bias[:f]))
        x = self.activation_dropout_module(x)
        x = F.linear(x, self.fc2.weight[:d, :f], self.fc2.bias[:d])
        x = self.dropout_module(x)
        return _layer_norm(self.final_layer_norm, residual + x, d)


def _layer_norm(module, x, width: int):
    return F.layer_norm(x, (width,), module.weight[:width], module.bias[:width], module.eps)


class ElasticTransformerEncoder(TransformerEncoder):
    def build_encoder_layer(self, cfg):
        cfg = TransformerConfig.from_namespace(cfg)
        layer = ElasticEncoderLayer(cfg, self.args.supernet_qkv_dim, return_fc=self.return_fc)
        return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap)

    def elastic(self, src_tokens, arch: SubArch, head_dim: int, return_all_hiddens: bool = False):
        """TransformerEncoder.forward_scriptable on the sliced weights: (B, T, hidden) features
        and the inner states (T, B, hidden) when asked."""
        d = arch.hidden
        padding_mask = src_tokens.eq(self.padding_idx)
        has_pads = padding_mask.any()
        embed = self.embed_scale * F.embedding(src_tokens, self.embed_tokens.weight[:, :d], self.embed_tokens.padding_idx)
        positions = self.embed_positions
        x = embed + F.embedding(utils.make_positions(src_tokens, positions.padding_idx), positions.weight[:, :d],
                                positions.padding_idx)
        x = _layer_norm(self.layernorm_embedding, x, d)
        x = self.dropout_module(x)
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x) * has_pads.type_as(x))
        x = x.transpose(0, 1)
        states = [x] if return_all_hiddens else []
        for layer in list(self.layers)[:arch.layers]:
            x = layer.elastic(x, padding_mask if has_pads else None, arch, head_dim)
            if return_all_hiddens:
                states.append(x)
        return x.transpose(0, 1), states


class ElasticRobertaEncoder(RobertaEncoder):
    """RobertaEncoder whose features and LM head run the model's active sub-architectures."""

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = ElasticTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False, masked_tokens=None, **unused):
        groups = len(self.archs)
        if return_all_hiddens and groups > 1:
            raise ValueError("return_all_hiddens needs a single active sub-net")
        if src_tokens.size(0) % groups:
            raise ValueError(f"a batch of {src_tokens.size(0)} rows cannot be split among {groups} sub-nets")
        rows = src_tokens.size(0) // groups
        outputs, states = [], []
        for index, arch in enumerate(self.archs):
            part = slice(index * rows, (index + 1) * rows)
            features, inner = self.sentence_encoder.elastic(src_tokens[part], arch, self.head_dim, return_all_hiddens)
            if not features_only:
                features = self.elastic_lm_head(features, arch.hidden,
                                                None if masked_tokens is None else masked_tokens[part])
            outputs.append(features)
            states.append(inner)
        output = outputs[0] if groups == 1 else torch.cat(outputs, 0)
        return output, {"inner_states": states[0] if return_all_hiddens else None}

    def elastic_lm_head(self, features, d: int, masked_tokens=None):
        """RobertaLMHead.forward on the sliced weights."""
        head = self.lm_head
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        x = head.activation_fn(F.linear(features, head.dense.weight[:d, :d], head.dense.bias[:d]))
        x = _layer_norm(head.layer_norm, x, d)
        return F.linear(x, head.weight[:, :d]) + head.bias


@register_model(ARCH)
class SuperRobertaModel(RobertaModel):
    """RoBERTa super-net of a search space (see gpts_fairseq.supernet); sampled sub-nets are
    trained by the ``supernet`` training extension of ``--task gpts_mlm``."""

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        for dim in DIMS:
            parser.add_argument(f"--supernet-{dim}", type=str, metavar="MIN:MAX[:STEP]",
                                help=f"search-space range of the sub-nets' {dim} (the super-net is allocated at MAX)")
        for flag, kind, help_text in MODEL_OPTIONS:
            kind = {"action": "store_true"} if kind is bool else {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
            parser.add_argument(flag, help=help_text, **kind)

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf, open_dict

        with open_dict(args) if OmegaConf.is_config(args) else contextlib.nullcontext():
            super_base_architecture(args)
            # as RobertaModel.build_model: the positions table covers a sample
            args.max_positions = (safe_getattr(args, "max_positions", None)
                                  or safe_getattr(args, "tokens_per_sample", None) or task.max_positions())
            space = space_from_args(args)
            check_options(args, space)
            if space.size() > 1 and isinstance(task, FairseqTask) and not isinstance(task, ExtensionDriver):
                raise ValueError(f"--arch {ARCH} with more than one sub-net in its space needs --task gpts_mlm (whose "
                                 f"supernet extension samples them); got task {type(task).__name__}")
            largest = space.largest
            args.encoder_layers, args.encoder_embed_dim = largest.layers, largest.hidden
            args.encoder_ffn_embed_dim, args.encoder_attention_heads = largest.ffn, max(space.heads)
            args.supernet_qkv_dim = max(space.heads) * space.head_dim
            encoder = ElasticRobertaEncoder(args, task.source_dictionary)
        return cls(args, encoder, space)

    def __init__(self, args, encoder, space: Space):
        super().__init__(args, encoder)
        self.space = space
        self.default_arch = space.check(SubArch.parse(args.supernet_arch)) if args.supernet_arch else space.largest
        encoder.head_dim = space.head_dim
        self.set_archs([self.default_arch])

    @property
    def archs(self) -> tuple[SubArch, ...]:
        return self.encoder.archs

    def set_archs(self, archs) -> None:
        """Run ``archs`` (one sub-net, or one per equal slice of the batch) until set again."""
        archs = tuple(archs)
        for arch in archs:
            self.space.check(arch, "sub-architecture")
        self.encoder.archs = archs

    def reset_arch(self) -> None:
        self.set_archs([self.default_arch])

    def sub_state_dict(self, arch: SubArch) -> dict[str, torch.Tensor]:
        """The sub-net's weights (cloned), under stock RoBERTa's names, at its own shapes."""
        self.space.check(arch, "sub-architecture")
        d, q, f = arch.hidden, self.space.qkv(arch), arch.ffn
        widths = {"q_proj": (q, d), "k_proj": (q, d), "v_proj": (q, d), "out_proj": (d, q), "fc1": (f, d),
                  "fc2": (d, f), "self_attn_layer_norm": (d,), "final_layer_norm": (d,), "dense": (d, d),
                  "layer_norm": (d,), "layernorm_embedding": (d,)}
        state = {}
        for name, tensor in self.state_dict().items():
            parts = name.split(".")
            if ".layers." in name and int(parts[parts.index("layers") + 1]) >= arch.layers:
                continue
            module = parts[-2]
            if module in widths:
                shape = widths[module] if parts[-1] == "weight" else widths[module][:1]
                tensor = tensor[tuple(slice(0, n) for n in shape)]
            elif module in ("embed_tokens", "embed_positions") or name == "encoder.lm_head.weight":
                tensor = tensor[:, :d]
            elif name != "encoder.lm_head.bias" and parts[-1] != "version":  # fairseq's version buffers
                raise KeyError(f"sub_state_dict: no slicing rule for {name}")
            state[name] = tensor.clone()
        return state


class _VocabularyTask:
    """What a model build needs from a task: a dictionary of ``size`` symbols, a length limit."""

    def __init__(self, size: int, positions: int):
        from fairseq.data import Dictionary

        self.source_dictionary = Dictionary()
        for index in range(size - len(self.source_dictionary)):
            self.source_dictionary.add_symbol(f"s{index}")
        self._positions = positions

    def max_positions(self):
        return self._positions


def build_supernet(vocab: int, positions: int, **options) -> SuperRobertaModel:
    """A gpts_roberta_super over a vocabulary of ``vocab`` symbols (no task, no data); ``options``
    are model args (``supernet_hidden="32:64:16"``, ``dropout=0.0``, ...)."""
    args = argparse.Namespace(max_positions=positions, **options)
    return SuperRobertaModel.build_model(args, _VocabularyTask(vocab, positions))


def space_from_args(args) -> Space:
    """The Space of the options (a --supernet-space YAML overrides the --supernet-<dim> ones)."""
    values = {dim: getattr(args, f"supernet_{dim}") for dim in DIMS}
    values.update(head_dim=args.supernet_head_dim, tie_qkv=args.supernet_tie_qkv)
    if safe_getattr(args, "supernet_space", None):
        import yaml

        with open(args.supernet_space) as handle:
            loaded = yaml.safe_load(handle) or {}
        unknown = set(loaded) - SPACE_KEYS if isinstance(loaded, dict) else {"(not a mapping)"}
        if unknown:
            raise ValueError(f"--supernet-space {args.supernet_space}: unknown keys {sorted(unknown)} "
                             f"(known: {sorted(SPACE_KEYS)})")
        values.update(loaded)
    return Space.from_options(**values)


def check_options(args, space: Space) -> None:
    """ValueError naming the option for a setting the super-net cannot run, before any data is read."""
    if args.supernet_sampler not in SAMPLERS:
        raise ValueError(f"--supernet-sampler must be one of {', '.join(SAMPLERS)}, got {args.supernet_sampler!r}")
    if args.supernet_distill and args.supernet_sampler != "sandwich":
        raise ValueError("--supernet-distill needs --supernet-sampler sandwich (the largest sub-net is the teacher)")
    if args.supernet_arch:
        space.check(SubArch.parse(args.supernet_arch))
    unsupported = {"--encoder-normalize-before": args.encoder_normalize_before,
                   "--untie-weights-roberta": args.untie_weights_roberta,
                   "--encoder-layerdrop": args.encoder_layerdrop > 0,
                   "--encoder-layers-to-keep": bool(args.encoder_layers_to_keep),
                   "--quant-noise-pq": args.quant_noise_pq > 0,
                   "--no-token-positional-embeddings": args.no_token_positional_embeddings,
                   "--checkpoint-activations": safe_getattr(args, "checkpoint_activations", False)}
    for option, used in unsupported.items():
        if used:
            raise ValueError(f"--arch {ARCH} does not support {option} (the elastic forward is post-LN RoBERTa "
                             f"with learned positions and a tied LM head)")


@register_model_architecture(ARCH, ARCH)
def super_base_architecture(args):
    """AutoTinyBERT's MLM space: layers 1-8, hidden 128-768, heads 1-12 of 64 dims, FFN 128-3072."""
    defaults = dict(supernet_layers="1:8", supernet_hidden="128:768:64", supernet_heads="1:12",
                    supernet_ffn="128:3072:128", supernet_head_dim=64, supernet_tie_qkv=False, supernet_space=None,
                    supernet_sampler="random", supernet_distill=False, supernet_arch=None)
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, None) if safe_getattr(args, name, None) is not None else value)
    base_architecture(args)


@register_model_architecture(ARCH, f"{ARCH}_tiny")
def super_tiny_architecture(args):
    """A CPU-sized space: layers 1-4, hidden 32-128, heads 1-4 of 16 dims, FFN 32-512."""
    for name, value in dict(supernet_layers="1:4", supernet_hidden="32:128:16", supernet_heads="1:4",
                            supernet_ffn="32:512:32", supernet_head_dim=16).items():
        if safe_getattr(args, name, None) is None:
            setattr(args, name, value)
    super_base_architecture(args)
