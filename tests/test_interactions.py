"""GP-TS inside fairseq-train: history, exact resume, two processes, and the loop's edge cases."""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.bandit import ArmSpace, BanditWarning, make_policy
from gpts_fairseq.bandit.loop import InteractionLoop

RECORDER = Path(__file__).resolve().parent / "fairseq_recorder.py"
FIRST_PSI = {"mask_prob": 0.15, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}
GP_TS = ["--user-dir", PACKAGE_DIR, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--gpts-policy", "gp-ts",
         "--gpts-interaction-updates", "5", "--gpts-reward-batches", "3", "--num-workers", "0"]


def read_history(save_dir):
    with open(Path(save_dir) / "gpts_history.jsonl") as handle:
        return [json.loads(line) for line in handle]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "decision_time_s"} for r in records]


def test_history_and_exact_resume(tiny_corpus, tmp_path):
    """A run resumed from the mid-epoch checkpoint at update 20 (an interaction boundary) makes the same decisions, measures the
    same losses and ends with the same history as the uninterrupted run."""
    common = [tiny_corpus, *TINY_MODEL, *GP_TS, "--gpts-arms", "psi", "--gpts-context", "progress",
              "--max-update", "42", "--save-interval-updates", "10", "--keep-interval-updates", "10",
              "--validate-interval-updates", "10"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    history = read_history(tmp_path / "full")
    assert [r["interaction"] for r in history] == list(range(8))  # boundaries 5, 10, ..., 40
    for before, after in zip(history, history[1:]):
        assert after["update"] == before["end_update"] == before["update"] + 5
        assert after["psi"] == before["next_psi"] and after["prev_val_loss"] == before["val_loss"]
    for record in history:
        assert record["reward"] == pytest.approx((record["prev_val_loss"] - record["val_loss"]) / record["prev_val_loss"])
        assert record["policy"] == "gp-ts" and record["decision_time_s"] > 0
        psi = record["next_psi"]
        assert psi["leave_unmasked_prob"] + psi["random_token_prob"] <= 1
        posterior = record["posterior"]
        assert posterior["dims"] == ["mask_prob"] and len(posterior["arms"]) == len(posterior["mean"]) == 10
    assert len({json.dumps(r["next_psi"]) for r in history}) > 1  # it explores

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    checkpoint = next((tmp_path / "full").glob("checkpoint_*_20.pt"))
    (resumed_dir / "checkpoint_last.pt").write_bytes(checkpoint.read_bytes())
    (resumed_dir / "gpts_history.jsonl").write_text('{"left over": "by a killed run"}\n')
    resumed = run_fairseq([*common, "--save-dir", resumed_dir])
    assert "Loaded checkpoint" in resumed.stderr + resumed.stdout
    assert without_timing(read_history(resumed_dir)) == without_timing(history)
    assert json_log(resumed, "valid")[-1]["valid_loss"] == json_log(full, "valid")[-1]["valid_loss"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_share_psi(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes: rank 0 decides, both ranks mask every update with the same psi,
    on different samples."""
    port = _free_port()
    args = [tiny_corpus, *TINY_MODEL, *GP_TS, "--max-update", "30", "--no-save", "--save-dir", tmp_path / "save",
            "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GPTS_RECORD_PREFIX=str(tmp_path / "masks"))
    procs = [subprocess.Popen([sys.executable, RECORDER, *map(str, args), "--distributed-rank", str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    def train_rows(rank):
        with open(tmp_path / f"masks.{rank}.jsonl") as handle:
            rows = [json.loads(line) for line in handle]
        return [r for r in rows if not r["valid"]]

    rows0, rows1 = train_rows(0), train_rows(1)
    psi0 = [json.dumps(r["psi"]) for r in rows0]
    psi1 = [json.dumps(r["psi"]) for r in rows1]
    assert len(rows0) == len(rows1) > 25 and psi0 == psi1  # batch by batch, update by update
    assert len(set(psi0)) > 1  # psi changed during the run
    assert not set(rows0[0]["ids"]) & set(rows1[0]["ids"])  # different samples per rank
    history = read_history(tmp_path / "save")
    assert [r["interaction"] for r in history] == [0, 1, 2, 3, 4]


def test_loop_non_finite_loss_keeps_arm_and_warns():
    policy = make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=3)
    loop = InteractionLoop(policy, FIRST_PSI)
    loop.start(10.0)
    first = loop.finish(9.0, update=5, epoch=1, progress=0.1)
    assert first["reward"] == pytest.approx(0.1)
    psi_before = dict(loop.psi)
    with pytest.warns(BanditWarning, match="no reward"):
        record = loop.finish(float("nan"), update=10, epoch=1, progress=0.2)
    assert record["reward"] is None and record["val_loss"] is None
    assert loop.psi == psi_before and policy.rewards.numel() == 1  # the bandit was not fed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = loop.finish(8.0, update=15, epoch=1, progress=0.3)
    assert record["prev_val_loss"] == 9.0  # measured against the last finite loss
    assert record["reward"] == pytest.approx(1 / 9)


def test_loop_state_round_trip_through_torch_save(tmp_path):
    def fresh():
        return InteractionLoop(make_policy("gp-ts", space=ArmSpace.paper_grid("psi"), seed=5), FIRST_PSI)

    loop = fresh()
    loop.start(10.0)
    for step, loss in enumerate([9.5, 9.2, 9.1]):
        loop.finish(loss, update=5 * (step + 1), epoch=1, progress=0.1 * (step + 1))
    torch.save(loop.state_dict(), tmp_path / "state.pt")
    restored = fresh()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.history == loop.history and restored.psi == loop.psi
    a = loop.finish(8.8, update=20, epoch=1, progress=0.4)
    b = restored.finish(8.8, update=20, epoch=1, progress=0.4)
    assert without_timing([a]) == without_timing([b])
