"""Split, tokenize and binarize the three benchmark corpora for fairseq.

The corpora live read-only in ``<repo>/../shared/data`` (see its README). Each is split the way
that README suggests, tokenized with one deterministic word-level rule (identifiers and words
are tokens, every other non-space character is a token, ``<unk>`` stays one token), and
binarized with ``fairseq-preprocess --only-source`` under a cache directory outside the repo.
A finished corpus is recognised by its ``prepared.json`` and never rebuilt, so calling
:func:`prepare` again is free.

    python benchmarks/corpora.py --corpus wikitext-2 linux war-and-peace
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DATA_ROOT = Path(os.environ.get("GPTS_DATA_ROOT", Path.home() / ".cache" / "gpts-fairseq" / "data"))
DEFAULT_VOCAB_SIZE = 8000
DEFAULT_TOKENIZER = "word"
TOKENIZER_VERSION = 1  # bump when tokenize_line changes, so caches are rebuilt

TOKENIZERS = ("word", "char")
_SPACE = "\u2581"  # fairseq splits lines on whitespace, so a visible stand-in for ' '
_TOKEN = re.compile(r"<unk>|\w+|[^\w\s]")
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")
_CHAPTER = re.compile(r"^CHAPTER [IVXLC]+\s*$")

Split = tuple[list[str], list[str]]


def tokenize_line(line: str, scheme: str = "word") -> str:
    """Space-separated tokens; one rule per scheme for prose, wiki text and C code.

    ``word``: words/identifiers and single punctuation marks (``<unk>`` kept whole);
    ``char``: every character, with spaces written as ``_SPACE``.
    """
    if scheme == "word":
        return " ".join(_TOKEN.findall(line))
    if scheme == "char":
        return " ".join(_SPACE if ch == " " else ch for ch in " ".join(line.split()))
    raise ValueError(f"--tokenizer: unknown scheme {scheme!r}; valid: {', '.join(TOKENIZERS)}")


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def split_wikitext(data_dir: Path) -> Split:
    """First 90% of articles (cut at ` = Title = ` headings) train, the rest valid."""
    lines = _read_lines(data_dir / "valid.txt")
    starts = [i for i, line in enumerate(lines) if _WIKI_TITLE.match(line)]
    if len(starts) < 2:
        raise ValueError(f"{data_dir}: expected several ` = Title = ` article headings")
    n_train = math.ceil(0.9 * len(starts))
    cut = starts[n_train] if n_train < len(starts) else starts[-1]
    return lines[:cut], lines[cut:]


def split_linux(data_dir: Path) -> Split:
    """The corpus ships its own train/valid files."""
    return _read_lines(data_dir / "train.txt"), _read_lines(data_dir / "valid.txt")


def split_war_and_peace(data_dir: Path) -> Split:
    """Strip the Project Gutenberg header/footer; the last 10% of chapters are valid."""
    lines = _read_lines(data_dir / "war_and_peace.txt")
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("*** START OF")), 0)
    end = next((i for i, line in enumerate(lines) if line.startswith("*** END OF")), len(lines))
    body = lines[start:end]
    chapters = [i for i, line in enumerate(body) if _CHAPTER.match(line)]
    if len(chapters) < 2:
        raise ValueError(f"{data_dir}: expected several `CHAPTER <roman>` headings")
    n_valid = max(1, round(0.1 * len(chapters)))
    cut = chapters[len(chapters) - n_valid]
    return body[:cut], body[cut:]


SPLITTERS: dict[str, Callable[[Path], Split]] = {
    "wikitext-2": split_wikitext,
    "linux": split_linux,
    "war-and-peace": split_war_and_peace,
}
CORPORA = tuple(SPLITTERS)


def tokenize_lines(lines: Sequence[str], scheme: str, max_lines: int | None = None) -> list[str]:
    """Tokenized non-empty lines, optionally only the first ``max_lines`` of them."""
    out = [tok for tok in (tokenize_line(line, scheme) for line in lines) if tok]
    return out[:max_lines] if max_lines is not None else out


def _fingerprint(corpus: str, scheme: str, vocab_size: int, max_lines: int | None, sources: Path) -> str:
    files = sorted(p for p in (sources / corpus).iterdir() if p.is_file())
    key = {
        "corpus": corpus,
        "vocab_size": vocab_size,
        "max_lines": max_lines,
        "tokenizer": [scheme, TOKENIZER_VERSION],
        "files": [(p.name, p.stat().st_size) for p in files],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def binarize(train: Sequence[str], valid: Sequence[str], dest: Path, vocab_size: int) -> None:
    """Write tokenized text and run ``fairseq-preprocess --only-source`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.tok").write_text("\n".join(train) + "\n", encoding="utf-8")
    (dest / "valid.tok").write_text("\n".join(valid) + "\n", encoding="utf-8")
    cmd = [
        _fairseq_tool("fairseq-preprocess"), "--only-source",
        "--trainpref", str(dest / "train.tok"), "--validpref", str(dest / "valid.tok"),
        "--destdir", str(dest), "--nwordssrc", str(vocab_size),
        "--dataset-impl", "mmap", "--workers", "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed for {dest}:\n{result.stderr[-3000:]}")


def _fairseq_tool(name: str) -> str:
    """The fairseq console script next to this interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def prepare(
    corpus: str,
    data_root: Path = DEFAULT_DATA_ROOT,
    sources: Path = SHARED_DATA,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_lines: int | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> Path:
    """Binarized data directory for ``corpus`` (built once, then reused)."""
    if corpus not in SPLITTERS:
        raise ValueError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(CORPORA)}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"--tokenizer: unknown scheme {tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    if vocab_size < 1:
        raise ValueError(f"--vocab-size must be >= 1, got {vocab_size}")
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"--max-lines must be >= 1, got {max_lines}")
    if not (sources / corpus).is_dir():
        raise FileNotFoundError(f"--sources: no {corpus}/ under {sources}")
    dest = Path(data_root) / f"{corpus}-{tokenizer}-{_fingerprint(corpus, tokenizer, vocab_size, max_lines, sources)}"
    marker = dest / "prepared.json"
    if marker.exists():
        return dest
    train, valid = SPLITTERS[corpus](sources / corpus)
    train, valid = tokenize_lines(train, tokenizer, max_lines), tokenize_lines(valid, tokenizer, max_lines)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{corpus}-", dir=dest.parent))
    try:
        binarize(train, valid, staging, vocab_size)
        info = {
            "corpus": corpus, "tokenizer": tokenizer, "vocab_size": vocab_size, "max_lines": max_lines,
            "tokenizer_version": TOKENIZER_VERSION,
            "train_lines": len(train), "valid_lines": len(valid),
            "train_tokens": sum(len(line.split()) for line in train),
            "valid_tokens": sum(len(line.split()) for line in valid),
        }
        (staging / "prepared.json").write_text(json.dumps(info, indent=1) + "\n")
        if dest.exists():  # an unfinished earlier attempt: replace it
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--sources", type=Path, default=SHARED_DATA)
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--max-lines", type=int, default=None)
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default=DEFAULT_TOKENIZER)
    args = parser.parse_args(argv)
    for corpus in args.corpus:
        path = prepare(corpus, args.data_root, args.sources, args.vocab_size, args.max_lines, args.tokenizer)
        info = json.loads((path / "prepared.json").read_text())
        print(f"{corpus}: {path} (train {info['train_tokens']} tokens, valid {info['valid_tokens']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
