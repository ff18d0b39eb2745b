"""fairseq architecture ``gpts_roberta_grow``: RoBERTa allocated at its target size that
trains an active sub-network (the first layers, the first FFN units) and grows on a schedule.

Shapes never change, so fairseq's optimizer, LR scheduler, checkpoints (strict loading),
DDP and EMA see one fixed model. Inactive layers are skipped and, once the training hook has
run, have ``requires_grad=False``: they get no gradient, hence no Adam step count and no
weight decay, also under ``legacy_ddp`` (which would otherwise all-reduce zeros into them).
Inactive FFN units inside an active layer get zero gradients (a slice of one tensor); they
are overwritten when they grow. The applied stage is the buffer ``grow_stage``, saved in
checkpoints, so a resumed run continues in the stage it left.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel, base_architecture
from fairseq.models.transformer import TransformerConfig, TransformerEncoder
from fairseq.modules.quant_noise import quant_noise
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr

from ..compat.models import default_max_positions, wrap_encoder_layer
from ..extensions.base import ExtensionDriver
from .operators import DEPTH_MODES, OPTIMIZER_MODES, stack_layer, tile_ffn, zero_residual_branches
from .stages import OPTION, Stage, parse_stages, unreached_stages

ARCH = "gpts_roberta_grow"
logger = logging.getLogger(__name__)
NOISE_SEED_STRIDE = 1_000_003  # growth noise of stage s under --seed k comes from seed k * stride + s


class SlicedLinear(torch.nn.Linear):
    """nn.Linear that uses only its first ``active_out`` outputs / ``active_in`` inputs
    (None = all); same parameters, same initialisation, same state-dict keys."""

    active_in: int | None = None
    active_out: int | None = None

    def forward(self, x):
        weight, bias = self.weight, self.bias
        if self.active_out is not None:
            weight = weight[:self.active_out]
            bias = bias[:self.active_out] if bias is not None else None
        if self.active_in is not None:
            weight = weight[:, :self.active_in]
        return F.linear(x, weight, bias)


class GrowEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer with a sliceable FFN; an inactive layer passes x through."""

    active = True

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return quant_noise(SlicedLinear(input_dim, output_dim), p=q_noise, block_size=qn_block_size)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return quant_noise(SlicedLinear(input_dim, output_dim), p=q_noise, block_size=qn_block_size)

    def set_ffn_width(self, width: int) -> None:
        full = width >= self.fc1.out_features
        self.fc1.active_out = None if full else width
        self.fc2.active_in = None if full else width

    def forward(self, x, encoder_padding_mask, attn_mask=None):
        if not self.active:
            return (x, None) if self.return_fc else x
        return super().forward(x, encoder_padding_mask, attn_mask)


class GrowTransformerEncoder(TransformerEncoder):
    def build_encoder_layer(self, cfg):
        cfg = TransformerConfig.from_namespace(cfg)
        return wrap_encoder_layer(GrowEncoderLayer(cfg, return_fc=self.return_fc), cfg)


class GrowRobertaEncoder(RobertaEncoder):
    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = GrowTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder


