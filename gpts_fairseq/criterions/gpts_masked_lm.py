"""Criterion ``gpts_masked_lm``: fairseq's masked_lm loss, unchanged, plus masking statistics.

The loss is computed by fairseq's own ``MaskedLmLoss.forward`` (so it is bit-identical to
``--criterion masked_lm`` for the same masks). The model call is recorded on the way: its
logits and the ``masked_tokens`` it was asked to project, so the loss can be split over
``<mask>``, random-token and unchanged positions knowing exactly which position each logit
row belongs to. Every statistic is a tensor (no host synchronisation per batch); they are
summed across workers and divided in ``reduce_metrics``, as fairseq's criteria do. ψ is not
the criterion's business: the task logs it (whatever the criterion).
"""

import math

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss
from fairseq.logging import metrics

KINDS = ("mask", "random", "kept")


class _ModelCallRecorder:
    """Calls the model and keeps its logits and the ``masked_tokens`` it was given."""

    def __init__(self, model):
        self.model = model
        self.logits = None
        self.masked_tokens = None

    def __call__(self, *args, masked_tokens=None, **kwargs):
        output = self.model(*args, masked_tokens=masked_tokens, **kwargs)
        self.logits, self.masked_tokens = output[0], masked_tokens
        return output

    def __getattr__(self, name):
        return getattr(self.model, name)


@register_criterion("gpts_masked_lm", dataclass=MaskedLmConfig)
class GPTSMaskedLmLoss(MaskedLmLoss):
    def forward(self, model, sample, reduce=True):
        recorder = _ModelCallRecorder(model)
        loss, sample_size, logging_output = super().forward(recorder, sample, reduce)
        logging_output.update(self._masking_statistics(sample, recorder.logits, recorder.masked_tokens))
        return loss, sample_size, logging_output

    def _masking_statistics(self, sample, logits, masked_tokens):
        """Per kind of selected position: how many, and their summed loss (nats), as tensors."""
        target = sample["target"]
        source = sample["net_input"]["src_tokens"]
        selected = target.ne(self.padding_idx)
        kinds = {
            "mask": selected & source.eq(self.task.mask_idx),
            "random": selected & source.ne(self.task.mask_idx) & source.ne(target),
            "kept": selected & source.eq(target),
        }
        stats = {"gpts_selected": selected.sum(), "gpts_tokens": source.ne(self.padding_idx).sum()}
        with torch.no_grad():
            # the rows of ``logits`` are the positions masked_lm projected: ``masked_tokens`` (or all)
            def projected(positions):
                return (positions if masked_tokens is None else positions[masked_tokens]).reshape(-1)

            token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), projected(target),
                                         reduction="none", ignore_index=self.padding_idx)
            for kind, positions in kinds.items():
                stats[f"gpts_loss_{kind}"] = token_loss.masked_select(projected(positions)).sum()
                stats[f"gpts_n_{kind}"] = positions.sum()
        return stats

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        MaskedLmLoss.reduce_metrics(logging_outputs)
        if not any("gpts_tokens" in log for log in logging_outputs):
            return

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        tokens = total("gpts_tokens")
        metrics.log_scalar("selected_frac", total("gpts_selected") / tokens, tokens, round=4)
        for kind in KINDS:
            count = total(f"gpts_n_{kind}")  # a kind never played (weight 0) is not logged
            metrics.log_scalar(f"loss_{kind}", total(f"gpts_loss_{kind}") / count / math.log(2), count, round=3)
