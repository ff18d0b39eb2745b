"""One experiment harness for every benchmark driver: a run spec in, one result schema out.

A driver describes each run as a :class:`RunSpec` and calls :func:`run_suite` (or :func:`run`);
it keeps only its arms, its protocol and its scoring. Guarantees:

- **One result schema** (:data:`SCHEMA`), written atomically to
  ``RESULTS/<corpus>/<arm>/seed<seed>.json``: ``schema, corpus, arm, seed, budget_updates,
  fingerprint, arm_args, fairseq_args`` (portable), ``exit_code, stopped_early, wall_time_s,
  loadavg_before/after, val_curve`` ([[update, bits]]), ``train_wall_curve`` ([[update,
  cumulative train seconds]]), ``compute`` (``update_s``: median seconds per update from
  fairseq's throughput; ``forward_cost_updates``: a validation forward over one batch, in
  updates; ``updates``; ``train_wall_s``), ``events`` (every ``SAVE/gpts_<name>_events.jsonl``
  as ``{name: records}``), ``warm_start`` (null or its record) and ``resumed_at_update`` (null,
  or the checkpoint a killed run went on from; its ``wall_time_s`` is then the last part's),
  plus the driver's ``finish(save_dir, result)`` fields. Only exit code 0 (or the driver's own
  ``stop``) is a finished run; it must have validated at its last update unless it runs
  ``--disable-validation``.
- **Fingerprint** (:meth:`RunSpec.fingerprint`): the settings apart from arm options, seed and
  threads, so equal across a comparison whose arms share a budget. A finished result whose
  fingerprint, arm options or seed differ from the spec is refused, naming the file (results
  written before this harness carry none and are taken as they are).
- **Resumable**: a finished result is never redone; a killed run goes on from the checkpoint it
  saved about every CHECKPOINT_UPDATES updates (:meth:`RunSpec.resume_checkpoints`; the
  gpts_mlm task resumes exactly, its event files included), or starts again from an empty save
  dir if it had none or its ``run.json`` holds other arguments. Checkpoints are deleted once the
  result is written (unless the spec keeps them). **Portable**: no machine path in a result
  (checked on write).
- Also: one fairseq log reader (:func:`read_log`), the plateau check
  (:func:`passed_previous_token_entropy`) and a shared warm start (:func:`warm_start`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Callable, Sequence

from benchmarks import corpora
from gpts_fairseq.events import EVENTS_FILE, read_events
from gpts_fairseq.report.history import RUN_INFO_FILE, RunInfo, iter_log_records
from gpts_fairseq.report.summary import format_duration

SCHEMA = 1
REPO_ROOT = corpora.REPO_ROOT
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results"
USER_DIR = REPO_ROOT / "gpts_fairseq"
WORK_ROOT = Path(os.environ.get("GPTS_WORK_ROOT", Path.home() / ".cache" / "gpts-fairseq" / "runs"))
LOG_FILE = "train.log"
POLL_S = 5.0  # how often a run with a stop condition reads its log
CHECKPOINT_UPDATES = 500  # about how often a run saves the checkpoint a killed run resumes from
FORWARD_COST = 1 / 3  # a forward pass over a batch, in updates, where fairseq did not time one

Curve = Sequence[tuple[int, float]]


class RunFailed(RuntimeError):
    """fairseq-train exited with an error (the message names the save dir and ends with its output)."""


@dataclass(frozen=True)
class WarmStart:
    """A stored warm-start checkpoint (weights only) and what it reached."""

    checkpoint: Path
    fingerprint: str
    update: int
    loss: float
    entropy_bits: float
    margin_bits: float

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "checkpoint"}


@dataclass(frozen=True)
class RunSpec:
    """One fairseq-train run: what every arm shares (``model``, ``fairseq``), what this arm
    adds (``arm_args``), the seed and the budget. ``report_info``: extra ``run.json`` fields
    for gpts-report (``policy``, ``psi``, ``arms``)."""

    corpus: str
    data_dir: Path
    arm: str
    seed: int
    budget_updates: int
    model: tuple[str, ...]
    fairseq: tuple[str, ...] = ()
    arm_args: tuple[str, ...] = ()
    tokenizer: str = "char"
    threads: int = 1
    keep_checkpoints: bool = False
    warm_start: WarmStart | None = None
    report_info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        check((self.budget_updates >= 1, f"budget_updates must be >= 1, got {self.budget_updates}"),
              (self.threads >= 1, f"threads must be >= 1, got {self.threads}"))

    def fingerprint(self) -> str:
        """The settings apart from arm options, seed and threads (see the module docstring)."""
        return _digest({"data": Path(self.data_dir).name, "tokenizer": self.tokenizer, "model": list(self.model),
                        "fairseq": list(self.fairseq), "budget_updates": self.budget_updates,
                        "warm_start": self.warm_start.fingerprint if self.warm_start else None})

    def command(self, save_dir: Path) -> list[str]:
        """The full fairseq-train command line."""
        return [corpora.fairseq_tool("fairseq-train"), str(self.data_dir), "--user-dir", str(USER_DIR),
                "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", *self.model, *self.fairseq, *self.arm_args,
                "--max-update", str(self.budget_updates), "--seed", str(self.seed), "--cpu", "--num-workers", "0",
                *([] if self.keep_checkpoints else self.resume_checkpoints()),
                *(["--finetune-from-model", str(self.warm_start.checkpoint)] if self.warm_start else []),
                "--save-dir", str(save_dir), "--log-format", "json", "--log-file", str(Path(save_dir) / LOG_FILE)]


    def resume_checkpoints(self) -> list[str]:
        """fairseq options for the checkpoint a killed run resumes from: ``checkpoint_last.pt``
        (with fairseq's ``checkpoint_best.pt`` and one interval file) every CHECKPOINT_UPDATES
        updates, rounded to a multiple of the validation interval (fairseq validates at every
        mid-epoch save, so no validation is added), none at epoch ends."""
        every = validation_interval([*self.model, *self.fairseq, *self.arm_args])
        interval = every * max(1, round(CHECKPOINT_UPDATES / every)) if every else CHECKPOINT_UPDATES
        return ["--save-interval-updates", str(interval), "--keep-interval-updates", "1", "--no-epoch-checkpoints",
                "--save-interval", "1000000"]


def validation_interval(args: Sequence[str]) -> int | None:
    """The ``--validate-interval-updates`` of a fairseq argument list (None: not set)."""
    args = list(args)
    return int(args[args.index("--validate-interval-updates") + 1]) if "--validate-interval-updates" in args else None


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def result_path(results_root: Path, corpus: str, arm: str, seed: int) -> Path:
    return Path(results_root) / corpus / arm / f"seed{seed}.json"


def save_dir_of(work_root: Path, spec: RunSpec) -> Path:
    return Path(work_root) / spec.corpus / spec.arm / f"seed{spec.seed}"


def write_json(path: Path, data) -> Path:
    """Atomic: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_results(results_root: Path, corpus: str) -> list[dict]:
    """Every result of ``corpus`` (``<corpus>/<arm>/seed<k>.json``), in path order."""
    return [json.loads(p.read_text()) for p in sorted((Path(results_root) / corpus).glob("*/seed*.json"))]


def portable(value, places: dict[str, str]):
    """``value`` (str, list, dict, nested) with every path in ``places`` replaced by its
    placeholder, longest first, and the fairseq-train script by its name."""
    if isinstance(value, str):
        for path in sorted(places, key=len, reverse=True):
            value = value.replace(path, places[path])
        return Path(value).name if value.endswith("fairseq-train") else value
    if isinstance(value, dict):
        return {k: portable(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, places) for v in value]
    return value


def places_of(spec: RunSpec, save_dir: Path, work_root: Path) -> dict[str, str]:
    places = {str(save_dir): "<save>", str(spec.data_dir): "<data>", str(USER_DIR): "<user-dir>",
              str(work_root): "<work>"}
    if spec.warm_start is not None:
        places[str(spec.warm_start.checkpoint.parent)] = "<warm-start>"
    return places


def check_portable(result: dict, places: dict[str, str], where: Path) -> None:
    """ValueError if a machine path (any of ``places``, the repo, the home dir) is left."""
    text = json.dumps(result)
    for path in [*places, str(REPO_ROOT), str(Path.home())]:
        if len(path) > 1 and path in text:
            raise ValueError(f"{where}: the result still holds the machine path {path}")


@dataclass
class LogReading:
    """What a fairseq ``--log-format json`` log says about a run."""

    val_curve: list[tuple[int, float]]  # (update, validation loss in bits), later lines win
    train_wall_curve: list[tuple[int, float]]  # (update, cumulative training seconds) per train_inner line
    update_s: float | None  # median seconds per update (train throughput: wpb / wps)
    forward_cost_updates: float  # a validation forward over one batch, in updates (FORWARD_COST if untimed)
    updates: int | None  # the last logged update


def read_log(path: Path) -> LogReading:
    valid, walls, update_s, forward_s = {}, {}, [], []
    for stats in iter_log_records(path):
        if "valid_loss" in stats and "valid_num_updates" in stats:
            valid[int(float(stats["valid_num_updates"]))] = float(stats["valid_loss"])
        if "train_wall" in stats and "num_updates" in stats:  # a train_inner line: this interval's seconds
            walls[int(float(stats["num_updates"]))] = float(stats["train_wall"])
        for wps, wpb in (("wps", "wpb"), ("train_wps", "train_wpb")):  # per log interval / per epoch
            if float(stats.get(wps, 0)) > 0 and wpb in stats:
                update_s.append(float(stats[wpb]) / float(stats[wps]))
        if float(stats.get("valid_wps", 0)) > 0 and "valid_wpb" in stats:
            forward_s.append(float(stats["valid_wpb"]) / float(stats["valid_wps"]))
    cumulative = list(zip(sorted(walls), accumulate(walls[u] for u in sorted(walls))))
    update = statistics.median(update_s) if update_s else None
    forward = statistics.median(forward_s) / update if forward_s and update else FORWARD_COST
    curve = sorted((u, x) for u, x in valid.items() if math.isfinite(x))
    return LogReading(curve, cumulative, update, forward, cumulative[-1][0] if cumulative else None)


def read_curve(save_dir: Path) -> list[tuple[int, float]]:
    log = Path(save_dir) / LOG_FILE
    return read_log(log).val_curve if log.is_file() else []


def passed_previous_token_entropy(curve: Curve, entropy: float | Path, budget_updates: int | None = None) -> float:
    """Share of the budget (``budget_updates``, default the last validated update) spent below
    the previous-token entropy: each validation's loss stands for the updates since the one
    before it. ``entropy`` in bits, or a prepared corpus' data dir (its training text's)."""
    bits = entropy if isinstance(entropy, (int, float)) else corpus_entropy(str(entropy))
    points = sorted((int(u), float(x)) for u, x in curve)
    budget = budget_updates or (points[-1][0] if points else 0)
    if budget < 1:
        raise ValueError("passed_previous_token_entropy: an empty curve and no budget")
    below, previous = 0, 0
    for update, loss in points:
        if update > previous:
            below += (min(update, budget) - previous) * (loss < bits)
            previous = min(update, budget)
    return below / budget


def share_below_entropy(result: dict, entropy: float | Path) -> float:
    """:func:`passed_previous_token_entropy` of a result: over its budget, or, for a run its
    ``stop`` rule ended, over the updates it ran."""
    budget = None if result.get("stopped_early") else result["budget_updates"]
    return passed_previous_token_entropy(result["val_curve"], entropy, budget)


@lru_cache(maxsize=None)
def corpus_entropy(data_dir: str) -> float:
    return corpora.prepared_entropy(Path(data_dir))


def _train(spec: RunSpec, save_dir: Path, stop: Callable[[Curve], bool] | None) -> tuple[int, bool, float]:
    """fairseq-train in ``save_dir`` (output to stdout.log); with ``stop``, ended once
    ``stop(validation curve)`` holds. Returns (exit code, stopped early, wall seconds)."""
    threads = str(spec.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    start, stopped = time.perf_counter(), False
    with open(save_dir / "stdout.log", "a") as out:
        proc = subprocess.Popen(spec.command(save_dir), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=save_dir)
        while proc.poll() is None:
            try:
                proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                if stop is not None and stop(read_curve(save_dir)):
                    stopped = True
                    proc.terminate()
                    proc.wait()
    return proc.returncode, stopped, time.perf_counter() - start


def _check_done(out: Path, done: dict, spec: RunSpec) -> None:
    if "fingerprint" not in done:
        return  # written before the harness
    mine = {"fingerprint": spec.fingerprint(), "arm_args": list(spec.arm_args), "seed": spec.seed}
    differ = [k for k, v in mine.items() if done.get(k) != v]
    if differ:
        raise ValueError(f"{out} was run with other settings ({', '.join(differ)} differ): "
                         f"delete it or choose another results root")


def run(spec: RunSpec, results_root: Path, work_root: Path = WORK_ROOT,
        finish: Callable[[Path, dict], dict] | None = None, stop: Callable[[Curve], bool] | None = None,
        out: Path | None = None) -> dict:
    """The result of one run: read back if finished, else trained and written (see the module
    docstring) to ``out`` (default :func:`result_path`). ``finish(save_dir, result)`` returns
    the driver's own fields; ``stop(validation curve)`` ends the run early when it holds."""
    out = out or result_path(results_root, spec.corpus, spec.arm, spec.seed)
    if out.exists():
        done = json.loads(out.read_text())
        _check_done(out, done, spec)
        return done
    save_dir = save_dir_of(work_root, spec)
    places = places_of(spec, save_dir, Path(work_root))
    args = portable(spec.command(save_dir)[1:], places)
    resumed_at = _open_save_dir(spec, save_dir, args)
    loadavg_before = os.getloadavg()
    if resumed_at is not None and resumed_at >= spec.budget_updates:  # it finished; only its result was lost
        code, stopped, wall = 0, False, 0.0
    else:
        code, stopped, wall = _train(spec, save_dir, stop)
    if code != 0 and not stopped:
        tail = (save_dir / "stdout.log").read_text(errors="replace")[-3000:]
        raise RunFailed(f"fairseq-train failed with exit code {code} ({spec.corpus} {spec.arm} seed {spec.seed}), "
                        f"see {save_dir}/stdout.log:\n{tail}")
    log = read_log(save_dir / LOG_FILE)
    result = {
        "schema": SCHEMA, "corpus": spec.corpus, "arm": spec.arm, "seed": spec.seed,
        "budget_updates": spec.budget_updates, "fingerprint": spec.fingerprint(), "arm_args": list(spec.arm_args),
        "fairseq_args": args, "exit_code": code, "stopped_early": stopped, "wall_time_s": wall,
        "loadavg_before": list(loadavg_before), "loadavg_after": list(os.getloadavg()),
        "val_curve": [list(p) for p in log.val_curve], "train_wall_curve": [list(p) for p in log.train_wall_curve],
        "compute": {"update_s": log.update_s, "forward_cost_updates": log.forward_cost_updates,
                    "updates": log.updates, "train_wall_s": log.train_wall_curve[-1][1] if log.train_wall_curve else None},
        "events": {name: read_events(str(save_dir), name) for name in event_names(save_dir)},
        "warm_start": spec.warm_start.record() if spec.warm_start else None, "resumed_at_update": resumed_at,
    }
    validates = "--disable-validation" not in (*spec.fairseq, *spec.arm_args)
    if validates and not stopped and (not log.val_curve or log.val_curve[-1][0] != spec.budget_updates):
        raise RunFailed(f"{save_dir}: no validation at the budget's update {spec.budget_updates} in {LOG_FILE}")
    if finish is not None:
        result.update(finish(save_dir, result))
    result = portable(result, places)
    check_portable(result, places, out)
    write_json(out, result)
    if not spec.keep_checkpoints:
        for checkpoint in save_dir.glob("checkpoint*.pt"):
            checkpoint.unlink()
    return result


def _open_save_dir(spec: RunSpec, save_dir: Path, args: Sequence[str]) -> int | None:
    """The update the run goes on from (:func:`resume_point`), or None after emptying
    ``save_dir`` for a fresh start (new, killed before its first checkpoint, or other
    arguments) and writing its ``run.json``."""
    resumed_at = resume_point(save_dir, args)
    if resumed_at is None:
        shutil.rmtree(save_dir, ignore_errors=True)
        save_dir.mkdir(parents=True)
        RunInfo(label=spec.arm, seed=spec.seed, corpus=spec.corpus, budget_updates=spec.budget_updates,
                fairseq_args=list(args), **spec.report_info).write(save_dir)
    return resumed_at


def resume_point(save_dir: Path, args: Sequence[str]) -> int | None:
    """The update a killed run resumes from: its ``checkpoint_last.pt``'s, if the save dir's
    ``run.json`` has the same fairseq arguments; else None."""
    info, last = Path(save_dir) / RUN_INFO_FILE, Path(save_dir) / "checkpoint_last.pt"
    if not (info.is_file() and last.is_file() and json.loads(info.read_text()).get("fairseq_args") == list(args)):
        return None
    import torch

    return int(torch.load(last, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"])


def event_names(save_dir: Path) -> list[str]:
    """The extensions that wrote events into ``save_dir``."""
    prefix, suffix = EVENTS_FILE.split("{name}")
    return sorted(p.name[len(prefix):-len(suffix)] for p in Path(save_dir).glob(EVENTS_FILE.format(name="*")))


def run_suite(specs: Sequence[RunSpec], results_root: Path, work_root: Path = WORK_ROOT, jobs: int = 1,
              finish: Callable[[Path, dict], dict] | None = None, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Every spec's result (in ``specs`` order), ``jobs`` runs at a time, with a progress line
    per run: ``[done/total] corpus arm seed k: final loss, its time; mean per run, time left``."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    keys = [(s.corpus, s.arm, s.seed) for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_suite: two specs share (corpus, arm, seed)")
    todo = [i for i, key in enumerate(keys) if not result_path(results_root, *key).exists()]
    # finished earlier: checked, not rerun
    results = [None if i in todo else run(spec, results_root, work_root) for i, spec in enumerate(specs)]
    print_fn(f"{len(specs) - len(todo)} of {len(specs)} runs finished earlier; {len(todo)} to run, {jobs} at a time")
    walls: list[float] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, specs[i], results_root, work_root, finish): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = result = future.result()
            walls.append(result["wall_time_s"])
            print_fn(progress_line(specs[i], result, len(specs) - len(todo) + len(walls), len(specs), walls,
                                   len(todo) - len(walls), jobs))
    return results


def progress_line(spec: RunSpec, result: dict, done: int, total: int, walls: Sequence[float], left: int,
                  jobs: int) -> str:
    final = f"final {result['val_curve'][-1][1]:.3f} bits" if result.get("val_curve") else "no validation"
    mean = statistics.fmean(walls)
    return (f"[{done}/{total}] {spec.corpus} {spec.arm} seed {spec.seed}: {final}, {result['wall_time_s']:.0f} s; "
            f"mean {mean:.0f} s/run, ~{format_duration(mean * left / jobs)} left")


def check(*rules: tuple[bool, str]) -> None:
    """ValueError with the message of the first rule ``(holds, message)`` that does not hold."""
    for holds, message in rules:
        if not holds:
            raise ValueError(message)


def verdict(complete: bool, passed: bool) -> str:
    return "incomplete" if not complete else "PASS" if passed else "FAIL"


@dataclass(frozen=True)
class Verdict:
    """One pre-registered criterion: PASS, FAIL, NOT SCOREABLE or incomplete, and its numbers."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"- ({self.name}) **{self.status}**: {self.detail}"


def cell(value, spec: str) -> str:
    """``value`` formatted by ``spec`` for a table; "–" for None."""
    return "–" if value is None else format(value, spec)


def md_table(header: Sequence[str], align: str, rows) -> str:
    """A markdown table: ``align`` one letter a column (``l`` left, ``r`` right), ``rows`` of cells."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


def add_suite_arguments(parser, results_root: Path, work_root: Path, data: bool = False, arms=None,
                        seeds=(1, 2, 3)) -> None:
    """The options drivers share: --jobs, --results-root, --work-root, --summary-only (with
    ``data``: --data-root, --max-lines; with ``arms``: --corpus, --arms, --seeds)."""
    if arms is not None:
        parser.add_argument("--corpus", nargs="+", default=list(corpora.CORPORA), choices=corpora.CORPORA)
        parser.add_argument("--arms", nargs="+", default=list(arms), choices=list(arms))
        parser.add_argument("--seeds", nargs="+", type=int, default=list(seeds))
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (each single-threaded)")
    parser.add_argument("--results-root", type=Path, default=results_root)
    parser.add_argument("--work-root", type=Path, default=work_root, help="fairseq save dirs (outside the repo)")
    parser.add_argument("--summary-only", action="store_true", help="only score the recorded results")
    if data:
        parser.add_argument("--data-root", type=Path, default=corpora.DEFAULT_DATA_ROOT)
        parser.add_argument("--max-lines", type=int, default=None, help="first N lines per split only (smoke tests)")


def paired_mean_curve(curves: dict, reference: dict, mean=statistics.fmean, every_seed: bool = False) -> list:
    """(update, mean over seeds of ``curves[seed]`` minus ``reference[seed]`` at that update), at
    the updates the most seeds share (``every_seed``: only those every paired seed has)."""
    by_update: dict[int, list[float]] = {}
    for seed, curve in curves.items():
        if seed in reference:
            ref = dict(reference[seed])
            for update, loss in curve:
                if update in ref:
                    by_update.setdefault(update, []).append(loss - ref[update])
    count = sum(s in reference for s in curves) if every_seed else max(map(len, by_update.values()), default=0)
    return [(u, mean(v)) for u, v in sorted(by_update.items()) if len(v) == count]


def plot_curves(results: Sequence[dict], path: Path, xlabel: str = "update",
                x: Callable[[dict, int], float] = lambda result, update: update,
                entropy: dict[str, float] | None = None) -> Path:
    """One panel per corpus: each arm's seed-mean validation loss at the updates all its seeds
    validated, against the seed mean of ``x(result, update)`` (default the update; e.g. charged
    compute or FLOPs); with ``entropy``, the corpus' previous-token entropy dashed."""
    names = list(dict.fromkeys(r["corpus"] for r in results))
    with panels(len(names), (5.2, 3.8), path) as (fig, axes, _):
        for ax, corpus in zip(axes, names):
            for arm in dict.fromkeys(r["arm"] for r in results if r["corpus"] == corpus):
                runs = [r for r in results if (r["corpus"], r["arm"]) == (corpus, arm)]
                curves = [{int(u): float(loss) for u, loss in r["val_curve"]} for r in runs]
                shared = sorted(set.intersection(*map(set, curves)))
                ax.plot([statistics.fmean(x(r, u) for r in runs) for u in shared],
                        [statistics.fmean(c[u] for c in curves) for u in shared], lw=1.2, label=f"{arm} ({len(runs)})")
            if entropy:
                ax.axhline(entropy[corpus], color="grey", ls="--", lw=0.8, label="H(X_i∣X_i−1)")
            ax.set_title(corpus)
            ax.set_xlabel(xlabel)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("validation loss, bits (reference masking, seed mean)")
        fig.tight_layout()
    return path


def plot_paired_deltas(curves: dict, reference: str, path: Path, ylabel: str, every_seed: bool = False,
                       bold: Callable[[str], bool] = lambda arm: False, symlog: float | None = None,
                       title: str | None = None) -> Path:
    """One panel per group (corpus or direction) of ``curves`` ({group: {arm: {seed: curve}}}):
    each arm's validation loss minus ``reference``'s of the same seed, averaged over seeds
    (:func:`paired_mean_curve`), against updates; below 0 = ahead of ``reference``. ``bold`` arms
    are drawn solid and thick; ``symlog``: linear within that many bits of 0, log beyond."""
    order = list(dict.fromkeys(arm for arms in curves.values() for arm in arms))  # one colour per arm
    with panels(len(curves), (5.2, 4.2), path) as (fig, axes, plt):
        colours = plt.get_cmap("tab10")
        for ax, (group, arms) in zip(axes, curves.items()):
            for arm, seeds in arms.items():
                if arm != reference and (curve := paired_mean_curve(seeds, arms.get(reference, {}),
                                                                    every_seed=every_seed)):
                    ax.plot([u for u, _ in curve], [d for _, d in curve], color=colours(order.index(arm) % 10),
                            lw=2.2 if bold(arm) else 1.1, ls="-" if bold(arm) else "--", label=arm)
            ax.axhline(0.0, color="k", lw=0.8)
            count = len({seed for seeds in arms.values() for seed in seeds})
            ax.set_title(f"{group} ({count} seed{'s' if count != 1 else ''})", fontsize=10)
            ax.set_xlabel("update")
            if symlog:
                ax.set_yscale("symlog", linthresh=symlog)
        axes[0].set_ylabel(ylabel)
        handles = {}
        for ax in axes:
            handles.update(zip(*reversed(ax.get_legend_handles_labels())))
        fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=len(handles))
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return path


@contextmanager
def panels(count: int, size: tuple[float, float], path: Path):
    """A figure of ``count`` panels side by side, each ``size`` inches, saved to ``path`` (dpi 110)
    on leaving: yields (figure, axes, pyplot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(size[0] * count, size[1]), squeeze=False)
    try:
        yield fig, list(axes[0]), plt
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def warm_start(spec: RunSpec, margin_bits: float, store_root: Path, work_root: Path = WORK_ROOT,
               entropy_bits: float | None = None) -> WarmStart:
    """The warm start of ``spec`` (its arm is only a name; ``budget_updates`` the most it may
    train; ``fairseq`` must validate at an interval): trained until a validation is
    ``margin_bits`` below the previous-token entropy of the corpus (``entropy_bits``, default
    its training text's), then its weights stored under ``store_root/<corpus>/<fingerprint>/``
    with ``warm_start.json``. Reused whenever that record exists. It trains in
    ``work_root/warm-start/<corpus>/<fingerprint>``, so warm starts of other settings (data,
    tokenizer, dictionary) can train side by side; a killed one goes on from its last
    validation's checkpoint."""
    if margin_bits < 0:
        raise ValueError(f"margin_bits must be >= 0, got {margin_bits}")
    entropy = corpus_entropy(str(spec.data_dir)) if entropy_bits is None else float(entropy_bits)
    fingerprint = _digest({"run": spec.fingerprint(), "arm_args": list(spec.arm_args), "seed": spec.seed,
                           "margin_bits": margin_bits, "entropy_bits": round(entropy, 9)})
    home = Path(store_root) / spec.corpus / fingerprint
    record = home / "warm_start.json"
    if record.is_file():
        return WarmStart(checkpoint=home / "checkpoint.pt", **json.loads(record.read_text())["warm_start"])
    threshold = entropy - margin_bits
    trainer = replace(spec, keep_checkpoints=True, fairseq=(*spec.fairseq, *_checkpoint_every(spec.fairseq)))
    save_dir = Path(work_root) / "warm-start" / spec.corpus / fingerprint
    args = portable(trainer.command(save_dir)[1:], places_of(spec, save_dir, Path(work_root)))
    _open_save_dir(trainer, save_dir, args)  # a killed one goes on

    def saved_below(curve: Curve) -> list[tuple[int, float]]:
        return [(u, x) for u, x in curve if x < threshold and checkpoint_at(save_dir, u) is not None]

    def reached(curve: Curve) -> bool:  # checkpoints above the threshold can never be chosen: dropped
        for update, loss in curve:
            if loss >= threshold and (path := checkpoint_at(save_dir, update)) is not None:
                path.unlink()
        return bool(saved_below(curve))

    code, stopped, wall = _train(trainer, save_dir, stop=reached)
    curve = read_curve(save_dir)
    below = saved_below(curve)
    if not below:
        raise RunFailed(f"warm start of {spec.corpus}: no saved validation below {threshold:.3f} bits "
                        f"(entropy {entropy:.3f} - margin {margin_bits}) within {spec.budget_updates} updates "
                        f"(exit {code}), see {save_dir}/stdout.log")
    update, loss = below[0]  # the first: the same whenever the poll noticed it
    _store_weights(checkpoint_at(save_dir, update), home / "checkpoint.pt")
    made = WarmStart(home / "checkpoint.pt", fingerprint, update, loss, entropy, margin_bits)
    write_json(record, {"warm_start": made.record(), "corpus": spec.corpus, "wall_time_s": wall,
                        "val_curve": [list(p) for p in curve],
                        "fairseq_args": args})
    shutil.rmtree(save_dir)
    return made


def _checkpoint_every(fairseq: Sequence[str]) -> list[str]:
    if not (every := validation_interval(fairseq)):
        raise ValueError("warm_start: the spec's fairseq options need --validate-interval-updates")
    return ["--save-interval-updates", str(every), "--no-epoch-checkpoints"]


def checkpoint_at(save_dir: Path, update: int) -> Path | None:
    """The interval checkpoint fairseq saved at ``update`` (``checkpoint_<epoch>_<update>.pt``)."""
    found = sorted(Path(save_dir).glob(f"checkpoint_*_{update}.pt"))
    return found[-1] if found else None


def _store_weights(source: Path, dest: Path) -> None:
    """The model and its config only: every arm starts with fresh optimizer, schedule, data
    order and task state (fairseq's ``--finetune-from-model`` resets those too)."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=False)
    last = dict(state["optimizer_history"][-1], num_updates=0)
    kept = {"cfg": state["cfg"], "args": state.get("args"), "model": state["model"], "optimizer_history": [last],
            "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save(kept, tmp)
    tmp.replace(dest)
