"""AutoTinyBERT one-shot architecture search past the plateau (docs/experiments/autotinybert.md,
pre-registered): a super-net from the shared warm start, evolved / fast / random searches at the
hand-designed default's parameters and latency, further training of each pick (inherited and
from scratch), and Kendall tau of the one-shot proxy against stand-alone training.

    python -m benchmarks.autotinybert [--corpus wikitext-2 linux] [--supernets-only] [--summary-only]

Every stage is resumable (harness results, search state files); results under
``benchmarks/results/autotinybert/``, runs under ``runs/past-plateau/`` (not in git).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import corpora, harness, past_plateau
from gpts_fairseq.supernet.space import Space, SubArch, sub_arch_params

RESULTS = past_plateau.RESULTS_ROOT / "autotinybert"
WORK = past_plateau.RUNS_ROOT / "work"
EVAL_DATA = past_plateau.RUNS_ROOT / "autotinybert-data"
SEEDS = (1, 2)
TAU_SEED = 1
MASK_RHO = 0.30
VALIDATE_UPDATES = 100
SUPERNET_UPDATES = 1500
FURTHER_UPDATES = 1000
STANDALONE_UPDATES = 2000
GENERATIONS, POPULATION, FAST_CANDIDATES = 8, 25, 25
WINDOW = "0.95,1.05"
SEARCH_BATCHES = 12
EXTRACTED_PER_SUPERNET = 5  # evolved-params, evolved-latency, fast, random, default
EXTRACTED_PER_WARM_START = EXTRACTED_PER_SUPERNET * len(SEEDS)
TAU_ARCHS = 10
HEAD_DIM = 32
SPACE_RANGES = dict(layers="1:2", hidden="64:128:16", heads="1:4", ffn="64:512:32")
SPACE = Space.from_options(**SPACE_RANGES, head_dim=HEAD_DIM, tie_qkv=False)
DEFAULT = SubArch(2, 96, 3, 384)  # d_f = 4 d_m, heads * head_dim = d_m
SUPERNET_ARGS = ("--arch", "gpts_roberta_super", *(arg for dim, text in SPACE_RANGES.items()
                                                   for arg in (f"--supernet-{dim}", text)),
                 "--supernet-head-dim", str(HEAD_DIM), "--supernet-sampler", "random",
                 "--criterion", "gpts_supernet_masked_lm")
SEARCHES = {  # name -> search options (beside checkpoint, data, split, out, seed)
    "evolved-params": ("--mode", "evolution", "--constraint", "params"),
    "evolved-latency": ("--mode", "evolution", "--constraint", "latency"),
    "fast": ("--mode", "fast", "--constraint", "params", "--candidates", str(FAST_CANDIDATES)),
    "random": ("--mode", "random", "--constraint", "params", "--candidates", "1"),
}


# -- data: the search and test halves of the validation text ------------------------------------

def data_dir(corpus: str) -> Path:
    return corpora.prepare(corpus, tokenizer="char")


def eval_dir(corpus: str) -> Path:
    """``search`` = the first half of the prepared validation lines, ``test`` = the second half,
    binarized with the corpus' dictionary (built once)."""
    source = data_dir(corpus)
    out = EVAL_DATA / source.name  # the prepared data's name carries its fingerprint
    if (out / "test.bin").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    lines = (source / "valid.tok").read_text(encoding="utf-8").splitlines()
    half = len(lines) // 2
    (out / "search.tok").write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    (out / "test.tok").write_text("\n".join(lines[half:]) + "\n", encoding="utf-8")
    corpora.preprocess(out, source / "dict.txt", validpref=out / "search.tok", testpref=out / "test.tok")
    for suffix in ("bin", "idx"):
        (out / f"valid.{suffix}").rename(out / f"search.{suffix}")
    return out


# -- runs --------------------------------------------------------------------------------------

def arch_args(arch: SubArch) -> tuple[str, ...]:
    """fairseq options of a standalone model of ``arch``: stock RoBERTa when its shape allows."""
    if SPACE.qkv(arch) == arch.hidden:
        return ("--arch", "roberta_base", "--encoder-layers", str(arch.layers), "--encoder-embed-dim", str(arch.hidden),
                "--encoder-attention-heads", str(arch.heads), "--encoder-ffn-embed-dim", str(arch.ffn))
    return ("--arch", "gpts_roberta_super", "--supernet-head-dim", str(HEAD_DIM),
            *(arg for dim in ("layers", "hidden", "heads", "ffn") for arg in (f"--supernet-{dim}", str(getattr(arch, dim)))))


