"""benchmarks/growth_past.py's scoring on synthetic results in the harness' schema: targets,
FLOPs ratios, G1 and G2, a compound run that never reaches a target."""

from __future__ import annotations

import pytest

from benchmarks import growth_past

H = 3.5  # every corpus' entropy in these results


def _result(corpus, arm, seed, final, budget, start, every=100):
    """A run whose loss falls linearly from ``start`` to ``final``."""
    curve = [[u, start + (final - start) * u / budget] for u in range(every, budget + 1, every)]
    return {"corpus": corpus, "arm": arm, "seed": seed, "budget_updates": budget, "val_curve": curve}


def _growth(compound_speedup, stall=False):
    """Fixed runs fall to 3.0 and cross H at 40 % of the budget; compound reaches every loss
    at ``compound_speedup`` of fixed's FLOPs."""
    results = []
    flops_per_update = 1.0
    for corpus in ("wikitext-2", "linux"):
        for seed in growth_past.SEEDS:
            fixed = _result(corpus, "fixed", seed, 3.0 + 0.01 * seed, budget=2000, start=3.8)
            fixed["curve"] = [{"update": u, "loss": x, "flops": u * flops_per_update, "train_wall_s": u}
                              for u, x in fixed["val_curve"]]
            compound = dict(fixed, arm="compound",
                            curve=[dict(p, flops=p["flops"] * compound_speedup) for p in fixed["curve"]])
            if stall and seed == 1:
                compound["curve"] = [dict(p, loss=4.0) for p in compound["curve"]]
            results += [fixed, compound]
    return results


def test_growth_targets_and_criteria():
    fixed = _growth(0.5)[0]
    first = dict(fixed["val_curve"])
    assert growth_past.targets(fixed)[0] == pytest.approx((first[900] + first[1000] + first[1100]) / 3)
    entropy = {"wikitext-2": H, "linux": H}
    g1, g2 = growth_past.score(_growth(0.5), entropy)
    assert (g1.status, g2.status) == ("PASS", "PASS")
    g1, g2 = growth_past.score(_growth(0.9), entropy)
    assert g1.status == "FAIL"
    g1, g2 = growth_past.score(_growth(0.5, stall=True), entropy)
    assert (g1.status, g2.status) == ("FAIL", "FAIL")
    assert "sd not finite" in g2.detail


def test_g2_reports_the_measured_spread_and_the_ratio_it_detects():
    """Ratios 0.5, 0.6, 0.7 on each corpus: the sd of ln r over the 6 pairs, and the true ratio
    6 pairs detect at that sd (power 80 %, G2's one-sided 5 % test)."""
    import math
    import statistics

    from benchmarks import power

    results = []
    for seed, speedup in zip(growth_past.SEEDS, (0.5, 0.6, 0.7)):
        results += [r for r in _growth(speedup) if r["seed"] == seed]
    _, g2 = growth_past.score(results, {"wikitext-2": H, "linux": H})
    sd = statistics.stdev([math.log(x) for x in (0.5, 0.6, 0.7) * 2])
    detected = math.exp(-power.detectable(6, sd, 0.05))
    assert g2.status == "PASS" and f"sd of ln r {sd:.3f}, so 6 pairs detect a true ratio of {detected:.2f}" in g2.detail
    assert 0.5 < detected < 1.0


def test_growth_runs_mask_030_through_the_growth_settings(tmp_path, monkeypatch):
    """One --mask-prob, the growth driver's setting, and the FLOPs plan counts the same share;
    the growth benchmark's own default stays 0.15."""
    from benchmarks import growth

    monkeypatch.setattr(growth_past, "data_dir", lambda corpus: tmp_path)
    monkeypatch.setattr(growth, "vocab_size", lambda data: 105)
    command = growth_past.run_spec("linux", "compound", 1, 5000).command(tmp_path / "save")
    assert command.count("--mask-prob") == 1 and command[command.index("--mask-prob") + 1] == "0.3"
    assert growth.Settings().mask_prob == 0.15
    rho_15, rho_30 = (growth.plan("fixed", growth.Settings(mask_prob=rho), 105)["flops_per_update"][0] for rho in (0.15, 0.3))
    assert rho_30 > rho_15 and growth.plan("fixed", growth_past.settings(5000), 105)["flops_per_update"][0] == rho_30


def test_summary_tables_the_ratio_at_every_target_and_plots_loss_against_flops(tmp_path, monkeypatch):
    from benchmarks import harness

    for result in _growth(0.5):
        result["schedule"] = {"stage_updates": [2000], "flops_per_update": [1.0 if result["arm"] == "fixed" else 0.5]}
        result.update(growths=[{"update": 1000, "loss_before": 3.2, "loss_after": 3.45}] if result["arm"] == "compound"
                      else [], loadavg_before=[1.5, 1.0, 1.0], resumed_at_update=None)
        harness.write_json(tmp_path / result["corpus"] / result["arm"] / f"seed{result['seed']}.json", result)
    pilot = dict(_result("linux", "pilot", 0, 3.0, budget=2000, start=3.8), budget_updates=8000, stopped_early=True)
    harness.write_json(tmp_path / "linux" / "pilot" / "seed0.json", pilot)
    monkeypatch.setattr(growth_past, "RESULTS", tmp_path)
    monkeypatch.setattr(growth_past, "data_dir", lambda corpus: tmp_path / corpus)
    monkeypatch.setattr(harness, "corpus_entropy", lambda data: H)
    text = growth_past.write_summary().read_text()
    assert "- (G1) **PASS**" in text
    # a pilot stopped by its stop rule: its share below H is over the updates it ran, not its planned 8,000
    assert "| linux | pilot | 0 | 8000 | 3.0000 | 65% | 800 |" in text  # below H from update 700: 1,300 of 2,000 (16 % of 8,000)
    row, reported = [line for line in text.splitlines() if line.startswith("| linux | 2 |")]
    assert row.count(", 0.50") == 3  # compound reaches each target at half the fixed run's FLOPs
    assert reported == "| linux | 2 | +0.250 at 1000 | 1.00 | 1.00 | 1.00 | 1.5, 1.5 | –, – |"  # same wall clock
    assert (tmp_path / "loss.png").stat().st_size > 10_000 and (tmp_path / "loss_wall.png").stat().st_size > 10_000
