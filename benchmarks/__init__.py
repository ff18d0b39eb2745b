"""Benchmarks of gpts-fairseq: ``python -m benchmarks.<driver>`` (see each module's docstring).
Every driver that trains runs fairseq-train through :mod:`benchmarks.harness`."""
