"""benchmarks/power.py: sample sizes against their closed forms, spreads on synthetic numbers,
and the committed power.json regenerated from the committed results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import power

REPO = Path(__file__).resolve().parent.parent

Z_95, Z_80 = 1.6448536269514722, 0.8416212335729143


def test_normal_pairs_match_the_closed_form():
    assert power.pairs_normal(1.0, 1.0) == math.ceil((Z_95 + Z_80) ** 2) == 7
    assert power.pairs_normal(2.0, 0.5) == math.ceil(((Z_95 + Z_80) * 4) ** 2) == 99


def test_t_pairs_are_the_first_to_reach_the_power():
    n = power.pairs_t(1.0, 1.0)
    assert power.power_t(n, 1.0, 1.0, 0.05) >= 0.8 > power.power_t(n - 1, 1.0, 1.0, 0.05)
    # for many pairs t and z agree: ((z_a + z_b) / 0.1)^2 = 618.3
    assert 619 <= power.pairs_t(1.0, 0.1) <= 621
    # the sd and the effect enter only as their ratio
    assert power.pairs_t(0.02, 0.01) == power.pairs_t(2.0, 1.0)


def test_t_power_matches_simulated_t_tests():
    from scipy.stats import t

    rng = np.random.default_rng(0)
    n, sd, effect = 8, 1.0, 1.0
    d = rng.normal(effect, sd, size=(40000, n))
    stat = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    simulated = float((stat > t.ppf(0.95, n - 1)).mean())
    assert abs(simulated - power.power_t(n, sd, effect, 0.05)) < 0.01


def test_sign_count_power_is_the_binomial_tail():
    p = 0.9
    closed = sum(math.comb(9, k) * p ** k * (1 - p) ** (9 - k) for k in (7, 8, 9))
    assert power.power_sign(9, 7 / 9, p) == pytest.approx(closed, rel=1e-12)
    # from the returned n on, every n up to the cap reaches the power
    n = power.pairs_sign(1.0, 1.5, 7 / 9)
    p_win = 0.9331927987311419  # Phi(1.5)
    assert all(power.power_sign(m, 7 / 9, p_win) >= 0.8 for m in range(n, n + 50))
    assert power.power_sign(n - 1, 7 / 9, p_win) < 0.8


def test_detectable_inverts_the_sample_size():
    n = power.pairs_t(0.01, 0.01)
    assert power.detectable(n, 0.01) <= 0.01 < power.detectable(n - 1, 0.01)


def test_pooled_spread_removes_each_group_mean():
    spread = power.pooled_spread([[1.0, 3.0], [10.0, 14.0], [5.0]])
    assert (spread.sd, spread.df, spread.pairs) == (pytest.approx(math.sqrt(5)), 2, 5)
    # chi-square with 2 df is exponential: its 0.2 quantile is -2 ln 0.8
    assert spread.upper(0.8) == pytest.approx(math.sqrt(5) / math.sqrt(-math.log(0.8)))
    assert power.pooled_spread([[1.0], [2.0]]).upper() is None


def _runs(diffs, shares=(0.0, 0.0)):
    """Runs of arms a and b per corpus whose same-seed differences are ``diffs[corpus]``."""
    runs = []
    for corpus, values in diffs.items():
        for seed, d in enumerate(values, 1):
            runs += [power.Run(corpus, "a", seed, 4.0 + d, shares[0]), power.Run(corpus, "b", seed, 4.0, shares[1])]
    return runs


def test_regimes_select_pairs_by_their_share_below_the_entropy():
    runs = _runs({"x": [0.1, 0.2]}) + [power.Run("y", "a", 1, 3.0, 0.5), power.Run("y", "b", 1, 3.2, 0.1),
                                        power.Run("z", "a", 1, 3.0, 0.5), power.Run("z", "b", 1, 3.3, 0.3)]
    assert power.differences(runs, "a", "b", "escape-free") == {"x": [pytest.approx(0.1), pytest.approx(0.2)]}
    assert power.differences(runs, "a", "b", "past") == {"z": [pytest.approx(-0.3)]}
    assert set(power.differences(runs, "a", "b", "all")) == {"x", "y", "z"}


def test_analyse_plans_from_the_upper_limit_of_the_escape_free_spread():
    s = 0.004
    # per corpus two pairs at mean +- s: pooled sd = s * sqrt(2), 2 df
    runs = _runs({"x": [0.01 - s, 0.01 + s], "y": [-s, s]})
    contrast = power.Contrast("subsets", "a vs b", "subsets", "a", "b", "superiority", 0.01)
    out = power.analyse(contrast, runs, power.Spread(None, 0, 0))
    sd = s * math.sqrt(2)
    assert out["spreads"]["escape-free"]["sd"] == pytest.approx(sd)
    assert out["design_sd"] == pytest.approx(sd / math.sqrt(-math.log(0.8)))
    assert out["pairs"] == power.pairs_t(out["design_sd"], 0.01)
    assert out["seeds"] == math.ceil(out["pairs"] / power.UNITS["subsets"])


@pytest.mark.parametrize("call, option", [
    (lambda: power.pairs_t(0.0, 0.01), "sd"),
    (lambda: power.pairs_t(0.01, -0.01), "effect"),
    (lambda: power.pairs_normal(0.01, 0.01, alpha=0.7), "alpha"),
    (lambda: power.pairs_sign(0.01, 0.01, 0.8, power=1.0), "power"),
])
def test_bad_input_names_the_argument(call, option):
    with pytest.raises(ValueError, match=option):
        call()


def test_committed_power_json_is_what_the_committed_results_give():
    committed = json.loads((REPO / "benchmarks" / "results" / "power.json").read_text())
    assert json.loads(json.dumps(power.analyse_all())) == committed
