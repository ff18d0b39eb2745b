"""Does GP-TS pre-train faster? Same tiny RoBERTa, budget and seeds for every masking policy.

For each corpus x policy x seed this runs one ``fairseq-train --task gpts_mlm`` subprocess
(single thread), validated every ``--interaction-updates`` updates on the reference masking
(rho=0.15, gamma=lambda=0.1, fixed masks), and writes
``benchmarks/results/pretrain/<corpus>/<policy>/seed<k>.json``. A run whose JSON exists is
skipped, so the suite can be stopped and restarted, and run a corpus/policy/seed at a time.
At the end it writes ``benchmarks/results/pretrain/summary.md`` and, per corpus, the
``gpts-report`` plots under ``<corpus>/report/``.

    python benchmarks/pretrain.py --jobs 2                 # all 81 runs: 41 min here on 2 cores (resumable)
    python benchmarks/pretrain.py --corpus linux --policies constant-0.15 gp-ts-rho --seeds 1
    python benchmarks/pretrain.py --summary-only           # redo tables and plots from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import corpora  # noqa: E402

from gpts_fairseq.report.cli import write_report  # noqa: E402
from gpts_fairseq.report.history import RunInfo, load_run, run_from_result  # noqa: E402
from gpts_fairseq.report.summary import (  # noqa: E402
    budget_of,
    format_loss,
    format_reach,
    label_table,
    paired_differences,
    reference_target,
    summarise_label,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results" / "pretrain"
DEFAULT_WORK = Path(os.environ.get("GPTS_WORK_ROOT", Path.home() / ".cache" / "gpts-fairseq" / "runs" / "pretrain"))
REFERENCE = (0.15, 0.1, 0.1)
REFERENCE_POLICY = "constant-0.15"


@dataclass(frozen=True)
class Policy:
    """One compared masking policy, as ``--gpts-*`` options of the gpts_mlm task."""

    name: str
    gpts_policy: str
    psi: tuple[float, float, float] = REFERENCE  # constant value / schedule start / first arm
    arms: str | None = None
    context: str | None = None
    schedule_end: tuple[float, float, float] | None = None
    window: int | None = None

    def fairseq_args(self) -> list[str]:
        rho, gamma, lam = self.psi
        args = ["--gpts-policy", self.gpts_policy, "--mask-prob", str(rho),
                "--leave-unmasked-prob", str(gamma), "--random-token-prob", str(lam)]
        if self.arms:
            args += ["--gpts-arms", self.arms]
        if self.context:
            args += ["--gpts-context", self.context]
        if self.window:
            args += ["--gpts-window", str(self.window)]
        if self.schedule_end:
            args += ["--gpts-schedule", "linear", "--gpts-schedule-end", ",".join(map(str, self.schedule_end))]
        return args


POLICIES = {p.name: p for p in [
    Policy("constant-0.15", "constant"),
    Policy("constant-0.10", "constant", (0.10, 0.1, 0.1)),
    Policy("constant-0.30", "constant", (0.30, 0.1, 0.1)),
    Policy("constant-0.40", "constant", (0.40, 0.1, 0.1)),
    Policy("schedule-0.30-0.15", "schedule", (0.30, 0.1, 0.1), schedule_end=REFERENCE),
    Policy("random", "random", arms="rho"),
    Policy("gp-ts-rho", "gp-ts", arms="rho"),
    Policy("gp-ts-psi", "gp-ts", arms="psi"),
    Policy("gp-ts-rho-progress", "gp-ts", arms="rho", context="progress"),
    # a 10-observation window: the variant benchmarks/nonstationary.py favours when rewards decay
    Policy("gp-ts-rho-window", "gp-ts", arms="rho", window=10),
]}


@dataclass(frozen=True)
class Settings:
    """What every run shares; recorded in each result JSON.

    Sized so the full suite (3 corpora x 9 policies x 3 seeds = 81 runs) takes about an hour
    with ``--jobs 2`` on a 2-core CPU (one thread per run, ~60-80 s each):
    - characters, not words (``--tokenizer char``, ~100 symbols): the output layer is cheap,
      and an update costs the same on every corpus;
    - 360 updates of 16 x 128 tokens (~0.74 M tokens, under one epoch of every corpus), lr 2e-3
      with 10% warmup and linear decay, no dropout (nothing repeats in under an epoch). Probes
      at lr 5e-3, pre-LN, 600 updates and 64-token samples were no better at this budget;
    - an interaction (and a validation) every 20 updates: 18 interactions, so GP-TS makes 17
      decisions, enough for the GP to see most of the 10 rho arms at least once;
    - reward and reported validation loss on the same first 12 validation batches (~25 k
      tokens, the same masks every time): a full pass over the largest validation split
      (~290 k characters) at every interaction would cost more than the training.
    At this budget the tiny model is still close to the unigram plateau (~4 bits/char):
    the comparison is about the first minutes of pre-training, not about converged models.
    """

    budget_updates: int = 360
    interaction_updates: int = 20
    eval_batches: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    threads: int = 1
    arch: str = "roberta_base"
    tokens_per_sample: int = 128
    dropout: float = 0.0
    tokenizer: str = "char"

    def validate(self) -> None:
        if self.budget_updates < 1:
            raise ValueError(f"--budget-updates must be >= 1, got {self.budget_updates}")
        if not 1 <= self.interaction_updates <= self.budget_updates:
            raise ValueError(
                f"--interaction-updates must be in [1, --budget-updates={self.budget_updates}], "
                f"got {self.interaction_updates}"
            )
        if self.eval_batches < 0:
            raise ValueError(f"--eval-batches must be >= 0 (0 = all), got {self.eval_batches}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


def model_args(settings: Settings) -> list[str]:
    """The tiny RoBERTa and its optimiser: 2 layers, 128 wide, 4 heads, FFN 512."""
    budget = settings.budget_updates
    return [
        "--arch", settings.arch, "--dropout", str(settings.dropout),
        "--attention-dropout", str(settings.dropout), "--encoder-layers", "2", "--encoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4",
        "--max-positions", str(settings.tokens_per_sample),
        "--tokens-per-sample", str(settings.tokens_per_sample), "--sample-break-mode", "none",
        "--batch-size", str(settings.batch_size), "--required-batch-size-multiple", "1",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6",
        "--weight-decay", "0.01", "--clip-norm", "1.0",
        "--lr", str(settings.lr), "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", str(budget // 10), "--total-num-update", str(budget), "--max-update", str(budget),
    ]


def run_args(data_dir: Path, save_dir: Path, policy: Policy, seed: int, settings: Settings) -> list[str]:
    """The full fairseq-train command line of one run."""
    return [
        corpora._fairseq_tool("fairseq-train"), str(data_dir),
        "--user-dir", str(REPO_ROOT / "gpts_fairseq"),
        "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
        *model_args(settings),
        *policy.fairseq_args(),
        "--gpts-valid-masking", "reference", "--gpts-ref-mask-prob", "0.15",
        "--gpts-ref-leave-unmasked-prob", "0.1", "--gpts-ref-random-token-prob", "0.1",
        "--gpts-interaction-updates", str(settings.interaction_updates),
        "--gpts-reward-batches", str(settings.eval_batches),
        # the same first K validation batches as the reward (fairseq evaluates steps 0..N)
        *(["--max-valid-steps", str(settings.eval_batches - 1)] if settings.eval_batches else []),
        "--validate-interval-updates", str(settings.interaction_updates), "--validate-interval", "1000000",
        "--seed", str(seed), "--cpu", "--num-workers", "0", "--no-save",
        "--save-dir", str(save_dir), "--log-format", "json", "--log-interval", "50",
        "--log-file", str(save_dir / "train.log"),
    ]


def result_path(results_root: Path, corpus: str, policy: str, seed: int) -> Path:
    return Path(results_root) / corpus / policy / f"seed{seed}.json"


def run_one(corpus: str, data_dir: Path, policy: Policy, seed: int, settings: Settings,
            work_root: Path, results_root: Path) -> Path:
    """Train one run (unless its result exists) and write its result JSON."""
    out = result_path(results_root, corpus, policy.name, seed)
    if out.exists():
        done = json.loads(out.read_text())
        if done.get("budget_updates") != settings.budget_updates:
            raise ValueError(
                f"{out} was run with budget {done.get('budget_updates')} updates, not --budget-updates="
                f"{settings.budget_updates}: delete it or choose another --results-root"
            )
        ran = {k: v for k, v in done.get("settings", {}).items() if k != "threads"}
        differ = sorted(k for k, v in ran.items() if getattr(settings, k, None) != v)
        if differ:
            raise ValueError(f"{out} was run with other settings ({', '.join(f'{k}={ran[k]}' for k in differ)}): "
                             f"delete it or choose another --results-root")
        return out
    save_dir = Path(work_root) / corpus / policy.name / f"seed{seed}"
    if save_dir.exists():  # an interrupted attempt: start over, runs are short
        shutil.rmtree(save_dir)
    save_dir.mkdir(parents=True)
    cmd = run_args(data_dir, save_dir, policy, seed, settings)
    RunInfo(label=policy.name, policy=policy.gpts_policy, seed=seed, corpus=corpus,
            budget_updates=settings.budget_updates,
            psi=dict(zip(("mask_prob", "leave_unmasked_prob", "random_token_prob"), policy.psi)),
            arms=policy.arms, context=policy.context, fairseq_args=cmd[1:]).write(save_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads))
    start = time.perf_counter()
    with open(save_dir / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=save_dir)
    wall = time.perf_counter() - start
    output = (save_dir / "stdout.log").read_text(errors="replace")
    # fairseq-train sometimes aborts at interpreter exit, after training, logging and the last
    # validation are done ("terminate called without an active exception", exit -6): such a run
    # is complete; its exit code is kept in the result
    if proc.returncode != 0 and "fairseq_cli.train | done training in" not in output:
        tail = output[-3000:]
        raise RuntimeError(f"fairseq-train failed ({corpus} {policy.name} seed {seed}), see {save_dir}/stdout.log:\n{tail}")
    run = load_run(save_dir)
    run.wall_time_s = wall
    if not run.val_curve or run.val_curve[-1][0] != settings.budget_updates:
        raise RuntimeError(f"{save_dir}: no validation at update {settings.budget_updates} in train.log")
    result = run.to_result()
    result.update(settings=asdict(settings), save_dir=str(save_dir), exit_code=proc.returncode)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    return out


def _policy_order(name: str) -> int:
    return list(POLICIES).index(name) if name in POLICIES else len(POLICIES)


def load_results(results_root: Path, corpus: str):
    runs = [run_from_result(json.loads(p.read_text()), str(p))
            for p in sorted((Path(results_root) / corpus).glob("*/seed*.json"))]
    return sorted(runs, key=lambda r: (_policy_order(r.info.label), r.info.label, r.info.seed or 0))


def write_summary(results_root: Path, corpus_names: Sequence[str]) -> Path:
    """summary.md over every corpus with results, plus gpts-report plots per corpus."""
    results_root = Path(results_root)
    lines = [
        "# Pre-training comparison: masking policies on three corpora", "",
        "Final loss: reference-masking (ρ=0.15, γ=λ=0.1, fixed masks) validation loss in bits at the "
        "end of the budget, mean ± sample std over seeds. Updates to target: first validated update at "
        "which the seed-mean curve reaches the seed-mean final loss of `constant-0.15` "
        "(fraction of the budget in brackets). Δ: final loss minus `constant-0.15`'s final loss with the "
        "same seed (same initialisation, data order and validation masks), mean ± std over seeds, and "
        "how many seeds are lower (negative Δ = better than fixed 15%).", "",
    ]
    per_corpus = {c: load_results(results_root, c) for c in corpus_names}
    per_corpus = {c: runs for c, runs in per_corpus.items() if runs}
    if per_corpus:
        lines += ["## All corpora", "", overview_table(per_corpus), ""]
    for corpus, runs in per_corpus.items():
        target = reference_target(runs)
        walls = [r.wall_time_s for r in runs if r.wall_time_s]
        report = write_report(runs, results_root / corpus / "report", target,
                              title=f"Pre-training comparison on {corpus}",
                              posterior_runs=_first_seed_save_dirs(runs))
        lines += [f"## {corpus}", "",
                  f"{len(runs)} runs; target {target:.3f} bits." if target is not None else
                  f"{len(runs)} runs; no constant-0.15 run yet, so no target.",
                  f"Wall time per run: mean {sum(walls) / len(walls):.0f} s, max {max(walls):.0f} s "
                  f"(sum {sum(walls) / 60:.0f} min)." if walls else "",
                  _settings_line(results_root / corpus),
                  "", label_table(runs, target, paired_with=REFERENCE_POLICY), "",
                  f"![validation loss on {corpus}]({report.parent.relative_to(results_root)}/val_loss.png)", ""]
    if per_corpus:
        figure = plot_paired_deltas(per_corpus, results_root / "delta_vs_constant.png")
        lines[lines.index("## All corpora") + 3:lines.index("## All corpora") + 3] = [
            "", f"![validation loss minus constant-0.15's, same seed]({figure.name})"]
    summary = results_root / "summary.md"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(lines))
    return summary


def paired_delta_curve(runs, label):
    """(update, mean over seeds of loss - constant-0.15's loss of the same seed at that update)."""
    ref = {r.info.seed: dict(r.val_curve) for r in runs if r.info.label == REFERENCE_POLICY}
    by_update: dict[int, list[float]] = {}
    for run in runs:
        if run.info.label != label or run.info.seed not in ref:
            continue
        for update, loss in run.val_curve:
            if update in ref[run.info.seed]:
                by_update.setdefault(update, []).append(loss - ref[run.info.seed][update])
    count = max((len(v) for v in by_update.values()), default=0)
    return [(u, statistics.fmean(v)) for u, v in sorted(by_update.items()) if len(v) == count]


def plot_paired_deltas(per_corpus: dict, path: Path) -> Path:
    """One panel per corpus: each policy's validation loss minus constant-0.15's (same seed),
    averaged over seeds, over updates. Below zero = ahead of fixed 15% masking."""
    import matplotlib.pyplot as plt  # the report module has selected the Agg backend

    fig, axes = plt.subplots(1, len(per_corpus), figsize=(5.2 * len(per_corpus), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (corpus, runs) in zip(axes[0], per_corpus.items()):
        labels = sorted({r.info.label for r in runs} - {REFERENCE_POLICY}, key=_policy_order)
        for label in labels:
            curve = paired_delta_curve(runs, label)
            if not curve:
                continue
            gp = label.startswith("gp-ts")
            ax.plot([u for u, _ in curve], [d for _, d in curve], lw=2.2 if gp else 1.1, ls="-" if gp else "--",
                    color=cmap(_policy_order(label) % 10), label=label)
        ax.axhline(0.0, color="k", lw=0.8)
        seeds = len({r.info.seed for r in runs})
        ax.set_title(f"{corpus} ({seeds} seeds)", fontsize=10)
        ax.set_xlabel("update")
        ax.set_ylim(-0.06, 0.06)
    axes[0, 0].set_ylabel("val loss − constant-0.15 (same seed), bits")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("validation loss relative to constant-0.15 (same seed, mean over seeds; < 0 = better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overview_table(per_corpus: dict) -> str:
    """Markdown: one row per policy; per corpus the final loss (mean ± std), the updates the
    seed-mean curve needs to reach constant-0.15's final loss, and the same-seed Δ to it."""
    labels = list(dict.fromkeys(r.info.label for runs in per_corpus.values() for r in runs))
    labels.sort(key=_policy_order)
    head = "| policy |" + "".join(f" {c}: final | to target | Δ (lower) |" for c in per_corpus)
    rows = [head, "|---|" + "---:|---:|---:|" * len(per_corpus)]
    for label in labels:
        row = f"| {label} |"
        for runs in per_corpus.values():
            members = [r for r in runs if r.info.label == label]
            target = reference_target(runs)
            s = summarise_label(label, members, target, budget_of(runs))
            diffs = paired_differences(members, [r for r in runs if r.info.label == REFERENCE_POLICY])
            delta = "–" if label == REFERENCE_POLICY or not diffs else \
                f"{statistics.fmean(diffs):+.3f} ({sum(d < 0 for d in diffs)}/{len(diffs)})"
            row += (f" {format_loss(s.final_mean, s.final_std)} | {format_reach(s.updates_to_target, s.budget, target)}"
                    f" | {delta} |") if members else " | | |"
        rows.append(row)
    return "\n".join(rows)


def _settings_line(corpus_dir: Path) -> str:
    """The settings of the corpus' runs (or a note that they differ)."""
    found = {json.dumps(json.loads(p.read_text()).get("settings"), sort_keys=True)
             for p in sorted(corpus_dir.glob("*/seed*.json"))}
    if len(found) != 1 or found == {"null"}:
        return "Settings: differ between runs (see each result JSON)." if len(found) > 1 else ""
    settings = {k: v for k, v in json.loads(found.pop()).items() if k != "threads"}
    return "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "."


def _first_seed_save_dirs(runs):
    """Save-dir runs (with GP posteriors) of the lowest seed per policy, where still on disk."""
    firsts = {}
    for run in runs:
        firsts.setdefault(run.info.label, run)
    out = []
    for run in firsts.values():
        save_dir = Path(run.info.fairseq_args[run.info.fairseq_args.index("--save-dir") + 1]) \
            if "--save-dir" in run.info.fairseq_args else None
        if save_dir is not None and save_dir.is_dir():
            out.append(load_run(save_dir))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=list(corpora.CORPORA), choices=corpora.CORPORA)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--budget-updates", type=int, default=Settings.budget_updates)
    parser.add_argument("--interaction-updates", type=int, default=Settings.interaction_updates,
                        help="updates per bandit interaction, also the validation interval")
    parser.add_argument("--eval-batches", type=int, default=Settings.eval_batches,
                        help="validation batches (the first K, fixed) for both the reward and the reported "
                             "validation loss; 0 = the whole validation split")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size, help="sequences per update")
    parser.add_argument("--lr", type=float, default=Settings.lr, help="peak learning rate")
    parser.add_argument("--arch", default=Settings.arch, help="fairseq RoBERTa architecture")
    parser.add_argument("--tokens-per-sample", type=int, default=Settings.tokens_per_sample)
    parser.add_argument("--dropout", type=float, default=Settings.dropout, help="dropout and attention dropout")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads per run")
    parser.add_argument("--data-root", type=Path, default=corpora.DEFAULT_DATA_ROOT)
    parser.add_argument("--work-root", type=Path, default=DEFAULT_WORK, help="fairseq save dirs (outside the repo)")
    parser.add_argument("--results-root", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--sources", type=Path, default=corpora.SHARED_DATA)
    parser.add_argument("--tokenizer", choices=corpora.TOKENIZERS, default=Settings.tokenizer,
                        help="corpus tokenization (see benchmarks/corpora.py)")
    parser.add_argument("--max-lines", type=int, default=None, help="use only the first N lines per split (smoke tests)")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite summary.md and plots")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(args.budget_updates, args.interaction_updates, args.eval_batches,
                        batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                        arch=args.arch, tokens_per_sample=args.tokens_per_sample, dropout=args.dropout,
                        tokenizer=args.tokenizer)
    settings.validate()
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if any(s < 1 for s in args.seeds):
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    start = time.perf_counter()
    if not args.summary_only:
        data = {c: corpora.prepare(c, args.data_root, args.sources, max_lines=args.max_lines,
                                   tokenizer=settings.tokenizer) for c in args.corpus}
        jobs = [(c, POLICIES[p], s) for c in args.corpus for s in args.seeds for p in args.policies]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, c, data[c], p, s, settings, args.work_root, args.results_root)
                       for c, p, s in jobs]
            for (c, p, s), future in zip(jobs, futures):
                result = json.loads(future.result().read_text())
                print(f"{c:14s} {p.name:20s} seed {s}: final val loss {result['final_val_loss']:.3f} "
                      f"({result['wall_time_s']:.0f} s)", flush=True)
    summary = write_summary(args.results_root, corpora.CORPORA)
    print(f"summary: {summary} (wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
