"""Shared fixtures: a tiny binarized corpus (from ../shared/data), a fairseq-train runner, and
the ``e2e`` marker on every test that trains with fairseq in a subprocess."""

import atexit
import inspect
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the three corpora; GPTS_TEST_DATA points elsewhere (benchmarks/gpu_check.py, on a machine without them)
SHARED_DATA = Path(os.environ.get("GPTS_TEST_DATA") or REPO.parent / "shared" / "data")
PACKAGE_DIR = REPO / "gpts_fairseq"

# A RoBERTa small enough that an update takes milliseconds on one CPU thread.
TINY_MODEL = [
    "--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--max-positions", "64",
    "--tokens-per-sample", "64", "--batch-size", "8", "--required-batch-size-multiple", "1",
    "--optimizer", "adam", "--lr", "0.003", "--cpu", "--log-format", "json", "--log-interval", "1",
    "--seed", "7",
]


def _lines(path, count):
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in handle if line.strip()]
    return lines[:count]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Binarized train/valid splits of the linux corpus: 1,200 / 200 non-empty lines."""
    root = tmp_path_factory.mktemp("corpus")
    source = SHARED_DATA / "linux"
    (root / "train.txt").write_text("".join(_lines(source / "train.txt", 1200)), encoding="utf-8")
    (root / "valid.txt").write_text("".join(_lines(source / "valid.txt", 200)), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref", str(root / "train.txt"),
         "--validpref", str(root / "valid.txt"), "--destdir", str(root / "bin"), "--workers", "1",
         "--nwordssrc", "1000"],
        check=True, capture_output=True, text=True,
    )
    return root / "bin"


_fork_server = None
_fork_server_lock = threading.Lock()  # runs may start from several threads at once


def _forked_run(tool, args, env, timeout):
    """The run from the fork server (started on first use), or None where it cannot make it."""
    global _fork_server
    if os.environ.get("GPTS_TEST_FORK", "1") == "0":
        return None
    with _fork_server_lock:
        if _fork_server is None:
            import forked_fairseq

            _fork_server = forked_fairseq.Server(env)
            atexit.register(_fork_server.stop)
    return _fork_server.run(tool, args, env, timeout)


def run_fairseq(args, *, tool="train", check=True, timeout=600):
    """Run fairseq_cli.<tool> in a child process with one thread; returns the CompletedProcess.
    fairseq-train's child is forked from a server that has imported fairseq already
    (forked_fairseq.py; GPTS_TEST_FORK=0 starts every run as a fresh ``python -m``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = list(map(str, args))
    proc = _forked_run(tool, args, env, timeout) or subprocess.run(
        [sys.executable, "-m", f"fairseq_cli.{tool}", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq {tool} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def json_log(proc, tag):
    """The JSON records fairseq logged under ``tag`` ("train_inner", "valid", ...)."""
    marker = f"| {tag} | "
    return [json.loads(line.split(marker, 1)[1]) for line in (proc.stdout + proc.stderr).splitlines()
            if marker in line]


def _calls_run_fairseq(function):
    """Does ``function``, or a function of its module that it names, call ``run_fairseq``?"""
    module = inspect.getmodule(function)
    seen = set()
    pending = [function]
    while pending:
        code = getattr(pending.pop(), "__code__", None)
        if code is None or code in seen:
            continue
        seen.add(code)
        if "run_fairseq" in code.co_names:
            return True
        pending.extend(
            value for name in code.co_names
            if inspect.isfunction(value := getattr(module, name, None)) and value.__module__ == module.__name__
        )
    return False


def _shares_a_module_fixture(item):
    """Does ``item`` use a fixture set up once per module (or class, or package)?"""
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info else ()
    return any(chain[-1].scope in ("module", "class", "package") for chain in definitions if chain)


def pytest_collection_modifyitems(config, items):
    """``e2e``: tests that use the ``tiny_corpus`` fixture or call ``run_fairseq`` (directly or
    through a helper of their module); tests that train in a subprocess some other way carry
    ``@pytest.mark.e2e`` themselves. ``pytest -m "not e2e"`` is the quick loop.

    Modules with more ``e2e`` tests run first. ``xdist_group``: the tests of a module that share a module-scoped fixture run on one
    pytest-xdist worker under ``--dist loadgroup`` (``make test``), so the fixture is built once."""
    for item in items:
        function = getattr(item, "function", None)
        if "tiny_corpus" in getattr(item, "fixturenames", ()) or (function and _calls_run_fairseq(function)):
            item.add_marker(pytest.mark.e2e)
        if _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # modules with the most e2e tests first (a stable sort: each module stays in one piece), so
    # that xdist's workers do not end on a long training run while the other one idles
    trainings = Counter(item.module.__name__ for item in items if item.get_closest_marker("e2e"))
    items.sort(key=lambda item: -trainings[getattr(item.module, "__name__", "")])