def spec(corpus: str, arm: str, seed: int, budget: int, extra: Sequence[str], warm: harness.WarmStart | None,
         keep: bool = True) -> harness.RunSpec:
    return harness.RunSpec(corpus=corpus, data_dir=data_dir(corpus), arm=arm, seed=seed, budget_updates=budget,
                           model=past_plateau.model_args(budget), fairseq=past_plateau.validation_args(VALIDATE_UPDATES),
                           arm_args=(*past_plateau.constant_masking(MASK_RHO), *extra), keep_checkpoints=keep,
                           warm_start=warm)


def test_loss_fields(corpus: str):
    """The harness' ``finish``: the run's final test-split loss (bits, reference masking)."""
    def finish(save_dir: Path, result: dict) -> dict:
        from gpts_fairseq.supernet.subnets import SubnetLoss

        return {"test_loss_bits": SubnetLoss(str(save_dir / "checkpoint_last.pt"), str(eval_dir(corpus)), "test")()}
    return finish


def supernet(corpus: str, seed: int) -> Path:
    """The trained super-net's checkpoint (trained now if its result is missing)."""
    warm = past_plateau.warm_start(corpus, data_dir(corpus))
    run_spec = spec(corpus, "supernet", seed, SUPERNET_UPDATES, SUPERNET_ARGS, warm)
    harness.run(run_spec, RESULTS, WORK)
    return harness.save_dir_of(WORK, run_spec) / "checkpoint_last.pt"


def search(corpus: str, seed: int, name: str) -> dict:
    out = RESULTS / corpus / "search" / f"seed{seed}" / name
    if not (out / "search.json").exists():
        command = [sys.executable, "-m", "gpts_fairseq.supernet", "search", str(supernet(corpus, seed)),
                   "--data", str(eval_dir(corpus)), "--split", "search", "--out", str(out), "--seed", str(seed),
                   "--max-batches", str(SEARCH_BATCHES), "--generations", str(GENERATIONS),
                   "--population", str(POPULATION), "--window", WINDOW, "--target-arch", str(DEFAULT),
                   "--latency-cache", str(RESULTS / "latency.json"), *SEARCHES[name]]
        subprocess.run(command, check=True)
    return json.loads((out / "search.json").read_text())


def extracted(corpus: str, seed: int, name: str, arch: SubArch) -> harness.WarmStart:
    """``arch`` of the seed's super-net as a checkpoint, as the harness' warm start of a run."""
    path = WORK / "autotinybert-extracted" / corpus / f"seed{seed}" / f"{name}.pt"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "gpts_fairseq.supernet", "extract", str(supernet(corpus, seed)),
                        "--data", str(eval_dir(corpus)), "--arch", str(arch), "--out", str(path)], check=True)
    return harness.WarmStart(path, f"supernet-{corpus}-seed{seed}-{arch}", 0, math.nan,
                             harness.corpus_entropy(str(data_dir(corpus))), 0.0)


def picks(corpus: str, seed: int) -> dict[str, SubArch]:
    chosen = {name: SubArch.parse(search(corpus, seed, name)["chosen"]) for name in SEARCHES}
    return {**chosen, "default": DEFAULT}


def further(corpus: str, seed: int) -> list[dict]:
    return [harness.run(spec(corpus, f"{name}-inherited", seed, FURTHER_UPDATES, arch_args(arch),
                             extracted(corpus, seed, name, arch)), RESULTS, WORK, finish=test_loss_fields(corpus))
            for name, arch in picks(corpus, seed).items()]


def scratch_budget(corpus: str) -> int:
    warm = past_plateau.warm_start(corpus, data_dir(corpus))
    return FURTHER_UPDATES + math.ceil(SUPERNET_UPDATES / EXTRACTED_PER_SUPERNET + warm.update / EXTRACTED_PER_WARM_START)


def scratch(corpus: str, seed: int) -> list[dict]:
    archs = picks(corpus, seed)
    return [harness.run(spec(corpus, f"{name}-scratch", seed, scratch_budget(corpus), arch_args(archs[name]), None),
                        RESULTS, WORK, finish=test_loss_fields(corpus)) for name in ("evolved-params", "default")]


def tau_archs(seed: int, vocab: int, positions: int) -> list[SubArch]:
    """One sub-net from each tenth of the space sorted by parameter count (keyed by (seed, tenth))."""
    from gpts_fairseq.supernet.search import all_archs

    ranked = sorted(all_archs(SPACE), key=lambda a: (sub_arch_params(SPACE, a, vocab, positions), a))
    tenths = np.array_split(np.arange(len(ranked)), TAU_ARCHS)
    return [ranked[int(np.random.default_rng([seed, index]).choice(part))] for index, part in enumerate(tenths)]


