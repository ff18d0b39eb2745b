"""What the past-the-plateau suites share (docs/experiments/continued-pretraining.md,
subsets-past-plateau.md, growth-past-plateau.md): the warm-start recipe, the reference
validation, where runs and results go, the plateau check and the criterion lines.

Runs (fairseq save dirs and the stored warm starts) go under ``runs/past-plateau/`` in the
repository (ignored by git); results under ``benchmarks/results/<suite>/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Sequence

from benchmarks import harness, power, pretrain
from benchmarks.harness import Verdict
from gpts_fairseq.report.summary import one_sided_upper_bound

RUNS_ROOT = Path(os.environ.get("GPTS_PAST_PLATEAU_RUNS", harness.REPO_ROOT / "runs" / "past-plateau"))
RESULTS_ROOT = harness.RESULTS_ROOT
CORPORA = ("wikitext-2", "linux")  # war-and-peace: no run of the masking suite left its plateau

EVAL_BATCHES = 12
REFERENCE_VALIDATION = ("--gpts-valid-masking", "reference", "--max-valid-steps", str(EVAL_BATCHES - 1),
                        "--validate-interval", "1000000")

WARM_RHO = 0.30
WARM_SEED = 0
WARM_MARGIN_BITS = 0.5
WARM_MAX_UPDATES = 6000
WARM_VALIDATE_UPDATES = 100


def model_args(budget_updates: int) -> tuple[str, ...]:
    """The masking suite's tiny RoBERTa and optimiser, its LR decaying to 0 at ``budget_updates``."""
    return tuple(pretrain.model_args(pretrain.Settings(budget_updates=budget_updates,
                                                       interaction_updates=budget_updates)))


def validation_args(every: int) -> tuple[str, ...]:
    """Validate every ``every`` updates on the first 12 batches at the reference masking."""
    return (*REFERENCE_VALIDATION, "--validate-interval-updates", str(every))


def constant_masking(rho: float) -> tuple[str, ...]:
    return ("--gpts-policy", "constant", "--mask-prob", str(rho), "--leave-unmasked-prob", "0.1",
            "--random-token-prob", "0.1")


def warm_start_spec(corpus: str, data_dir: Path) -> harness.RunSpec:
    """The shared warm start's training run: constant rho 0.30, seed 0, LR decay over (and at
    most) 6,000 updates, validated every 100."""
    return harness.RunSpec(corpus=corpus, data_dir=Path(data_dir), arm="warm-start", seed=WARM_SEED,
                           budget_updates=WARM_MAX_UPDATES, model=model_args(WARM_MAX_UPDATES),
                           fairseq=validation_args(WARM_VALIDATE_UPDATES), arm_args=constant_masking(WARM_RHO))


def warm_start(corpus: str, data_dir: Path, runs_root: Path = RUNS_ROOT) -> harness.WarmStart:
    """The stored warm start of ``corpus`` (trained now if there is none): its first validation
    ``WARM_MARGIN_BITS`` below the corpus' previous-token entropy."""
    return harness.warm_start(warm_start_spec(corpus, data_dir), WARM_MARGIN_BITS,
                              store_root=Path(runs_root) / "warm-starts", work_root=Path(runs_root) / "work")


def below_share_failures(results: Sequence[dict], entropy: dict[str, float], share: float) -> list[str]:
    """The runs below their corpus' previous-token entropy for less than ``share`` of their budget."""
    failing = []
    for r in results:
        got = harness.share_below_entropy(r, entropy[r["corpus"]])
        if got < share:
            failing.append(f"{r['corpus']} {r['arm']} seed {r['seed']} ({got:.0%} below)")
    return failing


def bound_verdict(name: str, differences: Sequence[float], level: float, limit: float, wanted: int,
                  strict: bool, what: str) -> Verdict:
    """PASS if the one-sided ``level`` upper bound of the mean difference is below ``limit``
    (``strict``: <, else <=), over ``wanted`` same-seed pairs; incomplete while pairs are missing.
    Its numbers include the measured sd of the differences and the true difference those pairs
    detect with 80 % power at that spread (``power.detectable``)."""
    if len(differences) < wanted:
        return Verdict(name, "incomplete", f"{len(differences)} of {wanted} pairs")
    bound = one_sided_upper_bound(differences, level)
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    ok = bound < limit if strict else bound <= limit
    return Verdict(name, "PASS" if ok else "FAIL",
                   f"{what}: mean {mean:+.4f}, {level:.0%} upper bound {bound:+.4f} (limit {'<' if strict else '<='} "
                   f"{limit:+.3f}) over {len(differences)} pairs; sd {sd:.4f}, so these pairs detect a true "
                   f"difference of {power.detectable(len(differences), sd, 1 - level):.4f} bits with 80 % power")


def plateau_table(results: Sequence[dict], entropy: dict[str, float]) -> str:
    """Per corpus and arm: the share of each run's budget spent below the corpus' previous-token
    entropy (the plateau check) and the latest first validation below it over the seeds."""
    rows: dict[tuple[str, str], list[tuple[float, int | None]]] = {}
    for r in results:
        bits = entropy[r["corpus"]]
        rows.setdefault((r["corpus"], r["arm"]), []).append(
            (harness.share_below_entropy(r, bits), pretrain.crossing_update(r["val_curve"], bits)))
    return harness.md_table(
        ["corpus", "arm", "runs", "H(X_i∣X_i−1), bits", "budget below H (min–max over seeds)",
         "first validation below H (latest seed)"], "llrrrr",
        [[corpus, arm, len(got), f"{entropy[corpus]:.3f}", f"{min(s for s, _ in got):.0%}–{max(s for s, _ in got):.0%}",
          "never" if any(f is None for _, f in got) else max(f for _, f in got)] for (corpus, arm), got in rows.items()])


def parse_args(doc: str, argv: Sequence[str] | None, only: tuple[str, str], corpora: bool = True) -> argparse.Namespace:
    """The drivers' command line: ``--jobs``, ``only`` = (flag, help) to stop after the first
    step, ``--summary-only`` and (with ``corpora``) ``--corpus``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if corpora:
        parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(only[0], action="store_true", help=only[1])
    parser.add_argument("--summary-only", action="store_true", help="criteria and tables from the results")
    return parser.parse_args(argv)


def write_summary(results_root: Path, lines: Sequence[str]) -> Path:
    """``results_root/summary.md`` from ``lines``."""
    out = Path(results_root) / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
