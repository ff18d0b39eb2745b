"""Weight transfer between neighbouring architectures (BOSHNAS, Tuli et al. 2023).

A query inherits, from a trained model, the embeddings and LM head when the first hidden
sizes agree, and its layers bottom-up while they are identical (operation, hidden size,
heads, FFN width and stacks) — with the projections feeding them, and the last projection
when every layer matches. Everything else keeps its fresh (seeded) initialisation. The result
is written as a checkpoint that ``fairseq-train --finetune-from-model`` loads (fresh optimizer,
LR schedule, meters and data order).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .space import Architecture, format_layers

EMBED_KEY = "encoder.sentence_encoder.embed_tokens.weight"
POSITIONS_KEY = "encoder.sentence_encoder.embed_positions.weight"
LAYER_PREFIX = "encoder.sentence_encoder.layers."
PROJECTION_PREFIX = "encoder.sentence_encoder.projections."
PAD = 1  # fairseq's dictionary: <s>=0, <pad>=1


@dataclass(frozen=True)
class Transfer:
    layers: int  # leading layers copied
    embeddings: bool  # embeddings and LM head copied
    shared_parameters: int  # of the layers and projections (embeddings and LM head left out)
    layer_parameters: int
    total_parameters: int  # of the whole model

    @property
    def shared_fraction(self) -> float:
        """Inherited share of the layers' weights: the embeddings, inherited whenever the
        first hidden sizes agree, would otherwise dominate a small model's count."""
        return self.shared_parameters / self.layer_parameters


class _Dictionary:
    """What the model reads of a fairseq dictionary: its size and the padding index."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def pad(self):
        return PAD


def build_model(layers: Architecture, vocab: int, max_positions: int, seed: int):
    """A ``gpts_flexibert`` model outside fairseq-train (same initialisation rules)."""
    from .model import FlexiRobertaModel, flexibert_architecture

    args = argparse.Namespace(arch="gpts_flexibert", flexi_layers=format_layers(layers), max_positions=max_positions,
                              dropout=0.0, attention_dropout=0.0)
    flexibert_architecture(args)
    task = argparse.Namespace(source_dictionary=_Dictionary(vocab), max_positions=lambda: max_positions)
    torch.manual_seed(seed)
    return FlexiRobertaModel.build_model(args, task)


def matching_layers(source: Architecture, target: Architecture) -> int:
    count = 0
    while count < min(len(source), len(target)) and source[count] == target[count]:
        count += 1
    return count


def _inherits(name: str, layers: int, whole: bool, embeddings: bool) -> bool:
    for prefix in (LAYER_PREFIX, PROJECTION_PREFIX):
        if name.startswith(prefix):
            number = int(name[len(prefix):].split(".", 1)[0])
            return number < layers or (whole and prefix == PROJECTION_PREFIX)
    return embeddings


def transfer_weights(model: torch.nn.Module, target: Architecture, source: Architecture,
                     source_state: dict[str, torch.Tensor]) -> Transfer:
    """Copy into ``model`` (built for ``target``) what it shares with a trained ``source``."""
    embeddings = source[0].hidden == target[0].hidden
    layers = matching_layers(source, target) if embeddings else 0
    whole = layers == len(source) == len(target)
    shared = in_layers = total = 0
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights once
            total += param.numel()
            layer_part = name.startswith((LAYER_PREFIX, PROJECTION_PREFIX))
            in_layers += param.numel() if layer_part else 0
            if _inherits(name, layers, whole, embeddings):
                param.copy_(source_state[name])
                shared += param.numel() if layer_part else 0
        for name, buffer in model.named_buffers():
            if _inherits(name, layers, whole, embeddings) and name in source_state:
                buffer.copy_(source_state[name])
    return Transfer(layers, embeddings, shared, in_layers, total)


def write_transfer_checkpoint(path: Path, target: Architecture, source: Architecture, source_checkpoint: Path,
                              seed: int) -> Transfer:
    """Build ``target`` (seeded), copy what it shares with the model in ``source_checkpoint``,
    and save it as a checkpoint for ``--finetune-from-model``."""
    state = torch.load(source_checkpoint, map_location="cpu", weights_only=False)["model"]
    vocab, max_positions = state[EMBED_KEY].shape[0], state[POSITIONS_KEY].shape[0] - PAD - 1
    model = build_model(target, vocab, max_positions, seed)
    transfer = transfer_weights(model, target, source, state)
    checkpoint = {
        "model": model.state_dict(), "args": None, "cfg": None, "last_optimizer_state": None,
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "optimizer_history": [{"criterion_name": "GPTSMaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return transfer
