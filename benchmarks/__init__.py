"""Benchmarks of gpts-fairseq: ``python -m benchmarks.<driver>`` (see each module's docstring). Every
comparison runs fairseq-train through :mod:`benchmarks.harness`; ``train_speed`` times its own two runs."""
