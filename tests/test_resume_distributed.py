"""Resuming a 2-rank (gloo) run: torch >= 2.6 loads fairseq's checkpoint and its broadcast on
every rank, the resumed run equals the uninterrupted one, and nothing is allowlisted at import."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.compat import allow_fairseq_checkpoints

GP_TS = ["--user-dir", PACKAGE_DIR, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--gpts-policy", "gp-ts",
         "--gpts-interaction-updates", "10", "--gpts-reward-batches", "3", "--num-workers", "0",
         "--save-interval-updates", "20", "--max-update", "60"]


def train_on_two_ranks(args, rendezvous):
    """fairseq-train as ranks 0 and 1 of one gloo group; both must exit 0. Returns rank 0's run."""
    distributed = ["--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                   "--distributed-init-method", f"file://{rendezvous}", "--distributed-no-spawn"]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda rank: run_fairseq([*args, *distributed, "--distributed-rank", rank], check=False),
                             (0, 1)))
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr[-3000:] + runs[1].stderr[-3000:]
    return runs[0]


def history_without_timing(save_dir):
    with open(Path(save_dir) / "gpts_history.jsonl") as handle:
        return [{k: v for k, v in json.loads(line).items() if "time" not in k} for line in handle]


def train_losses_after(run, update):
    return [(r["num_updates"], r["loss"]) for r in json_log(run, "train_inner") if int(r["num_updates"]) > update]


def final_weights(save_dir):
    allow_fairseq_checkpoints()
    return torch.load(Path(save_dir) / "checkpoint_last.pt", map_location="cpu")["model"]


def test_two_rank_run_resumes_exactly(tiny_corpus, tmp_path):
    """Killed after its update-20 checkpoint and restarted with the same command, a 2-rank GP-TS run loads it on both
    ranks (rank 1 receives rank 0's state by broadcast) and ends with the uninterrupted run's history and weights."""
    full = train_on_two_ranks([tiny_corpus, *TINY_MODEL, *GP_TS, "--save-dir", tmp_path / "full"], tmp_path / "full.rdv")

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(next((tmp_path / "full").glob("checkpoint_*_20.pt")), resumed_dir / "checkpoint_last.pt")
    resumed = train_on_two_ranks([tiny_corpus, *TINY_MODEL, *GP_TS, "--save-dir", resumed_dir],
                                 tmp_path / "resumed.rdv")
    assert "@ 20 updates" in resumed.stderr + resumed.stdout

    history = history_without_timing(tmp_path / "full")
    assert [r["interaction"] for r in history] == list(range(6))  # boundaries 10, 20, ..., 50, the end at 60
    assert len({json.dumps(r["next_psi"]) for r in history}) > 1  # psi moved, so the bandit state mattered
    assert history_without_timing(resumed_dir) == history
    assert len(train_losses_after(full, 20)) == 40 and train_losses_after(resumed, 20) == train_losses_after(full, 20)
    full_weights, resumed_weights = final_weights(tmp_path / "full"), final_weights(resumed_dir)
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[name], resumed_weights[name]) for name in full_weights)


ALLOWLIST_PROBE = """
import argparse, io, torch
import fairseq.distributed.utils, omegaconf  # what the task module imports, before the snapshot
snapshot = lambda: sorted(map(str, torch.serialization.get_safe_globals()))
before = snapshot()
import gpts_fairseq.tasks
from gpts_fairseq.compat import allow_fairseq_checkpoints
print("import changes allowlist:", snapshot() != before)

# the state rank 0 broadcasts on resume: cfg became a DictConfig (holding the legacy model Namespace)
cfg = omegaconf.OmegaConf.create({"model": argparse.Namespace(arch="roberta_base"), "common": {"seed": 7, "tag": None},
                                  "optimization": {"lr": [0.003], "update_freq": [1]}}, flags={"allow_objects": True})
buffer = io.BytesIO()
torch.save({"cfg": cfg, "model": fairseq.distributed.utils._TensorPlaceholder(index=0)}, buffer)
def load():
    buffer.seek(0)
    return torch.load(buffer)
try:
    load()
    print("refused before: False")
except Exception as error:
    print("refused before:", "Unsupported global" in str(error))
allow_fairseq_checkpoints()
once = snapshot()
allow_fairseq_checkpoints()
print("idempotent:", snapshot() == once)
print("loads after:", load()["cfg"] == cfg)
"""


def test_allowlist_is_registered_on_demand_not_at_import():
    proc = subprocess.run([sys.executable, "-c", ALLOWLIST_PROBE], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GPTS_FAIRSEQ_NO_HOOK="1", OMP_NUM_THREADS="1"))
    assert proc.stdout.splitlines() == ["import changes allowlist: False", "refused before: True", "idempotent: True",
                                        "loads after: True"], proc.stderr[-3000:]
