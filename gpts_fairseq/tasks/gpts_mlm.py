"""fairseq task ``gpts_mlm``: ``masked_lm`` with per-batch masking and an online masking policy.

Drop-in: every masked_lm option keeps its meaning; ``--mask-prob/--leave-unmasked-prob/
--random-token-prob`` give the ψ of the first interaction. The task holds data, masking and
hooks; where things happen:
- masking: ``mask_sample`` (each batch, on its device, in ``train_step``/``valid_step``);
- rewards: ``reward_batches.RewardBatches`` (fixed validation batches at the reference masking;
  reuses fairseq's validation pass when it ran at the same update);
- choosing ψ: ``interactions.InteractionController``, called once per ``train_step``.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq.data import (
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from ..bandit import POLICIES
from ..bandit.loop import InteractionLoop
from ..bandit.policies import CONTEXTS, SCHEDULE_SHAPES
from ..bandit.reward_model import REWARD_MODELS
from ..bandit.rewards import REWARD_KINDS
from ..masking import MaskingSpec, Psi, mask_tokens
from ..psi_names import FAIRSEQ_DEFAULT_PSI, PSI_FIELDS
from ..growth import hooks as growth
from ..subsets.options import SubsetConfig, validate_subset_config
from ..subsets.task import SubsetTaskMixin
from . import fairseq_compat
from .interactions import InteractionController
from .options import build_policy, reward_options, validate_config
from .reward_batches import RewardBatches

# importing the task registers the criterion too (fairseq's --user-dir imports tasks/ only)
from ..criterions import gpts_masked_lm  # noqa: F401

logger = logging.getLogger(__name__)

VALID_STEP = 0  # masking step of validation; training uses the epoch (>= 1)
PSI_LOG_NAMES = ("psi_rho", "psi_gamma", "psi_lambda")  # the ψ in force, logged every step


@dataclass
class GPTSMaskedLMConfig(MaskedLMConfig, SubsetConfig):
    gpts_masking: ChoiceEnum(["exact", "bernoulli"]) = field(
        default="exact",
        metadata={"help": "exact: masked_lm's per-sequence count int(p*n/span + u) (parity); "
                          "bernoulli: each token independently with probability --mask-prob"})
    gpts_valid_masking: ChoiceEnum(["reference", "train"]) = field(
        default="reference",
        metadata={"help": "reference: validate at the fixed --gpts-ref-* masking with the same masks "
                          "every time (comparable losses); train: at the masking in force"})
    gpts_ref_mask_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["mask_prob"], metadata={"help": "reference masking: rho"})
    gpts_ref_leave_unmasked_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["leave_unmasked_prob"], metadata={"help": "reference masking: gamma"})
    gpts_ref_random_token_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["random_token_prob"], metadata={"help": "reference masking: lambda"})
    gpts_policy: ChoiceEnum(list(POLICIES)) = field(
        default="constant",
        metadata={"help": "how psi changes between interactions: constant (masked_lm), schedule, "
                          "random, gp-ts (GP Thompson sampling on the validation loss)"})
    gpts_arms: ChoiceEnum(["rho", "psi"]) = field(
        default="rho",
        metadata={"help": "what random/gp-ts search: rho only (gamma, lambda as given) or all of psi"})
    gpts_arm_bounds: str = field(
        default="0.05,0.5", metadata={"help": "lower,upper bound of every searched dimension"})
    gpts_arm_step: float = field(
        default=0.05, metadata={"help": "grid step of the arms; 0 = continuous (1,024 Sobol candidates)"})
    gpts_interaction_updates: int = field(
        default=0, metadata={"help": "updates per interaction; 0 = one interaction per epoch"})
    gpts_reward_batches: int = field(
        default=0, metadata={"help": "validation batches the reward is measured on (the first K, "
                                     "fixed); 0 = all"})
    gpts_reward: ChoiceEnum(list(REWARD_KINDS)) = field(
        default="relative", metadata={"help": "relative: (l_prev - l) / l_prev; difference: l_prev - l"})
    gpts_schedule: ChoiceEnum(list(SCHEDULE_SHAPES)) = field(
        default="linear", metadata={"help": "shape of the schedule policy from the first psi to the end psi"})
    gpts_schedule_end: str = field(
        default=",".join(str(FAIRSEQ_DEFAULT_PSI[name]) for name in PSI_FIELDS),
        metadata={"help": "schedule policy: psi at the end of training, 'RHO,GAMMA,LAMBDA'"})
    gpts_context: ChoiceEnum(list(CONTEXTS)) = field(
        default="none", metadata={"help": "gp-ts: progress = training progress as an extra GP input"})
    gpts_window: int = field(
        default=0, metadata={"help": "gp-ts: fit only the last N observations; 0 = all"})
    gpts_reward_model: ChoiceEnum(list(REWARD_MODELS)) = field(
        default="arm", metadata={"help": "gp-ts: arm = a GP over the arms (the paper's); trend = the reward as a "
                                         "trend in progress and the start loss plus an arm effect"})
    gpts_forgetting: float = field(
        default=0.0, metadata={"help": "gp-ts, --gpts-reward-model trend: evidence on the arm effect fades as "
                                       "exp(-|t - t'| / this), t = progress; 0 = never"})
    gpts_kernel: ChoiceEnum(["rbf", "matern52"]) = field(default="rbf", metadata={"help": "gp-ts kernel"})
    gpts_allow_option_change: bool = field(
        default=False, metadata={"help": "resume even if an option that defines the rewards changed (the "
                                         "bandit keeps what still fits; the history notes the change)"})

    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    save_dir: str = II("checkpoint.save_dir")
    valid_subset: str = II("dataset.valid_subset")
    max_tokens_valid: Optional[int] = II("dataset.max_tokens_valid")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")


@register_task("gpts_mlm", dataclass=GPTSMaskedLMConfig)
class GPTSMaskedLMTask(SubsetTaskMixin, MaskedLMTask):
    """masked_lm whose datasets hold clean tokens; each batch is masked in the training step."""

    cfg: GPTSMaskedLMConfig

    def __init__(self, cfg: GPTSMaskedLMConfig, dictionary=None):
        fairseq_compat.install()  # fairseq builds the task before it loads a checkpoint
        # every option is checked, and the policy built, before any data is read
        first, self.reference_psi = validate_config(cfg)
        validate_subset_config(cfg)
        loop = None if cfg.gpts_policy == "constant" else InteractionLoop(
            build_policy(cfg, first), first, reward=str(cfg.gpts_reward))
        self.interactions = InteractionController(
            loop, first, interaction_updates=cfg.gpts_interaction_updates, max_update=cfg.max_update,
            max_epoch=cfg.max_epoch, save_dir=cfg.save_dir, options=reward_options(cfg),
            allow_option_change=cfg.gpts_allow_option_change)
        self.epoch = 1
        self.reward_batches = RewardBatches(
            self._build_reward_batches, mask=lambda batch: self.mask_sample(batch, self.reference_psi, VALID_STEP))
        super().__init__(cfg, dictionary)
        self.init_subsets(cfg, self.dictionary.pad())
        self.spec = MaskingSpec.build(
            vocab_size=len(self.dictionary),
            special_ids=range(self.dictionary.nspecial),
            mask_idx=self.mask_idx,
            pad_idx=self.dictionary.pad(),
            exact=cfg.gpts_masking == "exact",
            word_start=self._word_starts() if cfg.mask_whole_words else None,
            counts=np.asarray(self.dictionary.count, dtype=np.float64),
            freq_weighted=cfg.freq_weighted_replacement,
            mask_multiple_length=cfg.mask_multiple_length,
            mask_stdev=cfg.mask_stdev,
        )

    def _word_starts(self):
        """Per-id "begins a word" flags, read from the pieces: sentencepiece marks word starts
        with '▁', wordpiece marks continuations with '##'. (masked_lm asks --bpe instead, which
        a dataclass task cannot see in fairseq 0.12.)"""
        symbols = self.dictionary.symbols
        nspecial = self.dictionary.nspecial
        if any(s.startswith("\u2581") for s in symbols[nspecial:]):
            begins = [s.startswith("\u2581") for s in symbols]
        elif any(s.startswith("##") for s in symbols[nspecial:]):
            begins = [not s.startswith("##") for s in symbols]
        else:
            raise ValueError(
                "--mask-whole-words: cannot tell word starts in this dictionary (no sentencepiece '\u2581' "
                "or wordpiece '##' pieces); use a sentencepiece/wordpiece vocabulary or drop the option")
        begins = [b or i < nspecial or s.startswith("madeupword") or s == "<mask>"
                  for i, (s, b) in enumerate(zip(symbols, begins))]
        return torch.tensor(begins)

    # -- data: masked_lm's blocks, unmasked -----------------------------------------------------

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """masked_lm's token blocks (bos-prefixed), right-padded, with ids; no masking here."""
        if self.cfg.d2v2_multi or self.cfg.skip_masking:
            raise ValueError("gpts_mlm does not support --d2v2-multi or --skip-masking; use --task masked_lm")
        blocks = self._load_dataset_split(split, epoch, combine)
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(blocks))
        net_input = {
            "src_tokens": RightPadDataset(blocks, pad_idx=self.source_dictionary.pad()),
            "src_lengths": NumelDataset(blocks, reduce=False),
        }
        if self.cfg.include_index:
            net_input["src_id"] = IdDataset()
        dataset = NestedDictionaryDataset(
            {"id": IdDataset(), "net_input": net_input, "nsentences": NumSamplesDataset(),
             "ntokens": NumelDataset(blocks, reduce=True)},
            sizes=[blocks.sizes],
        )
        self.datasets[split] = SortDataset(dataset, sort_order=[shuffle, blocks.sizes])

    # -- masking --------------------------------------------------------------------------------

    def mask_sample(self, sample, psi: Psi, step: int):
        """A new sample whose src_tokens are masked with ``psi`` and whose target is set, as
        masked_lm's datasets would give it. Masks depend on (seed, step, sample id) only."""
        tokens = sample["net_input"]["src_tokens"]
        source, target = mask_tokens(tokens, self.spec, psi, seed=self.cfg.seed, step=step,
                                     sample_ids=sample["id"])
        net_input = {**sample["net_input"], "src_tokens": source}
        if self.cfg.include_target_tokens:
            net_input["target_tokens"] = target
        return {**sample, "net_input": net_input, "target": target}

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self.epoch = epoch

    @property
    def psi(self) -> Psi:
        """The masking in force (owned by the interaction loop)."""
        return self.interactions.psi

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        psi = self.interactions.step(
            model, update_num, self.epoch, measure=lambda module: self.reward_batches.loss(module, criterion, update_num))
        for name, value in zip(PSI_LOG_NAMES, (psi.mask_prob, psi.leave_unmasked_prob, psi.random_token_prob)):
            metrics.log_scalar(name, value, round=3)
        # progressive growth (gpts_roberta_grow; others pass through): grow when due, then
        # mask at full length and fold into the stage's rows
        growth.before_update(model, optimizer, update_num, measure_loss=lambda module: self.reference_loss(module, criterion))
        sample = growth.fold_rows(model, self.mask_sample(sample, psi, step=self.epoch), pad=self.source_dictionary.pad())
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        reference = self.cfg.gpts_valid_masking == "reference"
        psi = self.reference_psi if reference else self.psi
        loss, sample_size, logging_output = super().valid_step(
            self.mask_sample(sample, psi, step=VALID_STEP), model, criterion)
        if reference and self.interactions.loop is not None:  # the next reward may reuse it
            self.reward_batches.record_validation(sample, loss, sample_size, update=self.interactions.next_update)
        return loss, sample_size, logging_output

    # -- rewards --------------------------------------------------------------------------------

    def reference_loss(self, module, criterion) -> float:
        """The loss (bits per masked token) of the fixed reward batches at the reference
        masking, with the model in eval mode, by a pass of its own; the same masks every time."""
        return self.reward_batches.loss(module, criterion)

    def _build_reward_batches(self):
        """The first --gpts-reward-batches batches of the first validation subset."""
        split = self.cfg.valid_subset.split(",")[0]
        if split not in self.datasets:
            self.load_dataset(split, combine=False, epoch=1)
        iterator = self.get_batch_iterator(
            self.dataset(split), max_tokens=self.cfg.max_tokens_valid,
            max_sentences=self.cfg.batch_size_valid, max_positions=self.max_positions(),
            ignore_invalid_inputs=True, seed=int(self.cfg.seed), num_workers=0, epoch=1,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
        limit = self.cfg.gpts_reward_batches or len(iterator)
        batches = [batch for _, batch in zip(range(limit), iterator)]
        if len(batches) < limit:
            logger.warning(f"--gpts-reward-batches {limit}: the validation set '{split}' has "
                           f"{len(batches)} batches; the reward uses all of them")
        return batches

    # -- checkpoints (fairseq's task hooks: saved in extra_state, restored on resume) -----------
    # one sub-dict per subsystem, under its own key

    def get_checkpoint_dict(self):
        return {type(self).__name__: {"interactions": self.interactions.state_dict(), **self.subset_checkpoint_state()}}

    def set_checkpoint_dict(self, state):
        if "interactions" not in state:
            raise ValueError("the checkpoint's gpts_mlm state has no 'interactions' entry: it was written by an "
                             "older gpts-fairseq; resume it with that version")
        self.interactions.load_state_dict(state["interactions"])
        self.restore_subset_state(state)
