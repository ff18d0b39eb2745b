"""Subsets inside fairseq-train: off is plain gpts_mlm, composition with every masking policy,
exact resume from the selection file, a clear failure on a replaced file, the same subset for
any thread or rank count, and a bad option named before training.

fairseq's start-up (imports) costs more than these trainings: each run checks everything it
can, and runs that do not depend on each other start together."""

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL, json_log, run_fairseq
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from gpts_fairseq.events import read_events
from gpts_fairseq.subsets.store import load_subset, save_subset, subset_path

RECORDER = Path(__file__).resolve().parent / "fairseq_recorder.py"
TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]
INGENIOUS = ["--subset-selector", "ingenious", "--subset-partition-size", "40", "--subset-warmup-epochs", "1"]


def losses(proc):
    """Logged training losses; the recorder's fairseq logs ``INFO:train_inner:{...}`` instead of
    fairseq-train's ``| train_inner | {...}``."""
    lines = (proc.stdout + proc.stderr).splitlines()
    recorded = [json.loads(line.split(":", 2)[2]) for line in lines if line.startswith("INFO:train_inner:")]
    return [record["loss"] for record in recorded or json_log(proc, "train_inner")]


def run_together(*arg_lists, check=True):
    """``run_fairseq`` on each argument list, all started at once (independent runs)."""
    with ThreadPoolExecutor(len(arg_lists)) as pool:
        return list(pool.map(lambda args: run_fairseq(args, check=check), arg_lists))


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


def assert_trained_on_selections(prefix, save_dir, kinds, rank_count=1):
    """Epoch e trained on exactly the blocks of its selection file (all ranks together, none
    twice), a selection of the expected kind and size."""
    per_rank = [recorded_ids(prefix, rank) for rank in range(rank_count)]
    assert all(sorted(seen) == list(range(1, len(kinds) + 1)) for seen in per_rank)
    for epoch, kind in enumerate(kinds, start=1):
        record = load_subset(str(save_dir), epoch)
        assert record["kind"] == kind and len(record["indices"]) == round(0.25 * record["count"])
        assert (record["feature_seconds"] > 0) == (kind == "ingenious")
        ids = [seen[epoch] for seen in per_rank]
        assert set().union(*ids) == set(record["indices"].tolist()) and sum(map(len, ids)) == len(record["indices"])


def test_off_and_fraction_one_are_plain_gpts_mlm(tiny_corpus, tmp_path):
    common = [tiny_corpus, *TINY_MODEL, *TASK, "--max-update", "12", "--no-save"]
    plain, whole = run_together([*common, "--save-dir", tmp_path / "plain"],
                                [*common, "--save-dir", tmp_path / "whole", *INGENIOUS, "--subset-fraction", "1"])
    assert len(losses(plain)) == 12 and losses(whole) == losses(plain)
    assert [r["valid_loss"] for r in json_log(whole, "valid")] == [r["valid_loss"] for r in json_log(plain, "valid")]
    assert not (tmp_path / "whole" / "subset").exists()


def test_mid_epoch_resume_is_exact_and_reads_the_selection(tiny_corpus, tmp_path):
    """With GP-TS masking on (composition): every epoch trains on its selection; a run killed
    mid-epoch resumes to the same losses and weights bit for bit from the selection file,
    and a replaced selection file stops it."""
    common = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--max-update", "12", "--save-interval-updates", "4",
              "--keep-interval-updates", "5", "--gpts-policy", "gp-ts", "--gpts-interaction-updates", "3",
              "--gpts-reward-batches", "2"]
    proc = record_run([*common, "--save-dir", tmp_path / "full"], tmp_path / "masks")
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    full = subprocess.CompletedProcess(proc.args, proc.returncode, stdout=output, stderr="")
    assert "gpts: interaction" in output  # GP-TS masking kept interacting
    assert_trained_on_selections(tmp_path / "masks", tmp_path / "full", ["warmup", *["ingenious"] * 3])
    checkpoint = tmp_path / "full" / "checkpoint_3_8.pt"  # epochs are 3 updates long: mid-epoch 3
    assert checkpoint.exists()

    def killed_run_dir(name):
        """What a run killed after update 9 leaves: the checkpoint of update 8, the selections of
        epochs 1-3 and an event log that holds epoch 4's selection too."""
        target = tmp_path / name
        (target / "subset").mkdir(parents=True)
        shutil.copy(checkpoint, target / "checkpoint_last.pt")
        shutil.copy(tmp_path / "full" / "gpts_subsets_events.jsonl", target)
        for epoch in (1, 2, 3):
            shutil.copy(subset_path(str(tmp_path / "full"), epoch), subset_path(str(target), epoch))
        return target

    resumed_dir, replaced_dir = killed_run_dir("resumed"), killed_run_dir("replaced")
    record = load_subset(str(replaced_dir), 3)
    chosen = set(record["indices"].tolist())
    outside = next(i for i in range(record["count"]) if i not in chosen)
    replaced = torch.tensor(sorted(chosen - {min(chosen)} | {outside}))  # a valid file, another subset
    save_subset(str(replaced_dir), 3, replaced,
                {key: value for key, value in record.items() if key not in ("indices", "hash", "epoch")})
    resumed, failed = run_together([*common, "--save-dir", resumed_dir], [*common, "--save-dir", replaced_dir],
                                   check=False)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "subset of epoch 3: ingenious selection of epoch 3 read from" in log
    assert "subset of epoch 3: ingenious, " not in log  # no feature pass for the resumed epoch
    assert losses(resumed) == losses(full)[8:]
    final = [torch.load(d / "checkpoint_last.pt", weights_only=False)["model"] for d in (tmp_path / "full", resumed_dir)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])

    def selections(save_dir):  # one event per selection: the resume dropped epoch 4's and selected it again
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_events(str(save_dir), "subsets")]

    assert [(r["epoch"], r["update"], r["kind"], r["size"]) for r in selections(tmp_path / "full")] == \
        [(1, 0, "warmup", 24), (2, 3, "ingenious", 24), (3, 6, "ingenious", 24), (4, 9, "ingenious", 24)]
    assert selections(resumed_dir) == selections(tmp_path / "full")

    assert failed.returncode != 0
    assert "is not the one this checkpoint trained on" in failed.stderr + failed.stdout


