"""Issue 21, item 7: the interaction that ends at --max-update is in the history, with its
reward from the end-of-training validation and no decision after it."""

import json

import pytest

from conftest import TINY_MODEL, json_log, run_fairseq

TASK = ["--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--num-workers", "0"]


def test_the_last_interaction_ends_at_max_update_with_the_final_validation(tiny_corpus, tmp_path):
    """--gpts-reward-batches 0: the reward is measured on the whole validation split, so its loss
    is fairseq's end-of-training valid_loss (logged to 3 decimals)."""
    proc = run_fairseq([tiny_corpus, *TINY_MODEL, *TASK, "--gpts-policy", "gp-ts", "--gpts-interaction-updates", "10",
                        "--gpts-reward-batches", "0", "--max-update", "60", "--save-dir", tmp_path,
                        "--no-epoch-checkpoints"])
    records = [json.loads(line) for line in (tmp_path / "gpts_history.jsonl").read_text().splitlines()]
    assert [r["end_update"] for r in records] == [10, 20, 30, 40, 50, 60]
    last = records[-1]
    assert last["reward"] is not None and last["next_psi"] is None
    final = [r for r in json_log(proc, "valid") if int(r["valid_num_updates"]) == 60]
    assert final and abs(float(final[-1]["valid_loss"]) - last["val_loss"]) <= 0.0015
