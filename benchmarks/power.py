"""Seeds each past-the-plateau comparison needs, from the seed spread already measured.

Fixed before any run of the three comparisons of issue 20 (continued pre-training with GP-TS,
subsets past the plateau, growth past the plateau); their protocols under docs/experiments/
take their seed counts from this table.

What it reads (committed results, nothing is trained): ``benchmarks/results/pretrain-prereg``
(63 runs and the pilots' previous-token entropies), ``benchmarks/results/subsets`` (45 runs),
``benchmarks/results/growth/summary.json`` (36 runs).

What it computes, per contrast (a same-seed difference ``a - b`` that a criterion scores):

- the spread of the same-seed differences, pooled within corpus (each corpus' own mean
  removed, so a real corpus effect is not counted as noise), in three regimes of the pairs:
  ``all``; ``escape-free`` (neither run ever validated below its corpus' previous-token entropy
  H(X_i | X_{i-1}): no plateau escape inside the budget, the regime a shared warm start past the
  plateau gives every arm); ``past`` (both runs below H for at least ``PAST_SHARE`` of the
  budget);
- the design spread: the ``SD_CONFIDENCE`` upper confidence limit (chi-square) of the design
  regime's estimate, since two or four degrees of freedom leave the point estimate loose;
- the pairs needed, by the contrast's test: ``superiority`` (one-sided paired t at level
  ``ALPHA``, power ``POWER`` at a true difference ``effect``), ``non-inferiority`` (the upper
  bound at ``level`` below the margin ``effect`` with power ``POWER`` at a true difference 0:
  the same computation), ``sign-count`` (wins on at least the criterion's share of pairs, with
  P(win) = Phi(effect / sd) at a true difference ``effect``); exact power from the noncentral t
  and the binomial, not the normal approximation (which is reported beside it);
- seeds = pairs / the comparison's units per seed (directions or corpora), and the smallest
  detectable difference at 3, 5 and 10 seeds.

The size that matters, ``DELTA_BITS`` = 0.01 bits: the subsets protocol's own margin and twice
the masking suite's (0.005); on war-and-peace, the one corpus where no run escaped, the masking
policies sit 0.011-0.022 bits from constant-0.15, so 0.01 is the smallest difference that
would reorder them; and past the plateau 0.01 bits is what about 1 % more compute buys at the
end of a run (``bits_per_percent_compute``, measured below from the past-the-plateau curves).
Growth is scored in FLOPs: a 20 % saving (ratio 0.8, the growth benchmark's threshold) is the
size that matters, ``ln(1/0.8)`` on the log-ratio scale.

    python -m benchmarks.power            # prints the table, writes benchmarks/results/power.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from benchmarks import harness, pretrain

RESULTS = harness.RESULTS_ROOT
DEFAULT_OUT = RESULTS / "power.json"

DELTA_BITS = 0.01
ALPHA = 0.05
POWER = 0.80
SD_CONFIDENCE = 0.80
PAST_SHARE = 0.25
GROWTH_RATIO = 0.8
COMPUTE_SHARE = 1 - pretrain.COMPUTE_SHARE  # the last 15 % of a run: what criterion (a) saves
SEED_COUNTS = (3, 5, 10)
MAX_PAIRS = 2000
# units of each comparison per seed (its protocol: two directions, two corpora, two corpora)
UNITS = {"continued": 2, "subsets": 2, "growth": 2}
GP_TS, RANDOM, REFERENCE = pretrain.SCORED_POLICY, "random", pretrain.REFERENCE_POLICY
BEST_FIXED = "best fixed rho"


# -- sample sizes ------------------------------------------------------------------------------


def power_t(n: int, sd: float, effect: float, alpha: float) -> float:
    """Power of the one-sided one-sample t test at level ``alpha`` on ``n`` paired differences
    with standard deviation ``sd`` when the true mean difference is ``effect``."""
    from scipy.stats import nct, t

    if n < 2:
        return 0.0
    return float(nct.sf(t.ppf(1 - alpha, n - 1), n - 1, effect * math.sqrt(n) / sd))


def pairs_t(sd: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Smallest n >= 2 whose :func:`power_t` reaches ``power`` (None beyond ``MAX_PAIRS``)."""
    _check(sd, effect, alpha, power)
    low = pairs_normal(sd, effect, alpha, power)
    return next((n for n in range(max(2, low), MAX_PAIRS + 1) if power_t(n, sd, effect, alpha) >= power), None)


