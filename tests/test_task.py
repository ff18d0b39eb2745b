"""The gpts_mlm task end to end: fairseq-train runs, resume, masks refreshed every epoch with
DataLoader workers, reference validation, criterion equivalence, bad options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq

fairseq = pytest.importorskip("fairseq")
from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

RECORDER = Path(__file__).resolve().parent / "fairseq_recorder.py"
GPTS = ["--user-dir", PACKAGE_DIR, "--task", "gpts_mlm"]


def train_args(data, save_dir, *extra):
    return [data, *TINY_MODEL, *GPTS, "--save-dir", save_dir, "--num-workers", "0", *extra]


@pytest.mark.parametrize("criterion", ["masked_lm", "gpts_masked_lm"])
def test_train_checkpoint_resume(tiny_corpus, tmp_path, criterion):
    save = tmp_path / "ckpt"
    first = run_fairseq(train_args(tiny_corpus, save, "--criterion", criterion, "--max-epoch", "3"))
    assert (save / "checkpoint_last.pt").exists() and (save / "checkpoint3.pt").exists()
    losses = [float(record["valid_loss"]) for record in json_log(first, "valid")]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses  # it learns

    resumed = run_fairseq(train_args(tiny_corpus, save, "--criterion", criterion, "--max-epoch", "4"))
    assert "Loaded checkpoint" in resumed.stderr + resumed.stdout
    valid = json_log(resumed, "valid")
    assert [int(r["epoch"]) for r in valid] == [4]
    assert float(valid[0]["valid_loss"]) < losses[0]
    if criterion == "gpts_masked_lm":
        train = json_log(first, "train")[-1]
        assert float(train["train_psi_rho"]) == pytest.approx(0.15)
        assert 0.10 < float(train["train_selected_frac"]) < 0.16  # bos/eos are never selected
        for kind in ("mask", "random", "kept"):
            assert float(train[f"train_loss_{kind}"]) > 0


def _recorded(prefix, rank=0):
    """One dict per masked row."""
    with open(f"{prefix}.{rank}.jsonl") as handle:
        batches = [json.loads(line) for line in handle]
    return [{**batch, "id": sample_id, "source": source}
            for batch in batches for sample_id, source in zip(batch["ids"], batch["sources"])]


def _record_run(data, tmp_path, name, *extra):
    prefix = tmp_path / name
    env = dict(os.environ, GPTS_RECORD_PREFIX=str(prefix), OMP_NUM_THREADS="1")
    args = [data, *TINY_MODEL, *GPTS, "--criterion", "masked_lm", "--no-save", "--save-dir", tmp_path / f"{name}-save",
            *extra]
    proc = subprocess.run([sys.executable, RECORDER, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _recorded(prefix)


def test_masks_change_every_epoch_with_persistent_workers(tiny_corpus, tmp_path):
    """The same sample is masked differently in each epoch, with a DataLoader worker process
    (stock masked_lm repeats epoch 1's masks there); the same seed repeats the masks exactly."""
    extra = ["--max-epoch", "2", "--num-workers", "1"]
    rows = _record_run(tiny_corpus, tmp_path, "a", *extra)
    train = {(r["step"], r["id"]): r["source"] for r in rows if not r["valid"]}
    ids = sorted({sample_id for step, sample_id in train if step == 1} & {sample_id for step, sample_id in train if step == 2})
    assert len(ids) > 50
    changed = sum(train[(1, i)] != train[(2, i)] for i in ids)
    assert changed > 0.9 * len(ids)

    again = _record_run(tiny_corpus, tmp_path, "b", *extra)
    assert {(r["step"], r["id"]): r["source"] for r in again if not r["valid"]} == train

    # validation masks: the reference psi, identical in both epochs
    valid = [r for r in rows if r["valid"]]
    assert {json.dumps(r["psi"], sort_keys=True) for r in valid} == {
        json.dumps({"mask_prob": 0.15, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}, sort_keys=True)}
    by_id = {}
    for r in valid:
        by_id.setdefault(r["id"], set()).add(tuple(r["source"]))
    assert by_id and all(len(sources) == 1 for sources in by_id.values())


def _setup(data, *extra, criterion="gpts_masked_lm"):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data), *map(str, TINY_MODEL), *map(str, GPTS), "--criterion", criterion, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, tasks.setup_task(cfg.task)