def tau(corpus: str) -> dict:
    from gpts_fairseq.supernet.subnets import SubnetLoss

    out = RESULTS / corpus / "tau.json"
    proxy_loss = SubnetLoss(str(supernet(corpus, TAU_SEED)), str(eval_dir(corpus)), "search", SEARCH_BATCHES)
    archs = tau_archs(TAU_SEED, len(proxy_loss.task.source_dictionary),
                      proxy_loss.model.encoder.sentence_encoder.embed_positions.weight.size(0))
    proxies = {str(a): proxy_loss(a) for a in archs}
    standalone = {str(a): harness.run(spec(corpus, f"standalone-{a}".replace(",", "-"), TAU_SEED, STANDALONE_UPDATES,
                                           arch_args(a), None), RESULTS, WORK,
                                      finish=test_loss_fields(corpus))["test_loss_bits"] for a in archs}
    record = {"archs": [str(a) for a in archs], "proxy_bits": proxies, "standalone_test_bits": standalone,
              "kendall_tau": kendall_tau([proxies[str(a)] for a in archs], [standalone[str(a)] for a in archs])}
    harness.write_json(out, record)
    return record


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-a: (concordant - discordant) pairs / all pairs."""
    n, total = len(x), 0
    for i in range(n):
        for j in range(i + 1, n):
            total += int(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]))
    return total / (n * (n - 1) / 2)


# -- scoring -----------------------------------------------------------------------------------

def final_losses(corpora_names: Sequence[str]) -> dict[tuple[str, int, str], float]:
    losses = {}
    for corpus in corpora_names:
        for result in harness.load_results(RESULTS, corpus):
            if "test_loss_bits" in result:
                losses[(corpus, result["seed"], result["arm"])] = result["test_loss_bits"]
    return losses


def better_on(losses, ours: str, theirs: str, corpora_names) -> list[float]:
    """ours - theirs per (corpus, seed) pair that has both."""
    return [losses[(c, s, ours)] - losses[(c, s, theirs)] for c in corpora_names for s in SEEDS
            if (c, s, ours) in losses and (c, s, theirs) in losses]


def score(corpora_names: Sequence[str]) -> list[harness.Verdict]:
    losses = final_losses(corpora_names)
    wanted = len(corpora_names) * len(SEEDS)
    verdicts = []

    def versus(name, ours, theirs, margin, what):
        diffs = better_on(losses, ours, theirs, corpora_names)
        if len(diffs) < wanted:
            return harness.Verdict(name, "NOT SCOREABLE" if diffs else "incomplete", f"{len(diffs)} of {wanted} pairs")
        wins = sum(d < 0 if margin is not None else d <= 0 for d in diffs)
        mean = sum(diffs) / len(diffs)
        ok = wins >= wanted - 1 and (margin is None or mean <= -margin)
        return harness.Verdict(name, "PASS" if ok else "FAIL", f"{what}: {wins} of {wanted} pairs, mean "
                                    f"{mean:+.4f} bits" + ("" if margin is None else f" (needs <= {-margin:+.2f})"))

    verdicts.append(versus("A1", "evolved-params-inherited", "default-inherited", 0.01, "evolved-params below default"))
    verdicts.append(versus("A2", "evolved-latency-inherited", "default-inherited", 0.01, "evolved-latency below default"))
    fast = versus("B", "evolved-params-inherited", "fast-inherited", None, "evolved <= fast")
    rand = versus("B", "evolved-params-inherited", "random-inherited", None, "evolved <= random")
    both = "PASS" if fast.status == rand.status == "PASS" else fast.status if fast.status != "PASS" else rand.status
    verdicts.append(harness.Verdict("B", both, f"{fast.detail}; {rand.detail}"))
    verdicts.append(versus("C", "evolved-params-inherited", "evolved-params-scratch", 0.0, "inherited below scratch"))
    taus = {c: json.loads((RESULTS / c / "tau.json").read_text())["kendall_tau"]
            for c in corpora_names if (RESULTS / c / "tau.json").exists()}
    if len(taus) < len(corpora_names):
        verdicts.append(harness.Verdict("D", "incomplete", f"{len(taus)} of {len(corpora_names)} corpora"))
    else:
        verdicts.append(harness.Verdict("D", "PASS" if min(taus.values()) >= 0.5 else "FAIL",
                                             ", ".join(f"{c} tau {t:+.2f}" for c, t in taus.items()) + " (needs >= 0.5)"))
    return verdicts


INHERITED_ARMS = ("evolved-params", "evolved-latency", "fast", "random", "default")


def plateau_lines(corpora_names: Sequence[str]) -> list[str]:
    """The protocol's plateau check: each super-net's largest sub-net at U_s against the corpus'
    previous-token entropy H, and every scored run's share of its budget below H."""
    lines = ["| corpus | seed | run | last validation (bits) | H | share of budget below H |", "|---|---|---|---:|---:|---:|"]
    for corpus in corpora_names:
        entropy = harness.corpus_entropy(str(data_dir(corpus)))
        for result in sorted(harness.load_results(RESULTS, corpus), key=lambda r: (r["seed"], r["arm"])):
            if result["arm"] == "supernet" or "test_loss_bits" in result:
                below = harness.share_below_entropy(result, entropy)
                lines.append(f"| {corpus} | {result['seed']} | {result['arm']} | {result['val_curve'][-1][1]:.3f} | "
                             f"{entropy:.3f} | {below:.0%} |")
    return lines


