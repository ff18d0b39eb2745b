"""Sub-nets of a trained super-net checkpoint: their inherited-weight validation loss (the
search's fitness) and their extraction as checkpoints that train without the super-net.

Extraction formats:
- ``roberta``: when ``heads * head_dim == hidden`` (stock fairseq attention ties the q/k/v width
  to the hidden size), a plain RoBERTa checkpoint (``--arch roberta_base`` with the sub-net's
  ``--encoder-layers/-embed-dim/-ffn-embed-dim/-attention-heads``), loadable by stock fairseq.
- ``super``: otherwise, a ``gpts_roberta_super`` whose space is the single point of the sub-net.
The checkpoint holds weights and the configuration only (no optimizer, data or task state;
update 0 of epoch 1):
``fairseq-train --restore-file`` (or ``--finetune-from-model``) starts a fresh run from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from fairseq import checkpoint_utils, tasks
from fairseq.models import ARCH_MODEL_REGISTRY

from .._fairseq_hook import register
from ..compat import allow_fairseq_checkpoints
from ..extensions.base import ExtensionDriver
from .model import ARCH, SuperRobertaModel
from .space import DIMS, SubArch

STOCK_ARCH = "roberta_base"
FORMATS = ("auto", "roberta", "super")


def load_checkpoint(path: str, data: str) -> tuple[dict, object, torch.nn.Module]:
    """(checkpoint state, its task on ``data``, its model in eval mode). The model is built by its
    class directly (not ``task.build_model``), so no training extension comes with it."""
    register()  # gpts_mlm and the models, also where the import hook is off
    allow_fairseq_checkpoints()
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides={"data": data})
    cfg = state["cfg"]
    task = tasks.setup_task(cfg.task)
    model = ARCH_MODEL_REGISTRY[cfg.model.arch].build_model(cfg.model, task)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    return state, task, model.eval()


class SubnetLoss:
    """Validation loss (bits per masked token) of a checkpoint's model on one split, masked as
    the task's validation masks (gpts_mlm: the reference masking, the same masks every call);
    the criterion on each batch, without the task's validation bookkeeping."""

    def __init__(self, checkpoint: str, data: str, split: str, max_batches: int | None = None):
        self.state, self.task, self.model = load_checkpoint(checkpoint, data)
        cfg = self.state["cfg"]
        self.criterion = self.task.build_criterion(cfg.criterion)
        self.task.load_dataset(split, combine=False, epoch=1)
        iterator = self.task.get_batch_iterator(
            dataset=self.task.dataset(split), max_tokens=cfg.dataset.max_tokens_valid,
            max_sentences=cfg.dataset.batch_size_valid, max_positions=self.model.max_positions(),
            ignore_invalid_inputs=True, seed=cfg.common.seed, num_workers=0, epoch=1,
            disable_iterator_cache=True).next_epoch_itr(shuffle=False)
        self.batches = [batch for index, batch in zip(range(max_batches or len(iterator)), iterator)]

    def __call__(self, arch: SubArch | None = None) -> float:
        """The loss of ``arch`` (a super-net's sub-net; None: the model as it is)."""
        if arch is not None:
            self.model.set_archs([arch])
        total, size = 0.0, 0
        try:
            with torch.no_grad():
                for batch in self.batches:
                    if isinstance(self.task, ExtensionDriver):  # clean blocks: masked as its validation masks
                        batch = self.task.mask_for_reference(batch)
                    loss, sample_size, _ = self.criterion(self.model, batch)
                    total, size = total + float(loss), size + int(sample_size)
        finally:
            if arch is not None:
                self.model.reset_arch()
        return total / size / math.log(2)


def extract(checkpoint: str, data: str, arch: SubArch, out: str, fmt: str = "auto") -> str:
    """Write ``arch`` of the super-net ``checkpoint`` to ``out``; returns the format written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    state, _, model = load_checkpoint(checkpoint, data)
    if not isinstance(model, SuperRobertaModel):
        raise ValueError(f"{checkpoint}: not a {ARCH} checkpoint (arch {state['cfg'].model.arch})")
    space = model.space
    space.check(arch, "--arch-to-extract")
    tied = space.qkv(arch) == arch.hidden
    if fmt == "roberta" and not tied:
        raise ValueError(f"--format roberta needs heads * head_dim == hidden (stock attention ties them); "
                         f"{arch} has {space.qkv(arch)} != {arch.hidden}")
    fmt = ("roberta" if tied else "super") if fmt == "auto" else fmt
    args = argparse.Namespace(**{k: v for k, v in vars(_namespace(state["cfg"].model)).items()
                                 if fmt == "super" or not k.startswith("supernet_")})
    args.encoder_layers, args.encoder_embed_dim = arch.layers, arch.hidden
    args.encoder_ffn_embed_dim, args.encoder_attention_heads = arch.ffn, arch.heads
    if fmt == "roberta":
        args.arch = args._name = STOCK_ARCH
    else:
        for dim in DIMS:
            setattr(args, f"supernet_{dim}", str(getattr(arch, dim)))
        args.supernet_space, args.supernet_arch, args.supernet_tie_qkv = None, None, False
    written = {"cfg": _plain_config(state["cfg"], args), "args": None, "model": model.sub_state_dict(arch), "criterion": None,
               "optimizer_history": [{"num_updates": 0, "lr_scheduler_state": {}}],
               "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}}, "last_optimizer_state": None, "task_state": {}}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    checkpoint_utils.torch_persistent_save(written, out)
    return fmt


def _plain_config(cfg, model_args: argparse.Namespace) -> dict:
    """The run's configuration with ``model_args`` as its model, in plain Python values only, so
    that torch's ``weights_only`` loading (stock fairseq's under torch >= 2.6) accepts the file."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain["model"] = json.loads(json.dumps(vars(model_args), default=str))
    return json.loads(json.dumps(plain, default=str))


def _namespace(model_cfg) -> argparse.Namespace:
    if isinstance(model_cfg, argparse.Namespace):
        return model_cfg
    from omegaconf import OmegaConf

    return argparse.Namespace(**OmegaConf.to_container(model_cfg, resolve=True))
