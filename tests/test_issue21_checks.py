"""Issue 21, items 3, 4 and 6: options that cannot work with the model, the training length or
the validation set are refused before training (or at the first interaction at the latest)."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import TINY_MODEL, json_log, run_fairseq

TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
GROW = ["--arch", "gpts_roberta_grow", *TASK]


def last_error(proc):
    """The exception line fairseq-train died with."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_feature_layer_beyond_the_encoder_is_refused_before_training(tiny_corpus, tmp_path):
    """TINY_MODEL has 2 encoder layers: states 0 (embeddings) to 2."""
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *TASK, "--subset-selector", "ingenious", "--subset-warmup-epochs",
                        "1", "--subset-partition-size", "40", "--subset-feature-layer", "5", "--max-epoch", "2",
                        "--save-dir", tmp_path], check=False)
    assert proc.returncode != 0
    assert re.search(r"--subset-feature-layer must be in \[0, 2\].*got 5", last_error(proc)), proc.stderr[-3000:]
    assert json_log(proc, "train_inner") == []  # no warm-up epoch trained first
    assert not (tmp_path / "subset").exists()


UNREACHED = ["--grow-stages", "0:layers=1;500:layers=2", "--max-update", "6"]


def test_growth_stage_at_or_after_max_update_is_refused_before_training(tiny_corpus, tmp_path):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, *UNREACHED, "--save-dir", tmp_path], check=False)
    assert proc.returncode != 0
    error = last_error(proc)
    assert "--grow-stages" in error and "500" in error and "--max-update 6" in error, proc.stderr[-3000:]
    assert "--grow-allow-unreached-stages" in error  # says how to run it anyway
    assert json_log(proc, "train_inner") == []


def test_unreached_growth_stage_runs_with_a_warning_when_allowed(tiny_corpus, tmp_path):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, *UNREACHED, "--grow-allow-unreached-stages",
                        "--save-dir", tmp_path, "--no-save"])
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "WARNING" in line and "--grow-stages" in line]
    assert len(warnings) == 1 and "500" in warnings[0] and "--max-update 6" in warnings[0]
    assert [int(r["num_updates"]) for r in json_log(proc, "train_inner")] == list(range(1, 7))


@pytest.fixture(scope="module")
def one_line_validation(tiny_corpus, tmp_path_factory):
    """The tiny corpus with a validation split of one line (binarized with its dictionary)."""
    root = tmp_path_factory.mktemp("one_line_valid")
    for name in ("dict.txt", "train.bin", "train.idx"):
        shutil.copy(tiny_corpus / name, root / name)
    (root / "valid.txt").write_text("/*\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--srcdict", root / "dict.txt",
                    "--validpref", root / "valid.txt", "--destdir", root, "--workers", "1"],
                   check=True, capture_output=True, text=True)
    return root


@pytest.mark.parametrize("policy", ["random", "gp-ts"])
def test_a_reward_that_cannot_be_measured_is_an_error(one_line_validation, tmp_path, policy):
    """Not a silent fall-back to the first psi: the run stops by the first interaction's end,
    naming --gpts-reward-batches and the validation split."""
    proc = run_fairseq([one_line_validation, *TINY_MODEL, *TASK, "--gpts-policy", policy,
                        "--gpts-interaction-updates", "3", "--gpts-reward-batches", "2", "--max-update", "12",
                        "--save-dir", tmp_path, "--no-save"], check=False)
    assert proc.returncode != 0
    error = last_error(proc)
    assert "--gpts-reward-batches" in error and "'valid'" in error, proc.stderr[-3000:]
    assert len(json_log(proc, "train_inner")) <= 3
