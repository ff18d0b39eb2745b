"""The super-net in fairseq-train (--task gpts_mlm drives the supernet extension): sandwich sampling
with in-place distillation and the largest/smallest validation losses, a killed run resumed
exactly, and extraction: the sub-net trains on without the super-net (stock fairseq for a stock
shape) with the loss it had inside; the search command is deterministic and resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.supernet.space import SubArch
from gpts_fairseq.supernet.subnets import SubnetLoss, extract

SUPERNET = ["--user-dir", PACKAGE_DIR, "--task", "gpts_mlm", "--criterion", "gpts_supernet_masked_lm",
            "--arch", "gpts_roberta_super", "--supernet-layers", "1:2", "--supernet-hidden", "16:32:16",
            "--supernet-heads", "1:2", "--supernet-ffn", "32:64:32", "--supernet-head-dim", "16",
            "--num-workers", "0", "--validate-interval-updates", "10", "--save-interval-updates", "10",
            "--max-valid-steps", "2", "--gpts-reward-batches", "2", "--dropout", "0", "--attention-dropout", "0"]
TIED, UNTIED = SubArch(2, 32, 2, 32), SubArch(1, 32, 1, 64)


def train_supernet(corpus, save_dir, *extra, updates=20):
    args = [corpus, *TINY_MODEL, *SUPERNET, "--max-update", updates, "--save-dir", save_dir, *extra]
    return run_fairseq(args)


def sampled(save_dir):
    with open(Path(save_dir) / "gpts_supernet_events.jsonl") as handle:
        return [(r["update"], r["archs"]) for r in map(json.loads, handle)]


@pytest.fixture(scope="module")
def trained_supernet(tiny_corpus, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("supernet")
    run = train_supernet(tiny_corpus, save_dir, "--supernet-sampler", "sandwich", "--supernet-distill")
    return save_dir, run


def test_sandwich_training_logs_subnets_and_largest_smallest_losses(trained_supernet):
    save_dir, run = trained_supernet
    events = sampled(save_dir)
    assert [u for u, _ in events] == list(range(20))
    assert all(archs.startswith("2,32,2,64;1,16,1,32;") for _, archs in events)
    valid = json_log(run, "valid")
    assert {10, 20} <= {int(r["valid_num_updates"]) for r in valid}
    for record in valid:  # the default sub-net is the largest
        assert record["valid_loss_largest"] == record["valid_loss"]
        assert float(record["valid_loss_smallest"]) > float(record["valid_loss_largest"])


def test_killed_supernet_run_resumes_exactly(tiny_corpus, trained_supernet, tmp_path):
    """Restarted from its update-10 checkpoint, a run samples the same sub-nets and ends with the
    uninterrupted run's weights."""
    full_dir, _ = trained_supernet
    shutil.copy(next(full_dir.glob("checkpoint_*_10.pt")), tmp_path / "checkpoint_last.pt")
    shutil.copy(full_dir / "gpts_supernet_events.jsonl", tmp_path / "gpts_supernet_events.jsonl")
    resumed = train_supernet(tiny_corpus, tmp_path, "--supernet-sampler", "sandwich", "--supernet-distill")
    assert "@ 10 updates" in resumed.stderr + resumed.stdout
    assert sampled(tmp_path) == sampled(full_dir)
    full = torch.load(full_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    again = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)


