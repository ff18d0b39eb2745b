"""examples/ run as a user would run them, at tiny scale."""

import codecs
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, run_fairseq

EXAMPLES = REPO / "examples"


def one_thread_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def history(save_dir):
    return [json.loads(line) for line in (save_dir / "gpts_history.jsonl").read_text().splitlines()]


def test_roberta_hydra_recipe(tiny_corpus, tmp_path):
    """The RoBERTa-base YAML, shrunk on the command line only (what a smoke test of a real
    recipe would override), runs GP-TS interactions."""
    overrides = [
        f"task.data={tiny_corpus}", "task.tokens_per_sample=64", "task.gpts_interaction_updates=2",
        "task.gpts_reward_batches=2", "common.fp16=false", "common.cpu=true", "common.log_interval=1",
        f"common.tensorboard_logdir={tmp_path / 'tb'}", "dataset.batch_size=8", "dataset.num_workers=0",
        "optimization.max_update=6", "optimization.update_freq=[1]", "lr_scheduler.warmup_updates=1",
        "model.encoder_layers=1", "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64",
        "model.encoder_attention_heads=2", "model.max_positions=64",
        f"checkpoint.save_dir={tmp_path / 'save'}", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    run_fairseq(["--config-dir", EXAMPLES / "roberta/config/pretraining", "--config-name", "base", *overrides],
                tool="hydra_train")
    records = history(tmp_path / "save")
    assert [r["end_update"] for r in records] == [2, 4, 6]  # interactions ended at updates 2, 4 and --max-update 6
    assert all(r["reward"] is not None for r in records)
    assert (tmp_path / "tb" / "train_inner").is_dir()


RAW_TEXT_SCRIPT = EXAMPLES / "pretrain_from_raw_text.sh"
TINY_TRAIN = [
    "--arch", "roberta_base", "--encoder-layers", "1", "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--max-positions", "64",
    "--tokens-per-sample", "64", "--batch-size", "8", "--update-freq", "1", "--lr", "0.003",
    "--warmup-updates", "1", "--total-num-update", "6", "--max-update", "6", "--cpu", "--num-workers", "0",
    "--gpts-interaction-updates", "2", "--gpts-reward-batches", "2", "--no-epoch-checkpoints", "--seed", "3",
]


def raw_text(tmp_path, lines=300):
    """A slice of the shared linux corpus as a user's raw text files."""
    paths = []
    for split, count in (("train", lines), ("valid", lines // 4)):
        source = (SHARED_DATA / "linux" / f"{split}.txt").read_text(encoding="utf-8", errors="replace")
        path = tmp_path / f"{split}.txt"
        path.write_text("\n".join(source.splitlines()[:count]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def gpt2_files(directory):
    """A byte-level GPT-2 BPE in the release's formats, small enough to build here: every byte
    plus three merges (encoder.json, vocab.bpe) and fairseq's dict.txt of the ids."""
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("i", "n"), ("e", "r")]
    encoder = {symbol: index for index, symbol in enumerate(symbols + [a + b for a, b in merges])}
    (directory / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (directory / "dict.txt").write_text("".join(f"{index} 1\n" for index in encoder.values()), encoding="utf-8")
    return [directory / name for name in ("encoder.json", "vocab.bpe", "dict.txt")]


def run_script(*args, check=True):
    env = dict(one_thread_env(), PYTHON=sys.executable)
    proc = subprocess.run(["bash", RAW_TEXT_SCRIPT, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("args, message", [
    ([], "--train is required"),
    (["--train", "TRAIN", "--out", "o"], "--valid is required"),
    (["--train", "TRAIN", "--valid", "VALID", "--out", "o", "--gpt2-bpe", "e.json"], "--gpt2-bpe needs ENCODER_JSON VOCAB_BPE DICT_TXT"),
    (["--train", "TRAIN", "--valid", "missing.txt", "--out", "o"], "'missing.txt' does not exist"),
    (["--train", "TRAIN", "--valid", "VALID", "--out", "o", "--max-update", "5"], "fairseq-train options go after --"),
    (["--train", "TRAIN", "--valid", "VALID", "--out", "o", "--sentencepiece", "x"], "--sentencepiece needs a vocabulary size"),
])
def test_raw_text_script_names_what_is_missing(tmp_path, args, message):
    train, valid = raw_text(tmp_path, lines=8)
    args = [str(train) if a == "TRAIN" else str(valid) if a == "VALID" else a for a in args]
    proc = run_script(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_plain_pytorch_loop_learns_and_moves_psi(tmp_path):
    """Masking op + bandit without fairseq: the validation loss falls and GP-TS plays more
    than one ρ of the paper's grid."""
    text = tmp_path / "text.txt"
    text.write_text((SHARED_DATA / "linux" / "train.txt").read_text(encoding="utf-8", errors="replace")[:100_000],
                    encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, EXAMPLES / "plain_pytorch.py", "--text", text, "--updates", "40",
         "--interaction-updates", "10", "--length", "64", "--history", tmp_path / "history.jsonl"],
        capture_output=True, text=True, env=one_thread_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["end_update"] for r in records] == [10, 20, 30, 40]
    assert all(r["reward"] is not None for r in records)
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    rhos = {r["psi"]["mask_prob"] for r in records}
    assert len(rhos) > 1 and all(abs(20 * rho - round(20 * rho)) < 1e-9 for rho in rhos)  # grid of 0.05


def train_text_with_bad_bytes(tmp_path):
    """The raw text of ``raw_text`` with a byte-order mark, 4 invalid UTF-8 bytes (two stray
    bytes and a cut 3-byte sequence: 3 replacements) and 2 NUL bytes in the training file."""
    train, valid = raw_text(tmp_path)
    train.write_bytes(codecs.BOM_UTF8 + train.read_bytes() + b"stray \xff\xfe bytes, a cut \xe2\x82 euro\n"
                      + b"two NULs\x00\x00 here\n")
    return train, valid


@pytest.mark.e2e
@pytest.mark.parametrize("tokenizer", ["chars", "gpt2-bpe", "sentencepiece"])
def test_raw_text_with_bad_bytes_to_gp_ts_run(tmp_path, tokenizer):
    """A user's raw text, tokenized, binarized and trained on with GP-TS. Its bad bytes are
    handled the same on every tokenizer path: replaced (U+FFFD), NULs dropped, the BOM removed,
    one warning line naming the file and the counts."""
    if tokenizer == "sentencepiece":
        pytest.importorskip("sentencepiece")
    train, valid = train_text_with_bad_bytes(tmp_path)
    vocabulary = {"chars": ["--chars"], "sentencepiece": ["--sentencepiece", "200"]}.get(tokenizer)
    out = tmp_path / "run"
    proc = run_script("--train", train, "--valid", valid, "--out", out,
                      *(vocabulary or ["--gpt2-bpe", *gpt2_files(tmp_path)]), "--", *TINY_TRAIN)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {train}: 4 invalid UTF-8 bytes replaced by U+FFFD, 2 NUL bytes dropped, "
                        "a byte-order mark removed"]
    cleaned = (out / "tokens" / "train.txt").read_text(encoding="utf-8")
    assert cleaned.count("\ufffd") == 3 and "\0" not in cleaned and "\ufeff" not in cleaned
    assert "two NULs here" in cleaned
    assert (out / "tokens" / "train.bpe").stat().st_size > 0

    dictionary = [line.rsplit(" ", 1)[0] for line in (out / "data-bin" / "dict.txt").read_text(encoding="utf-8").splitlines()]
    assert "\0" not in "".join(dictionary) and "\ufeff" not in "".join(dictionary)
    if tokenizer == "gpt2-bpe":
        assert len(dictionary) == 259  # the given dict.txt, unchanged: 256 bytes + 3 merges
    elif tokenizer == "chars":
        assert "\u2581" in dictionary  # spaces became the ▁ character token
        assert "\ufffd" in dictionary
    else:
        assert 100 < len(dictionary) <= 200 and any(piece.startswith("\u2581") and len(piece) > 1 for piece in dictionary)
    records = history(out / "checkpoints")
    assert [r["end_update"] for r in records] == [2, 4, 6]
    assert all(r["reward"] is not None for r in records)
    assert (out / "checkpoints" / "checkpoint_last.pt").exists() and (out / "tensorboard").is_dir()


@pytest.mark.e2e
def test_prepare_only_binarizes_and_does_not_train(tmp_path):
    train, valid = raw_text(tmp_path, lines=40)
    out = tmp_path / "run"
    run_script("--train", train, "--valid", valid, "--out", out, "--chars", "--prepare-only")
    assert (out / "data-bin" / "train.bin").stat().st_size > 0 and (out / "data-bin" / "valid.bin").exists()
    assert not (out / "checkpoints").exists() and not (out / "tensorboard").exists()


@pytest.mark.e2e
def test_raw_text_failed_tokenizer_leaves_no_output_file(tmp_path):
    """A GPT-2 encoder.json without the symbol of 'e' makes the encoder fail mid-file: the script
    fails and tokens/ holds no (empty or partial) .bpe file."""
    train, valid = raw_text(tmp_path, lines=40)
    encoder_json, vocab_bpe, dict_txt = gpt2_files(tmp_path)
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    del encoder["e"]
    encoder_json.write_text(json.dumps(encoder), encoding="utf-8")
    proc = run_script("--train", train, "--valid", valid, "--out", tmp_path / "run",
                      "--gpt2-bpe", encoder_json, vocab_bpe, dict_txt, check=False)
    assert proc.returncode != 0
    assert sorted(path.name for path in (tmp_path / "run" / "tokens").iterdir()) == ["train.txt", "valid.txt"]
