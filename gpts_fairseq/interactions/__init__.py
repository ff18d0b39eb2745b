"""GP-TS masking inside fairseq-train: ``options`` (the ``--gpts-*`` options, which of them
define a reward), ``controller`` (when an interaction ends, on which rank, the history file,
the checkpoint state), ``extension`` (the training extension). The bandit itself is
``gpts_fairseq.bandit`` (fairseq-free)."""
