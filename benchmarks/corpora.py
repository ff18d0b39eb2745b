"""Split, tokenize and binarize the three benchmark corpora (``<repo>/../shared/data``) and
users' texts for fairseq, under a cache directory outside the repo (the drivers call
:func:`prepare` / :func:`prepare_text`); a corpus with its ``prepared.json`` is reused."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DATA_ROOT = Path(os.environ.get("GPTS_DATA_ROOT", Path.home() / ".cache" / "gpts-fairseq" / "data"))
VOCAB_SIZE = 8000  # fairseq-preprocess --nwordssrc (every char corpus is far smaller)
DEFAULT_TOKENIZER = "word"
TOKENIZER_VERSION = 1  # bump when tokenize_line changes, so caches are rebuilt

TOKENIZERS = ("word", "char")
USER_VALID_FRACTION = 0.1  # a single user file: its last 10% of lines validate
_SPACE = "\u2581"  # fairseq splits lines on whitespace, so a visible stand-in for ' '
_TOKEN = re.compile(r"<unk>|\w+|[^\w\s]")
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")
_CHAPTER = re.compile(r"^CHAPTER [IVXLC]+\s*$")

Split = tuple[list[str], list[str]]


def tokenize_line(line: str, scheme: str = "word") -> str:
    """Space-separated tokens. ``word``: words/identifiers and single punctuation marks (``<unk>``
    kept whole); ``char``: every character, with spaces written as ``_SPACE``."""
    if scheme == "word":
        return " ".join(_TOKEN.findall(line))
    if scheme == "char":
        return " ".join(_SPACE if ch == " " else ch for ch in " ".join(line.split()))
    raise ValueError(f"--tokenizer: unknown scheme {scheme!r}; valid: {', '.join(TOKENIZERS)}")


def _read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _cut(lines: list[str], starts: list[int], what: str, where: Path, cut_at) -> Split:
    if len(starts) < 2:
        raise ValueError(f"{where}: expected several {what} headings")
    cut = cut_at(starts)
    return lines[:cut], lines[cut:]


def split_wikitext(data_dir: Path) -> Split:
    """First 90% of articles (cut at ` = Title = ` headings) train, the rest valid."""
    lines = _read_lines(data_dir / "valid.txt")
    starts = [i for i, line in enumerate(lines) if _WIKI_TITLE.match(line)]
    return _cut(lines, starts, "` = Title = ` article", data_dir,
                lambda s: s[n] if (n := math.ceil(0.9 * len(s))) < len(s) else s[-1])


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
    return _cut(body, chapters, "`CHAPTER <roman>`", data_dir, lambda s: s[len(s) - max(1, round(0.1 * len(s)))])


SPLITTERS: dict[str, Callable[[Path], Split]] = {
    "wikitext-2": split_wikitext,
    "linux": split_linux,
    "war-and-peace": split_war_and_peace,
}
CORPORA = tuple(SPLITTERS)


def previous_token_entropy(lines: Sequence[str], eos: str = "</s>") -> float:
    """H(X_i | X_{i-1}) in bits over the token stream fairseq trains on: ``lines`` tokenized
    (space-separated), each ended by ``eos`` and concatenated across line ends (as
    fairseq-preprocess and ``--sample-break-mode none`` do)."""
    stream = [token for line in lines for token in (*line.split(), eos)]
    pairs: Counter[tuple[str, str]] = Counter(zip(stream, stream[1:]))
    total = sum(pairs.values())
    if total == 0:
        raise ValueError("previous_token_entropy: need at least two tokens")
    firsts: Counter[str] = Counter()
    for (first, _), n in pairs.items():
        firsts[first] += n
    # H(X_i | X_{i-1}) = -sum p(a, b) log2 p(b | a), with p(b | a) = n(a, b) / n(a, .)
    return -sum(n / total * math.log2(n / firsts[first]) for (first, _), n in pairs.items())


def prepared_entropy(data_dir: Path) -> float:
    """:func:`previous_token_entropy` of a prepared corpus' training text (its ``train.tok``)."""
    return previous_token_entropy(_read_lines(Path(data_dir) / "train.tok"))


def tokenize_lines(lines: Sequence[str], scheme: str, max_lines: int | None = None) -> list[str]:
    """Tokenized non-empty lines, optionally only the first ``max_lines`` of them."""
    out = [tok for tok in (tokenize_line(line, scheme) for line in lines) if tok]
    return out[:max_lines] if max_lines is not None else out


