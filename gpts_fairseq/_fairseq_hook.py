"""Registers task gpts_mlm and criterion gpts_masked_lm with fairseq, without --user-dir.

fairseq has no plugin entry points, so installation adds ``gpts_fairseq_hook.pth`` to
site-packages; its one line calls ``install()`` at interpreter start. That only puts a finder
on ``sys.meta_path`` (no torch, no fairseq import): the first time anything imports
``fairseq``, the finder lets the real import run, then imports ``gpts_fairseq.tasks``.
``GPTS_FAIRSEQ_NO_HOOK=1`` turns it off. A failure is a warning, never a broken interpreter.
"""

import importlib
import os
import sys
import warnings


class _RegisterAfterFairseq:
    """A meta-path finder (duck-typed: importing importlib.abc would cost startup time)."""

    def find_spec(self, name, path=None, target=None):
        if name != "fairseq":
            return None
        sys.meta_path.remove(self)  # one shot
        spec = next((found for finder in sys.meta_path if hasattr(finder, "find_spec")
                     for found in [finder.find_spec(name, path, target)] if found is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_fairseq_init = spec.loader.exec_module

        def exec_module(module):
            run_fairseq_init(module)
            _register_or_warn()

        spec.loader.exec_module = exec_module
        return spec


def register():
    """Register task gpts_mlm, criterion gpts_masked_lm and the models with fairseq's registries
    (idempotent). For tools that load a checkpoint of them whatever the hook did."""
    importlib.import_module("gpts_fairseq.tasks")


def _register_or_warn():
    try:
        register()
    except Exception as error:  # the user's fairseq must keep working whatever happens here
        warnings.warn(f"gpts-fairseq: could not register task gpts_mlm with fairseq ({error!r}); "
                      "use --user-dir \"$(python -m gpts_fairseq user-dir)\" to see the full error", RuntimeWarning)


def install():
    if os.environ.get("GPTS_FAIRSEQ_NO_HOOK") == "1":
        return
    if "fairseq" in sys.modules:  # imported before us (unusual): register now
        _register_or_warn()
    elif not any(isinstance(finder, _RegisterAfterFairseq) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterFairseq())
