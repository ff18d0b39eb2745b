"""The GPU check: everything CUDA in one command, results in one JSON (``make gpu-check``).

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu_check.json] [--updates 200] [--no-build]

On a machine with a CUDA device, in order (each step's status, time and numbers go to the JSON):
1. build: the extension, for this GPU's architecture only (``pip install --no-build-isolation
   --no-deps --no-index -e .`` with ``TORCH_CUDA_ARCH_LIST``; it also installs the fairseq hook);
2. cuda_tests: every test marked ``gpu`` or named for CUDA (``pytest -k "cuda or gpu"``: the
   kernel against the CPU op, the criterion's step under ``set_sync_debug_mode("error")``, the RNG
   forks, the nvcc compile); without ``../shared/data`` the tests read a stand-in corpus made
   from this repository's text (``GPTS_TEST_DATA``);
3. masks_cpu_gpu: ``mask_tokens`` on CPU and on the GPU, bit for bit, for several seeds, steps,
   masking modes and options;
4. timing: the op against HuggingFace-style torch masking on the GPU, side by side in one run
   (benchmarks/masking.py's methods and timer, synchronised);
5. train: a ``--updates``-update fairseq-train of a small RoBERTa with ``--gpts-policy gp-ts`` on
   the GPU (the repository's text as corpus).
Without a CUDA device it says so in one line, marks those steps skipped, and runs on the CPU
what exercises the same code (``cpu_smoke``: the timing and a 20-update training). Exit status 1
when a step failed.
"""

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
SHARED_LINUX = REPO.parent / "shared" / "data" / "linux"  # what tests/conftest.py reads by default
TEXT_SUFFIXES = (".py", ".md", ".sh", ".cpp", ".h", ".cu", ".toml", ".yaml")
TEXT_DIRS = ("gpts_fairseq", "tests", "benchmarks", "csrc", "docs", "examples")
CUDA_TESTS = "cuda or gpu"  # pytest -k: names and markers
RUNTIME_MODULES = ("fairseq", "omegaconf", "hydra", "bitarray", "gpytorch", "pytest", "hypothesis")
STEPS = ("build", "cuda_tests", "masks_cpu_gpu", "timing", "train")
# the training run on the GPU, and its CPU stand-in that only exercises the same code
GPU_RUN = dict(layers=4, embed=256, ffn=1024, heads=4, tokens=128, batch=32, interaction=20, reward_batches=4,
               valid_steps=None)
CPU_RUN = dict(layers=2, embed=32, ffn=64, heads=2, tokens=64, batch=8, interaction=5, reward_batches=2,
               valid_steps=4)
CPU_SMOKE_UPDATES = 20


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    info["missing_modules"] = [name for name in RUNTIME_MODULES if importlib.util.find_spec(name) is None]
    if info["missing_modules"]:
        print(f"gpu-check: not importable here: {', '.join(info['missing_modules'])} (the steps that need them "
              f"will fail; install them, e.g. as wheels, first)", flush=True)
    return info


def run_step(name, function, *args) -> dict:
    """``function(*args)``'s dict with status passed (unless it set one), or failed with the error."""
    started = time.perf_counter()
    try:
        result = {"status": "passed", **function(*args)}
    except Exception as error:  # a failed step is recorded; the other steps still run
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(f"gpu-check: {name}: {result['status']} ({result['seconds']} s)"
          + (f": {result['error']}" if "error" in result else ""), flush=True)
    return result


def checked_run(command, *, env=None, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


# -- 1. build -----------------------------------------------------------------------------------

def build() -> dict:
    major, minor = torch.cuda.get_device_capability(0)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", MAX_JOBS=str(os.cpu_count() or 1))
    checked_run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                 "--use-pep517", "-e", REPO], env=env, timeout=900)
    probe = ("import torch; from gpts_fairseq.masking import ops; assert ops.is_available(), 'op not built'; "
             "print(torch.ops.gpts.mask_tokens.default._schema)")
    checked_run([sys.executable, "-c", probe])
    return {"arch": f"{major}.{minor}"}


# -- 2. CUDA tests ------------------------------------------------------------------------------

def repository_text(directory: Path) -> Path:
    """A linux-like corpus (train.txt, valid.txt: every 10th line) from this repository's text
    files, in path order: the same for the same tree on any machine."""
    lines = []
    for top in TEXT_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix in TEXT_SUFFIXES and "results" not in path.parts and path.is_file():
                lines += [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    corpus = directory / "linux"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "train.txt").write_text("".join(f"{line}\n" for i, line in enumerate(lines) if i % 10), encoding="utf-8")
    (corpus / "valid.txt").write_text("".join(f"{line}\n" for i, line in enumerate(lines) if not i % 10), encoding="utf-8")
    return corpus