def _fingerprint(name: str, scheme: str, max_lines: int | None, files: Sequence[Path]) -> str:
    key = {"corpus": name, "vocab_size": VOCAB_SIZE, "max_lines": max_lines, "tokenizer": [scheme, TOKENIZER_VERSION],
           "files": [(p.name, p.stat().st_size) for p in sorted(files)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def binarize(train: Sequence[str], valid: Sequence[str], dest: Path) -> None:
    """Write tokenized text and run ``fairseq-preprocess --only-source`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.tok").write_text("\n".join(train) + "\n", encoding="utf-8")
    (dest / "valid.tok").write_text("\n".join(valid) + "\n", encoding="utf-8")
    preprocess(dest, trainpref=dest / "train.tok", validpref=dest / "valid.tok")


def preprocess(dest: Path, dictionary: Path | None = None, **prefixes: Path) -> None:
    """``fairseq-preprocess --only-source`` of tokenized files (``trainpref=``, ``validpref=``,
    ``testpref=``) into ``dest``: with ``dictionary`` as its ``--srcdict``, else a new
    dictionary of at most VOCAB_SIZE tokens. RuntimeError with fairseq's message on failure."""
    vocab = ["--srcdict", str(dictionary)] if dictionary is not None else ["--nwordssrc", str(VOCAB_SIZE)]
    files = [arg for name, path in prefixes.items() for arg in (f"--{name}", str(path))]
    result = subprocess.run([fairseq_tool("fairseq-preprocess"), "--only-source", *vocab, *files, "--destdir", str(dest),
                             "--dataset-impl", "mmap", "--workers", "1"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed for {dest}:\n{result.stderr[-3000:]}")


def fairseq_tool(name: str) -> str:
    """The fairseq console script next to this interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _check_options(tokenizer: str, max_lines: int | None) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"--tokenizer: unknown scheme {tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"--max-lines must be >= 1, got {max_lines}")


def prepare(corpus: str, data_root: Path = DEFAULT_DATA_ROOT, max_lines: int | None = None,
            tokenizer: str = DEFAULT_TOKENIZER) -> Path:
    """Binarized data directory for one of the shared ``corpus`` (built once, then reused)."""
    if corpus not in SPLITTERS:
        raise ValueError(f"--corpus: unknown corpus {corpus!r}; valid: {', '.join(CORPORA)}")
    _check_options(tokenizer, max_lines)
    if not (SHARED_DATA / corpus).is_dir():
        raise FileNotFoundError(f"no {corpus}/ under {SHARED_DATA}")
    files = [p for p in (SHARED_DATA / corpus).iterdir() if p.is_file()]
    return _build(corpus, lambda: SPLITTERS[corpus](SHARED_DATA / corpus), files, data_root, max_lines, tokenizer)


def split_text(lines: Sequence[str], valid_fraction: float = USER_VALID_FRACTION) -> Split:
    """One user file: the first lines train, the last ``valid_fraction`` of them valid (a
    contiguous tail, so validation text is unseen rather than interleaved)."""
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"--text: need at least 2 non-empty lines to split into train and valid, got {len(lines)}")
    n_valid = max(1, round(valid_fraction * len(lines)))
    return lines[:-n_valid], lines[-n_valid:]


def prepare_text(name: str, train: Path, valid: Path | None = None, data_root: Path = DEFAULT_DATA_ROOT,
                 max_lines: int | None = None, tokenizer: str = DEFAULT_TOKENIZER) -> Path:
    """Binarized data directory for a user's own text: one file (split by :func:`split_text`)
    or a train/valid pair. ``name`` names the corpus in results (letters, digits, ``-_.``)."""
    if not re.fullmatch(r"[\w.-]+", name) or name in CORPORA:
        raise ValueError(f"--text-name: {name!r} must be letters, digits, '-', '_' or '.', and not a shared "
                         f"corpus name ({', '.join(CORPORA)})")
    _check_options(tokenizer, max_lines)
    files = [Path(train)] + ([Path(valid)] if valid is not None else [])
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"--text: no file {path}")
    splitter = (lambda: split_text(_read_lines(train))) if valid is None else \
        (lambda: (_read_lines(train), _read_lines(valid)))
    return _build(name, splitter, files, data_root, max_lines, tokenizer)


def _build(name: str, splitter: Callable[[], Split], files: Sequence[Path], data_root: Path, max_lines: int | None,
           tokenizer: str) -> Path:
    dest = Path(data_root) / f"{name}-{tokenizer}-{_fingerprint(name, tokenizer, max_lines, files)}"
    if (dest / "prepared.json").exists():
        return dest
    train, valid = (tokenize_lines(split, tokenizer, max_lines) for split in splitter())
    if not train or not valid:
        raise ValueError(f"{name}: no tokens in the {'train' if not train else 'valid'} split")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        binarize(train, valid, staging)
        info = {"corpus": name, "tokenizer": tokenizer, "vocab_size": VOCAB_SIZE, "max_lines": max_lines,
                "tokenizer_version": TOKENIZER_VERSION, "train_lines": len(train), "valid_lines": len(valid),
                "train_tokens": sum(len(line.split()) for line in train),
                "valid_tokens": sum(len(line.split()) for line in valid)}
        (staging / "prepared.json").write_text(json.dumps(info, indent=1) + "\n")
        if dest.exists():  # an unfinished earlier attempt: replace it
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest

