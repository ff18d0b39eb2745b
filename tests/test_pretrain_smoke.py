"""benchmarks/pretrain.py end to end on a user's text: the pilot, then one policy of each kind
(constant, schedule, random, GP-TS) for two updates; results, the criteria and the summary are
written, and nothing reruns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import harness, pretrain

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _task_ready() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gpts_fairseq.tasks", "gpts_fairseq.bandit"))


@pytest.mark.e2e  # trains with fairseq-train in subprocesses, through the harness
@pytest.mark.skipif(not _task_ready(), reason="needs the gpts_mlm task and the bandit")
@pytest.mark.skipif(not (SHARED / "linux").is_dir(), reason="needs ../shared/data")
def test_pilot_and_each_kind_of_policy_on_a_user_text(tmp_path, monkeypatch, capsys):
    lines = (SHARED / "linux" / "train.txt").read_text(encoding="utf-8").splitlines()[:400]
    text = tmp_path / "mine.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = tmp_path / "results"
    policies = ["constant-0.15", "schedule-0.30-0.15", "random", "gp-ts-trend"]  # the reference and the scored one
    argv = ["--text", str(text), "--text-name", "mine", "--seeds", "1", "--policies", *policies,
            "--pilot-max-updates", "4", "--budget-updates", "2", "--interaction-updates", "1", "--jobs", "2",
            "--data-root", str(tmp_path / "data"), "--work-root", str(tmp_path / "work"), "--results-root", str(results)]
    assert pretrain.main(argv) == 0
    pilot = json.loads(pretrain.pilot_path(results, "mine").read_text())
    assert pilot["stopped_at"] == 4 and pilot["seed"] == 0 and pilot["settings"]["validate_updates"] == 25
    assert pilot["u_star"] is None and pilot["budget_updates_suite"] == 4000  # 4 updates never get there
    assert 0 < pilot["previous_token_entropy_bits"] < 8 and pilot["update_s"] > 0 and pilot["forward_cost_updates"] > 0
    assert json.loads((results / "pilot" / "interaction_length.json").read_text())["rows"]
    progress = capsys.readouterr().out
    assert "[4/4] mine" in progress and "left" in progress
    for name in policies:
        policy = pretrain.POLICIES[name]
        result = json.loads(harness.result_path(results, "mine", name, 1).read_text())
        assert result["budget_updates"] == 2 and result["corpus"] == "mine" and result["seed"] == 1
        assert [u for u, _ in result["val_curve"]] == [1, 2] and result["final_val_loss"] > 0
        assert "/" not in json.dumps(result["run_info"]["fairseq_args"]).replace("<save>/", "")
        assert result["exit_code"] == 0 and result["fingerprint"] and result["events"] == {}
        compute = result["compute"]
        assert compute["reward_passes"] == 2 and compute["forward_cost_updates"] > 0
        charged = compute["charged_update_equivalents"]
        assert charged > 2 if policy.uses_rewards else charged == 2
    text_md = (results / "summary.md").read_text()
    assert "## Pre-registered criteria (gp-ts-trend)" in text_md and "(c) **incomplete**" in text_md
    assert (results / "mine" / "report" / "val_loss.png").is_file()
    # resumable: the pilot and every finished run are recognised, nothing trains again
    monkeypatch.setattr(harness, "_train", lambda *a: pytest.fail("a finished run was rerun"))
    assert pretrain.main(argv) == 0