@register_model(ARCH)
class GrowRobertaModel(RobertaModel):
    """RoBERTa trained through the stages of --grow-stages (see gpts_fairseq.growth)."""

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--grow-stages", type=str, metavar="STAGES",
                            help="'START:layers=L,ffn=F,tokens=T;...': the active sub-network from update "
                                 "START on; empty = the full model from the start")
        parser.add_argument("--grow-depth", choices=DEPTH_MODES,
                            help="new layers: stack (layer i copies active layer i mod L) or zero "
                                 "(zero residual branches: exact with pre-LN only)")
        parser.add_argument("--grow-width-noise", type=float, metavar="STD",
                            help="std of the noise on tiled FFN copies, relative to the fc1 weights' std")
        parser.add_argument("--grow-optimizer", choices=OPTIMIZER_MODES,
                            help="carry: optimizer state moves with the grown weights; reset: grown "
                                 "tensors start Adam afresh")
        parser.add_argument("--grow-rewarm-updates", type=int, metavar="N",
                            help="after each growth the LR ramps linearly back to the scheduler's over N "
                                 "updates; 0 = no re-warm")
        parser.add_argument("--grow-allow-unreached-stages", action="store_true",
                            help="train even if a stage starts at or after --max-update (it is never reached: "
                                 "a warning names it)")

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf

        structured = OmegaConf.is_config(args)
        if structured:
            OmegaConf.set_struct(args, False)
        grow_base_architecture(args)
        default_max_positions(args, task)
        check_options(args, task)
        encoder = GrowRobertaEncoder(args, task.source_dictionary)
        if structured:
            OmegaConf.set_struct(args, True)
        return cls(args, encoder)

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.stages = parse_stages(args.grow_stages, **target_size(args))
        self.register_buffer("grow_stage", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(lambda module, _keys: module._activate(int(module.grow_stage)))
        self._rewarmed_update = None
        self._activate(0)

    @property
    def layers(self):
        return self.encoder.sentence_encoder.layers

    @property
    def stage(self) -> Stage:
        return self.stages[self._stage_index]

    def _activate(self, index: int) -> None:
        """Make stage ``index`` the active sub-network (flags only; values are untouched)."""
        self._stage_index = index
        stage = self.stages[index]
        for number, layer in enumerate(self.layers):
            layer.active = number < stage.layers
            layer.set_ffn_width(stage.ffn)

    def active_parameters(self) -> int:
        """Parameters the active sub-network uses (embeddings and LM head included)."""
        stage, total = self.stage, 0
        for number, layer in enumerate(self.layers):
            if number >= stage.layers:
                continue
            total += sum(p.numel() for name, p in layer.named_parameters() if not name.startswith(("fc1.", "fc2.")))
            total += stage.ffn * (layer.fc1.in_features + 1) + layer.fc2.out_features * (stage.ffn + 1)
        others = (p for name, p in self.named_parameters() if ".layers." not in name)
        return total + sum(p.numel() for p in others)

    def sync_trainable(self) -> None:
        """requires_grad follows layer activity. Not done at construction: fairseq builds its
        optimizer from the parameters that require gradients then, and must see all of them."""
        for layer in self.layers:
            for param in layer.parameters():
                if param.requires_grad != layer.active:
                    param.requires_grad_(layer.active)

    def grow_to(self, index: int, optimizer_state=None) -> None:
        """Apply the stages after the current one up to ``index``: widen the active layers'
        FFN (Net2Net tiling), then add layers (stacked or zero-initialised)."""
        args = self.args
        while self._stage_index < index:
            old, new = self.stage, self.stages[self._stage_index + 1]
            generator = torch.Generator().manual_seed(int(safe_getattr(args, "seed", 1)) * NOISE_SEED_STRIDE + self._stage_index + 1)
            for layer in list(self.layers)[:old.layers]:
                tile_ffn(layer, old.ffn, new.ffn, noise=args.grow_width_noise, generator=generator,
                         state=optimizer_state, optimizer=args.grow_optimizer)
            for number in range(old.layers, new.layers):
                layer = self.layers[number]
                if args.grow_depth == "stack":
                    stack_layer(layer, self.layers[number % old.layers], state=optimizer_state,
                                optimizer=args.grow_optimizer)
                else:
                    zero_residual_branches(layer, state=optimizer_state)
            self.grow_stage.fill_(self._stage_index + 1)
            self._activate(self._stage_index + 1)
        self.sync_trainable()


def target_size(args) -> dict:
    tokens = safe_getattr(args, "tokens_per_sample", None) or args.max_positions
    return dict(layers=args.encoder_layers, ffn=args.encoder_ffn_embed_dim, tokens=tokens)


def check_options(args, task) -> None:
    """ValueError naming the option for a bad --grow-* value, before any data is read."""
    stages = parse_stages(args.grow_stages, **target_size(args))
    if args.grow_depth not in DEPTH_MODES:
        raise ValueError(f"--grow-depth must be one of {', '.join(DEPTH_MODES)}, got {args.grow_depth!r}")
    if args.grow_optimizer not in OPTIMIZER_MODES:
        raise ValueError(f"--grow-optimizer must be one of {', '.join(OPTIMIZER_MODES)}, got {args.grow_optimizer!r}")
    if not (math.isfinite(args.grow_width_noise) and args.grow_width_noise >= 0):
        raise ValueError(f"--grow-width-noise must be a finite number >= 0, got {args.grow_width_noise}")
    if int(args.grow_rewarm_updates) != args.grow_rewarm_updates or args.grow_rewarm_updates < 0:
        raise ValueError(f"--grow-rewarm-updates must be an integer >= 0, got {args.grow_rewarm_updates}")
    if len(stages) == 1:
        return
    check_reached(stages, args, task)
    if not isinstance(task, ExtensionDriver):  # the task runs the growth extension
        raise ValueError(f"--grow-stages with more than one stage needs --task gpts_mlm (it grows the model and "
                         f"folds rows); got task {type(task).__name__}")
    if safe_getattr(args, "encoder_layerdrop", 0.0) > 0 or safe_getattr(args, "encoder_layers_to_keep", None):
        raise ValueError("--grow-stages with more than one stage cannot be combined with --encoder-layerdrop "
                         "or --encoder-layers-to-keep")
    if safe_getattr(args, "checkpoint_activations", False):
        raise ValueError("--grow-stages with more than one stage cannot be combined with --checkpoint-activations")
    if (safe_getattr(args, "fp16", False) or safe_getattr(args, "bf16", False)) \
            and not safe_getattr(args, "memory_efficient_fp16", False) \
            and not safe_getattr(args, "memory_efficient_bf16", False):
        raise ValueError("--grow-stages with --fp16/--bf16 needs --memory-efficient-fp16/--memory-efficient-bf16 "
                         "(fairseq's fp32 master copy would not see the grown weights)")
    distributed = safe_getattr(args, "distributed_world_size", 1) > 1
    if distributed and safe_getattr(args, "ddp_backend", "pytorch_ddp") in ("c10d", "pytorch_ddp") \
            and not safe_getattr(args, "find_unused_parameters", False):
        raise ValueError("--grow-stages with --ddp-backend pytorch_ddp needs --find-unused-parameters "
                         "(inactive layers get no gradient); or use --ddp-backend legacy_ddp")


def check_reached(stages: list[Stage], args, task) -> None:
    """A stage that starts at or after --max-update is never trained: a ValueError naming it,
    or a warning with --grow-allow-unreached-stages. Runs bounded by --max-epoch alone are not
    checked (their update count is not known before the data is read)."""
    max_update = int(safe_getattr(getattr(task, "cfg", None), "max_update", 0) or 0)
    unreached = unreached_stages(stages, max_update)
    if not unreached:
        return
    stages_at = "stage at update" if len(unreached) == 1 else "stages at updates"
    target = unreached[-1]
    starts = ", ".join(str(stage.start) for stage in unreached)
    message = (f"{OPTION}: training ends at --max-update {max_update}, before the {stages_at} {starts} (the model "
               f"never grows to layers={target.layers}, ffn={target.ffn}, tokens={target.tokens})")
    if not safe_getattr(args, "grow_allow_unreached_stages", False):
        raise ValueError(f"{message}; start it earlier, raise --max-update, or pass --grow-allow-unreached-stages "
                         f"to train the earlier stages only")
    logger.warning(f"{message}; training the earlier stages only (--grow-allow-unreached-stages)")


@register_model_architecture(ARCH, ARCH)
def grow_base_architecture(args):
    args.grow_stages = safe_getattr(args, "grow_stages", "") or ""
    args.grow_depth = safe_getattr(args, "grow_depth", "stack")
    args.grow_width_noise = safe_getattr(args, "grow_width_noise", 0.01)
    args.grow_optimizer = safe_getattr(args, "grow_optimizer", "carry")
    args.grow_rewarm_updates = safe_getattr(args, "grow_rewarm_updates", 0)
    args.grow_allow_unreached_stages = safe_getattr(args, "grow_allow_unreached_stages", False)
    base_architecture(args)


@register_model_architecture(ARCH, f"{ARCH}_base")
def grow_roberta_base_architecture(args):
    grow_base_architecture(args)


def _sized(layers: int, embed_dim: int, ffn: int, heads: int):
    """An architecture: gpts_roberta_grow with these default sizes."""
    def architecture(args):
        sizes = dict(encoder_layers=layers, encoder_embed_dim=embed_dim, encoder_ffn_embed_dim=ffn,
                     encoder_attention_heads=heads)
        for name, value in sizes.items():
            setattr(args, name, safe_getattr(args, name, value))
        grow_base_architecture(args)
    return architecture


register_model_architecture(ARCH, f"{ARCH}_large")(_sized(24, 1024, 4096, 16))
# the growth benchmark's target
register_model_architecture(ARCH, f"{ARCH}_tiny")(_sized(4, 128, 512, 4))
