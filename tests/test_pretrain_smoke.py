"""benchmarks/pretrain.py end to end: every policy trains for two updates, results and summary are written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import pretrain  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _task_ready() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gpts_fairseq.tasks", "gpts_fairseq.bandit"))


@pytest.mark.skipif(not _task_ready(), reason="needs the gpts_mlm task and the bandit")
@pytest.mark.skipif(not (SHARED / "wikitext-2").is_dir(), reason="needs ../shared/data")
def test_two_update_budget_runs_every_policy_end_to_end(tmp_path, monkeypatch):
    results = tmp_path / "results"
    argv = ["--corpus", "wikitext-2", "--seeds", "1", "--budget-updates", "2", "--interaction-updates", "1",
            "--max-lines", "60", "--jobs", "2", "--data-root", str(tmp_path / "data"),
            "--work-root", str(tmp_path / "work"), "--results-root", str(results)]
    assert pretrain.main(argv) == 0
    for name, policy in pretrain.POLICIES.items():
        result = json.loads(pretrain.result_path(results, "wikitext-2", name, 1).read_text())
        assert result["budget_updates"] == 2 and result["corpus"] == "wikitext-2" and result["seed"] == 1
        assert [u for u, _ in result["val_curve"]] == [1, 2]
        assert result["final_val_loss"] == result["val_curve"][-1][1] > 0
        assert result["wall_time_s"] > 0 and result["psi_sequence"]
        if policy.gpts_policy == "constant":
            assert {p["psi"]["mask_prob"] for p in result["psi_sequence"]} == {policy.psi[0]}
        if policy.gpts_policy != "constant":  # one interaction finished, its choice held to the end
            assert [(p["update"], p["end_update"]) for p in result["psi_sequence"]] == [(0, 1), (1, 2)]
        assert result["settings"]["tokenizer"] == "char" and result["settings"]["eval_batches"] == 12
    text = (results / "summary.md").read_text()
    assert all(f"| {name} | 1 |" in text for name in pretrain.POLICIES)
    for name in ("val_loss.png", "psi.png", "reward.png", "posterior_gp-ts-rho_seed_1.png"):
        assert (results / "wikitext-2" / "report" / name).is_file()
    # resumable: with the same settings every finished run is recognised and nothing is trained
    monkeypatch.setattr(pretrain.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was rerun"))
    settings = pretrain.Settings(budget_updates=2, interaction_updates=1)
    for policy in pretrain.POLICIES.values():
        pretrain.run_one("wikitext-2", tmp_path / "data", policy, 1, settings, tmp_path / "work", results)
    with pytest.raises(ValueError, match="other settings .*lr=0.002"):
        pretrain.run_one("wikitext-2", tmp_path / "data", pretrain.POLICIES["random"], 1,
                         pretrain.Settings(budget_updates=2, interaction_updates=1, lr=1e-3), tmp_path / "work", results)
