"""Heterogeneous architecture search (FlexiBERT / BOSHNAS, Tuli et al., JAIR 2023).

``space`` (the per-layer grammar and the design space), ``ops`` and ``model`` (fairseq
``--arch gpts_flexibert``), ``embedding`` (edit distance, MDS, neighbours), ``transfer``
(weight transfer between neighbours), ``surrogates`` (BOSHNAS, GP-BO), ``search`` (the loop,
resumable), ``runner`` (one query = one short fairseq-train run), ``plots``. Command line:
``python -m gpts_fairseq.flexibert --help``. Importing this package imports neither torch nor fairseq.
"""
