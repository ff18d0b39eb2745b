"""fairseq task ``gpts_mlm``: ``masked_lm`` whose batches are masked in the training step, and a
generic driver of training extensions (``gpts_fairseq.extensions``).

Drop-in: every masked_lm option keeps its meaning; ``--mask-prob/--leave-unmasked-prob/
--random-token-prob`` give the first ψ. The task holds the data (masked_lm's blocks, clean),
masks each batch on its device (``mask_sample``), keeps the fixed reward batches
(``RewardBatches``) and runs the extensions' hooks in the order of ``extensions.base``: GP-TS
interactions, subsets and growth are extensions, none of which imports this module.
"""

import logging

import numpy as np
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMTask

from .. import compat
from ..compat.data import batch_iterator_arguments, token_blocks, unmasked_dataset, word_starts
from ..events import EventLog
from ..extensions.base import Batching, ExtensionContext, ExtensionDriver
from ..extensions.registry import EXTENSIONS
from ..masking import MaskingSpec, Psi, mask_tokens
from ..masking.options import check_span_options, first_psi, reference_psi
from ..runtime import is_leader
from .config import GPTSMaskedLMConfig
from .reward_batches import RewardBatches

# importing the task registers the criterion too (fairseq's --user-dir imports tasks/ only)
from ..criterions import gpts_masked_lm  # noqa: F401

logger = logging.getLogger(__name__)

VALID_STEP = 0  # masking step of validation; training uses the epoch (>= 1)


