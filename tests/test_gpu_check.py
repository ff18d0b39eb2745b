"""benchmarks/gpu_check.py (``make gpu-check``) where no GPU exists: one clear line, the JSON with
every GPU step skipped and the CPU smoke steps run; a failed step fails the check."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from conftest import REPO


@pytest.mark.e2e
def test_without_a_gpu_it_skips_cleanly_and_runs_the_cpu_steps(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # no GPU, also on a GPU machine
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", out], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("gpu-check: no CUDA device (torch.cuda.is_available() is False)")
    result = json.loads(out.read_text())
    assert result["gpu"] is False and result["ok"] is True
    assert {name: step["status"] for name, step in result["steps"].items()} == dict.fromkeys(gpu_check.STEPS, "skipped")
    timing, train = result["cpu_smoke"]["timing"], result["cpu_smoke"]["train"]
    assert timing["status"] == "passed" and len(timing["rows"]) == 4
    assert all(row["device"] == "cpu" and row["op_mtokens_per_s"] > 0 and row["hf_mtokens_per_s"] > 0
               for row in timing["rows"])
    assert train["status"] == "passed" and train["updates"] == gpu_check.CPU_SMOKE_UPDATES and not train["on_gpu"]
    assert math.isfinite(train["last_loss"]) and train["interactions"] >= 3 and None not in train["rewards"]


def test_a_failed_step_fails_the_check_and_the_others_still_run(tmp_path, monkeypatch):
    """In-process, without a GPU: a CPU smoke step that raises is recorded with its error; the
    JSON is written all the same and the exit status is 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "timing", lambda device, min_time: {"rows": []})

    def broken_train(*args):
        raise RuntimeError("fairseq-train exited 1")

    monkeypatch.setattr(gpu_check, "train", broken_train)
    out = tmp_path / "result.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["ok"] is False and result["cpu_smoke"]["timing"]["status"] == "passed"
    assert result["cpu_smoke"]["train"]["status"] == "failed"
    assert result["cpu_smoke"]["train"]["error"] == "RuntimeError: fairseq-train exited 1"


def test_the_stand_in_corpus_is_the_repository_text_in_a_fixed_order(tmp_path):
    first = gpu_check.repository_text(tmp_path / "a")
    second = gpu_check.repository_text(tmp_path / "b")
    for name in ("train.txt", "valid.txt"):
        text = (first / name).read_text(encoding="utf-8")
        assert text == (second / name).read_text(encoding="utf-8") and len(text.splitlines()) > 200
        assert all(line.strip() for line in text.splitlines())


def test_make_gpu_check_runs_the_script():
    # --no-print-directory: under `make test` (MAKELEVEL set) make would add "Entering directory" lines
    proc = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("-m benchmarks.gpu_check")
