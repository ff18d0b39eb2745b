"""Subsets inside fairseq-train: off is plain gpts_mlm, composition with every masking policy,
exact resume from the selection file, a clear failure on a replaced file, and the same subset
for any thread or rank count."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.bandit import POLICIES
from gpts_fairseq.subsets.store import load_subset, save_subset, subset_path

RECORDER = Path(__file__).resolve().parent / "fairseq_recorder.py"
TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
INGENIOUS = ["--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1"]


def losses(proc):
    return [record["loss"] for record in json_log(proc, "train_inner")]


def record_run(args, prefix, threads=1, rank=None):
    """fairseq-train with every masked batch recorded (tests/fairseq_recorder.py)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GPTS_RECORD_PREFIX=str(prefix))
    extra = [] if rank is None else ["--distributed-rank", str(rank)]
    return subprocess.Popen([sys.executable, RECORDER, *map(str, args), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def recorded_ids(prefix, rank=0):
    """{epoch: sample ids trained on} from a recorder file. A rank with fewer batches than the
    others steps on fairseq's dummy batch (a validation batch, zero weight): not training data."""
    with open(f"{prefix}.{rank}.jsonl") as handle:
        batches = [json.loads(line) for line in handle]
    dummies = {tuple(batch["ids"]) for batch in batches if batch["valid"]}
    seen = {}
    for batch in batches:
        if not batch["valid"] and tuple(batch["ids"]) not in dummies:
            seen.setdefault(batch["step"], set()).update(batch["ids"])
    return seen


def test_off_and_fraction_one_are_plain_gpts_mlm(tiny_corpus, tmp_path):
    common = [tiny_corpus, *TINY_MODEL, *TASK, "--max-update", "12", "--no-save"]
    plain = run_fairseq([*common, "--save-dir", tmp_path / "plain"])
    whole = run_fairseq([*common, "--save-dir", tmp_path / "whole", *INGENIOUS, "--subset-fraction", "1"])
    assert len(losses(plain)) == 12 and losses(whole) == losses(plain)
    assert [r["valid_loss"] for r in json_log(whole, "valid")] == [r["valid_loss"] for r in json_log(plain, "valid")]
    assert not (tmp_path / "whole" / "subset").exists()


# constant runs in the two-rank test, gp-ts in the resume test
@pytest.mark.parametrize("policy", sorted(set(POLICIES) - {"constant", "gp-ts"}))
def test_ingenious_composes_with_the_other_masking_policies(tiny_corpus, tmp_path, policy):
    save = tmp_path / "save"
    args = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--max-epoch", "3", "--save-dir", save,
            "--gpts-policy", policy, "--gpts-interaction-updates", "2", "--gpts-reward-batches", "2"]
    proc = record_run(args, tmp_path / "masks")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    seen = recorded_ids(tmp_path / "masks")
    assert sorted(seen) == [1, 2, 3]
    subsets = {epoch: load_subset(str(save), epoch) for epoch in (1, 2, 3)}
    assert [subsets[e]["kind"] for e in (1, 2, 3)] == ["warmup", "ingenious", "ingenious"]
    for epoch, ids in seen.items():
        assert sorted(ids) == subsets[epoch]["indices"].tolist()  # each epoch trains on its subset, all of it
    count = subsets[2]["count"]
    assert len(seen[2]) == round(0.25 * count) and subsets[2]["feature_seconds"] > 0
    assert "gpts: interaction" in output  # the masking policy kept interacting


def test_mid_epoch_resume_is_exact_and_reads_the_selection(tiny_corpus, tmp_path):
    common = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--max-update", "12", "--save-interval-updates", "4",
              "--keep-interval-updates", "5", "--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3",
              "--gpts-reward-batches", "2"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    assert "gpts: interaction" in full.stdout + full.stderr  # GP-TS masking on, too
    checkpoint = tmp_path / "full" / "checkpoint_3_8.pt"  # epochs are 3 updates long: mid-epoch 3
    assert checkpoint.exists()

    def killed_run_dir(name):
        """What a run killed after update 8 leaves: its checkpoint and the selections of epochs 1-3."""
        target = tmp_path / name
        (target / "subset").mkdir(parents=True)
        shutil.copy(checkpoint, target / "checkpoint_last.pt")
        for epoch in (1, 2, 3):
            shutil.copy(subset_path(str(tmp_path / "full"), epoch), subset_path(str(target), epoch))
        return target

    resumed_dir = killed_run_dir("resumed")
    resumed = run_fairseq([*common, "--save-dir", resumed_dir])
    log = resumed.stdout + resumed.stderr
    assert "subset of epoch 3: ingenious selection of epoch 3 read from" in log
    assert "subset of epoch 3: ingenious, " not in log  # no feature pass for the resumed epoch
    assert losses(resumed) == losses(full)[8:]
    final = [torch.load(d / "checkpoint_last.pt", weights_only=False)["model"] for d in (tmp_path / "full", resumed_dir)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])

    replaced_dir = killed_run_dir("replaced")
    record = load_subset(str(replaced_dir), 3)
    chosen = set(record["indices"].tolist())
    outside = next(i for i in range(record["count"]) if i not in chosen)
    replaced = torch.tensor(sorted(chosen - {min(chosen)} | {outside}))  # a valid file, another subset
    save_subset(str(replaced_dir), 3, replaced,
                {key: value for key, value in record.items() if key not in ("indices", "hash", "epoch")})
    failed = run_fairseq([*common, "--save-dir", replaced_dir], check=False)
    assert failed.returncode != 0
    assert "is not the one this checkpoint trained on" in failed.stderr + failed.stdout


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_same_subset_on_two_ranks_and_any_thread_count(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes (1 thread each) vs 1 process on 2 threads: the same selection from
    the same initial model; each rank trains only on blocks of it, together on all of them."""
    common = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--subset-warmup-epochs", "0", "--max-epoch", "1"]
    port = _free_port()
    distributed = ["--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                   "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
    procs = [record_run([*common, *distributed, "--save-dir", tmp_path / "ranks"], tmp_path / "ranks", rank=rank)
             for rank in (0, 1)]
    procs.append(record_run([*common, "--save-dir", tmp_path / "single"], tmp_path / "single", threads=2))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(out[-2000:] for out in outputs)

    two_ranks, single = load_subset(str(tmp_path / "ranks"), 1), load_subset(str(tmp_path / "single"), 1)
    assert two_ranks["kind"] == single["kind"] == "ingenious"
    assert torch.equal(two_ranks["indices"], single["indices"])
    subset = set(single["indices"].tolist())
    per_rank = [recorded_ids(tmp_path / "ranks", rank)[1] for rank in (0, 1)]
    assert per_rank[0] <= subset and per_rank[1] <= subset and per_rank[0] | per_rank[1] == subset
    assert not per_rank[0] & per_rank[1]
    assert recorded_ids(tmp_path / "single")[1] == subset


def test_bad_subset_option_is_named_before_training(tiny_corpus, tmp_path):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *TASK, "--subset-selector", "ingenious", "--subset-fraction", "1.5",
                        "--max-update", "1", "--save-dir", tmp_path], check=False)
    assert proc.returncode != 0
    assert "--subset-fraction must be in (0, 1], got 1.5" in proc.stderr
    assert "begin training" not in proc.stderr + proc.stdout
