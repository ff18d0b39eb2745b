"""``gpts-report``: read runs, write PNG plots and summary.md, print where they are."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Sequence

from .history import Run, RunFormatError, discover_runs
from .plots import plot_posterior, plot_psi, plot_rewards, plot_val_loss
from .summary import (budget_of, label_table, played_table, reference_label, reference_target, run_display_name,
                      runs_table, verdict)


def write_report(
    runs: Sequence[Run],
    out_dir: Path,
    target: float | None = None,
    interactions: Sequence[int] | None = None,
    title: str = "GP-TS pre-training report",
    posterior_runs: Sequence[Run] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write every plot and summary.md into ``out_dir``; return the summary's path.

    ``target`` defaults to the mean final loss of the constant rho=0.15 runs (if any);
    GP posteriors are drawn for ``posterior_runs`` (default: every run that has them);
    ``notes``: paragraphs put under the verdict (e.g. where the losses are relative to the
    corpus' entropies).
    """
    if not runs:
        raise ValueError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target_note = "given with --target-loss"
    if target is None:
        target_note = "mean final loss of the constant ρ=0.15 (γ=λ=0.1) runs"
    sentences = report_verdict(runs, target)
    target = reference_target(runs) if target is None else target
    figures = [
        ("Reference-masking validation loss", plot_val_loss(runs, out_dir / "val_loss.png", target)),
        ("Masking hyperparameters ψ", plot_psi(runs, out_dir / "psi.png")),
        ("Reward per interaction", plot_rewards(runs, out_dir / "reward.png")),
    ]
    for run in runs if posterior_runs is None else posterior_runs:
        slug = re.sub(r"[^\w.-]+", "_", run_display_name(run)).strip("_")
        path = plot_posterior(run, out_dir / f"posterior_{slug}.png", interactions)
        if path is not None:
            figures.append((f"GP posterior, {run_display_name(run)}", path))
    budget = budget_of(runs)
    lines = [f"# {title}", ""]
    lines.append(f"{len(runs)} run(s); update budget {budget if budget else 'unknown'}.")
    lines.append(
        f"Target loss: {target:.3f} ({target_note})." if target is not None
        else "No target loss (no constant ρ=0.15 run and no --target-loss)."
    )
    lines += [
        "Losses are the reference-masking validation loss (base 2) from fairseq's `valid` log lines; "
        "updates to target = first validated update with loss ≤ target.",
        "", "## Verdict", "", " ".join(sentences), "", *notes,
        "", "## Per policy", "", label_table(runs, target, budget),
        "", "## What each policy played", "", played_table(runs),
        "", "## Per run", "", runs_table(runs, target), "", "## Figures", "",
    ]
    lines += [f"### {caption}\n\n![{caption}]({path.name})\n" for caption, path in figures]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def with_replayed_posteriors(run: Run) -> Run:
    """The run with the posteriors its bandit had (see ``replay``), or as it is when it has
    them already, is no gp-ts run, or the replay does not reproduce its decisions."""
    from .replay import ReplayMismatch, replay_posteriors

    if run.info.policy != "gp-ts" or not run.interactions or any(i.posterior for i in run.interactions):
        return run
    try:
        return replay_posteriors(run)
    except ReplayMismatch as err:
        print(f"gpts-report: no posterior for {run.name}: {err}", file=sys.stderr)
        return run


def report_verdict(runs: Sequence[Run], target: float | None = None) -> list[str]:
    """The report's verdict sentences: against ``target``, else against the constant ρ=0.15
    runs' final loss (those runs then get no sentence of their own)."""
    if target is not None:
        return verdict(runs, target)
    reference = reference_label(runs)
    return verdict(runs, reference_target(runs), target_name=f"{reference}'s final loss", reference=reference)


def _interaction_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--interactions: expected comma-separated integers (negative count from the end), got {text!r}"
        ) from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"--target-loss: expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpts-report",
        description="Plots and a Markdown summary of gpts-fairseq runs (save dirs with gpts_history.jsonl, "
        "train.log from --log-format json --log-file, run.json; or result .json files).",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="save dirs, folders of save dirs, or result .json files")
    parser.add_argument("--out", type=Path, default=Path("gpts-report"), help="output folder (default: ./gpts-report)")
    parser.add_argument("--target-loss", type=_finite, default=None,
                        help="loss to reach (default: mean final loss of the constant 0.15 runs)")
    parser.add_argument("--interactions", type=_interaction_list, default=None,
                        help="interactions whose GP posterior to plot, e.g. 0,5,-1 (default: first, middle, last)")
    parser.add_argument("--valid-subset", default="valid", help="fairseq validation subset to read (default: valid)")
    parser.add_argument("--title", default="GP-TS pre-training report")
    parser.add_argument("--replay-posteriors", action="store_true",
                        help="gp-ts runs read from result .json files (no posteriors kept): rebuild each "
                             "posterior by replaying the recorded rewards through the bandit, checked against "
                             "the recorded decisions (needs fairseq)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = discover_runs(args.paths, args.valid_subset)
    except (RunFormatError, OSError) as err:
        print(f"gpts-report: {err}", file=sys.stderr)
        return 2
    if args.replay_posteriors:
        runs = [with_replayed_posteriors(run) for run in runs]
    summary = write_report(runs, args.out, args.target_loss, args.interactions, args.title)
    print(f"gpts-report: {len(runs)} run(s) -> {summary}")
    return 0