def cuda_tests(work: Path) -> dict:
    env = dict(os.environ)
    if not (SHARED_LINUX / "train.txt").exists():
        env["GPTS_TEST_DATA"] = str(repository_text(work / "test_data").parent)
    report = work / "cuda_tests.xml"
    # a module that cannot be imported here is reported (as an error) without stopping the others
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", CUDA_TESTS,
                           "--continue-on-collection-errors", f"--junitxml={report}", "tests"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in ElementTree.parse(report).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        name = f"{case.get('classname')}::{case.get('name')}"
        if outcome in ("failure", "error"):
            counts["failed"] += 1
            failures.append(name)
        else:
            counts[outcome] += 1
    result = {**counts, "failures": failures, "data": env.get("GPTS_TEST_DATA", str(SHARED_LINUX.parent))}
    if proc.returncode != 0 or counts["failed"] or not counts["passed"]:
        result.update(status="failed", error=f"pytest exited {proc.returncode}: {counts}",
                      output=proc.stdout[-3000:])
    return result


# -- 3. masks on CPU and GPU --------------------------------------------------------------------

def masks_cpu_gpu() -> dict:
    """Source and target equal bit for bit on both devices, over modes, options and keys."""
    from gpts_fairseq.masking import MaskingSpec, Psi, mask_tokens, ops

    if not ops.is_available():
        raise RuntimeError("the compiled op is not built")
    vocab, pad, mask = 1000, 1, 999
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, mask, (48, 200), generator=generator)
    lengths = torch.randint(2, 201, (48,), generator=generator)
    tokens[torch.arange(200) >= lengths[:, None]] = pad  # right-padded rows of many lengths
    ids = torch.randperm(10_000, generator=generator)[:48]
    word_start = torch.rand(vocab, generator=generator) < 0.6
    counts = torch.randint(0, 50, (vocab,), generator=generator).double()
    options = {"exact": dict(exact=True), "bernoulli": dict(exact=False),
               "whole_word": dict(exact=True, word_start=word_start),
               "spans": dict(exact=False, mask_multiple_length=3, mask_stdev=1.0),
               "freq_weighted": dict(exact=True, counts=counts, freq_weighted=True)}
    keys = [(1, 1), (7, 3), (2**40 + 5, 2**31)]
    psis = [Psi(0.15, 0.1, 0.1), Psi(0.45, 0.2, 0.3)]
    mismatches, cases = [], 0
    for name, extra in options.items():
        spec = MaskingSpec.build(vocab_size=vocab, special_ids=[0, 2, 3], mask_idx=mask, pad_idx=pad, **extra)
        for (seed, step) in keys:
            for psi in psis:
                on_cpu = mask_tokens(tokens, spec, psi, seed=seed, step=step, sample_ids=ids)
                on_gpu = mask_tokens(tokens.cuda(), spec, psi, seed=seed, step=step, sample_ids=ids.cuda())
                if on_gpu[0].device.type != "cuda":
                    raise RuntimeError("the op did not run on the GPU")
                cases += 1
                if not all(torch.equal(a, b.cpu()) for a, b in zip(on_cpu, on_gpu)):
                    mismatches.append(f"{name} seed={seed} step={step} psi={psi.as_dict()}")
    result = {"cases": cases, "mismatches": mismatches}
    if mismatches:
        result.update(status="failed", error=f"{len(mismatches)} of {cases} cases differ")
    return result


# -- 4. timing ----------------------------------------------------------------------------------

def timing(device: str, min_time: float) -> dict:
    """Million tokens per second of the op and of HuggingFace-style masking on ``device``, each
    call synchronised (one run, the same batches)."""
    from benchmarks import masking as bench  # imports gpts_fairseq: only after the build

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(function):
        return bench.seconds_per_call(lambda: (function(), sync()), min_time=min_time)

    rows = []
    with torch.device(device):  # HF-style masking allocates its probabilities on the default device
        for batch, length in bench.SHAPES:
            tokens = bench.token_rows(batch, length).to(device)
            hf = tokens.numel() / timed(bench.huggingface_masking(tokens)) / 1e6
            for mode in ("bernoulli", "exact"):
                op = tokens.numel() / timed(bench.op_masking(tokens, mode == "exact")) / 1e6
                rows.append({"batch": f"{batch}x{length}", "mode": mode, "device": device,
                             "op_mtokens_per_s": round(op, 1), "hf_mtokens_per_s": round(hf, 1),
                             "op_over_hf": round(op / hf, 2)})
    return {"rows": rows}


