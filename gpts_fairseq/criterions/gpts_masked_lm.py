"""Criterion ``gpts_masked_lm``: fairseq's masked_lm loss, unchanged, plus masking statistics.

The loss is computed by fairseq's own ``MaskedLmLoss.forward`` (so it is bit-identical to
``--criterion masked_lm`` for the same masks); the model's logits are recorded on the way to
split the loss over ``<mask>``, random-token and unchanged positions, and to log ψ.
"""

import math

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss
from fairseq.logging import metrics

KINDS = ("mask", "random", "kept")


class _LogitsRecorder:
    """Calls the model and keeps the logits it returns; everything else passes through."""

    def __init__(self, model):
        self.model = model
        self.logits = None

    def __call__(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        self.logits = output[0]
        return output

    def __getattr__(self, name):
        return getattr(self.model, name)


@register_criterion("gpts_masked_lm", dataclass=MaskedLmConfig)
class GPTSMaskedLmLoss(MaskedLmLoss):
    def forward(self, model, sample, reduce=True):
        recorder = _LogitsRecorder(model)
        loss, sample_size, logging_output = super().forward(recorder, sample, reduce)
        logging_output.update(self._masking_statistics(sample, recorder.logits))
        return loss, sample_size, logging_output

    def _masking_statistics(self, sample, logits):
        """Counts and loss sums per kind of selected position, and ψ (weighted by sentences)."""
        target = sample["target"]
        source = sample["net_input"]["src_tokens"]
        selected = target.ne(self.padding_idx)
        stats = {"gpts_selected": selected.sum().item(),
                 "gpts_tokens": source.ne(self.padding_idx).sum().item()}
        mask_idx = getattr(self.task, "mask_idx", None)
        kinds = {
            "mask": selected & source.eq(mask_idx),
            "random": selected & source.ne(mask_idx) & source.ne(target),
            "kept": selected & source.eq(target),
        }
        with torch.no_grad():
            if logits.shape[0] == int(stats["gpts_selected"]):  # logits of the selected positions, in order
                token_loss = F.cross_entropy(logits.float(), target[selected], reduction="none")
                for kind, positions in kinds.items():
                    stats[f"gpts_loss_{kind}"] = token_loss[positions[selected]].sum().item()
                    stats[f"gpts_n_{kind}"] = positions.sum().item()
        psi = sample.get("gpts_psi")
        if psi is not None:
            n = sample["nsentences"]
            stats.update(gpts_psi_weight=n, gpts_rho=psi.mask_prob * n,
                         gpts_gamma=psi.leave_unmasked_prob * n, gpts_lambda=psi.random_token_prob * n)
        return stats

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        MaskedLmLoss.reduce_metrics(logging_outputs)

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        tokens = total("gpts_tokens")
        if tokens > 0:
            metrics.log_scalar("selected_frac", total("gpts_selected") / tokens, tokens, round=4)
        for kind in KINDS:
            count = total(f"gpts_n_{kind}")
            if count > 0:
                metrics.log_scalar(f"loss_{kind}", total(f"gpts_loss_{kind}") / count / math.log(2), count, round=3)
        weight = total("gpts_psi_weight")
        if weight > 0:
            for name in ("rho", "gamma", "lambda"):
                metrics.log_scalar(f"psi_{name}", total(f"gpts_{name}") / weight, weight, round=3)
