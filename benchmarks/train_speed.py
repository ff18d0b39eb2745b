"""Training speed of --task gpts_mlm vs fairseq's --task masked_lm: the same tiny RoBERTa, data,
seed and command line but for the task name, one run each, side by side.

    python -m benchmarks.train_speed [--updates 300] [--workers 1]

Words/s: fairseq's ``wps`` of the last epoch record; gpts_mlm runs its default (constant)
policy, so both train the same masking. Target: gpts_mlm >= ``TARGET`` x masked_lm.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from gpts_fairseq.__main__ import DEMO_TRAIN, build_corpus
from gpts_fairseq.report.history import iter_log_records

MODEL = DEMO_TRAIN[: DEMO_TRAIN.index("--task")]  # the demo's tiny RoBERTa and optimiser, no gpts options
TARGET = 0.98


def train(data, task, updates, workers, save_dir):
    command = [sys.executable, "-m", "fairseq_cli.train", str(data), *MODEL, "--task", task,
               "--criterion", "masked_lm", "--max-update", str(updates), "--total-num-update", str(updates),
               "--num-workers", str(workers), "--disable-validation", "--no-save", "--save-dir", str(save_dir),
               "--cpu", "--seed", "1", "--log-format", "json", "--log-interval", "50", "--log-file", str(save_dir / "train.log")]
    save_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-3000:]}")
    records = [r for r in iter_log_records(save_dir / "train.log") if "train_wps" in r]  # the epoch summaries
    return {"task": task, "wps": float(records[-1]["train_wps"]), "train_wall_s": float(records[-1]["train_wall"]),
            "process_wall_s": wall, "loss": float(records[-1]["train_loss"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (both tasks)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "gpts-fairseq-speed")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_ROOT / "train_speed.json")
    options = parser.parse_args()
    data = build_corpus(options.data)
    rows = [train(data, task, options.updates, options.workers, options.data / task) for task in ("masked_lm", "gpts_mlm")]
    ratio = rows[1]["wps"] / rows[0]["wps"]
    print(f"{options.updates} updates, batch 16 x 128 tokens, 1 torch thread, {options.workers} worker(s)\n")
    print(harness.md_table(["task", "words/s", "train wall (s)", "final train loss"], "lrrr",
                           [[r["task"], f"{r['wps']:.0f}", f"{r['train_wall_s']:.0f}", f"{r['loss']:.3f}"] for r in rows]))
    print(f"\ngpts_mlm / masked_lm = {ratio:.3f} (target >= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'})")
    harness.write_json(options.out, {"updates": options.updates, "workers": options.workers, "rows": rows, "ratio": ratio,
                                     "target": TARGET, "load_average": list(os.getloadavg()),
                                     "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