# -- 5. training --------------------------------------------------------------------------------

def train(device: str, updates: int, sizes: dict, work: Path) -> dict:
    """fairseq-train with GP-TS on ``device``; the run's losses, history and speed."""
    corpus = repository_text(work / f"train_text_{device}")
    data = work / f"data_{device}"
    checked_run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref", corpus / "train.txt",
                 "--validpref", corpus / "valid.txt", "--destdir", data, "--workers", "1", "--nwordssrc", "8000"])
    save_dir = work / f"checkpoints_{device}"
    command = [
        sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", REPO / "gpts_fairseq",
        "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--arch", "roberta_base",
        "--encoder-layers", sizes["layers"], "--encoder-embed-dim", sizes["embed"],
        "--encoder-ffn-embed-dim", sizes["ffn"], "--encoder-attention-heads", sizes["heads"],
        "--tokens-per-sample", sizes["tokens"], "--max-positions", sizes["tokens"], "--batch-size", sizes["batch"],
        "--optimizer", "adam", "--lr", "0.0005", "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", max(1, updates // 10), "--total-num-update", updates, "--max-update", updates,
        "--gpts-policy", "gp-ts", "--gpts-interaction-updates", sizes["interaction"],
        "--gpts-reward-batches", sizes["reward_batches"], "--validate-interval-updates", max(1, updates // 2),
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1",
        "--num-workers", "0", "--seed", "1", *(["--cpu"] if device == "cpu" else []),
        *(["--max-valid-steps", sizes["valid_steps"]] if sizes["valid_steps"] else []),
    ]
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if device == "cpu" else {}))
    started = time.perf_counter()
    proc = checked_run(command, env=env, timeout=900)
    seconds = time.perf_counter() - started
    log = (proc.stdout + proc.stderr).splitlines()
    records = [json.loads(line.split("| train_inner | ", 1)[1]) for line in log if "| train_inner | " in line]
    valid = [json.loads(line.split("| valid | ", 1)[1]) for line in log if "| valid | " in line]
    history = [json.loads(line) for line in (save_dir / "gpts_history.jsonl").read_text().splitlines()]
    losses = [float(record["loss"]) for record in records]
    result = {
        "device": device, "updates": len(records), "seconds": round(seconds, 1),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "valid_losses": [float(record["valid_loss"]) for record in valid],
        "interactions": len(history), "rhos": [record["psi"]["mask_prob"] for record in history],
        "rewards": [record["reward"] for record in history],
        "on_gpu": any("capabilities =" in line for line in log),  # fairseq's CUDA environment line
    }
    problems = []
    if len(records) != updates:
        problems.append(f"{len(records)} of {updates} updates logged")
    if not all(math.isfinite(loss) for loss in losses):
        problems.append("a non-finite training loss")
    if len(history) < updates // sizes["interaction"] - 1 or any(r is None for r in result["rewards"]):
        problems.append(f"{len(history)} interactions with rewards {result['rewards']}")
    if result["on_gpu"] != (device == "cuda"):
        problems.append("fairseq did not train on the GPU")
    if problems:
        result.update(status="failed", error="; ".join(problems))
    return result


# -- the check ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--updates", type=int, default=200, help="fairseq-train updates on the GPU")
    parser.add_argument("--no-build", action="store_true", help="use the extension as built")
    options = parser.parse_args(argv)
    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    result = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "gpu": gpu, "machine": machine(), "steps": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        if gpu:
            steps = {"build": (lambda: {"status": "skipped", "reason": "--no-build"}) if options.no_build else build,
                     "cuda_tests": lambda: cuda_tests(work), "masks_cpu_gpu": masks_cpu_gpu,
                     "timing": lambda: timing("cuda", 0.5),
                     "train": lambda: train("cuda", options.updates, GPU_RUN, work)}
            result["steps"] = {name: run_step(name, steps[name]) for name in STEPS}
        else:
            reason = "no CUDA device (torch.cuda.is_available() is False)"
            print(f"gpu-check: {reason}: the GPU steps are skipped; running the CPU smoke steps", flush=True)
            result["steps"] = {name: {"status": "skipped", "reason": reason} for name in STEPS}
            result["cpu_smoke"] = {"timing": run_step("cpu_smoke timing", timing, "cpu", 0.01),
                                   "train": run_step("cpu_smoke train", train, "cpu", CPU_SMOKE_UPDATES, CPU_RUN, work)}
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    parts = [*result["steps"].values(), *result.get("cpu_smoke", {}).values()]
    result["ok"] = all(part["status"] != "failed" for part in parts)
    result["seconds"] = round(time.perf_counter() - started, 1)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu-check: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s; wrote {options.out}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
