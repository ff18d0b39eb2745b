"""``python -m gpts_fairseq user-dir`` prints the --user-dir path of the plugin;
``python -m gpts_fairseq demo`` runs the README's recommendation against fixed masking (no download):

1. a corpus from text every Python installation has (its standard library's sources),
2. ``fairseq-preprocess``, 3. a tiny RoBERTa pre-trained three times side by side, same seed
   and budget (``--task gpts_mlm``): GP-TS with the trend reward model, fixed ρ = 0.15
   (masked_lm's default) and fixed ρ = 0.30, with a progress line every PROGRESS_EVERY_S,
4. the ``gpts-report`` comparison (plots, summary.md, the verdict in words).
"""

import argparse
import collections
import math
import os
import re
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from .report.summary import format_duration

PACKAGE_DIR = Path(__file__).resolve().parent
WORD = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")

# Everything the demo runs are made of, in one place.
DEMO_CORPUS_LINES = 60_000  # ~ 0.6 M tokens
DEMO_VOCAB = 4000
DEMO_UPDATES = 800
DEMO_INTERACTION_UPDATES = 40  # 20 interactions; the reward reuses fairseq's validation (same interval)
DEMO_REWARD_BATCHES = 8
DEMO_SEED = 1
DEMO_TRAIN = [
    "--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4", "--max-positions", "128",
    "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
    "--required-batch-size-multiple", "1", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
    "--lr", "0.002", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "60",
    "--total-num-update", str(DEMO_UPDATES), "--max-update", str(DEMO_UPDATES), "--clip-norm", "1.0",
    "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--gpts-reward-batches", str(DEMO_REWARD_BATCHES),
    "--validate-interval-updates", str(DEMO_INTERACTION_UPDATES), "--validate-interval", "1000",
    "--cpu", "--num-workers", "0", "--seed", str(DEMO_SEED), "--log-format", "json", "--log-interval", "20",
    "--no-save",
]
# label -> (--gpts-policy, ρ to start from (the only one for constant), its options)
DEMO_POLICIES = {
    "gp-ts-trend": ("gp-ts", 0.15, ["--gpts-arms", "rho", "--gpts-reward-model", "trend",
                                    "--gpts-interaction-updates", str(DEMO_INTERACTION_UPDATES)]),
    "constant-0.15": ("constant", 0.15, []),
    "constant-0.30": ("constant", 0.30, []),
}
# Pace measured here (2-core CPU, one training process per core, other work running): seconds
# per update of one run with validation, and the fixed costs. Only the up-front estimate uses them.
SECONDS_PER_UPDATE = 0.27
START_SECONDS, CORPUS_SECONDS, REPORT_SECONDS = 12, 20, 15
PROGRESS_EVERY_S = 30
PLATEAU_MARGIN = 0.1  # bits: a loss closer than this to an entropy counts as on it


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
    done = subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref",
                           str(text / "train.txt"), "--validpref", str(text / "valid.txt"), "--destdir", str(data),
                           "--nwordssrc", str(DEMO_VOCAB), "--workers", "1"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return data


def corpus_entropies(text: Path, vocabulary: Path) -> tuple[float, float]:
    """Plug-in unigram and previous-token entropies (bits per token) of a training text in the
    dictionary's vocabulary (other words as <unk>, one </s> per line): where a masked LM's
    loss sits on the unigram plateau, and what using the token before would reach."""
    known = {line.split()[0] for line in vocabulary.read_text(encoding="utf-8").splitlines() if line.strip()}
    tokens = [token for line in text.read_text(encoding="utf-8").splitlines()
              for token in [w if w in known else "<unk>" for w in line.split()] + ["</s>"]]
    n = len(tokens)
    unigram = -sum(c / n * math.log2(c / n) for c in collections.Counter(tokens).values())
    before = collections.Counter(tokens[:-1])
    pairs = collections.Counter(zip(tokens, tokens[1:]))
    previous = -sum(c / (n - 1) * math.log2(c / before[a]) for (a, _), c in pairs.items())
    return unigram, previous


