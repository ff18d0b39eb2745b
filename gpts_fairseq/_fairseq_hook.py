"""Registers task gpts_mlm and criterion gpts_masked_lm with fairseq, without --user-dir.

fairseq has no plugin entry points, so installation adds ``gpts_fairseq_hook.pth`` to
site-packages; its one line calls ``install()`` at interpreter start. That only puts a finder
on ``sys.meta_path`` (no torch, no fairseq import): the first time anything imports
``fairseq``, the finder lets the real import run, then imports ``gpts_fairseq.tasks``. If a
gpts_fairseq module imported fairseq first, registering then would import that half-run module
again (a circular import): the finder waits instead for the first import to complete while no
other gpts_fairseq module is mid-import. ``GPTS_FAIRSEQ_NO_HOOK=1`` turns it off. A failure is a
warning, never a broken interpreter.
"""

import importlib
import os
import sys
import warnings


class _RegisterAfterFairseq:
    """A meta-path finder (duck-typed: importing importlib.abc would cost startup time) that
    registers once the import of ``trigger`` has run (None: of any module, see the docstring)."""

    def __init__(self, trigger="fairseq"):
        self.trigger = trigger

    def find_spec(self, name, path=None, target=None):
        if self.trigger not in (None, name):
            return None
        sys.meta_path.remove(self)  # one shot
        spec = next((found for finder in sys.meta_path if hasattr(finder, "find_spec")
                     for found in [finder.find_spec(name, path, target)] if found is not None), None)
        # a loader shared by many modules (a class, e.g. for built-ins) is never wrapped
        if spec is None or spec.loader is None or isinstance(spec.loader, type) \
                or not hasattr(spec.loader, "exec_module"):
            if self.trigger is None:
                sys.meta_path.insert(0, self)
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if _gpts_fairseq_mid_import(besides=module.__name__):
                sys.meta_path.insert(0, _RegisterAfterFairseq(trigger=None))
            else:
                _register_or_warn()

        spec.loader.exec_module = exec_module
        return spec


def _gpts_fairseq_mid_import(besides: str) -> bool:
    """Whether a gpts_fairseq module other than ``besides`` is being run by an import now."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()) if name.startswith("gpts_fairseq.") and name != besides)


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
