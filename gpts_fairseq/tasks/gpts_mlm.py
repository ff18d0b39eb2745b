"""fairseq task ``gpts_mlm``: ``masked_lm`` with per-batch masking and an online masking policy.

Drop-in: every masked_lm option keeps its meaning; ``--mask-prob/--leave-unmasked-prob/
--random-token-prob`` give the ψ of the first interaction. Where things happen:
- masking: ``mask_sample`` (each batch, on its device, in ``train_step``/``valid_step``);
- rewards: ``reference_loss`` (fixed validation batches at the reference masking);
- choosing ψ: ``_maybe_interact`` hands the loss to ``gpts_fairseq.bandit.loop.InteractionLoop``.
"""

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
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
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from ..bandit import POLICIES
from ..bandit.loop import InteractionLoop
from ..bandit.policies import CONTEXTS, SCHEDULE_SHAPES
from ..bandit.rewards import REWARD_KINDS
from ..masking import MaskingSpec, Psi, mask_tokens
from .options import build_policy, validate_config

# importing the task registers the criterion too (fairseq's --user-dir imports tasks/ only)
from ..criterions import gpts_masked_lm  # noqa: F401

logger = logging.getLogger(__name__)

# fairseq stores its command line (an argparse.Namespace) in every checkpoint, and torch >= 2.6
# loads checkpoints with weights_only=True, which refuses it: without this, no fairseq run
# trained from the command line could be resumed. Namespace is a plain attribute holder.
# Likewise fairseq's broadcast_object (used to share a checkpoint between ranks on resume)
# pickles tensors as _TensorPlaceholder markers. Both are plain data holders.
torch.serialization.add_safe_globals([argparse.Namespace, distributed_utils._TensorPlaceholder])

HISTORY_FILE = "gpts_history.jsonl"
VALID_STEP = 0  # masking step of validation; training uses the epoch (>= 1)


@dataclass
class GPTSMaskedLMConfig(MaskedLMConfig):
    gpts_masking: ChoiceEnum(["exact", "bernoulli"]) = field(
        default="exact",
        metadata={"help": "exact: masked_lm's per-sequence count int(p*n/span + u) (parity); "
                          "bernoulli: each token independently with probability --mask-prob"})
    gpts_valid_masking: ChoiceEnum(["reference", "train"]) = field(
        default="reference",
        metadata={"help": "reference: validate at the fixed --gpts-ref-* masking with the same masks "
                          "every time (comparable losses); train: at the masking in force"})
    gpts_ref_mask_prob: float = field(default=0.15, metadata={"help": "reference masking: rho"})
    gpts_ref_leave_unmasked_prob: float = field(default=0.1, metadata={"help": "reference masking: gamma"})
    gpts_ref_random_token_prob: float = field(default=0.1, metadata={"help": "reference masking: lambda"})
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
        default="0.15,0.1,0.1", metadata={"help": "schedule policy: psi at the end of training, 'RHO,GAMMA,LAMBDA'"})
    gpts_context: ChoiceEnum(list(CONTEXTS)) = field(
        default="none", metadata={"help": "gp-ts: progress = training progress as an extra GP input"})
    gpts_window: int = field(
        default=0, metadata={"help": "gp-ts: fit only the last N observations; 0 = all"})
    gpts_kernel: ChoiceEnum(["rbf", "matern52"]) = field(default="rbf", metadata={"help": "gp-ts kernel"})

    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    save_dir: str = II("checkpoint.save_dir")
    valid_subset: str = II("dataset.valid_subset")
    max_tokens_valid: Optional[int] = II("dataset.max_tokens_valid")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")


@register_task("gpts_mlm", dataclass=GPTSMaskedLMConfig)
class GPTSMaskedLMTask(MaskedLMTask):
    """masked_lm whose datasets hold clean tokens; each batch is masked in the training step."""

    cfg: GPTSMaskedLMConfig

    def __init__(self, cfg: GPTSMaskedLMConfig, dictionary=None):
        # every option is checked, and the policy built, before any data is read
        first, self.reference_psi = validate_config(cfg)
        self.psi = first  # the masking in force; changed only by _maybe_interact
        self.loop = None if cfg.gpts_policy == "constant" else InteractionLoop(
            build_policy(cfg, first), first.as_dict(), reward=str(cfg.gpts_reward))
        self.epoch = 1
        self._reward_batches = None
        super().__init__(cfg, dictionary)
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
        return {**sample, "net_input": net_input, "target": target, "gpts_psi": psi}

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        self.epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self.loop is not None:
            self._maybe_interact(model, criterion, update_num)
        sample = self.mask_sample(sample, self.psi, step=self.epoch)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        psi = self.reference_psi if self.cfg.gpts_valid_masking == "reference" else self.psi
        return super().valid_step(self.mask_sample(sample, psi, step=VALID_STEP), model, criterion)

    # -- interactions ---------------------------------------------------------------------------

    def progress(self, update_num: int) -> float:
        """Training progress in [0, 1]: by updates when --max-update is set, else by epochs."""
        if self.cfg.max_update > 0:
            return min(update_num / self.cfg.max_update, 1.0)
        if self.cfg.max_epoch > 0:
            return min((self.epoch - 1) / self.cfg.max_epoch, 1.0)
        return 0.0

    def _interaction_due(self, update_num: int) -> bool:
        every = self.cfg.gpts_interaction_updates
        if every > 0:
            return update_num % every == 0 and update_num > self.loop.start_update
        return self.epoch > self.loop.start_epoch

    def _maybe_interact(self, model, criterion, update_num):
        """At an interaction boundary: rank 0 measures the reference loss and decides; every
        rank gets the new ψ. Runs before the update, so a run resumed from a checkpoint
        saved at the boundary makes the same decision."""
        starting = not self.loop.started
        if not (starting or self._interaction_due(update_num)):
            return
        rank, world_size = _data_parallel_rank_and_size()
        if rank == 0:
            # the interaction must leave the global RNGs (dropout) as they were: a resumed run
            # builds its reward batches at a different moment than an uninterrupted one
            cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
            with torch.random.fork_rng(devices=cuda):
                loss = self.reference_loss(model, criterion)
                if starting:
                    self.loop.start(loss)
                    logger.info(f"gpts: reference validation loss before interaction 0: {loss:.4f}")
                else:
                    self.loop.finish(loss, update=update_num, epoch=self.epoch, progress=self.progress(update_num))
                    self._write_history()
        if world_size > 1:  # every rank holds rank 0's loop, so all agree on psi and on the next boundary
            group = distributed_utils.get_data_parallel_group()
            state = [self.loop.state_dict() if rank == 0 else None]
            torch.distributed.broadcast_object_list(state, src=torch.distributed.get_global_rank(group, 0), group=group)
            if rank != 0:
                self.loop.load_state_dict(state[0])
        self.psi = Psi(**self.loop.psi)
        if not starting:
            self._log_interaction(self.loop.history[-1])

    def _log_interaction(self, record):
        psi = ", ".join(f"{k}={v:.3f}" for k, v in record["next_psi"].items())
        reward = "none" if record["reward"] is None else f"{record['reward']:.5f}"
        logger.info(f"gpts: interaction {record['interaction']} (updates {record['update']}-"
                    f"{record['end_update']}): val loss {record['val_loss']}, reward {reward}, "
                    f"decision {1000 * record['decision_time_s']:.1f} ms; next {psi}")
        values = {"gpts_reward": record["reward"], "gpts_decision_ms": 1000 * record["decision_time_s"],
                  "gpts_posterior_mean": record["posterior_mean"], "gpts_posterior_std": record["posterior_std"],
                  **{f"gpts_next_{name}": value for name, value in record["next_psi"].items()}}
        for name, value in values.items():
            if value is not None:
                metrics.log_scalar(name, value, round=5)

    def reference_loss(self, model, criterion) -> float:
        """The loss (bits per masked token) of the fixed reward batches at the reference
        masking, with the model in eval mode; the same masks every time."""
        module = model
        while isinstance(getattr(module, "module", None), torch.nn.Module):  # DDP and proxy wrappers
            module = module.module  # rank 0 alone runs it: no collective may happen
        device = next(module.parameters()).device
        was_training = module.training
        module.eval()
        total, count = 0.0, 0.0
        try:
            with torch.no_grad():
                for batch in self._reward_sample():
                    batch = utils.apply_to_sample(lambda t: t.to(device), batch)
                    loss, sample_size, _ = criterion(module, self.mask_sample(batch, self.reference_psi, VALID_STEP))
                    total += float(loss)
                    count += float(sample_size)
        finally:
            module.train(was_training)
        return total / count / math.log(2) if count > 0 else math.nan

    def _reward_sample(self):
        """The first --gpts-reward-batches batches of the first validation subset (kept)."""
        if self._reward_batches is None:
            split = self.cfg.valid_subset.split(",")[0]
            if split not in self.datasets:
                self.load_dataset(split, combine=False, epoch=1)
            iterator = self.get_batch_iterator(
                self.dataset(split), max_tokens=self.cfg.max_tokens_valid,
                max_sentences=self.cfg.batch_size_valid, max_positions=self.max_positions(),
                ignore_invalid_inputs=True, seed=int(self.cfg.seed), num_workers=0, epoch=1,
                disable_iterator_cache=True,
            ).next_epoch_itr(shuffle=False)
            limit = self.cfg.gpts_reward_batches or None
            self._reward_batches = [batch for _, batch in zip(range(limit or len(iterator)), iterator)]
        return self._reward_batches

    def _history_path(self):
        return os.path.join(self.cfg.save_dir, HISTORY_FILE)

    def _write_history(self):
        """Rewrite SAVE_DIR/gpts_history.jsonl from the loop's history (atomic), so the file
        always matches the bandit state, also after a resume from an older checkpoint."""
        os.makedirs(self.cfg.save_dir, exist_ok=True)
        tmp = self._history_path() + ".tmp"
        with open(tmp, "w") as handle:
            for record in self.loop.history:
                handle.write(json.dumps(record) + "\n")
        os.replace(tmp, self._history_path())

    # -- checkpoints (fairseq's task hooks: saved in extra_state, restored on resume) -----------

    def get_checkpoint_dict(self):
        state = {"psi": self.psi.as_dict()}
        if self.loop is not None:
            state["loop"] = self.loop.state_dict()
        return {type(self).__name__: state}

    def set_checkpoint_dict(self, state):
        self.psi = Psi(**state["psi"])
        if self.loop is not None:
            if "loop" not in state:
                raise ValueError(f"the checkpoint has no bandit state; it was trained with "
                                 f"--gpts-policy constant, not {self.cfg.gpts_policy}")
            self.loop.load_state_dict(state["loop"])
            if _data_parallel_rank_and_size()[0] == 0:
                self._write_history()


def _data_parallel_rank_and_size():
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, 1
    return distributed_utils.get_data_parallel_rank(), distributed_utils.get_data_parallel_world_size()