def plateau_note(best: float, worst: float, unigram: float, previous: float) -> str:
    """Where final losses in [best, worst] sit between the unigram and previous-token entropies."""
    where = (f"Where the runs are: the corpus' unigram entropy is {unigram:.2f} bits/token and its "
             f"previous-token entropy {previous:.2f} (plug-in, training text); the runs end at "
             f"{best:.2f}–{worst:.2f} bits: ")
    if worst > unigram - PLATEAU_MARGIN:
        return where + ("on the unigram plateau or just below it, where a comparison is decided by when each "
                        "run leaves it (see the README's pre-registered suite for budgets past it).")
    if best > previous + PLATEAU_MARGIN:
        return where + (f"{unigram - worst:.2f}–{unigram - best:.2f} below the unigram plateau, still "
                        f"{best - previous:.2f}–{worst - previous:.2f} above the previous-token entropy: "
                        "the models have started to use context (early training).")
    return where + "past the previous-token entropy: the models use context."


@dataclass
class DemoRun:
    label: str
    save: Path
    process: subprocess.Popen
    started: float
    finished: float | None = None


def launch(label: str, data: Path, save: Path, threads: int) -> DemoRun:
    from .report.history import HISTORY_FILE, LOG_FILE, RunInfo

    policy, rho, options = DEMO_POLICIES[label]
    save.mkdir(parents=True, exist_ok=True)
    for stale in (LOG_FILE, HISTORY_FILE, "checkpoint_last.pt"):
        (save / stale).unlink(missing_ok=True)  # the demo always starts from scratch
    args = [*DEMO_TRAIN, "--gpts-policy", policy, "--mask-prob", str(rho), *options]
    RunInfo(label=label, policy=policy, seed=DEMO_SEED, corpus="python-stdlib", budget_updates=DEMO_UPDATES,
            psi={"mask_prob": rho, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1},
            arms="rho" if policy == "gp-ts" else None, fairseq_args=args).write(save)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "fairseq_cli.train", str(data), *args, "--save-dir", str(save),
               "--log-file", str(save / LOG_FILE)]
    with open(save / "stdout.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return DemoRun(label, save, process, time.time())


def run_progress(run: DemoRun) -> tuple[int, str]:
    """(updates done, a short status) read from the run's log and history as they grow."""
    from .report.history import HISTORY_FILE, LOG_FILE, RunFormatError, iter_log_records, read_history

    updates, loss = 0, None
    log = run.save / LOG_FILE
    if log.is_file():
        for stats in iter_log_records(log):
            for key in ("num_updates", "valid_num_updates"):
                if key in stats:
                    updates = max(updates, int(float(stats[key])))
            if "valid_loss" in stats:
                loss = float(stats["valid_loss"])
    status = f"{run.label} {updates}/{DEMO_UPDATES}"
    history = run.save / HISTORY_FILE
    try:
        records = read_history(history) if history.is_file() else []
    except RunFormatError:
        records = []
    if records:
        last = records[-1]
        rho = (last.next_psi or last.psi)["mask_prob"]
        reward = "–" if last.reward is None else f"{last.reward:+.4f}"
        status += f" ρ {rho:.2f} (interaction {last.interaction + 1}), last reward {reward}"
    if loss is not None:
        status += f", val {loss:.3f}"
    return updates, status


def monitor(runs: list[DemoRun], estimate_s: float) -> int:
    """Wait for the runs, one progress line every PROGRESS_EVERY_S; on a failure stop the
    others and return its exit status."""
    started = last_line = time.time()
    while any(run.finished is None for run in runs):
        time.sleep(2)
        for run in runs:
            if run.finished is None and run.process.poll() is not None:
                run.finished = time.time()
                if run.process.returncode != 0:
                    for other in runs:
                        if other.process.poll() is None:
                            other.process.terminate()
                    for other in runs:
                        other.process.wait()
                    print((run.save / "stdout.log").read_text()[-3000:], file=sys.stderr)
                    print(f"fairseq-train of {run.label} failed (exit {run.process.returncode}); "
                          f"full log: {run.save / 'stdout.log'}", file=sys.stderr)
                    return run.process.returncode
        now = time.time()
        if now - last_line >= PROGRESS_EVERY_S and any(run.finished is None for run in runs):
            last_line = now
            progress = [run_progress(run) for run in runs]
            done = min(updates for updates, _ in progress)
            # time left: the slowest run's pace so far (start-up included), else the estimate
            left = (now - started) * (DEMO_UPDATES - done) / done if done else estimate_s - (now - started)
            print(f"  [{format_duration(now - started)} elapsed, ~{format_duration(max(left, 0))} left] "
                  + " | ".join(status for _, status in progress), flush=True)
    return 0


def demo(out: Path) -> int:
    from .report.cli import report_verdict, write_report
    from .report.history import load_run

    out = out.resolve()
    started = time.time()
    cores = os.cpu_count() or 1
    labels = list(DEMO_POLICIES)
    threads = max(1, cores // len(labels))
    training_s = START_SECONDS + DEMO_UPDATES * SECONDS_PER_UPDATE * max(1.0, len(labels) * threads / cores)
    corpus_s = 0 if (out / "data-bin" / "dict.txt").exists() else CORPUS_SECONDS
    estimate = corpus_s + training_s + REPORT_SECONDS
    print(f"gpts-fairseq demo: {', '.join(labels)}, {DEMO_UPDATES} updates each, side by side on {cores} CPU "
          f"core(s): about {math.ceil(estimate / 60)} min at the pace measured on a 2-core CPU "
          f"({SECONDS_PER_UPDATE} s per update and core), longer on a busy machine; progress every "
          f"{PROGRESS_EVERY_S} s", flush=True)
    print(f"[1/3] corpus: {DEMO_CORPUS_LINES} lines of this Python's standard library -> {out / 'data-bin'}", flush=True)
    data = build_corpus(out)
    unigram, previous = corpus_entropies(out / "text" / "train.txt", data / "dict.txt")
    print(f"[2/3] fairseq-train --task gpts_mlm, tiny RoBERTa, {DEMO_UPDATES} updates, seed {DEMO_SEED}, "
          f"{len(labels)} processes x {threads} thread(s); gp-ts: --gpts-reward-model trend, an interaction every "
          f"{DEMO_INTERACTION_UPDATES} updates -> {out / 'runs'}", flush=True)
    runs = [launch(label, data, out / "runs" / label, threads) for label in labels]
    code = monitor(runs, training_s)
    if code:
        return code
    train_end = time.time()
    print(f"[3/3] report ({format_duration(train_end - started)} so far)", flush=True)
    loaded = [load_run(run.save) for run in runs]
    finals = [run.final_val_loss for run in loaded if run.final_val_loss is not None]
    plateau = plateau_note(min(finals), max(finals), unigram, previous)
    summary = write_report(loaded, out / "report", title="gpts-fairseq demo: GP-TS (trend) against fixed ρ",
                           notes=[plateau])
    print()
    print(" ".join(report_verdict(loaded)))
    print(plateau)
    print(f"\ndone in {format_duration(time.time() - started)} (training {format_duration(train_end - runs[0].started)}; "
          f"estimated {format_duration(estimate)}): report {summary}, figures in {summary.parent}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpts_fairseq", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("user-dir", help="print the directory to pass to fairseq's --user-dir")
    demo_parser = commands.add_parser("demo", help="build a corpus, pre-train with GP-TS and fixed rho, write the report")
    demo_parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: ./demo)")
    args = parser.parse_args(argv)
    if args.command == "user-dir":
        print(PACKAGE_DIR)
        return 0
    return demo(args.out)


if __name__ == "__main__":
    sys.exit(main())
