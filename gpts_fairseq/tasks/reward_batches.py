"""The reward's loss: the fixed reward batches at the reference masking, measured once per boundary.

The reward of an interaction is the loss of the first ``--gpts-reward-batches`` validation
batches at the reference masking, with the model in eval mode. fairseq's own validation computes
exactly that when it validates at the same update with the reference masking: same model state
(validation runs after the update, the reward before the next one), same samples, same masks
(step 0, reference ψ), same summation order. ``RewardBatches`` therefore records the losses of
validation batches that are reward batches (same ids and tokens, whatever subset or batching
fairseq used) and, when all of them were seen at the current update, returns their sum instead
of running the pass again. The result is bit-identical either way (tested), so reuse changes only
the cost. It cannot reuse when validation masks at the ψ in force (``--gpts-valid-masking train``),
validates another update, or sees only a shard of the batches (data-parallel ranks > 1: rank 0
then runs the pass itself).
"""

import logging
import math
from collections.abc import Callable

import torch
from fairseq import utils

logger = logging.getLogger(__name__)


class RewardBatches:
    """``build`` returns the reward batches (unmasked, on the CPU); ``mask`` masks a batch at the
    reference ψ; ``loss`` is the reward's loss in bits per selected token."""

    def __init__(self, build: Callable[[], list], mask: Callable[[dict], dict]):
        self._build, self._mask = build, mask
        self._batches = None
        self._index_by_ids = None  # a reward batch's ids -> its index
        self._seen_update, self._seen = None, {}  # batch index -> (loss, sample_size) at _seen_update
        self.passes = self.reuses = 0  # reward passes run / measurements taken from validation

    @property
    def batches(self) -> list:
        if self._batches is None:
            self._batches = self._build()
        return self._batches

    def record_validation(self, sample: dict, loss: torch.Tensor, sample_size, update: int):
        """Called by ``valid_step`` at the reference masking: keep the loss of a reward batch."""
        index = self._index_of(sample)
        if index is None:
            return
        if self._seen_update != update:
            self._seen_update, self._seen = update, {}
        self._seen[index] = (loss.detach(), sample_size)

    def _index_of(self, sample: dict):
        """The reward batch that ``sample`` is (same ids and tokens), or None."""
        ids = sample["id"].cpu()
        if self._index_by_ids is None:
            self._index_by_ids = {tuple(batch["id"].tolist()): index for index, batch in enumerate(self.batches)}
        index = self._index_by_ids.get(tuple(ids.tolist()))
        if index is None:
            return None
        tokens, expected = sample["net_input"]["src_tokens"].cpu(), self.batches[index]["net_input"]["src_tokens"]
        return index if tokens.shape == expected.shape and torch.equal(tokens, expected) else None

    def loss(self, module: torch.nn.Module, criterion, update: int | None = None) -> float:
        """The reward's loss in bits (NaN when nothing was selected). With ``update`` (the update
        about to run): taken from fairseq's validation at that point when it covered every reward
        batch; otherwise, and always without ``update``, measured by a pass of its own."""
        if update is not None and self._seen_update == update and len(self._seen) == len(self.batches):
            parts = [self._seen[index] for index in range(len(self.batches))]
            self.reuses += 1
            logger.info(f"gpts: the reward at update {update} reuses fairseq's validation of the reward batches")
        else:
            parts = self._measure(module, criterion)
            self.passes += 1
        if update is not None:
            self._seen_update, self._seen = None, {}
        device = parts[0][0].device if parts else torch.device("cpu")
        total = count = torch.zeros((), dtype=torch.float64, device=device)
        for loss, sample_size in parts:
            total, count = total + loss, count + sample_size
        return float(total / count) / math.log(2) if parts else math.nan

    def _measure(self, module, criterion) -> list:
        device = next(module.parameters()).device
        was_training = module.training
        module.eval()
        parts = []
        try:
            with torch.no_grad():
                for batch in self.batches:
                    batch = utils.apply_to_sample(lambda t: t.to(device), batch)
                    loss, sample_size, _ = criterion(module, self._mask(batch))
                    parts.append((loss.detach(), sample_size))
        finally:
            module.train(was_training)
        return parts