def test_gpts_criterion_equals_masked_lm(tiny_corpus):
    """Same masks -> the same loss and the same gradients, bit for bit."""
    cfg, task = _setup(tiny_corpus)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(8)])
    masked = task.mask_sample(sample, task.psi, step=1)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    model.eval()
    results = []
    for name in ("masked_lm", "gpts_masked_lm"):
        criterion_cfg = _setup(tiny_corpus, criterion=name)[0].criterion
        criterion = task.build_criterion(criterion_cfg)
        model.zero_grad()
        loss, sample_size, log = criterion(model, masked)
        loss.backward()
        results.append((loss.detach().clone(), int(sample_size), [p.grad.clone() for p in model.parameters()], log))
    (loss_a, size_a, grads_a, _), (loss_b, size_b, grads_b, log_b) = results
    assert size_a == size_b > 0
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    kinds = log_b["gpts_n_mask"] + log_b["gpts_n_random"] + log_b["gpts_n_kept"]
    assert kinds == size_b  # every selected position has exactly one kind
    total = log_b["gpts_loss_mask"] + log_b["gpts_loss_random"] + log_b["gpts_loss_kept"]
    assert total == pytest.approx(float(loss_b), rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--mask-prob", "1.5"], "--mask-prob must be in [0, 1]"),
    (["--leave-unmasked-prob", "0.6", "--random-token-prob", "0.5"], "--leave-unmasked-prob + --random-token-prob must be <= 1"),
    (["--gpts-ref-mask-prob", "-0.1"], "--gpts-ref-mask-prob must be in [0, 1]"),
    (["--gpts-policy", "gp-ts", "--gpts-arm-step", "0.9"], "--gpts-arm-step must be in [0, 0.45]"),
    (["--gpts-policy", "gp-ts", "--gpts-arm-bounds", "0.4,0.2"], "--gpts-arm-bounds must satisfy"),
    (["--gpts-policy", "schedule", "--gpts-schedule-end", "0.1,0.2"], "--gpts-schedule-end must be 3 comma-separated"),
    (["--gpts-policy", "schedule"], "set --max-update or --max-epoch"),
    (["--gpts-interaction-updates", "-3"], "--gpts-interaction-updates must be an integer >= 0"),
    (["--mask-stdev", "-1"], "--mask-stdev must be finite and >= 0"),
    (["--gpts-policy", "gp-ts", "--gpts-forgetting", "0.5"], "--gpts-forgetting needs --gpts-reward-model 'trend'"),
    # a masking that selects nothing has no loss, so no reward
    (["--mask-prob", "0"], "--mask-prob must be > 0"),
    (["--gpts-ref-mask-prob", "0"], "--gpts-ref-mask-prob must be > 0"),
    (["--gpts-policy", "gp-ts", "--gpts-arm-bounds", "0,0.5"], "--gpts-arm-bounds lower bound must be > 0"),
    (["--gpts-policy", "random", "--gpts-arms", "psi", "--gpts-arm-bounds", "0,0.5", "--gpts-arm-step", "0"],
     "--gpts-arm-bounds lower bound must be > 0"),
    (["--gpts-policy", "schedule", "--max-update", "10", "--gpts-schedule-end", "0,0.1,0.1"],
     "--gpts-schedule-end rho must be > 0"),
])
def test_bad_options_name_the_option(tiny_corpus, extra, message):
    with pytest.raises(ValueError) as error:
        _setup(tiny_corpus, *extra)
    assert message in str(error.value)


def test_bad_option_fails_before_training(tiny_corpus, tmp_path):
    proc = run_fairseq(train_args(tiny_corpus, tmp_path / "save", "--criterion", "masked_lm", "--mask-prob", "2"),
                       check=False)
    assert proc.returncode != 0
    assert "--mask-prob must be in [0, 1], got 2.0" in proc.stderr
    assert "train_inner" not in proc.stderr + proc.stdout and not (tmp_path / "save" / "checkpoint_last.pt").exists()


def test_whole_word_masking_from_wordpiece_dictionary(tmp_path):
    """With --mask-whole-words a '##' continuation is selected exactly when its word start is."""
    words = ["play ##ing", "foot ##ball", "the", "cat ##s", "run ##ning ##s", "a", "dog"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(60)]
    for split in ("train", "valid"):
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref",
                    tmp_path / "train.txt", "--validpref", tmp_path / "valid.txt", "--destdir", tmp_path / "bin",
                    "--workers", "1"], check=True, capture_output=True)
    cfg, task = _setup(tmp_path / "bin", "--mask-whole-words", "--mask-prob", "0.3")
    symbols = task.dictionary.symbols
    starts = task.spec.word_start.tolist()
    assert [starts[i] for i, s in enumerate(symbols) if s.startswith("##")] == [False] * 4
    assert starts[task.dictionary.index("play")] and starts[task.dictionary.bos()]
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(len(dataset))])
    masked = task.mask_sample(sample, task.psi, step=1)
    tokens, selected = sample["net_input"]["src_tokens"], masked["target"].ne(task.dictionary.pad())
    continuation = torch.tensor([s.startswith("##") for s in symbols])[tokens]
    checked = 0
    for row in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if continuation[row, t] and tokens[row, t - 1] >= task.dictionary.nspecial:
                assert selected[row, t] == selected[row, t - 1]  # same word, same decision
                checked += 1
    assert checked > 100 and selected.any()

    with pytest.raises(ValueError, match="--mask-whole-words: cannot tell word starts"):
        _setup(_plain_dictionary_dir(tmp_path), "--mask-whole-words")


def _plain_dictionary_dir(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "dict.txt").write_text("hello 5\nworld 3\n")
    return tmp_path / "plain"


def test_ignored_or_clipped_options_are_said_once(tiny_corpus, caplog):
    """--gpts-schedule-end without the schedule policy, and more reward batches than the
    validation set has, each give one warning."""
    with caplog.at_level("WARNING"):
        _, task = _setup(tiny_corpus, "--gpts-schedule-end", "0.3,0.1,0.1")
    assert [r.getMessage() for r in caplog.records if "--gpts-schedule-end" in r.getMessage()] == [
        "--gpts-schedule-end 0.3,0.1,0.1 is ignored with --gpts-policy constant: only --gpts-policy schedule reads it"]
    caplog.clear()
    _, task = _setup(tiny_corpus, "--gpts-reward-batches", "5000")
    with caplog.at_level("WARNING"):
        batches = task.reward_batches.batches
        assert task.reward_batches.batches is batches
    warned = [r.getMessage() for r in caplog.records if "--gpts-reward-batches" in r.getMessage()]
    assert warned == [f"--gpts-reward-batches 5000: the validation set 'valid' has {len(batches)} batches; "
                      f"the reward uses all of them"] and 0 < len(batches) < 5000
