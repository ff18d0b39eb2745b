"""Progressive growth inside fairseq-train: plain RoBERTa when there is one stage, loss kept
by width tiling, exact resume across a growth, two ranks in step, bad options named."""

import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import TINY_MODEL, json_log, run_fairseq

GROW = ["--arch", "gpts_roberta_grow", "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
GP_TS = ["--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3", "--gpts-reward-batches", "2"]
# target: TINY_MODEL's 2 layers x 32, FFN 64, 64 tokens
COMPOUND = "0:layers=1,ffn=16,tokens=32;6:layers=2,ffn=64,tokens=64"
# fairseq silences INFO logs on ranks > 0; the growth lines of every rank are wanted here
TRAIN_EVERY_RANK_LOGS_GROWTH = ("import logging; logging.getLogger('gpts_fairseq.growth').setLevel(logging.INFO); "
                                "from fairseq_cli.train import cli_main; cli_main()")
GROWTH_LINE = re.compile(r"grow: update (\d+): .*parameter checksum ([-\d.e+]+)(?:; reference loss ([\d.]+) -> ([\d.]+))?")


def growths(proc):
    return [(int(u), float(c), float(b) if b else None, float(a) if a else None) for u, c, b, a in GROWTH_LINE.findall(proc.stdout + proc.stderr)]


def losses(proc):
    return [(int(r["num_updates"]), r["loss"]) for r in json_log(proc, "train_inner")]


def test_one_stage_schedule_is_plain_roberta(tiny_corpus, tmp_path):
    common = [tiny_corpus, *TINY_MODEL, *GROW[2:], "--max-update", "8", "--no-save", "--save-dir", tmp_path,
              "--validate-interval-updates", "4"]
    plain = run_fairseq(common)
    grown = run_fairseq([*common, "--arch", "gpts_roberta_grow"])
    assert "GrowRobertaModel" in grown.stdout + grown.stderr
    assert len(losses(plain)) == 8 and losses(grown) == losses(plain)
    valid = [r["valid_loss"] for r in json_log(plain, "valid")]
    assert len(valid) == 2 and [r["valid_loss"] for r in json_log(grown, "valid")] == valid


def test_width_tiling_without_noise_keeps_the_reference_loss(tiny_corpus, tmp_path):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, "--grow-stages", "0:ffn=16;4:ffn=64", "--grow-width-noise", "0",
                        "--gpts-reward-batches", "3", "--max-update", "6", "--no-save", "--save-dir", tmp_path])
    [(update, _, before, after)] = growths(proc)
    assert update == 4 and abs(after - before) < 1e-5


def test_resume_across_a_growth_is_exact_with_gp_ts(tiny_corpus, tmp_path):
    """From the checkpoint at update 6 (before the growth at 6) the resumed run grows the same
    way; from the one at 9 it continues in the grown stage (restored from the checkpoint).
    Both continue bit for bit, GP-TS decisions included."""
    common = [tiny_corpus, *TINY_MODEL, *GROW, *GP_TS, "--grow-stages", COMPOUND, "--grow-rewarm-updates", "3",
              "--max-update", "12", "--save-interval-updates", "3", "--keep-interval-updates", "5",
              "--validate-interval-updates", "6"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    [growth] = growths(full)
    assert growth[0] == 6
    scales = [r.get("grow_lr_scale") for r in json_log(full, "train_inner")]
    assert scales[6:9] == ["0.3333", "0.6667", "1"] and scales[9] is None  # the re-warm after growth
    assert (tmp_path / "full" / "gpts_history.jsonl").read_text().count("\n") == 3  # interactions at 3, 6, 9
    for update in (6, 9):
        resumed_dir = tmp_path / f"resumed{update}"
        resumed_dir.mkdir()
        (resumed_dir / "checkpoint_last.pt").write_bytes((tmp_path / "full" / f"checkpoint_1_{update}.pt").read_bytes())
        resumed = run_fairseq([*common, "--save-dir", resumed_dir])
        assert "Loaded checkpoint" in resumed.stdout + resumed.stderr
        assert growths(resumed) == ([growth] if update == 6 else [])
        assert [x for x in losses(full) if x[0] > update] == losses(resumed) and len(losses(resumed)) == 12 - update
        assert json_log(full, "valid")[-1]["valid_loss"] == json_log(resumed, "valid")[-1]["valid_loss"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_grow_identically(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes, legacy_ddp: the same parameters on both ranks at each growth
    (the second growth comes 4 updates after the first)."""
    args = [tiny_corpus, *TINY_MODEL, *GROW, *GP_TS, "--max-update", "10", "--no-save", "--save-dir", tmp_path,
            "--grow-stages", "0:layers=1,ffn=16,tokens=32;4:layers=2,ffn=32;8:ffn=64,tokens=64",
            "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
            "--distributed-init-method", f"tcp://127.0.0.1:{_free_port()}", "--distributed-no-spawn"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN_EVERY_RANK_LOGS_GROWTH, *map(str, args), "--distributed-rank", str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    ranks = [growths(subprocess.CompletedProcess([], 0, out, err)) for out, err in outputs]
    assert [g[0] for g in ranks[0]] == [4, 8]
    assert [g[:2] for g in ranks[0]] == [g[:2] for g in ranks[1]]  # updates and checksums
    assert ranks[0][0][2] is not None and ranks[1][0][2] is None  # the first rank measures the loss


@pytest.mark.parametrize("extra, message", [
    (["--grow-stages", "0:layers=3"], r"--grow-stages: layers must be in \[1, 2\]"),
    (["--grow-stages", "0:layers=1;5:depth=2"], "--grow-stages: bad size 'depth=2'"),
    (["--grow-stages", "0:layers=1;5:layers=2", "--task", "masked_lm"], "needs --task gpts_mlm"),
])
def test_bad_options_are_named_before_training(tiny_corpus, tmp_path, extra, message):
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, "--max-update", "2", "--no-save", "--save-dir", tmp_path, *extra],
                       check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr)
    assert "num. model params" not in proc.stdout + proc.stderr  # stopped while building the model


def test_growth_composes_with_gp_ts_and_subsets(tiny_corpus, tmp_path):
    """One run: compound growth, GP-TS masking and INGENIOUS subsets (selected with the features
    of the grown model from epoch 2 on)."""
    from gpts_fairseq.subsets.store import load_subset

    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, *GP_TS, "--grow-stages", "0:layers=1,ffn=16,tokens=32;4:layers=2",
                        "--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1",
                        "--max-epoch", "3", "--save-dir", tmp_path])  # saving: the selections are files
    output = proc.stdout + proc.stderr
    assert [g[0] for g in growths(proc)] == [4] and "gpts: interaction" in output
    assert [load_subset(str(tmp_path), epoch)["kind"] for epoch in (2, 3)] == ["ingenious", "ingenious"]
