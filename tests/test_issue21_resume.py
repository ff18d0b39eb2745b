"""Issue 21, items 1 and 2: resuming a subset run never loses or hides its stored selection.

One interrupted run (a mid-epoch checkpoint and the selection files of epochs 1-3) is copied
for every scenario; each scenario resumes it as a user would, with fairseq-train."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from conftest import TINY_MODEL, json_log, run_fairseq

TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
SUBSETS = ["--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1",
           "--subset-fraction", "0.25", "--subset-temperature", "1.0"]
INTERRUPTED_AT = 8  # epochs are 3 updates long (a quarter of the tiny corpus): update 8 is mid-epoch 3


def training_args(corpus, save_dir, *extra):
    return [corpus, *TINY_MODEL, *TASK, *SUBSETS, "--save-dir", save_dir, "--save-interval-updates", "4", *extra]


@pytest.fixture(scope="module")
def interrupted_run(tiny_corpus, tmp_path_factory):
    """The save dir of a run stopped at update 8: checkpoint_last.pt mid-epoch 3, selections 1-3."""
    save_dir = tmp_path_factory.mktemp("interrupted")
    run_fairseq(training_args(tiny_corpus, save_dir, "--max-update", INTERRUPTED_AT))
    assert sorted(path.name for path in (save_dir / "subset").iterdir()) == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    return save_dir


def copy_of(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def files_of(save_dir):
    """Every file of the save dir (selections and checkpoints), name -> bytes."""
    return {str(path.relative_to(save_dir)): path.read_bytes()
            for path in sorted(save_dir.rglob("*")) if path.is_file()}


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if "Error" in line]


@pytest.mark.parametrize("option, stored, changed", [("--subset-temperature", "1.0", "2.0"),
                                                     ("--subset-fraction", "0.25", "0.5")])
def test_resume_with_a_changed_selection_option_is_refused_and_loses_nothing(
        tiny_corpus, interrupted_run, tmp_path, option, stored, changed):
    """Refused before anything is selected or written, naming the option and both values; the
    stored selections are byte-identical afterwards, and a resume with the original options
    then continues from them."""
    save_dir = copy_of(interrupted_run, tmp_path)
    before = files_of(save_dir)
    args = training_args(tiny_corpus, save_dir, "--max-update", 12)
    changed_args = [*args, option, changed]  # given last: it overrides the value in SUBSETS

    refused = run_fairseq(changed_args, check=False)
    assert refused.returncode != 0
    assert any(option in line and stored in line and changed in line for line in error_lines(refused)), \
        refused.stderr[-3000:]
    log = refused.stdout + refused.stderr
    assert "subset of epoch 3: ingenious," not in log  # no selection was made
    assert json_log(refused, "train_inner") == []
    assert files_of(save_dir) == before  # nothing written, nothing replaced

    resumed = run_fairseq(args)
    log = resumed.stdout + resumed.stderr
    assert "subset of epoch 3: ingenious selection of epoch 3 read from" in log
    assert [int(r["num_updates"]) for r in json_log(resumed, "train_inner")] == list(range(INTERRUPTED_AT + 1, 13))
    after = files_of(save_dir)
    assert all(after[name] == before[name] for name in before if name.startswith("subset"))


def test_a_truncated_selection_file_is_named_with_what_to_do(tiny_corpus, interrupted_run, tmp_path):
    save_dir = copy_of(interrupted_run, tmp_path)
    selection = save_dir / "subset" / "epoch_3.pt"
    truncated = selection.read_bytes()[: selection.stat().st_size // 2]
    selection.write_bytes(truncated)

    proc = run_fairseq(training_args(tiny_corpus, save_dir, "--max-update", 12), check=False)
    assert proc.returncode != 0
    named = [line for line in error_lines(proc) if str(selection) in line]
    assert named and any(word in named[-1] for word in ("restore", "delete")), proc.stderr[-3000:]
    assert json_log(proc, "train_inner") == []
    assert selection.read_bytes() == truncated  # left as it was, for the user to inspect


def test_an_allowed_option_change_keeps_the_epoch_in_progress_and_adds_new_selections_beside(
        tiny_corpus, interrupted_run, tmp_path):
    """--gpts-allow-option-change, resumed at update 4 (mid-epoch 2) with another temperature:
    epoch 2 keeps its stored selection; epoch 3, stored with the old temperature, is selected
    again into a new file beside it; epoch 4 gets the plain name; nothing stored changes."""
    save_dir = copy_of(interrupted_run, tmp_path)
    shutil.copy(save_dir / "checkpoint_2_4.pt", save_dir / "checkpoint_last.pt")
    before = {name: data for name, data in files_of(save_dir).items() if name.startswith("subset")}
    proc = run_fairseq(training_args(tiny_corpus, save_dir, "--max-update", 12, "--subset-temperature", "2.0",
                                     "--gpts-allow-option-change"))
    log = proc.stdout + proc.stderr
    assert "subset of epoch 2: ingenious selection of epoch 2 read from" in log
    assert "--subset-temperature: stored selection '1.0', now '2.0'" in log
    after = {name: data for name, data in files_of(save_dir).items() if name.startswith("subset")}
    assert all(after[name] == data for name, data in before.items())
    added = sorted(set(after) - set(before))
    assert len(added) == 2 and added[0].startswith("subset/epoch_3.") and added[1] == "subset/epoch_4.pt"
    for name in added:
        record = torch.load(save_dir / name, weights_only=True)
        assert record["kind"] == "ingenious" and record["settings"]["subset_temperature"] == "2.0"
    assert [int(r["num_updates"]) for r in json_log(proc, "train_inner")] == list(range(5, 13))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_rank_stops_when_the_first_refuses(tiny_corpus, interrupted_run, tmp_path):
    """2 gloo ranks start in a save dir whose selection of epoch 1 was made with another
    temperature: the first rank refuses, and the second stops too instead of waiting for it."""
    save_dir = tmp_path / "run"
    (save_dir / "subset").mkdir(parents=True)
    shutil.copy(interrupted_run / "subset" / "epoch_1.pt", save_dir / "subset" / "epoch_1.pt")
    args = training_args(tiny_corpus, save_dir, "--max-update", 4, "--subset-temperature", "2.0",
                         "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend",
                         "legacy_ddp", "--distributed-init-method", f"tcp://127.0.0.1:{_free_port()}",
                         "--distributed-no-spawn")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "fairseq_cli.train", *map(str, args), "--distributed-rank"]
    procs = [subprocess.Popen([*command, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for rank in (0, 1)]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode != 0 for proc in procs] == [True, True]
    assert "--subset-temperature: stored selection '1.0', now '2.0'" in errors[0]
    assert "the first data-parallel rank refused the stored subset selections" in errors[1]
    assert sorted(path.name for path in (save_dir / "subset").iterdir()) == ["epoch_1.pt"]
