"""Subset training as a training extension: each epoch of the training split trains on its
subset, chosen when fairseq builds the epoch's batches (before ``begin_epoch``; on resume before
the task's state is restored) and handed to fairseq as a dataset whose ``ordered_indices``
returns it. The checkpoint keeps the selection in force and its hash."""

from ..events import EventLog
from ..extensions.base import Batching, TrainingExtension
from .dataset import EpochSubsetDataset
from .epochs import EVENT_SCHEMA, EpochSubsets
from .features import check_feature_layer, feature_batches
from .options import SubsetConfig, subsets_enabled, validate_subset_config


class SubsetsExtension(TrainingExtension):
    name = "subsets"
    config = SubsetConfig

    @classmethod
    def enabled(cls, cfg) -> bool:
        return subsets_enabled(cfg)

    @classmethod
    def check_options(cls, cfg) -> None:
        validate_subset_config(cfg)

    def __init__(self, cfg, context):
        super().__init__(cfg, context)
        events: EventLog = context.events(self.name, EVENT_SCHEMA)
        self.subsets = EpochSubsets(cfg, cfg.save_dir, context.dictionary.pad(), write=not cfg.no_save,
                                    events=events, update=context.updates)
        self.model = None  # the features of a selection come from the model being trained

    def build_model(self, model):
        self.model = model
        return model

    def check_model(self, model):
        if self.cfg.subset_selector == "ingenious":
            check_feature_layer(model, self.cfg.subset_feature_layer)

    def epoch_dataset(self, dataset, epoch: int, batching: Batching):
        if 0 < self.cfg.max_epoch < epoch:  # fairseq asks for one epoch more than it trains
            return dataset
        if self.model is None and self.cfg.subset_selector == "ingenious":
            raise ValueError("--subset-selector ingenious needs the model: build it with the task's build_model")
        indices = self.subsets.for_epoch(
            epoch, dataset, self.model,
            lambda: feature_batches(dataset, max_tokens=batching.max_tokens, max_sentences=batching.max_sentences))
        return EpochSubsetDataset(dataset, indices.numpy())

    def state_dict(self) -> dict:
        """The selection in force and its hash ({} before the first)."""
        return {} if self.subsets.selection_epoch is None else self.subsets.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.subsets.check_state(state)
