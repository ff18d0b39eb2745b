"""Do short fairseq-train runs exit with code 0? Counts exit codes of many short trainings.

Protocol and verdict: docs/experiments/exit-stress.md (pre-registered text: ``git show
392b41a:benchmarks/exit_stress.py``). Each run is the pre-training set-up shortened (``MODEL``),
in a child process with an ``atexit`` probe that lists the threads alive at exit; ``VARIANTS``
spread round-robin. Pass: every gpts_mlm run exits 0.

    python -m benchmarks.exit_stress --runs 30 --jobs 2                 # table; results/exit_stress.json
    python -m benchmarks.exit_stress --runs 60 --variants masked_lm --out /tmp/control.json
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import corpora  # nothing that imports torch or fairseq: the exit probe must come first

RESULTS = Path(__file__).resolve().parent / "results" / "exit_stress.json"
CORPUS = "war-and-peace"
MODEL = ["--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "128", "--encoder-ffn-embed-dim",
         "512", "--encoder-attention-heads", "4", "--dropout", "0", "--attention-dropout", "0", "--max-positions",
         "128", "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
         "--required-batch-size-multiple", "1", "--optimizer", "adam", "--lr", "2e-3", "--cpu", "--no-save",
         "--log-format", "json", "--log-interval", "10", "--validate-interval-updates", "20",
         "--validate-interval", "1000000", "--max-valid-steps", "11"]
GPTS = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--gpts-interaction-updates", "20",
        "--gpts-reward-batches", "12"]
VARIANTS = {
    "constant": [*GPTS, "--gpts-policy", "constant", "--num-workers", "0"],
    "gp-ts": [*GPTS, "--gpts-policy", "gp-ts", "--num-workers", "0"],
    "masked_lm": ["--task", "masked_lm", "--criterion", "masked_lm", "--num-workers", "0"],
    "constant-workers1": [*GPTS, "--gpts-policy", "constant", "--num-workers", "1"],
    "masked_lm-workers1": ["--task", "masked_lm", "--criterion", "masked_lm", "--num-workers", "1"],
}
DEFAULT_VARIANTS = ("constant", "gp-ts", "masked_lm")
EXIT_PROBE = "exit probe: "
IDLE = "queue.py"  # a prefetch thread waiting in queue.put: no torch op in flight
DIRECTORIES = re.compile(r"(?:/[^/\s:'\"]+)+/")  # stripped from recorded output: no machine paths


def _report_threads_at_exit() -> None:
    """Print every thread other than the main one that is still alive, with its innermost frames."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.ident not in frames:
            continue
        stack = traceback.extract_stack(frames[thread.ident])[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
        print(f"{EXIT_PROBE}{type(thread).__name__} daemon={thread.daemon}: {where}", file=sys.stderr, flush=True)


def child(fairseq_args: list[str]) -> None:
    """fairseq-train in this process, with the exit probe registered first (so it runs last)."""
    atexit.register(_report_threads_at_exit)
    from fairseq_cli.train import cli_main

    sys.argv = ["fairseq-train", *fairseq_args]
    cli_main()


def run_one(index: int, variant: str, data_dir: Path, updates: int, work: Path) -> dict:
    args = [str(data_dir), *MODEL, *VARIANTS[variant], "--max-update", str(updates), "--seed", str(index),
            "--save-dir", str(work / f"run{index}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.exit_stress", "--child", *args], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    output = proc.stdout + proc.stderr
    probes = [line[len(EXIT_PROBE):] for line in output.splitlines() if line.startswith(EXIT_PROBE)]
    print(f"run {index} ({variant}): exit {proc.returncode}", flush=True)
    return {"index": index, "variant": variant, "exit_code": proc.returncode,
            "done_training": "done training in" in output, "wall_s": round(time.perf_counter() - start, 2),
            "threads_at_exit": probes,
            "tail": [DIRECTORIES.sub("", line) for line in output.splitlines() if line.strip()
                     and not line.startswith(EXIT_PROBE) and "Warning" not in line and not line.startswith("  ")][-3:]}


def table(runs: list[dict]) -> str:
    lines = ["| variant | runs | exit 0 | other exit codes | prefetch thread alive at exit | ... busy (not waiting) |",
             "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        codes = Counter(r["exit_code"] for r in mine if r["exit_code"] != 0)
        alive = [[t for t in r["threads_at_exit"] if t.startswith("BackgroundConsumer")] for r in mine]
        busy = sum(any(IDLE not in t for t in threads) for threads in alive)
        lines.append(f"| {variant} | {len(mine)} | {sum(r['exit_code'] == 0 for r in mine)} | "
                     f"{', '.join(f'{c}: {n}' for c, n in sorted(codes.items())) or '-'} | {sum(map(bool, alive))} | {busy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="total number of trainings")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    parser.add_argument("--updates", type=int, default=40, help="updates per training")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if bad := next((name for name in ("runs", "jobs", "updates") if getattr(args, name) < 1), None):
        raise ValueError(f"--{bad} must be >= 1, got {getattr(args, bad)}")
    data_dir = corpora.prepare(CORPUS, tokenizer="char")
    plan = [(i, args.variants[i % len(args.variants)]) for i in range(args.runs)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(*job, data_dir, args.updates, Path(work)), plan))
    wall = time.perf_counter() - start
    print(table(runs))
    print(f"{len(runs)} runs, {sum(r['exit_code'] == 0 for r in runs)} exit 0, {wall:.0f} s wall with --jobs {args.jobs}")
    if ours := [r["exit_code"] for r in runs if not r["variant"].startswith("masked_lm")]:
        print(f"{'PASS' if not any(ours) else 'FAIL'}: {ours.count(0)} of {len(ours)} gpts_mlm runs exit 0")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {"runs": args.runs, "jobs": args.jobs, "updates": args.updates,
                                                 "variants": args.variants, "corpus": CORPUS},
                                    "wall_s": round(wall, 1), "table": table(runs), "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        sys.exit(main())
