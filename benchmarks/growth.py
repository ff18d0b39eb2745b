"""Does progressive growth (CompoundGrow) reach a fixed model's loss with fewer FLOPs?

Protocol and pass criterion: docs/experiments/growth.md; the pre-registered text, verbatim, is
this module's docstring at commit 392b41a (``git show 392b41a:benchmarks/growth.py``). Every arm
of ``ARMS`` trains ``TARGET`` under the same FLOPs budget (``plan``); the metric is the FLOPs and
training wall time to the fixed arm's final loss (``to_target``). The loss jump of each growth
operator (``operators.json``) was measured by ``measure_operators`` of commit ed6db7b, retired since.
Results: ``benchmarks/results/growth/<corpus>/<arm>/seed<k>.json``, ``summary.{json,md}`` and
``growth.png``.

    python -m benchmarks.growth --jobs 1                # everything (resumable)
    python -m benchmarks.growth --corpus linux --arms fixed compound --seeds 1
    python -m benchmarks.growth --summary-only
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from benchmarks import corpora, harness, pretrain
from gpts_fairseq.growth.flops import update_flops
from gpts_fairseq.growth.stages import parse_stages

DEFAULT_RESULTS = harness.RESULTS_ROOT / "growth"
DEFAULT_WORK = harness.WORK_ROOT / "growth"
TARGET = dict(layers=4, embed_dim=128, ffn=512, heads=4, tokens=128)
# the small stage of each arm (None: the full model from the start)
ARMS = {"fixed": None, "compound": "layers=2,ffn=128,tokens=64", "depth": "layers=2", "width": "ffn=128"}
GROWTH_EVENT = "growth"  # gpts_fairseq.growth's event of one growth


@dataclass(frozen=True)
class Settings:
    """What every run shares; recorded in each result JSON."""

    budget_updates: int = 400  # B, in updates of the full model
    small_share: float = 0.5  # fraction of B spent in the small stage
    valid_every: int = 20
    eval_batches: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    rewarm_updates: int = 20
    width_noise: float = 0.01
    depth: str = "stack"
    optimizer: str = "carry"
    mask_prob: float = 0.15  # the masked share of the tokens (--mask-prob), also in the FLOPs count


def vocab_size(data_dir: Path) -> int:
    """fairseq's dictionary of the corpus plus masked_lm's <mask>."""
    from fairseq.data import Dictionary

    return len(Dictionary.load(str(data_dir / "dict.txt"))) + 1


def plan(arm: str, settings: Settings, vocab: int) -> dict:
    """The arm's --grow-stages, its number of updates and the FLOPs of each update, such that
    its total FLOPs is the fixed arm's (within one update of the full model); the growth update
    is a multiple of the validation interval (losses just before and after it)."""
    size = {k: TARGET[k] for k in ("layers", "ffn", "tokens")}
    full = parse_stages("", **size)[0]

    def cost(stage):
        return update_flops(stage, embed_dim=TARGET["embed_dim"], vocab=vocab, sequences=settings.batch_size,
                            sample_tokens=TARGET["tokens"], mask_prob=settings.mask_prob)

    budget = settings.budget_updates * cost(full)
    if ARMS[arm] is None:
        return {"stages": "", "updates": settings.budget_updates, "flops_per_update": [cost(full)],
                "stage_updates": [settings.budget_updates], "budget_flops": budget}
    small = parse_stages(f"0:{ARMS[arm]}", **size)[0]
    small_updates = round(settings.small_share * budget / cost(small) / settings.valid_every) * settings.valid_every
    full_updates = round((budget - small_updates * cost(small)) / cost(full))
    return {"stages": f"0:{ARMS[arm]};{small_updates}:layers={full.layers},ffn={full.ffn},tokens={full.tokens}",
            "updates": small_updates + full_updates, "flops_per_update": [cost(small), cost(full)],
            "stage_updates": [small_updates, full_updates], "budget_flops": budget}


def flops_at(schedule: dict, update: int) -> float:
    """Training FLOPs of the first ``update`` updates under ``schedule``."""
    total, done = 0.0, 0
    for count, flops in zip(schedule["stage_updates"], schedule["flops_per_update"]):
        total += max(min(count, update - done), 0) * flops
        done += count
    return total


def run_spec(corpus: str, data_dir: Path, arm: str, seed: int, settings: Settings, schedule: dict) -> harness.RunSpec:
    """One run, for the harness: the target model and its growth schedule."""
    updates = schedule["updates"]
    model = ("--arch", "gpts_roberta_grow_tiny", "--grow-depth", settings.depth,
             "--grow-width-noise", str(settings.width_noise), "--grow-optimizer", settings.optimizer,
             "--grow-rewarm-updates", str(settings.rewarm_updates), "--dropout", "0", "--attention-dropout", "0",
             *pretrain.training_args(TARGET["tokens"], settings.batch_size, settings.lr, updates),
             "--mask-prob", str(settings.mask_prob))
    validation = ("--gpts-reward-batches", str(settings.eval_batches), "--max-valid-steps", str(settings.eval_batches - 1),
                  "--validate-interval-updates", str(settings.valid_every), "--validate-interval", "1000000",
                  "--log-interval", str(settings.valid_every))
    return harness.RunSpec(corpus=corpus, data_dir=data_dir, arm=arm, seed=seed, budget_updates=updates, model=model,
                           fairseq=validation, arm_args=("--grow-stages", schedule["stages"]))


def growths(result: dict) -> list[dict]:
    """The run's growths and the reference loss just before and after each, from its events
    (those the measuring rank wrote)."""
    return [{"update": e["update"], "loss_before": e["loss_before"], "loss_after": e["loss_after"]}
            for e in result["events"].get("growth", []) if e["event"] == GROWTH_EVENT and e["loss_before"] is not None]


def run_fields(settings: Settings, vocabs: dict[str, int]):
    """The harness' ``finish``: the schedule, FLOPs and training wall time at each validation,
    and the growths (``vocabs``: each corpus' vocabulary size)."""
    def finish(save_dir: Path, result: dict) -> dict:
        schedule = plan(result["arm"], settings, vocabs[result["corpus"]])
        walls = dict((int(u), s) for u, s in result["train_wall_curve"])
        curve = [{"update": u, "loss": loss, "flops": flops_at(schedule, u), "train_wall_s": walls.get(u)}
                 for u, loss in result["val_curve"]]
        return {"schedule": schedule, "curve": curve, "growths": growths(result), "final_loss": curve[-1]["loss"],
                "settings": asdict(settings)}
    return finish


def to_target(result: dict, target: float) -> dict:
    """FLOPs and training wall time at the first validation at or below ``target``."""
    return next(({k: point[k] for k in ("update", "flops", "train_wall_s")} for point in result["curve"]
                 if point["loss"] <= target), {"update": None, "flops": None, "train_wall_s": None})


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _run_row(result: dict, fixed: dict | None) -> dict:
    row = {"seed": result["seed"], "final_loss": result["final_loss"], "jumps": [
        g["loss_after"] - g["loss_before"] for g in result["growths"]], "flops_ratio": None,
        "wall_ratio": None, "loadavg": result["loadavg_before"][0]}
    if fixed is not None:
        mine, ref = to_target(result, fixed["final_loss"]), to_target(fixed, fixed["final_loss"])
        row.update(target=fixed["final_loss"], to_target=mine)
        if mine["flops"] is not None:
            row["flops_ratio"] = mine["flops"] / ref["flops"]
            if mine["train_wall_s"] and ref["train_wall_s"]:
                row["wall_ratio"] = mine["train_wall_s"] / ref["train_wall_s"]
    return row


def summarise(results_root: Path) -> dict:
    """Per corpus and arm: final losses, FLOPs/wall ratios to the target (same seed), jumps."""
    summary = {}
    for corpus in corpora.CORPORA:
        if not (runs := {(r["arm"], r["seed"]): r for r in harness.load_results(results_root, corpus)}):
            continue
        arms = {}
        for arm in ARMS:
            if rows := [_run_row(runs[(arm, seed)], runs.get(("fixed", seed)))
                        for seed in sorted(s for a, s in runs if a == arm)]:
                arms[arm] = {"runs": rows, "median_flops_ratio": _median(r["flops_ratio"] for r in rows),
                             "median_wall_ratio": _median(r["wall_ratio"] for r in rows),
                             "reached": sum(r["flops_ratio"] is not None for r in rows),
                             "final_mean": statistics.fmean(r["final_loss"] for r in rows),
                             "final_std": statistics.stdev([r["final_loss"] for r in rows]) if len(rows) > 1 else 0.0}
        summary[corpus] = arms
    compound = [a["compound"]["median_flops_ratio"] for a in summary.values()
                if "compound" in a and len(a["compound"]["runs"]) == 3]
    passing = sum(r is not None and r <= 0.8 for r in compound)
    summary["pass"] = {"criterion": "median compound FLOPs ratio <= 0.8 on >= 2 of 3 corpora (3 seeds each)",
                       "corpora_complete": len(compound), "corpora_passing": passing,
                       "passed": None if len(compound) < 3 else passing >= 2}
    return summary


def write_summary(results_root: Path) -> dict:
    summary, rows = summarise(results_root), []
    for corpus, arms in summary.items():
        for arm, s in (arms.items() if corpus != "pass" else ()):
            jumps = [j for r in s["runs"] for j in r["jumps"]]
            rows.append([corpus, arm, len(s["runs"]), f"{s['final_mean']:.3f} ± {s['final_std']:.3f}",
                         f"{s['reached']}/{len(s['runs'])}", harness.cell(s["median_flops_ratio"], ".2f"),
                         harness.cell(s["median_wall_ratio"], ".2f"), f"{statistics.fmean(jumps):+.3f}" if jumps else "–"])
    verdict = summary["pass"]
    lines = [harness.md_table(["corpus", "arm", "seeds", "final loss (bits)", "reached target",
                               "FLOPs to target (× fixed)", "train wall to target (× fixed)", "loss jump at growth"],
                              "llrrrrrr", rows),
             "", f"Pre-registered criterion ({verdict['criterion']}): {verdict['corpora_passing']} of "
             f"{verdict['corpora_complete']} complete corpora pass; "
             f"{'passed' if verdict['passed'] else 'not passed' if verdict['passed'] is False else 'incomplete'}."]
    results_root = Path(results_root)
    harness.write_json(results_root / "summary.json", summary)
    (results_root / "summary.md").write_text("\n".join(lines) + "\n")
    plot(results_root)
    return summary


def plot(results_root: Path) -> None:
    """Seed-mean validation loss over training FLOPs, one panel per corpus (``curve`` holds
    each validation; results written before the harness have no ``val_curve``)."""
    if results := [dict(r, val_curve=[[p["update"], p["loss"]] for p in r["curve"]])
                   for corpus in corpora.CORPORA for r in harness.load_results(results_root, corpus)]:
        harness.plot_curves(results, Path(results_root) / "growth.png", "training TFLOPs",
                            lambda r, update: flops_at(r["schedule"], update) / 1e12)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_suite_arguments(parser, DEFAULT_RESULTS, DEFAULT_WORK, data=True, arms=ARMS)
    args = parser.parse_args(argv)
    settings = Settings()
    harness.check((args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}"))
    if not args.summary_only:
        data = {c: corpora.prepare(c, args.data_root, max_lines=args.max_lines, tokenizer="char") for c in args.corpus}
        vocabs = {c: vocab_size(d) for c, d in data.items()}
        specs = [run_spec(c, data[c], a, s, settings, plan(a, settings, vocabs[c]))  # seed-major
                 for s in args.seeds for c in args.corpus for a in args.arms]
        harness.run_suite(specs, args.results_root, args.work_root, jobs=args.jobs, finish=run_fields(settings, vocabs))
    summary = write_summary(args.results_root)
    print((Path(args.results_root) / "summary.md").read_text())
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
