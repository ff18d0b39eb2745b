"""Growth as a training extension, enabled by a ``gpts_roberta_grow`` model: before each update
it grows the model when the stage's update comes (every rank the same, from the update count
alone) and re-warms the LR; each masked batch is folded into rows of the stage's length. One
``growth`` record per growth goes to ``SAVE_DIR/gpts_growth_events.jsonl``."""

from __future__ import annotations

import logging
import time

import torch
from fairseq.logging import metrics

from ..extensions.base import TrainingExtension
from ..runtime import fork_rngs, is_leader, unwrap_model
from .flops import BACKWARD_FACTOR, forward_flops
from .model import GrowRobertaModel
from .stages import stage_index_at

logger = logging.getLogger(__name__)

# one growth: the stage reached and its size, how it grew, what it cost, and the reference loss
# before and after (None on ranks that do not measure it)
GROWTH_EVENT = {"stage": int, "layers": int, "ffn": int, "tokens": int, "parameters": int, "depth": str,
                "width_noise": float, "optimizer": str, "seconds": float, "checksum": float,
                "loss_before": (float, type(None)), "loss_after": (float, type(None))}
EVENT_SCHEMA = {"growth": GROWTH_EVENT}


class GrowthExtension(TrainingExtension):
    name = "growth"

    @classmethod
    def enabled_for_model(cls, model) -> bool:
        return isinstance(model, GrowRobertaModel)

    def __init__(self, cfg, context):
        super().__init__(cfg, context)
        self.events = context.events(self.name, EVENT_SCHEMA)

    def before_update(self, model, optimizer, update_num: int) -> None:
        """Grow to the stage of ``update_num`` if it is a later one, and scale the LR of a
        re-warm. The first rank measures the reference loss before and after a growth."""
        grower = unwrap_model(model)
        target = stage_index_at(grower.stages, update_num)
        if target > grower._stage_index:
            measure = self.context.reference_loss if is_leader() else None
            # the measurement must not move the RNGs (dropout, CPU and CUDA) that the training step uses next
            with fork_rngs():
                before = measure(grower) if measure else None
                started = time.perf_counter()
                grower.grow_to(target, _torch_optimizer(optimizer).state)
                seconds = time.perf_counter() - started
                after = measure(grower) if measure else None
            self._record(grower, update_num, before, after, seconds)
        grower.sync_trainable()
        _rewarm(grower, optimizer, update_num)

    def _record(self, grower, update_num, before, after, seconds):
        """One log line per rank (the parameter checksum is equal on every rank) and one event."""
        stage, args = grower.stage, grower.args
        checksum = sum(float(p.detach().double().sum()) for p in grower.parameters())
        losses = "" if before is None else f"; reference loss {before:.6f} -> {after:.6f} ({after - before:+.6f})"
        logger.info(f"grow: update {update_num}: stage {grower._stage_index} active layers={stage.layers}, "
                    f"ffn={stage.ffn}, tokens={stage.tokens}, {grower.active_parameters():,} parameters "
                    f"({args.grow_depth}, width noise {args.grow_width_noise}, optimizer "
                    f"{args.grow_optimizer}, {1000 * seconds:.1f} ms), parameter checksum {checksum!r}{losses}")
        if before is not None:
            metrics.log_scalar("grow_loss_before", before, weight=0, round=6)
            metrics.log_scalar("grow_loss_after", after, weight=0, round=6)
        self.events.write({
            "event": "growth", "update": update_num, "stage": grower._stage_index, **stage.size(),
            "parameters": grower.active_parameters(), "depth": str(args.grow_depth),
            "width_noise": float(args.grow_width_noise), "optimizer": str(args.grow_optimizer), "seconds": seconds,
            "checksum": checksum, "loss_before": before, "loss_after": after})

    def transform_batch(self, sample, model):
        return fold_rows(unwrap_model(model), sample, pad=self.context.dictionary.pad())


def _torch_optimizer(optimizer):
    """The torch optimizer inside fairseq's wrappers (its ``state`` is per parameter)."""
    while not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _rewarm(grower, optimizer, update_num: int) -> None:
    """LR x (k + 1) / N in the k-th update (k < N) after a growth; the scheduler sets the
    LR afresh after every update, so the factor applies to this update only."""
    updates = int(grower.args.grow_rewarm_updates)
    since = update_num - grower.stage.start
    if updates <= 0 or grower._stage_index == 0 or since >= updates or grower._rewarmed_update == update_num:
        return
    grower._rewarmed_update = update_num  # once per update, also with --update-freq > 1
    scale = (since + 1) / updates
    optimizer.set_lr(optimizer.get_lr() * scale)
    metrics.log_scalar("grow_lr_scale", scale, weight=0, round=4)


def fold_rows(grower: GrowRobertaModel, sample, pad: int):
    """``sample`` (already masked) with every row cut into rows of the stage's length; rows of
    padding only are dropped. Masks are untouched: each token keeps its mask and target.
    Logs the FLOPs of the batch (forward and backward, see flops.py)."""
    stage = grower.stage
    tokens = sample["net_input"]["src_tokens"]
    rows, width = tokens.shape
    if stage.tokens < width:
        pieces = -(-width // stage.tokens)

        def fold(tensor):
            padded = torch.nn.functional.pad(tensor, (0, pieces * stage.tokens - width), value=pad)
            return padded.reshape(rows * pieces, stage.tokens)

        source = fold(tokens)
        keep = (source != pad).any(dim=1)
        net_input = {**sample["net_input"], "src_tokens": source[keep],
                     "src_lengths": (source[keep] != pad).sum(dim=1)}
        for key in ("target_tokens",):
            if key in net_input:
                net_input[key] = fold(net_input[key])[keep]
        if "src_id" in net_input:
            net_input["src_id"] = net_input["src_id"].repeat_interleave(pieces)[keep]
        sample = {**sample, "net_input": net_input, "target": fold(sample["target"])[keep],
                  "id": sample["id"].repeat_interleave(pieces)[keep]}
    source = sample["net_input"]["src_tokens"]
    flops = forward_flops(layers=stage.layers, embed_dim=grower.args.encoder_embed_dim, ffn=stage.ffn,
                          row_tokens=source.shape[1], rows=source.shape[0],
                          masked_tokens=float((sample["target"] != pad).sum()),
                          vocab=grower.encoder.sentence_encoder.embed_tokens.num_embeddings)
    metrics.log_scalar("gflops", flops * (1 + BACKWARD_FACTOR) / 1e9, round=4)
    return sample
