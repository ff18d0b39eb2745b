"""The past-the-plateau drivers' scoring (benchmarks/subsets_past.py, continued.py) on
synthetic results in the harness' schema: PASS, FAIL, incomplete and NOT SCOREABLE."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import continued, harness, past_plateau, power, subsets_past

H = 3.5  # every corpus' entropy in these results


def _result(corpus, arm, seed, final, budget=1000, every=100, start=None, **extra):
    """A run whose loss falls linearly from ``start`` (default final + 0.2) to ``final``."""
    start = final + 0.2 if start is None else start
    updates = list(range(every, budget + 1, every))
    curve = [[u, start + (final - start) * u / budget] for u in updates]
    return {"corpus": corpus, "arm": arm, "seed": seed, "budget_updates": budget, "val_curve": curve,
            "compute": {"update_s": 0.1}, "events": {}, **extra}


def test_loss_at_is_linear_between_validations():
    curve = [[50, 3.0], [100, 2.0]]
    assert subsets_past.loss_at(curve, 75) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="outside the curve"):
        subsets_past.loss_at(curve, 120)


def _subsets(ingenious_gain, noise=0.002, selection_s=5.0, above=False, chosen=None):
    rng = np.random.default_rng(1)
    results = []
    for corpus in ("wikitext-2", "linux"):
        for seed in subsets_past.SEEDS:
            base = 3.0 + rng.normal(0, 0.05)
            for arm in subsets_past.ARMS:
                final = base + rng.normal(0, noise) - (ingenious_gain if arm == "ingenious" else 0.0)
                selection = {"event": "selection", "update": 0, "feature_seconds": selection_s, "greedy_seconds": 0.0}
                if chosen is not None:
                    selection.update(facility_location=chosen, facility_location_greedy=110.0,
                                     facility_location_random=[100.0 + 0.01 * k for k in range(100)])
                cost = {"events": {"subsets": [selection]}, "selections": [selection],
                        "selection_update_equivalents": selection_s / 0.1} if arm == "ingenious" else {}
                results.append(_result(corpus, arm, seed, final, **cost,
                                       start=4.0 if above and arm == "full" and seed == 1 else None))
    return results


def test_subsets_criteria_pass_fail_and_plateau_check():
    entropy = {"wikitext-2": H, "linux": H}
    s1, s2, s3 = subsets_past.score(_subsets(0.03, chosen=105.0), entropy)
    assert (s1.status, s2.status, s3.status) == ("PASS", "PASS", "PASS")
    assert "z +15.5, 47% of the greedy's gain" in s3.detail  # (105 - 100.495) / (110 - 100.495), sd 0.29
    s1, s2, s3 = subsets_past.score(_subsets(-0.03, chosen=100.5), entropy)
    assert (s1.status, s2.status, s3.status) == ("FAIL", "FAIL", "FAIL")
    assert subsets_past.score(_subsets(0.03), entropy)[2].status == "incomplete"
    # ingenious 0.03 ahead at equal updates, but its selection costs 500 of 1000 updates
    assert subsets_past.score(_subsets(0.03, selection_s=50.0), entropy)[0].status == "FAIL"
    # a full-data run above the entropy for its first validations (> 10 % of the budget)
    assert {v.status for v in subsets_past.score(_subsets(0.03, above=True), entropy)} == {"NOT SCOREABLE"}
    partial = [r for r in _subsets(0.03) if r["seed"] != 4]
    assert {v.status for v in subsets_past.score(partial, entropy)} == {"incomplete"}


def _continued(gap_to_best, beats_random, budget=2400):
    rng = np.random.default_rng(2)
    results = []
    for direction in continued.DIRECTIONS:
        for seed in continued.SEEDS:
            base = 3.0 + rng.normal(0, 0.05)
            finals = {"constant-0.15": base + 0.10, "constant-0.30": base, "constant-0.45": base + 0.02,
                      "schedule-0.30-0.15": base + 0.01, "random": base + 0.05,
                      "gp-ts-trend": base + gap_to_best + rng.normal(0, 0.001), "gp-ts-trend-3arm": base + 0.2}
            if not beats_random and seed <= 3:
                finals["gp-ts-trend"] = finals["random"] + 0.01
            for arm, final in finals.items():
                charged = {"forward_cost_updates": 0.3, "decision_s": 1.0, "reward_passes": 12, "update_s": 0.1}
                results.append(_result(direction, arm, seed, final, budget=budget, every=200, start=final + 0.3,
                                       charged=charged))
    return results


def test_continued_criteria():
    entropies = {d: H for d in continued.DIRECTIONS}
    a, b, c = continued.score(_continued(0.0, True), "gp-ts-trend", entropies)
    assert (a.status, b.status, c.status) == ("PASS", "PASS", "PASS")
    assert "need ≥ 8 of 10" in c.detail
    a, b, c = continued.score(_continued(0.03, False), "gp-ts-trend", entropies)
    assert (b.status, c.status) == ("FAIL", "FAIL")
    # the 3-arm variant ends 0.1 bits above constant-0.15: target never reached
    a, _, _ = continued.score(_continued(0.0, True), "gp-ts-trend-3arm", entropies)
    assert a.status == "FAIL" and "target 3.140 not reached" in a.detail


def test_continued_played_table():
    results = [{"corpus": "linux-to-wikitext-2", "arm": "gp-ts-trend", "seed": 1, "rho_played": [0.15, 0.3, 0.3, 0.45]},
               {"corpus": "linux-to-wikitext-2", "arm": "gp-ts-trend", "seed": 2, "rho_played": [0.3, 0.3, 0.3, 0.3]},
               {"corpus": "linux-to-wikitext-2", "arm": "constant-0.15", "seed": 1, "rho_played": [0.15]},
               {"corpus": "wikitext-2-to-linux", "arm": "gp-ts-trend", "seed": 1}]  # no record: no row
    table = continued.played_table(results, ["gp-ts-trend", "random"]).splitlines()
    assert table[2:] == ["| linux-to-wikitext-2 | gp-ts-trend | 8 | 0.15: 12%, 0.30: 75%, 0.45: 12% |"]


def test_plateau_table_and_plots_of_the_results(tmp_path):
    results = _subsets(0.03, above=True)  # full seed 1 starts at 4.0 bits: above H = 3.5 until update 500
    for r in results:
        r["seconds_per_update"] = 0.1
    table = past_plateau.plateau_table(results, {"wikitext-2": H, "linux": H})
    full = next(line for line in table.splitlines() if line.startswith("| wikitext-2 | full |"))
    assert full.split(" | ")[4:] == ["50%–100%", "600 |"]  # seed 1: first below at 600, half the budget below
    ingenious = next(r for r in results if r["arm"] == "ingenious")
    assert subsets_past.charged(ingenious, 0) == pytest.approx(50.0)  # 5 s of selection at 0.1 s an update
    assert subsets_past.charged(ingenious, 300) == pytest.approx(350.0)
    assert subsets_past.charged(next(r for r in results if r["arm"] == "full"), 300) == 300
    for path in (harness.plot_curves(results, tmp_path / "loss.png", x=subsets_past.charged,
                                     entropy={"wikitext-2": H, "linux": H}),
                 harness.plot_paired_deltas({"linux": {arm: {r["seed"]: r["val_curve"] for r in results
                                                             if (r["corpus"], r["arm"]) == ("linux", arm)}
                                                       for arm in subsets_past.ARMS}},
                                            "random-online", tmp_path / "deltas.png", "Δ", every_seed=True)):
        assert path.stat().st_size > 10_000


def test_bound_verdict_reports_the_spread_and_what_it_can_detect():
    verdict = past_plateau.bound_verdict("X", [0.01, -0.01, 0.02, 0.0], 0.95, 0.0, 4, strict=True, what="d")
    assert verdict.status == "FAIL" and "sd 0.0129" in verdict.detail
    detectable = float(verdict.detail.split("difference of ")[1].split()[0])
    assert detectable == pytest.approx(power.detectable(4, 0.012910, 0.05), abs=1e-4) and detectable > 0.0129