def tau_lines(corpora_names: Sequence[str]) -> list[str]:
    lines = []
    for corpus in corpora_names:
        path = RESULTS / corpus / "tau.json"
        if path.exists():
            record = json.loads(path.read_text())
            lines += [f"**{corpus}**: Kendall tau {record['kendall_tau']:+.2f}", "",
                      "| sub-net (L,D,H,F) | proxy: inherited loss, search split | stand-alone test loss |",
                      "|---|---:|---:|",
                      *(f"| {a} | {record['proxy_bits'][a]:.3f} | {record['standalone_test_bits'][a]:.3f} |"
                        for a in record["archs"]), ""]
    return lines


def plot(corpora_names: Sequence[str], path: Path) -> Path:
    """Per corpus: the test loss of each inherited-then-trained pick per seed, and the tau study."""
    losses = final_losses(corpora_names)
    with harness.panels(2, (5.4, 3.8), path) as (fig, (picks_ax, tau_ax), _):
        for offset, corpus in enumerate(corpora_names):
            for seed in SEEDS:
                points = [(i, losses[(corpus, seed, f"{arm}-inherited")]) for i, arm in enumerate(INHERITED_ARMS)
                          if (corpus, seed, f"{arm}-inherited") in losses]
                picks_ax.plot([i for i, _ in points], [x for _, x in points], marker="os"[offset], ls=":",
                              label=f"{corpus} seed {seed}")
            if (RESULTS / corpus / "tau.json").exists():
                record = json.loads((RESULTS / corpus / "tau.json").read_text())
                tau_ax.scatter([record["proxy_bits"][a] for a in record["archs"]],
                               [record["standalone_test_bits"][a] for a in record["archs"]],
                               marker="os"[offset], label=f"{corpus} (tau {record['kendall_tau']:+.2f})")
        picks_ax.set_xticks(range(len(INHERITED_ARMS)), INHERITED_ARMS, fontsize=8)
        picks_ax.set_ylabel(f"test loss after {FURTHER_UPDATES} updates (bits)")
        picks_ax.set_title("inherited, then trained", fontsize=10)
        tau_ax.set_xlabel("proxy: inherited loss, search split (bits)")
        tau_ax.set_ylabel(f"stand-alone test loss, {STANDALONE_UPDATES} updates (bits)")
        tau_ax.set_title("one-shot proxy vs stand-alone training", fontsize=10)
        for ax in (picks_ax, tau_ax):
            ax.legend(fontsize=7)
        fig.tight_layout()
    return path


def write_summary(corpora_names: Sequence[str]) -> Path:
    losses = final_losses(corpora_names)
    lines = ["# AutoTinyBERT past the plateau: summary", "", "Test-split loss (bits per masked token, reference "
             "masking) after further training; protocol: docs/experiments/autotinybert.md.", "",
             "| corpus | seed | arm | test loss |", "|---|---|---|---|"]
    lines += [f"| {c} | {s} | {arm} | {loss:.4f} |" for (c, s, arm), loss in sorted(losses.items())]
    lines += ["", "## Criteria", "", *(v.line() for v in score(corpora_names)),
              "", "## Plateau check", "", *plateau_lines(corpora_names), "", "## Kendall tau study", "",
              *tau_lines(corpora_names)]
    if losses:
        lines += [f"![test losses and the tau study]({plot(corpora_names, RESULTS / 'summary.png').name})"]
    return past_plateau.write_summary(RESULTS, lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = past_plateau.parse_args(__doc__, argv, ("--supernets-only", "train (or find) the super-nets and stop"))
    if not args.summary_only:  # one (corpus, seed) pair at a time, so that partial results are whole pairs
        for seed in SEEDS:
            for corpus in args.corpus:
                supernet(corpus, seed)
                if not args.supernets_only:
                    further(corpus, seed)
                    scratch(corpus, seed)
        if not args.supernets_only:
            for corpus in args.corpus:
                tau(corpus)
    print(write_summary(args.corpus).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
