"""The AutoTinyBERT benchmark driver's own logic (benchmarks/autotinybert.py): Kendall tau, the
tau study's architectures, the standalone model options, and the criteria on synthetic results."""

import json

import pytest

from benchmarks import autotinybert as driver
from gpts_fairseq.supernet.space import SubArch, sub_arch_params


def test_kendall_tau():
    assert driver.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert driver.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert driver.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_tau_architectures_span_the_parameter_range():
    archs = driver.tau_archs(1, 200, 130)
    assert archs == driver.tau_archs(1, 200, 130) and archs != driver.tau_archs(2, 200, 130)
    sizes = [sub_arch_params(driver.SPACE, a, 200, 130) for a in archs]
    assert sizes == sorted(sizes) and len(set(archs)) == driver.TAU_ARCHS


def test_standalone_options_use_stock_roberta_where_the_shape_allows():
    assert driver.arch_args(driver.DEFAULT)[:2] == ("--arch", "roberta_base")
    assert driver.arch_args(SubArch(2, 80, 2, 128))[:2] == ("--arch", "gpts_roberta_super")


def test_criteria_on_synthetic_results(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "RESULTS", tmp_path)
    losses = {"evolved-params-inherited": 2.00, "evolved-latency-inherited": 2.05, "default-inherited": 2.03,
              "fast-inherited": 2.01, "random-inherited": 2.10, "evolved-params-scratch": 2.40}
    for corpus in ("wikitext-2", "linux"):
        for seed in driver.SEEDS:
            for arm, loss in losses.items():
                out = tmp_path / corpus / arm / f"seed{seed}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"corpus": corpus, "arm": arm, "seed": seed, "test_loss_bits": loss}))
        (tmp_path / corpus / "tau.json").write_text(json.dumps({"kendall_tau": 0.6 if corpus == "linux" else 0.4}))
    verdicts = {v.name: v.status for v in driver.score(("wikitext-2", "linux"))}
    assert verdicts == {"A1": "PASS", "A2": "FAIL", "B": "PASS", "C": "PASS", "D": "FAIL"}