def test_facility_location_report_is_in_the_events_under_no_save(tiny_corpus, tmp_path):
    """--no-save: each ingenious selection's event (the only record of the run; no checkpoint, no
    selection file) carries the report, where the harness collects events; the run trains exactly
    as without the report."""
    from benchmarks import harness

    common = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--subset-warmup-epochs", "0", "--max-update", "6",
              "--no-save"]
    plain, reported = run_together([*common, "--save-dir", tmp_path / "plain"],
                                   [*common, "--save-dir", tmp_path / "report",
                                    "--subset-report-facility-location", "10"])
    assert losses(reported) == losses(plain) and len(losses(plain)) == 6
    assert harness.event_names(tmp_path / "report") == ["subsets"]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["gpts_subsets_events.jsonl"]
    records, plain_records = (read_events(str(tmp_path / name), "subsets") for name in ("report", "plain"))
    assert [(r["epoch"], r["update"], r["kind"], r["file"]) for r in records] == [(1, 0, "ingenious", None),
                                                                                   (2, 3, "ingenious", None)]
    assert [r["hash"] for r in records] == [r["hash"] for r in plain_records]
    for record, plain_record in zip(records, plain_records):
        assert len(record["facility_location_random"]) == 10 and record["facility_location_seconds"] > 0
        assert 0 < record["facility_location"] <= record["count"]  # each block covers itself at most once
        assert plain_record["facility_location"] is None and plain_record["facility_location_seconds"] == 0.0
    assert records[0]["facility_location_random"] != records[1]["facility_location_random"]  # keyed by epoch


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_same_subset_on_two_ranks_and_any_thread_count(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes (1 thread each) vs 1 process on 2 threads: the same first selection
    from the same initial model; each run trains on its selections only and on all of them (the
    two ranks together, none twice). The runs mask with the random and the schedule policy
    (composition; gp-ts is in the resume test, the default constant in the benchmark's runs): a
    selection made before the first update depends on the initial model and the seed only."""
    common = [tiny_corpus, *TINY_MODEL, *TASK, *INGENIOUS, "--subset-warmup-epochs", "0", "--max-epoch", "2",
              "--gpts-interaction-updates", "2", "--gpts-reward-batches", "2"]
    port = _free_port()
    distributed = ["--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                   "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
    ranks = [*common, *distributed, "--gpts-policy", "random", "--save-dir", tmp_path / "ranks"]
    procs = [record_run(ranks, tmp_path / "ranks", rank=rank) for rank in (0, 1)]
    procs.append(record_run([*common, "--gpts-policy", "schedule", "--save-dir", tmp_path / "single"],
                            tmp_path / "single", threads=2))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(out[-2000:] for out in outputs)

    assert torch.equal(load_subset(str(tmp_path / "ranks"), 1)["indices"], load_subset(str(tmp_path / "single"), 1)["indices"])
    assert "gpts: interaction" in outputs[0] and "gpts: interaction" in outputs[2]  # both policies kept interacting
    assert_trained_on_selections(tmp_path / "ranks", tmp_path / "ranks", ["ingenious"] * 2, rank_count=2)
    assert_trained_on_selections(tmp_path / "single", tmp_path / "single", ["ingenious"] * 2)


def test_bad_subset_option_is_named_before_training(tiny_corpus):
    """fairseq-train's parser takes the option; the task, which fairseq builds before it reads
    any data or builds the model, names it."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tiny_corpus), *TINY_MODEL, *TASK, "--subset-selector", "ingenious", "--subset-fraction", "1.5"])
    with pytest.raises(ValueError, match=r"--subset-fraction must be in \(0, 1\], got 1.5"):
        tasks.setup_task(convert_namespace_to_omegaconf(args).task)
