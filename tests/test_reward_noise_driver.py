"""benchmarks/reward_noise.py: the S2 rule, the replicate command line and the pre-registered
noise, score and paired-probe criteria on planted numbers."""

from __future__ import annotations

import math

import pytest

from benchmarks import harness
from benchmarks import reward_noise as rn


def test_second_state_is_the_first_multiple_of_250_below_the_entropy_or_the_limit():
    curve = [(250, 4.2), (400, 3.0), (500, 3.5), (750, 3.3), (1000, 3.1)]
    assert rn.second_state(curve, 3.372) == 750  # 400 is no multiple of 250
    assert rn.second_state([(u, 4.0) for u in range(250, 3001, 250)], 3.372) == rn.S2_LIMIT
    assert rn.second_state([(250, 4.0)], 3.372) is None  # undecided yet


def test_replicate_continues_the_schedule_from_the_state_with_its_own_seed(tmp_path):
    spec = rn.replicate_spec(tmp_path / "data", tmp_path / "work" / "state.pt", 1000, "constant-0.45", 4)
    cmd = spec.command(tmp_path / "save")
    value = {name: cmd[cmd.index(name) + 1] for name in ("--max-update", "--total-num-update", "--seed", "--mask-prob",
                                                          "--restore-file", "--ema-decay")}
    assert value == {"--max-update": "1200", "--total-num-update": "4000", "--seed": "4", "--mask-prob": "0.45",
                     "--restore-file": str(tmp_path / "work" / "state.pt"), "--ema-decay": "0.99"}
    assert "--no-save" not in cmd and "--store-ema" in cmd and "--gpts-allow-option-change" in cmd
    places = harness.places_of(spec, tmp_path / "save", tmp_path / "work")
    assert harness.portable(cmd, places)[cmd.index("--restore-file") + 1] == "<work>/state.pt"


def _results(rewards: dict) -> dict:
    """Runs whose losses give the planted relative rewards: {(state, arm): [r per seed]}."""
    runs = []
    for (state, arm), values in rewards.items():
        for seed, r in enumerate(values, start=1):
            loss = {"0": {"raw": 4.0, "ema": 4.0}}
            for n in rn.LENGTHS:  # the EMA sees half of the raw reward's deviation from 0.01
                loss[str(n)] = {"raw": 4.0 * (1 - r), "ema": 4.0 * (1 - (0.01 + (r - 0.01) / 2))}
            runs.append({"state": state, "arm": arm, "seed": seed, "loss": loss})
    return {"state_run": {"states": [1000, 2250], "forward_cost_updates": 0.25, "settings": {"eval_batches": 12}},
            "runs": runs}


def test_scores_paired_noise_and_verdicts_on_planted_rewards():
    low = [0.010, 0.012, 0.008, 0.011, 0.009, 0.010]
    high_paired = [r + 0.004 for r in low]  # the same per-seed noise: paired sd 0
    results = _results({(1000, "constant-0.15"): low, (1000, "constant-0.45"): high_paired})
    analysis = rn.analyse(results)
    raw = next(r for r in analysis["rows"] if (r["state"], r["n"], r["weights"]) == (1000, 200, "raw"))
    noise = math.sqrt(sum((x - 0.01) ** 2 for x in low) / 5)
    assert raw["effect"] == pytest.approx(0.004) and raw["noise"] == pytest.approx(noise)
    assert raw["score"] == pytest.approx(0.004 / noise) and raw["paired_noise"] == pytest.approx(0.0, abs=1e-12)
    ema = next(r for r in analysis["rows"] if (r["state"], r["n"], r["weights"]) == (1000, 200, "ema"))
    assert ema["effect"] == pytest.approx(0.002) and ema["score"] == pytest.approx(raw["score"])  # both halved
    assert analysis["ema_criterion"] == [{"state": 1000, "raw_score": raw["score"], "ema_score": ema["score"],
                                          "ratio": pytest.approx(1.0), "pass": False}]  # needs x1.25
    assert analysis["probe_cost_share"] == {"50": pytest.approx((50 + 3) / 200), "200": pytest.approx(203 / 200)}
    assert [(c["state"], c["noise_pass"], c["cost_pass"]) for c in analysis["probe_criterion"]] == [(1000, True, False)] * 2
    assert analysis["complete"] is False and not analysis["ema_ships"] and not analysis["probe_ships"]  # 12 of 24 runs