def pairs_normal(sd: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The closed form with known ``sd``: ceil(((z_(1-alpha) + z_power) sd / effect)^2)."""
    from scipy.stats import norm

    _check(sd, effect, alpha, power)
    return math.ceil(((norm.ppf(1 - alpha) + norm.ppf(power)) * sd / effect) ** 2 - 1e-9)


def power_sign(n: int, share: float, p_win: float) -> float:
    """P(at least ceil(share * n) wins of n) when each pair is won with probability ``p_win``."""
    from scipy.stats import binom

    need = math.ceil(share * n - 1e-9)
    return float(binom.sf(need - 1, n, p_win))


def pairs_sign(sd: float, effect: float, share: float, power: float = POWER) -> int | None:
    """Smallest n from which on :func:`power_sign` reaches ``power`` at every n up to
    ``MAX_PAIRS`` (it is not monotone in n), at P(win) = Phi(effect / sd)."""
    from scipy.stats import norm

    _check(sd, effect, ALPHA, power)
    p_win = float(norm.cdf(effect / sd))
    short = [n for n in range(1, MAX_PAIRS + 1) if power_sign(n, share, p_win) < power]
    last_short = short[-1] if short else 0
    return last_short + 1 if last_short < MAX_PAIRS else None


def detectable(pairs: int, sd: float, alpha: float = ALPHA, power: float = POWER,
               share: float | None = None) -> float:
    """The smallest true difference detected with ``power`` from ``pairs`` pairs: by
    :func:`power_t`, or with ``share`` by :func:`power_sign` at P(win) = Phi(difference / sd)."""
    from scipy.stats import norm

    if share is None:
        def reaches(effect):
            return power_t(pairs, sd, effect, alpha) >= power
    else:
        def reaches(effect):
            return power_sign(pairs, share, float(norm.cdf(effect / sd))) >= power
    if pairs < 2:
        return math.inf
    low, high = 0.0, sd
    while not reaches(high):
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high


def _check(sd: float, effect: float, alpha: float, power: float) -> None:
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    if not effect > 0:
        raise ValueError(f"effect must be > 0, got {effect}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if not 0.5 <= power < 1:
        raise ValueError(f"power must be in [0.5, 1), got {power}")


# -- spread ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Pooled within-group standard deviation and its degrees of freedom."""

    sd: float | None
    df: int
    pairs: int

    def upper(self, confidence: float = SD_CONFIDENCE) -> float | None:
        """Upper ``confidence`` limit of the sd: sd * sqrt(df / chi2_(1-confidence), df)."""
        from scipy.stats import chi2

        if self.sd is None or self.df < 1:
            return None
        return self.sd * math.sqrt(self.df / chi2.ppf(1 - confidence, self.df))


def pooled_spread(groups: Iterable[Sequence[float]]) -> Spread:
    """sd pooled over groups (each group's own mean removed); groups of one give no df."""
    squares, df, pairs = 0.0, 0, 0
    for values in groups:
        pairs += len(values)
        if len(values) > 1:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
    return Spread(math.sqrt(squares / df) if df else None, df, pairs)


# -- the committed results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    corpus: str
    arm: str
    seed: int
    final: float
    share_below: float  # of the budget, below the corpus' previous-token entropy


def entropies(results: Path = RESULTS) -> dict[str, float]:
    """H(X_i | X_{i-1}) of each corpus' training text, from the pre-registered suite's pilots."""
    pilots = {p.stem: json.loads(p.read_text())
              for p in sorted((results / "pretrain-prereg" / "pilot").glob("*.json"))}
    key = "previous_token_entropy_bits"
    return {corpus: d[key] for corpus, d in pilots.items() if key in d}


def prereg_runs(results: Path = RESULTS) -> list[Run]:
    """The pre-registered masking suite; final = mean of the last ``FINAL_VALIDATIONS``."""
    h = entropies(results)
    runs = []
    for path in sorted((results / "pretrain-prereg").glob("*/*/seed*.json")):
        d = json.loads(path.read_text())
        curve = d["val_curve"]
        runs.append(Run(d["corpus"], d["policy"], d["seed"],
                        statistics.fmean(x for _, x in curve[-pretrain.FINAL_VALIDATIONS:]),
                        harness.passed_previous_token_entropy(curve, h[d["corpus"]], d["budget_updates"])))
    best = {}
    for corpus in {r.corpus for r in runs}:
        means = {arm: statistics.fmean(r.final for r in runs if r.corpus == corpus and r.arm == arm)
                 for arm in pretrain.FIXED_RHO}
        best[corpus] = min(means, key=means.get)
    return runs + [Run(r.corpus, BEST_FIXED, r.seed, r.final, r.share_below) for r in runs if r.arm == best[r.corpus]]


def subsets_runs(results: Path = RESULTS) -> list[Run]:
    """The subsets benchmark (its score: the last validation, at the budget)."""
    h = entropies(results)
    runs = []
    for path in sorted((results / "subsets").glob("*/*/seed*.json")):
        d = json.loads(path.read_text())
        runs.append(Run(d["corpus"], d["arm"], d["seed"], d["curve"][-1][1],
                        harness.passed_previous_token_entropy(d["curve"], h[d["corpus"]], d["budget_updates"])))
    return runs


def growth_runs(results: Path = RESULTS) -> list[Run]:
    """The growth benchmark: final loss, and (arm ``<arm>/log-flops-ratio``) the log of the
    FLOPs to the fixed model's final loss over the fixed model's, same seed."""
    h = entropies(results)
    summary = json.loads((results / "growth" / "summary.json").read_text())
    runs = []
    for corpus, arms in summary.items():
        if corpus not in h:
            continue
        for arm, table in arms.items():
            for r in table["runs"]:
                curve = json.loads((results / "growth" / corpus / arm / f"seed{r['seed']}.json").read_text())["curve"]
                below = harness.passed_previous_token_entropy([(p["update"], p["loss"]) for p in curve], h[corpus],
                                                             curve[-1]["update"])
                runs.append(Run(corpus, arm, r["seed"], r["final_loss"], below))
                if r["flops_ratio"]:
                    runs.append(Run(corpus, f"{arm}/log-flops-ratio", r["seed"], math.log(r["flops_ratio"]), below))
    return runs


def escape_timing(results: Path = RESULTS) -> Spread:
    """Seed spread of ln(first update below H) of the fixed policies of the masking suite that
    crossed on every seed, pooled within (corpus, policy), times sqrt(2): the spread of the log
    ratio of two such runs' updates to a loss past the plateau (their correlation ignored)."""
    h = entropies(results)
    groups = []
    for corpus in h:
        for policy in (*pretrain.FIXED_RHO, "schedule-0.30-0.15"):
            crossings = []
            for path in sorted((results / "pretrain-prereg" / corpus / policy).glob("seed*.json")):
                curve = json.loads(path.read_text())["val_curve"]
                crossings.append(next((u for u, x in curve if x < h[corpus]), None))
            if crossings and None not in crossings:
                groups.append([math.log(u) for u in crossings])
    one = pooled_spread(groups)
    return Spread(one.sd * math.sqrt(2) if one.sd is not None else None, one.df, one.pairs)


def bits_per_percent_compute(results: Path = RESULTS) -> float:
    """Median over the masking suite's runs past the plateau (below H for >= PAST_SHARE) of
    the loss they lost over their last ``COMPUTE_SHARE`` of updates, per percent of compute."""
    h = entropies(results)
    drops = []
    for path in sorted((results / "pretrain-prereg").glob("*/*/seed*.json")):
        d = json.loads(path.read_text())
        curve, budget = d["val_curve"], d["budget_updates"]
        if harness.passed_previous_token_entropy(curve, h[d["corpus"]], budget) >= PAST_SHARE:
            start = min(curve, key=lambda p: abs(p[0] - (1 - COMPUTE_SHARE) * budget))
            drops.append((start[1] - curve[-1][1]) / (100 * COMPUTE_SHARE))
    return statistics.median(drops)


# -- contrasts ---------------------------------------------------------------------------------


def differences(runs: Sequence[Run], a: str, b: str, regime: str) -> dict[str, list[float]]:
    """Same-seed ``a - b`` per corpus, for pairs in ``regime`` (all, escape-free, past)."""
    by = {(r.corpus, r.arm, r.seed): r for r in runs}
    out: dict[str, list[float]] = {}
    for (corpus, arm, seed), ra in sorted(by.items()):
        rb = by.get((corpus, b, seed))
        if arm != a or rb is None:
            continue
        if regime == "escape-free" and (ra.share_below > 0 or rb.share_below > 0):
            continue
        if regime == "past" and min(ra.share_below, rb.share_below) < PAST_SHARE:
            continue
        out.setdefault(corpus, []).append(ra.final - rb.final)
    return out


@dataclass(frozen=True)
class Contrast:
    """A same-seed difference a criterion scores, and how it is tested."""

    comparison: str
    name: str
    source: str  # prereg, subsets or growth
    a: str
    b: str
    test: str  # superiority, non-inferiority or sign-count
    effect: float  # the difference to detect, or the non-inferiority margin
    alpha: float = ALPHA
    share: float | None = None  # sign-count: share of pairs to win
    unit: str = "bits"


CONTRASTS = (
    Contrast("continued", "(b) gp-ts-trend within 0.005 bits of the best fixed rho", "prereg", GP_TS, BEST_FIXED,
             "non-inferiority", pretrain.BOUND_BITS, alpha=1 - pretrain.BOUND_LEVEL),
    Contrast("continued", "(c) gp-ts-trend beats random on >= 7/9 of pairs", "prereg", GP_TS, RANDOM,
             "sign-count", DELTA_BITS, share=pretrain.PAIRS_TO_BEAT_RANDOM / 9),
    Contrast("continued", "gp-ts-trend vs random, 0.01 bits", "prereg", GP_TS, RANDOM, "superiority", DELTA_BITS),
    Contrast("continued", "gp-ts-trend vs constant-0.15, 0.01 bits", "prereg", GP_TS, REFERENCE, "superiority",
             DELTA_BITS),
    Contrast("subsets", "ingenious vs random-online, 0.01 bits", "subsets", "ingenious", "random-online",
             "superiority", DELTA_BITS),
    Contrast("subsets", "ingenious within 0.01 bits of full data", "subsets", "ingenious", "full",
             "non-inferiority", DELTA_BITS),
    Contrast("growth", "compound vs fixed FLOPs to a target, ratio 0.8", "growth", "compound/log-flops-ratio",
             "fixed/log-flops-ratio", "superiority", math.log(1 / GROWTH_RATIO), unit="ln FLOPs"),
)


def pairs_needed(contrast: Contrast, sd: float | None) -> int | None:
    if sd is None:
        return None
    if contrast.test == "sign-count":
        return pairs_sign(sd, contrast.effect, contrast.share)
    return pairs_t(sd, contrast.effect, contrast.alpha)


def analyse(contrast: Contrast, runs: Sequence[Run], timing: Spread) -> dict:
    """Spreads by regime, the design spread and the pairs and seeds it needs."""
    spreads = {regime: pooled_spread(differences(runs, contrast.a, contrast.b, regime).values())
               for regime in ("all", "escape-free", "past")}
    design_regime = "escape-free"
    if contrast.unit == "ln FLOPs":
        # the new targets lie past the plateau, where the ratio is set by when each run escapes
        spreads["past"] = timing
        design_regime = "past"
    design = spreads[design_regime]
    design_sd = design.upper()
    units = UNITS[contrast.comparison]
    needed = {regime: pairs_needed(contrast, s.sd) for regime, s in spreads.items()}
    pairs = pairs_needed(contrast, design_sd)
    return {
        **asdict(contrast),
        "spreads": {regime: asdict(s) for regime, s in spreads.items()},
        "design_regime": design_regime,
        "design_sd": design_sd,
        "pairs_at_estimate": needed,
        "pairs_normal_approximation": (pairs_normal(design_sd, contrast.effect, contrast.alpha)
                                       if design_sd and contrast.test != "sign-count" else None),
        "pairs": pairs,
        "seeds": math.ceil(pairs / units) if pairs else None,
        "units_per_seed": units,
        "detectable": {str(k): (detectable(k * units, design_sd, contrast.alpha, share=contrast.share)
                                if design_sd else None) for k in SEED_COUNTS},
    }


def analyse_all(results: Path = RESULTS) -> dict:
    sources = {"prereg": prereg_runs(results), "subsets": subsets_runs(results), "growth": growth_runs(results)}
    timing = escape_timing(results)
    return {
        "alpha": ALPHA, "power": POWER, "sd_confidence": SD_CONFIDENCE, "past_share": PAST_SHARE,
        "delta_bits": DELTA_BITS, "growth_ratio": GROWTH_RATIO,
        "bits_per_percent_compute": bits_per_percent_compute(results),
        "escape_timing_log_sd": asdict(timing),
        "contrasts": [analyse(c, sources[c.source], timing) for c in CONTRASTS],
    }


def _fmt(value, spec=".4f") -> str:
    return "–" if value is None else format(value, spec)


def _pairs(value, sd) -> str:
    """Pairs needed; None with a spread known means more than ``MAX_PAIRS``."""
    return f"> {MAX_PAIRS}" if value is None and sd is not None else _fmt(value, "d")


def table(report: dict) -> list[str]:
    lines = [
        f"Power: one-sided alpha {report['alpha']} (non-inferiority (b): 0.10, the suite's 90 % bound), power "
        f"{report['power']}; design sd = {report['sd_confidence']:.0%} upper confidence limit of the design "
        f"regime's pooled sd. Past the plateau, 1 % of compute at the end of a run buys "
        f"{report['bits_per_percent_compute']:.4f} bits (median).",
        "",
        "| comparison | contrast | test | effect | sd all (df) | sd escape-free (df) | sd past (df) | design sd "
        "| pairs (normal) | seeds | pairs at sd all / past | detectable at 3 / 5 / 10 seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["contrasts"]:
        s = c["spreads"]
        cell = {k: f"{_fmt(v['sd'])} ({v['df']})" for k, v in s.items()}
        at = c["pairs_at_estimate"]
        det = " / ".join(_fmt(c["detectable"][str(k)]) for k in SEED_COUNTS)
        lines.append(
            f"| {c['comparison']} | {c['name']} | {c['test']} | {c['effect']:.3f} {c['unit']} | {cell['all']} | "
            f"{cell['escape-free']} | {cell['past']} | {_fmt(c['design_sd'])} ({c['design_regime']}) | "
            f"{_fmt(c['pairs'], 'd')} ({_fmt(c['pairs_normal_approximation'], 'd')}) | {_fmt(c['seeds'], 'd')} | "
            f"{_pairs(at['all'], s['all']['sd'])} / {_pairs(at['past'], s['past']['sd'])} | {det} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed results (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON written (default: %(default)s)")
    args = parser.parse_args(argv)
    report = analyse_all(args.results)
    print("\n".join(table(report)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
