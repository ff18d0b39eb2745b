"""The training set seen through one epoch's subset."""

import numpy as np
from fairseq.data import BaseWrapperDataset


class EpochSubsetDataset(BaseWrapperDataset):
    """``dataset`` whose ``ordered_indices`` keeps only the epoch's blocks, in the wrapped
    dataset's own order. Batches are built from it in the main process; items are still fetched
    by their original index, so DataLoader workers never need (or keep) the subset. A new
    wrapper per epoch: fairseq must not reuse its iterator across epochs."""

    def __init__(self, dataset, indices):
        super().__init__(dataset)
        self.keep = np.zeros(len(dataset), dtype=bool)
        self.keep[np.asarray(indices, dtype=np.int64)] = True

    def ordered_indices(self):
        order = self.dataset.ordered_indices()
        return order[self.keep[order]]

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False
