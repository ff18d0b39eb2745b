"""gpts-fairseq: online GP-TS choice of the masking hyperparameters for fairseq masked-LM pre-training.

Importing this package is cheap: it does not import torch or fairseq. The fairseq task and
criterion live in ``gpts_fairseq.tasks`` and ``gpts_fairseq.criterions``; the bandit in
``gpts_fairseq.bandit``; the masking op in ``gpts_fairseq.masking``.
"""

__version__ = "0.1.0"
