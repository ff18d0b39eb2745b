"""Training extension ``supernet``: which sub-networks of ``--arch gpts_roberta_super`` an update
trains, and the validation losses of the largest and smallest ones.

Sampling is a pure function of (``--seed``, update number): every rank draws the same sub-nets
and a resumed run draws what the uninterrupted one did, with no state to save.

- ``random`` (AutoTinyBERT): one sub-net per update, each dim uniform over its range.
- ``sandwich`` (BigNAS): the largest, the smallest and one random sub-net in the same update.
  fairseq takes one loss per update, so the batch is repeated three times and the model runs
  copy k with sub-net k (one forward); the criterion's sum over the copies divided by their
  summed sample size makes the update the mean of the three sub-nets' gradients (BigNAS sums
  them; the factor 1/3 is a learning-rate scale). With ``--supernet-distill`` the copies of the
  smaller sub-nets are trained on the largest's predictions (``gpts_supernet_masked_lm``).

All micro-batches of an update (``--update-freq``) use its sub-nets. Between updates (validation,
the GP-TS reference loss, checkpoints) the model runs its default sub-net (``--supernet-arch``,
else the largest).
"""

from __future__ import annotations

import numpy as np
import torch

from ..extensions.base import TrainingExtension
from ..runtime import unwrap_model as unwrap
from .model import SuperRobertaModel
from .space import Space, SubArch

SAMPLE_STREAM = 0x5B7E  # separates this generator's key from other (seed, update)-keyed streams
DISTILL_KEY = "supernet_distill_groups"  # in a training sample: the number of batch copies
VALIDATION_KEYS = ("supernet_loss_largest", "supernet_loss_smallest", "supernet_sample_size")
EVENT_SCHEMA = {"sample": {"archs": str, "sampler": str}}


def sample_archs(space: Space, sampler: str, seed: int, update: int) -> tuple[SubArch, ...]:
    """The sub-nets update ``update`` trains under ``seed`` (one per copy of the batch)."""
    drawn = space.sample(np.random.default_rng([SAMPLE_STREAM, int(seed), int(update)]))
    if sampler == "random":
        return (drawn,)
    if sampler == "sandwich":
        return (space.largest, space.smallest, drawn)
    raise ValueError(f"--supernet-sampler must be random or sandwich, got {sampler!r}")


def repeat_batch(sample: dict, copies: int) -> dict:
    """The sample with every per-sentence tensor (and the counts) repeated ``copies`` times."""
    rows = sample["net_input"]["src_tokens"].size(0)

    def repeat(value):
        if isinstance(value, dict):
            return {key: repeat(item) for key, item in value.items()}
        if torch.is_tensor(value) and value.dim() >= 1 and value.size(0) == rows:
            return value.repeat(copies, *([1] * (value.dim() - 1)))
        return value

    repeated = repeat(sample)
    for key in ("ntokens", "nsentences"):
        if key in sample:
            repeated[key] = sample[key] * copies
    return repeated


class SuperNetExtension(TrainingExtension):
    name = "supernet"

    @classmethod
    def enabled_for_model(cls, model: torch.nn.Module) -> bool:
        model = unwrap(model)
        return isinstance(model, SuperRobertaModel) and model.space.size() > 1

    def __init__(self, cfg, context):
        super().__init__(cfg, context)
        self.events = context.events(self.name, EVENT_SCHEMA)
        self._archs: tuple[SubArch, ...] | None = None
        self._update: int | None = None
        self._logged_update: int | None = None

    def before_update(self, model, optimizer, update_num: int) -> None:
        supernet = unwrap(model)
        self._update = int(update_num)
        self._archs = sample_archs(supernet.space, supernet.args.supernet_sampler, self.context.seed, update_num)

    def transform_batch(self, sample: dict, model) -> dict:
        supernet = unwrap(model)
        supernet.set_archs(self._archs)
        if self._logged_update != self._update:
            self._logged_update = self._update
            self.events.write({"event": "sample", "update": self._update, "sampler": supernet.args.supernet_sampler,
                               "archs": ";".join(map(str, self._archs))})
        if len(self._archs) == 1:
            return sample
        sample = repeat_batch(sample, len(self._archs))
        if supernet.args.supernet_distill:
            sample[DISTILL_KEY] = len(self._archs)
        return sample

    def after_update(self, model, update_num: int) -> None:
        unwrap(model).reset_arch()

    def after_validation(self, sample, model, criterion, loss, sample_size, logging_output) -> None:
        """Adds the summed reference-masking losses of the largest and smallest sub-nets
        (``sample`` is the batch as fairseq gave it: masked here at the reference ψ)."""
        supernet = unwrap(model)
        sample = self.context.mask_for_reference(sample)
        try:
            for key, arch in zip(VALIDATION_KEYS, (supernet.space.largest, supernet.space.smallest)):
                supernet.set_archs([arch])
                with torch.no_grad():
                    arch_loss, arch_size, _ = criterion(model, sample)
                logging_output[key] = arch_loss.detach()
            logging_output[VALIDATION_KEYS[2]] = arch_size
        finally:
            supernet.reset_arch()
