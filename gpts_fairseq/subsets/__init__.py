"""Informative data subsets (INGENIOUS, Renduchintala et al., Findings of EMNLP 2023) for gpts_mlm.

One module per job: ``options`` (the ``--subset-*`` dataclass and its checks), ``selection``
(facility location, lazy and stochastic greedy, partitions, Taylor-softmax sampling; plain
torch), ``features`` (mean-pooled hidden states), ``store`` (selection files and their hash),
``dataset`` (the epoch's view of the training set), ``epochs`` (which blocks each epoch trains
on, agreed by all ranks, and their events), ``extension`` (the training extension).
"""

# fairseq first: importing it runs the install hook, which imports gpts_mlm and through it the
# modules below; they must not be half-initialised when that happens
import fairseq  # noqa: F401, I001

from .options import SELECTORS, SubsetConfig, subsets_enabled, validate_subset_config

__all__ = ["SELECTORS", "SubsetConfig", "subsets_enabled", "validate_subset_config"]
