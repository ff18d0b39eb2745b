"""``python -m gpts_fairseq user-dir`` prints the --user-dir path of the plugin;
``python -m gpts_fairseq demo`` runs the README's main job (no download):

1. a corpus from text every Python installation has (its standard library's sources),
2. ``fairseq-preprocess``, 3. a short GP-TS pre-training of a tiny RoBERTa (``--task gpts_mlm``),
4. the ``gpts-report`` plots and summary of the run.
"""

import argparse
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WORD = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")

# Everything the demo run is made of, in one place.
DEMO_CORPUS_LINES = 60_000  # ~ 0.5 M tokens
DEMO_VOCAB = 4000
DEMO_TRAIN = [
    "--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4", "--max-positions", "128",
    "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
    "--required-batch-size-multiple", "1", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
    "--lr", "0.002", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "30",
    "--total-num-update", "400", "--max-update", "400", "--clip-norm", "1.0",
    "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
    "--gpts-policy", "gp-ts", "--gpts-arms", "rho", "--gpts-interaction-updates", "20",
    "--gpts-reward-batches", "8", "--validate-interval-updates", "20", "--validate-interval", "1000",
    "--cpu", "--num-workers", "0", "--seed", "1", "--log-format", "json", "--log-interval", "20",
    "--no-epoch-checkpoints", "--save-interval-updates", "200",
]


def stdlib_lines(limit: int) -> list[str]:
    """Tokenised lines of the standard library's .py files, in a fixed (sorted) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:-1] or path.name.startswith("test"):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            tokens = WORD.findall(line)
            if len(tokens) >= 3:
                lines.append(" ".join(tokens))
                if len(lines) == limit:
                    return lines
    return lines


def build_corpus(out: Path) -> Path:
    """Split the lines (every 20th to valid) and binarize them; returns the data dir."""
    data = out / "data-bin"
    if (data / "dict.txt").exists():
        return data
    lines = stdlib_lines(DEMO_CORPUS_LINES)
    text = out / "text"
    text.mkdir(parents=True, exist_ok=True)
    (text / "train.txt").write_text("\n".join(l for i, l in enumerate(lines) if i % 20) + "\n")
    (text / "valid.txt").write_text("\n".join(l for i, l in enumerate(lines) if i % 20 == 0) + "\n")
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref",
                    str(text / "train.txt"), "--validpref", str(text / "valid.txt"), "--destdir", str(data),
                    "--nwordssrc", str(DEMO_VOCAB), "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
    return data


def demo(out: Path) -> int:
    from .report.history import HISTORY_FILE, LOG_FILE

    out = out.resolve()
    started = time.time()
    print(f"[1/3] corpus: {DEMO_CORPUS_LINES} lines of this Python's standard library -> {out / 'data-bin'}")
    data = build_corpus(out)
    save = out / "run"
    print(f"[2/3] fairseq-train --task gpts_mlm --gpts-policy gp-ts (tiny RoBERTa, 400 updates, CPU) -> {save}")
    save.mkdir(parents=True, exist_ok=True)
    for stale in (LOG_FILE, HISTORY_FILE, "checkpoint_last.pt"):
        (save / stale).unlink(missing_ok=True)  # the demo always starts from scratch
    command = [sys.executable, "-m", "fairseq_cli.train", str(data), *DEMO_TRAIN, "--save-dir", str(save),
               "--log-file", str(save / LOG_FILE)]
    with open(save / "stdout.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print((save / "stdout.log").read_text()[-3000:], file=sys.stderr)
        print(f"fairseq-train failed (exit {proc.returncode}); full log: {save / 'stdout.log'}", file=sys.stderr)
        return proc.returncode
    print("[3/3] report")
    from .report.cli import main as report_main

    code = report_main([str(save), "--out", str(out / "report"), "--title", "gpts-fairseq demo: GP-TS over rho"])
    print(f"done in {time.time() - started:.0f} s: report {out / 'report' / 'summary.md'}, "
          f"history {save / HISTORY_FILE}")
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpts_fairseq", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("user-dir", help="print the directory to pass to fairseq's --user-dir")
    demo_parser = commands.add_parser("demo", help="build a corpus, pre-train with GP-TS, write the report")
    demo_parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: ./demo)")
    args = parser.parse_args(argv)
    if args.command == "user-dir":
        print(PACKAGE_DIR)
        return 0
    return demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
