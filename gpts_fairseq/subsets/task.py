"""The fairseq hooks of subset training, as a mixin of the task (gpts_mlm).

fairseq builds an epoch's batches in ``get_batch_iterator`` (before ``begin_epoch``; on resume
before the task's state is restored): the epoch's subset is chosen there, in the main process,
and handed to fairseq as a dataset whose ``ordered_indices`` returns it.
"""

import inspect

from fairseq.tasks import FairseqTask

from .dataset import EpochSubsetDataset
from .epochs import EpochSubsets
from .features import feature_batches
from .options import subsets_enabled


CHECKPOINT_KEY = "subset"
_ITERATOR_SIGNATURE = inspect.signature(FairseqTask.get_batch_iterator)  # to read epoch & batch size however passed


class SubsetTaskMixin:
    """Needs ``cfg`` to hold the ``SubsetConfig`` fields, ``save_dir``, ``seed`` and
    ``max_epoch``; the task calls ``init_subsets`` in ``__init__`` once the dictionary is known."""

    def init_subsets(self, cfg, pad_idx: int) -> None:
        """After ``validate_subset_config(cfg)``, which the task calls before any data is read."""
        self.subsets = EpochSubsets(cfg, cfg.save_dir, pad_idx, write=not cfg.no_save) if subsets_enabled(cfg) else None
        self._subset_model = None

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self._subset_model = model  # the features of a selection come from the model being trained
        return model

    def get_batch_iterator(self, dataset, *args, **kwargs):
        options = _ITERATOR_SIGNATURE.bind(self, dataset, *args, **kwargs)
        options.apply_defaults()
        epoch, max_tokens, max_sentences = (options.arguments[name] for name in ("epoch", "max_tokens", "max_sentences"))
        beyond_training = 0 < self.cfg.max_epoch < epoch  # fairseq asks for one epoch more than it trains
        if self.subsets is None or beyond_training or dataset is not self.datasets.get(self.cfg.train_subset):
            return super().get_batch_iterator(dataset, *args, **kwargs)
        if self._subset_model is None and self.cfg.subset_selector == "ingenious":
            raise ValueError("--subset-selector ingenious needs the model: build it with the task's build_model")

        indices = self.subsets.for_epoch(
            epoch, dataset, self._subset_model,
            lambda: feature_batches(dataset, max_tokens=max_tokens, max_sentences=max_sentences))
        return super().get_batch_iterator(EpochSubsetDataset(dataset, indices.numpy()), *args, **kwargs)

    def subset_checkpoint_state(self) -> dict:
        """The one entry of the task's checkpoint dict: the selection in force and its hash."""
        if self.subsets is None or self.subsets.selection_epoch is None:
            return {}
        return {CHECKPOINT_KEY: self.subsets.state_dict()}

    def restore_subset_state(self, state: dict) -> None:
        if self.subsets is not None and CHECKPOINT_KEY in state:
            self.subsets.check_state(state[CHECKPOINT_KEY])
