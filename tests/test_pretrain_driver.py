"""benchmarks/pretrain.py: command lines, resumability, the summary table, and an end-to-end smoke run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import corpora  # noqa: E402
import pretrain  # noqa: E402



def _option(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_every_policy_maps_to_the_documented_task_options(tmp_path):
    settings = pretrain.Settings(budget_updates=400, interaction_updates=20)
    cmds = {name: pretrain.run_args(tmp_path / "data", tmp_path / "save", p, 3, settings)
            for name, p in pretrain.POLICIES.items()}
    for cmd in cmds.values():
        assert _option(cmd, "--task") == "gpts_mlm" and _option(cmd, "--criterion") == "gpts_masked_lm"
        assert _option(cmd, "--gpts-valid-masking") == "reference"
        assert _option(cmd, "--gpts-ref-mask-prob") == "0.15"
        assert _option(cmd, "--max-update") == "400" and _option(cmd, "--validate-interval-updates") == "20"
        assert _option(cmd, "--gpts-interaction-updates") == "20" and _option(cmd, "--seed") == "3"
        assert _option(cmd, "--log-format") == "json" and _option(cmd, "--log-file") == str(tmp_path / "save" / "train.log")
    assert _option(cmds["constant-0.15"], "--gpts-policy") == "constant"
    assert _option(cmds["constant-0.40"], "--mask-prob") == "0.4"
    assert _option(cmds["schedule-0.30-0.15"], "--gpts-schedule-end") == "0.15,0.1,0.1"
    assert _option(cmds["schedule-0.30-0.15"], "--mask-prob") == "0.3"
    assert _option(cmds["random"], "--gpts-policy") == "random"
    assert _option(cmds["gp-ts-psi"], "--gpts-arms") == "psi"
    assert _option(cmds["gp-ts-rho-progress"], "--gpts-context") == "progress"
    assert "--gpts-context" not in cmds["gp-ts-rho"]


@pytest.mark.parametrize("argv, message", [
    (["--budget-updates", "0"], "--budget-updates must be >= 1"),
    (["--budget-updates", "10", "--interaction-updates", "11"], "--interaction-updates must be in [1, --budget-updates=10]"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--eval-batches", "-1"], "--eval-batches must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_options_fail_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pretrain.main([*argv, "--results-root", str(tmp_path / "r"), "--data-root", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


def _fake_result(root, corpus, policy, seed, curve, budget=40):
    path = pretrain.result_path(root, corpus, policy, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"label": policy, "policy": pretrain.POLICIES[policy].gpts_policy, "seed": seed, "corpus": corpus,
            "budget_updates": budget, "psi": dict(zip(("mask_prob", "leave_unmasked_prob", "random_token_prob"),
                                                      pretrain.POLICIES[policy].psi)),
            "arms": None, "context": None, "fairseq_args": []}
    path.write_text(json.dumps({
        "name": f"seed{seed}", "corpus": corpus, "policy": policy, "seed": seed, "budget_updates": budget,
        "final_val_loss": curve[-1], "val_curve": [[10 * (k + 1), x] for k, x in enumerate(curve)],
        "wall_time_s": 60.0 + seed, "psi_sequence": [], "interactions": [], "run_info": info,
    }))
    return path


def test_finished_runs_are_skipped_and_a_budget_change_is_refused(tmp_path, monkeypatch):
    _fake_result(tmp_path, "linux", "random", 1, [9.0, 8.0, 7.0, 6.0])
    monkeypatch.setattr(pretrain.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was rerun"))
    settings = pretrain.Settings(budget_updates=40, interaction_updates=10)
    out = pretrain.run_one("linux", tmp_path, pretrain.POLICIES["random"], 1, settings, tmp_path / "w", tmp_path)
    assert out == pretrain.result_path(tmp_path, "linux", "random", 1)
    with pytest.raises(ValueError, match="budget 40 updates, not --budget-updates=80"):
        pretrain.run_one("linux", tmp_path, pretrain.POLICIES["random"], 1,
                         pretrain.Settings(budget_updates=80, interaction_updates=10), tmp_path / "w", tmp_path)


def test_summary_numbers(tmp_path):
    # constant-0.15 finals 7.5 and 7.7 -> target 7.6; gp-ts-rho seed-mean curve 9.55 8.05 7.58 7.3 -> 30/40
    _fake_result(tmp_path, "wikitext-2", "constant-0.15", 1, [10.0, 9.0, 8.0, 7.5])
    _fake_result(tmp_path, "wikitext-2", "constant-0.15", 2, [10.0, 9.2, 8.2, 7.7])
    _fake_result(tmp_path, "wikitext-2", "gp-ts-rho", 1, [9.5, 8.0, 7.55, 7.2])
    _fake_result(tmp_path, "wikitext-2", "gp-ts-rho", 2, [9.6, 8.1, 7.61, 7.4])
    _fake_result(tmp_path, "wikitext-2", "constant-0.40", 1, [10.1, 9.5, 9.0, 8.5])
    summary = pretrain.write_summary(tmp_path, corpora.CORPORA)
    text = summary.read_text()
    assert "## wikitext-2" in text and "## linux" not in text
    assert "5 runs; target 7.600 bits." in text
    assert "Wall time per run: mean 61 s, max 62 s (sum 5 min)." in text
    overview, corpus = text.split("## wikitext-2")
    assert "| gp-ts-rho | 7.300 ± 0.141 | 30 (0.75) | -0.300 (2/2) |" in overview
    assert "| constant-0.15 | 7.600 ± 0.141 | 40 (1.00) | – |" in overview
    rows = [line for line in corpus.splitlines() if line.startswith("| ") and "policy" not in line]
    # Δ vs constant-0.15 by seed: gp-ts-rho 7.2-7.5, 7.4-7.7 -> -0.3 ± 0; constant-0.40 seed 1 only: +1.0
    assert rows == [
        "| constant-0.15 | 2 | 7.600 ± 0.141 | 40 (1.00) | – |",
        "| constant-0.40 | 1 | 8.500 | not reached | +1.000; 0/1 |",
        "| gp-ts-rho | 2 | 7.300 ± 0.141 | 30 (0.75) | -0.300 ± 0.000; 2/2 |",
    ]
    for name in ("val_loss.png", "psi.png", "reward.png", "summary.md"):
        assert (tmp_path / "wikitext-2" / "report" / name).is_file()
    assert "](wikitext-2/report/val_loss.png)" in text
    # gp-ts-rho minus constant-0.15, same seed, mean over the two seeds, at every validation
    runs = pretrain.load_results(tmp_path, "wikitext-2")
    curve = pretrain.paired_delta_curve(runs, "gp-ts-rho")
    assert [u for u, _ in curve] == [10, 20, 30, 40]
    assert [d for _, d in curve] == pytest.approx([-0.45, -1.05, -0.52, -0.3])
    assert [d for _, d in pretrain.paired_delta_curve(runs, "constant-0.40")] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert (tmp_path / "delta_vs_constant.png").is_file() and "](delta_vs_constant.png)" in text
