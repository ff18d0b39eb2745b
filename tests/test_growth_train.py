"""Progressive growth inside fairseq-train: plain RoBERTa when there is one stage, exact resume
across a growth, two ranks in step (with width tiling keeping the loss, GP-TS masking and
INGENIOUS subsets in the same run), bad options named. A fairseq-train start costs more than
its tiny training, so each run is checked for several properties."""

import os
import re
import shutil
import socket
import subprocess
import sys

from conftest import TINY_MODEL, json_log, run_fairseq

from gpts_fairseq.events import read_events

GROW = ["--arch", "gpts_roberta_grow", "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
GP_TS = ["--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3", "--gpts-reward-batches", "2"]
TRAIN_EVERY_RANK_LOGS_GROWTH = ("import logging; logging.getLogger('gpts_fairseq.growth').setLevel(logging.INFO); "
                                "from fairseq_cli.train import cli_main; cli_main()")
GROWTH_LINE = re.compile(r"grow: update (\d+): .*parameter checksum ([-\d.e+]+)(?:; reference loss ([\d.]+) -> ([\d.]+))?")


def growths(proc):
    return [(int(u), float(c), float(b) if b else None, float(a) if a else None) for u, c, b, a in GROWTH_LINE.findall(proc.stdout + proc.stderr)]


def losses(proc):
    return [(int(r["num_updates"]), r["loss"]) for r in json_log(proc, "train_inner")]


def start_training(args):
    """fairseq-train in a subprocess on one thread, with the growth lines of every rank logged
    (fairseq silences INFO logs on ranks > 0); ``finish`` waits for it."""
    return subprocess.Popen([sys.executable, "-c", TRAIN_EVERY_RANK_LOGS_GROWTH, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def finish(procs):
    """The CompletedProcess of each run started together, once all have exited 0."""
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), "\n".join(err[-3000:] for _, err in outputs)
    return [subprocess.CompletedProcess(proc.args, 0, out, err) for proc, (out, err) in zip(procs, outputs)]


def test_one_stage_schedule_is_plain_roberta(tiny_corpus, tmp_path):
    """The two runs are independent: they start together."""
    common = [tiny_corpus, *TINY_MODEL, *GROW[2:], "--max-update", "8", "--no-save", "--validate-interval-updates", "4"]
    plain, grown = finish([start_training([*common, "--save-dir", tmp_path / "plain"]),
                           start_training([*common, "--save-dir", tmp_path / "grown", "--arch", "gpts_roberta_grow"])])
    assert "GrowRobertaModel" in grown.stdout + grown.stderr
    assert len(losses(plain)) == 8 and losses(grown) == losses(plain)
    valid = [r["valid_loss"] for r in json_log(plain, "valid")]
    assert len(valid) == 2 and [r["valid_loss"] for r in json_log(grown, "valid")] == valid


def test_resume_across_a_growth_is_exact_with_gp_ts(tiny_corpus, tmp_path):
    """The checkpoint at update 9 is in the stage grown (compound) at 6, mid-way in its LR
    re-warm; the resumed run restores that stage, grows the width again at 10 as the
    uninterrupted run did (same noise, same parameter checksum and reference losses) and
    continues bit for bit, GP-TS decisions included."""
    common = [tiny_corpus, *TINY_MODEL, *GROW, *GP_TS, "--grow-stages", "0:layers=1,ffn=16,tokens=32;6:layers=2,ffn=32,tokens=64;10:ffn=64",
              "--grow-rewarm-updates", "5", "--max-update", "12", "--save-interval-updates", "9",
              "--validate-interval-updates", "6"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    assert [g[0] for g in growths(full)] == [6, 10]
    scales = [None if r.get("grow_lr_scale") is None else float(r["grow_lr_scale"]) for r in json_log(full, "train_inner")]
    assert scales[5:] == [None, 0.2, 0.4, 0.6, 0.8, 0.2, 0.4]  # re-warms after each growth (updates 6-9, 10-11)
    assert (tmp_path / "full" / "gpts_history.jsonl").read_text().count("\n") == 4  # ended at 3, 6, 9 and 12

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint_last.pt").write_bytes((tmp_path / "full" / "checkpoint_1_9.pt").read_bytes())
    # what a run killed after update 10 leaves: its event log holds the growth at 10 as well
    shutil.copy(tmp_path / "full" / "gpts_growth_events.jsonl", resumed_dir)
    resumed = run_fairseq([*common, "--save-dir", resumed_dir])
    assert "Loaded checkpoint" in resumed.stdout + resumed.stderr
    assert growths(resumed) == growths(full)[1:]

    def after_9(proc, tag, fields):
        records = json_log(proc, tag)
        return [tuple(r.get(f) for f in fields) for r in records if int(r[fields[0]]) > 9]

    train = ("num_updates", "loss", "grow_lr_scale", "psi_rho", "psi_gamma", "psi_lambda")
    assert len(after_9(resumed, "train_inner", train)) == 3
    assert after_9(resumed, "train_inner", train) == after_9(full, "train_inner", train)
    valid = ("valid_num_updates", "valid_loss")
    assert len(after_9(resumed, "valid", valid)) == 1 and after_9(resumed, "valid", valid) == after_9(full, "valid", valid)

    # one growth event per growth, as logged; the resume dropped the one after its checkpoint and grew again
    def events(save_dir):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_events(str(save_dir), "growth")]

    assert [(e["update"], e["stage"], e["checksum"], round(e["loss_before"], 6), round(e["loss_after"], 6))
            for e in events(tmp_path / "full")] == [(u, s, c, b, a) for s, (u, c, b, a) in enumerate(growths(full), 1)]
    assert events(resumed_dir) == events(tmp_path / "full")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_grow_identically_with_gp_ts_and_subsets(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes, legacy_ddp, GP-TS masking and INGENIOUS subsets in one run (an
    epoch is 2 updates). Width tiling without noise at update 2 (rows lengthened too) leaves
    the reference loss unchanged; stacking follows at 3 (with an interaction), so epoch 3's
    selection uses the grown model's features. Both ranks hold the same parameters after each
    growth; the first rank measures the loss."""
    from gpts_fairseq.subsets.store import load_subset

    args = [tiny_corpus, *TINY_MODEL, *GROW, *GP_TS, "--max-epoch", "3", "--save-dir", tmp_path,  # selections are files
            "--grow-stages", "0:layers=1,ffn=16,tokens=32;2:ffn=64,tokens=64;3:layers=2", "--grow-width-noise", "0",
            "--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1",
            "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
            "--distributed-init-method", f"tcp://127.0.0.1:{_free_port()}", "--distributed-no-spawn"]
    runs = finish([start_training([*args, "--distributed-rank", rank]) for rank in (0, 1)])
    ranks = [growths(run) for run in runs]
    assert [g[0] for g in ranks[0]] == [2, 3]
    assert [g[:2] for g in ranks[0]] == [g[:2] for g in ranks[1]]  # updates and checksums
    [(_, _, before, after), _] = ranks[0]
    assert abs(after - before) < 1e-5  # width tiling without noise
    assert ranks[0][1][2] is not None and ranks[1][1][2] is None  # the first rank measures the loss
    first_rank_log = runs[0].stdout  # fairseq logs to stdout
    assert "gpts: interaction 0" in first_rank_log
    assert first_rank_log.index("grow: update 3:") < first_rank_log.index("subset of epoch 3: ingenious")
    assert [load_subset(str(tmp_path), epoch)["kind"] for epoch in (2, 3)] == ["ingenious", "ingenious"]


def test_bad_stage_string_is_named_before_training(tiny_corpus, tmp_path):
    """The other bad options are checked by the same model build (see test_growth.py)."""
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *GROW, "--max-update", "2", "--no-save", "--save-dir", tmp_path,
                        "--grow-stages", "0:layers=3"], check=False)
    assert proc.returncode != 0
    assert re.search(r"--grow-stages: layers must be in \[1, 2\] \(the target model's\), got 3", proc.stderr)
    assert "num. model params" not in proc.stdout + proc.stderr  # stopped while building the model
