"""gpts-fairseq: online GP-TS choice of the masking hyperparameters for fairseq masked-LM pre-training.

Importing this package is cheap: it does not import torch or fairseq. The fairseq task and
criterion live in ``gpts_fairseq.tasks`` and ``gpts_fairseq.criterions``; the training
extensions (interactions, subsets, growth) in their own packages; the bandit in
``gpts_fairseq.bandit``; the masking op in ``gpts_fairseq.masking``; every use of fairseq's
internals in ``gpts_fairseq.compat``.
"""

__version__ = "0.1.0"
# the fairseq releases whose internals gpts_fairseq.compat follows (package metadata: the
# "fairseq" extra; a fairseq outside it gets a warning when the task is built)
FAIRSEQ_REQUIREMENT = "fairseq>=0.12.2,<0.13"
