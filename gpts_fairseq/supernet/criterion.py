"""Criterion ``gpts_supernet_masked_lm``: ``gpts_masked_lm`` plus what super-net training needs.

- In-place distillation (BigNAS): a training sample that the ``supernet`` extension made of
  ``n`` copies of a batch (key ``supernet_distill_groups``) has its first copy (the largest
  sub-net) trained on the targets and the other copies on the first copy's predicted
  distribution (cross-entropy to the detached teacher probabilities), summed over positions.
- Validation: reports ``loss_largest`` and ``loss_smallest`` (bits per masked token, reference
  masking), from the keys the extension adds to each validation logging output.
Without those keys it is ``gpts_masked_lm`` exactly.
"""

import math

import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig
from fairseq.logging import metrics

from ..criterions.gpts_masked_lm import GPTSMaskedLmLoss
from .extension import DISTILL_KEY, VALIDATION_KEYS


@register_criterion("gpts_supernet_masked_lm", dataclass=MaskedLmConfig)
class SuperNetMaskedLmLoss(GPTSMaskedLmLoss):
    def forward(self, model, sample, reduce=True):
        groups = sample.get(DISTILL_KEY, 1)
        if groups <= 1:
            return super().forward(model, sample, reduce)
        masked_tokens = sample["target"].ne(self.padding_idx)
        logits = model(**sample["net_input"], masked_tokens=masked_tokens)[0]
        targets = sample["target"][masked_tokens]
        rows = logits.size(0) // groups
        teacher = logits[:rows].float()
        hard = F.cross_entropy(teacher, targets[:rows], reduction="sum")
        teacher_probs = F.softmax(teacher.detach(), dim=-1).repeat(groups - 1, 1)
        soft = -(teacher_probs * F.log_softmax(logits[rows:].float(), dim=-1)).sum()
        loss = hard + soft
        sample_size = masked_tokens.int().sum()
        logging_output = {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": sample["nsentences"],
                          "sample_size": sample_size}
        logging_output.update(self._masking_statistics(sample, logits, masked_tokens))
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        GPTSMaskedLmLoss.reduce_metrics(logging_outputs)
        size = sum(log.get(VALIDATION_KEYS[2], 0) for log in logging_outputs)
        if not size:
            return
        for key, name in zip(VALIDATION_KEYS, ("loss_largest", "loss_smallest")):
            total = sum(log.get(key, 0) for log in logging_outputs)
            metrics.log_scalar(name, total / size / math.log(2), size, round=3)