@register_task("gpts_mlm", dataclass=GPTSMaskedLMConfig)
class GPTSMaskedLMTask(MaskedLMTask, ExtensionDriver):
    """masked_lm whose datasets hold clean tokens; each batch is masked in the training step."""

    cfg: GPTSMaskedLMConfig

    def __init__(self, cfg: GPTSMaskedLMConfig, dictionary=None):
        compat.install()  # fairseq builds the task before it loads a checkpoint
        # every option is checked before any data is read
        if cfg.d2v2_multi or cfg.skip_masking:
            raise ValueError("gpts_mlm does not support --d2v2-multi or --skip-masking; use --task masked_lm")
        check_span_options(cfg)
        self.first_psi, self.reference_psi = first_psi(cfg), reference_psi(cfg)
        for extension in EXTENSIONS:
            extension.check_options(cfg)
        super().__init__(cfg, dictionary)
        self.spec = MaskingSpec.build(
            vocab_size=len(self.dictionary), special_ids=range(self.dictionary.nspecial), mask_idx=self.mask_idx,
            pad_idx=self.dictionary.pad(), exact=cfg.gpts_masking == "exact",
            word_start=word_starts(self.dictionary) if cfg.mask_whole_words else None,
            counts=np.asarray(self.dictionary.count, dtype=np.float64), freq_weighted=cfg.freq_weighted_replacement,
            mask_multiple_length=cfg.mask_multiple_length, mask_stdev=cfg.mask_stdev)
        self.epoch, self.num_updates, self.criterion = 1, 0, None
        self.resumed, self.trained = False, False
        self.reward_batches = RewardBatches(self._build_reward_batches, mask=self.mask_for_reference)
        self.event_logs = {}
        self.context = ExtensionContext(
            cfg=cfg, dictionary=self.dictionary, save_dir=cfg.save_dir, seed=int(cfg.seed),
            mask_for_reference=self.mask_for_reference, reference_loss=self.reference_loss, events=self._event_log,
            psi=lambda: self.psi, updates=lambda: self.num_updates,
            end_of_epoch=lambda: self.train_iterator is not None and self.train_iterator.end_of_epoch())
        self.train_iterator = None  # the training split's epoch iterator (fairseq's EpochBatchIterator)
        self.extensions = [extension(cfg, self.context) for extension in EXTENSIONS if extension.enabled(cfg)]

    def _event_log(self, name: str, schema: dict) -> EventLog:
        if name not in self.event_logs:
            self.event_logs[name] = EventLog(self.cfg.save_dir, name, schema, write=is_leader())
        return self.event_logs[name]

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        built = {type(extension) for extension in self.extensions}
        self.extensions += [extension(self.cfg, self.context) for extension in EXTENSIONS
                            if extension not in built and extension.enabled_for_model(model)]
        self.extensions.sort(key=lambda extension: EXTENSIONS.index(type(extension)))
        for extension in self.extensions:
            model = extension.build_model(model)
            extension.check_model(model)
        return model

    # -- data: masked_lm's blocks, unmasked -----------------------------------------------------

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """masked_lm's token blocks (bos-prefixed), right-padded, with ids; no masking here."""
        self.datasets[split] = unmasked_dataset(
            token_blocks(self, split, epoch, combine), pad_idx=self.source_dictionary.pad(), seed=self.cfg.seed,
            include_index=self.cfg.include_index)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """The training split's epoch passes through every extension's ``epoch_dataset``."""
        if not (self.extensions and dataset is self.datasets.get(self.cfg.train_subset)):
            return super().get_batch_iterator(dataset, *args, **kwargs)
        options = batch_iterator_arguments(self, dataset, args, kwargs)
        batching = Batching(max_tokens=options["max_tokens"], max_sentences=options["max_sentences"])
        for extension in self.extensions:
            dataset = extension.epoch_dataset(dataset, options["epoch"], batching)
        self.train_iterator = super().get_batch_iterator(dataset, *args, **kwargs)
        return self.train_iterator

    # -- masking and the hooks ------------------------------------------------------------------

    def mask_sample(self, sample, psi: Psi, step: int):
        """A new sample whose src_tokens are masked with ``psi`` and whose target is set, as
        masked_lm's datasets would give it. Masks depend on (seed, step, sample id) only."""
        tokens = sample["net_input"]["src_tokens"]
        source, target = mask_tokens(tokens, self.spec, psi, seed=self.cfg.seed, step=step, sample_ids=sample["id"])
        net_input = {**sample["net_input"], "src_tokens": source}
        if self.cfg.include_target_tokens:
            net_input["target_tokens"] = target
        return {**sample, "net_input": net_input, "target": target}

    def mask_for_reference(self, sample):
        return self.mask_sample(sample, self.reference_psi, VALID_STEP)

    @property
    def psi(self) -> Psi:
        """The masking in force for training."""
        return next((psi for psi in (extension.training_psi() for extension in self.extensions) if psi is not None),
                    self.first_psi)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self.epoch = epoch
        for extension in self.extensions:
            extension.begin_epoch(epoch, model)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if not (self.trained or self.resumed):  # a fresh start: an earlier run's events are not this run's
            for log in self.event_logs.values():
                log.keep_this_run()
        self.criterion, self.num_updates, self.trained = criterion, update_num, True
        for extension in self.extensions:
            extension.before_update(model, optimizer, update_num)
        sample = self.mask_sample(sample, self.psi, step=self.epoch)
        for extension in self.extensions:
            sample = extension.transform_batch(sample, model)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        self.num_updates = update_num + 1
        for extension in self.extensions:
            extension.after_update(model, update_num)

    def valid_step(self, sample, model, criterion):
        reference = self.cfg.gpts_valid_masking == "reference"
        loss, sample_size, logging_output = super().valid_step(
            self.mask_for_reference(sample) if reference else self.mask_sample(sample, self.psi, VALID_STEP), model, criterion)
        if reference:  # a reward at the next update may reuse it
            self.reward_batches.record_validation(sample, loss, sample_size, update=self.num_updates)
        for extension in self.extensions:
            extension.after_validation(sample, model, criterion, loss, sample_size, logging_output)
        return loss, sample_size, logging_output

    # -- the reference loss ---------------------------------------------------------------------

    def reference_loss(self, module, criterion=None, update=None) -> float:
        """The loss (bits per masked token) of the fixed reward batches at the reference masking,
        eval mode, the same masks every time (see ``ExtensionContext``)."""
        return self.reward_batches.loss(module, criterion or self.criterion, update)

    def _build_reward_batches(self):
        """The first --gpts-reward-batches batches of the first validation subset."""
        split = self.cfg.valid_subset.split(",")[0]
        if split not in self.datasets:
            self.load_dataset(split, combine=False, epoch=1)
        iterator = self.get_batch_iterator(
            self.dataset(split), max_tokens=self.cfg.max_tokens_valid, max_sentences=self.cfg.batch_size_valid,
            max_positions=self.max_positions(), ignore_invalid_inputs=True, seed=int(self.cfg.seed), num_workers=0,
            epoch=1, disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        limit = self.cfg.gpts_reward_batches or len(iterator)
        batches = [batch for _, batch in zip(range(limit), iterator)]
        if len(batches) < limit:
            logger.warning(f"--gpts-reward-batches {limit}: the validation set '{split}' has "
                           f"{len(batches)} batches; the reward uses all of them")
        return batches

    # -- checkpoints (fairseq's task hooks: saved in extra_state, restored on resume) -----------

    def get_checkpoint_dict(self):
        """One entry per extension, under its name, and the update count they belong to."""
        state = {extension.name: extension.state_dict() for extension in self.extensions}
        return {type(self).__name__: {"updates": self.num_updates, **state}}

    def set_checkpoint_dict(self, state):
        self.num_updates, self.resumed = int(state.get("updates", 0)), True
        for extension in self.extensions:
            extension.load_state_dict(state.get(extension.name, {}))
        for log in self.event_logs.values():  # what happened after the checkpoint happens again
            log.truncate_at(self.num_updates)