@pytest.mark.parametrize("arch, fmt", [(TIED, "roberta"), (UNTIED, "super")], ids=["stock", "single-point"])
def test_extracted_subnet_has_the_loss_it_had_inside_and_trains_on(tiny_corpus, trained_supernet, tmp_path, arch, fmt):
    save_dir, _ = trained_supernet
    checkpoint = str(save_dir / "checkpoint_last.pt")
    out = tmp_path / "subnet.pt"
    assert extract(checkpoint, str(tiny_corpus), arch, str(out)) == fmt
    torch.load(out, weights_only=True)  # plain values only: what stock fairseq under torch >= 2.6 accepts
    inside = SubnetLoss(checkpoint, str(tiny_corpus), "valid")(arch)
    alone = SubnetLoss(str(out), str(tiny_corpus), "valid")
    assert alone() == inside
    dims = (["--arch", "roberta_base", "--encoder-layers", arch.layers, "--encoder-embed-dim", arch.hidden,
             "--encoder-attention-heads", arch.heads, "--encoder-ffn-embed-dim", arch.ffn] if fmt == "roberta" else
            ["--user-dir", PACKAGE_DIR, "--arch", "gpts_roberta_super", "--supernet-layers", arch.layers,
             "--supernet-hidden", arch.hidden, "--supernet-heads", arch.heads, "--supernet-ffn", arch.ffn,
             "--supernet-head-dim", 16])
    further = [tiny_corpus, *TINY_MODEL, "--task", "masked_lm", "--criterion", "masked_lm", *dims,
               "--finetune-from-model", out, "--max-update", 5, "--save-dir", tmp_path / "further",
               "--num-workers", "0", "--no-save"]
    if fmt == "roberta":  # stock fairseq: the plugin not even registered
        env = dict(os.environ, GPTS_FAIRSEQ_NO_HOOK="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "fairseq_cli.train", *map(str, further)], capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        run_fairseq(further)


def search_command(checkpoint, data, out, generations):
    return [sys.executable, "-m", "gpts_fairseq.supernet", "search", str(checkpoint), "--data", str(data),
            "--split", "valid", "--out", str(out), "--generations", str(generations), "--population", "4",
            "--max-batches", "2", "--latency-length", "16", "--latency-samples", "10", "--seed", "5",
            "--constraint", "params", "--target-arch", str(TIED), "--window", "0.5,1.5"]


def test_search_command_is_deterministic_resumes_after_a_kill_and_refuses_bad_input(tiny_corpus, trained_supernet,
                                                                                   tmp_path):
    checkpoint = trained_supernet[0] / "checkpoint_last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(search_command(checkpoint, tiny_corpus, tmp_path / "a", 3), capture_output=True, text=True,
                           env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "generation 3/3" in first.stdout and (tmp_path / "a" / "pareto.png").stat().st_size > 0
    result = json.loads((tmp_path / "a" / "search.json").read_text())
    # killed during generation 2 or later: resumed, it ends as the uninterrupted search
    shutil.copy(tmp_path / "a" / "latency.json", tmp_path / "latency.json")
    killed = subprocess.Popen([*search_command(checkpoint, tiny_corpus, tmp_path / "b", 3),
                               "--latency-cache", str(tmp_path / "latency.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in killed.stdout:
        if "generation 1/3" in line:
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait()
    state = json.loads((tmp_path / "b" / "search_state.json").read_text())
    assert 1 <= len(state["generations"]) < 3
    resumed = subprocess.run([*search_command(checkpoint, tiny_corpus, tmp_path / "b", 3),
                              "--latency-cache", str(tmp_path / "latency.json")], capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0 and "resuming after generation" in resumed.stdout
    again = json.loads((tmp_path / "b" / "search.json").read_text())
    for key in ("chosen", "chosen_loss_bits", "all"):
        assert again[key] == result[key], key
    impossible = subprocess.run([*search_command(checkpoint, tiny_corpus, tmp_path / "c", 1)[:-4], "--target", "10"],
                                capture_output=True, text=True, env=env, timeout=600)
    assert impossible.returncode == 2 and "--target" in impossible.stderr


def test_supernet_under_a_task_without_extensions_is_refused(tiny_corpus, tmp_path):
    gpts_only = SUPERNET.index("--gpts-reward-batches")
    supernet = SUPERNET[:gpts_only] + SUPERNET[gpts_only + 2:]
    args = [tiny_corpus, *TINY_MODEL, *supernet, "--task", "masked_lm", "--criterion", "masked_lm",
            "--max-update", 1, "--save-dir", tmp_path]
    run = run_fairseq(args, check=False)
    assert run.returncode != 0 and "needs --task gpts_mlm" in run.stderr
