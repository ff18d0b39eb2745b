"""The demo's parts that decide what a user sees: the policies it trains, the entropies it
compares the losses with, and the progress line it prints while the runs train."""

from __future__ import annotations

import json
import math

import pytest

from gpts_fairseq import __main__ as demo
from gpts_fairseq.report.history import HISTORY_FILE, LOG_FILE


def test_corpus_entropies_by_hand(tmp_path):
    (tmp_path / "dict.txt").write_text("a 3\nb 1\n")
    (tmp_path / "train.txt").write_text("a b c\na a\n")
    # tokens: a b <unk> </s> a a </s>: counts a 3, b 1, <unk> 1, </s> 2 of 7
    unigram, previous = demo.corpus_entropies(tmp_path / "train.txt", tmp_path / "dict.txt")
    assert unigram == pytest.approx(-sum(c / 7 * math.log2(c / 7) for c in (3, 1, 1, 2)))
    # 6 pairs, each once; a precedes 3 of them (b, a, </s>: 1/3 each), b, <unk>, </s> one each (1)
    assert previous == pytest.approx(0.5 * math.log2(3))


@pytest.mark.parametrize("best, worst, says", [
    (7.25, 7.40, "on the unigram plateau"),
    (6.90, 7.05, "0.25–0.40 below the unigram plateau, still 1.90–2.05 above the previous-token entropy"),
    (4.70, 4.95, "past the previous-token entropy"),
])
def test_plateau_note_places_the_final_losses(best, worst, says):
    note = demo.plateau_note(best, worst, unigram=7.30, previous=5.00)
    assert says in note and f"{best:.2f}–{worst:.2f} bits" in note


def test_progress_line_reads_the_growing_log_and_history(tmp_path):
    save = tmp_path / "gp-ts-trend"
    save.mkdir()
    run = demo.DemoRun("gp-ts-trend", save, process=None, started=0.0)
    assert demo.run_progress(run) == (0, f"gp-ts-trend 0/{demo.DEMO_UPDATES}")
    (save / LOG_FILE).write_text(
        '{"epoch": 1, "loss": "9.1", "num_updates": "60"}\n'
        '{"epoch": 1, "valid_loss": "7.512", "valid_num_updates": "40"}\n'
        '{"epoch": 1, "loss": "8.9", "num_updates": "80"}\n')
    psi = {"mask_prob": 0.15, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}
    record = {"interaction": 0, "update": 0, "end_update": 40, "psi": psi, "val_loss": 7.512, "reward": 0.0123,
              "next_psi": {**psi, "mask_prob": 0.3}}
    # the second record is still being written (no newline yet): not read
    (save / HISTORY_FILE).write_text(json.dumps(record) + "\n" + '{"interaction": 1, "upd')
    assert demo.run_progress(run) == (
        80, f"gp-ts-trend 80/{demo.DEMO_UPDATES} ρ 0.30 (interaction 1), last reward +0.0123, val 7.512")


@pytest.mark.parametrize("label", list(demo.DEMO_POLICIES))
def test_each_demo_run_is_the_policy_it_is_labelled(label):
    """The demo's fairseq arguments, through fairseq's parser and the task's own policy
    builder: gp-ts with the trend reward model over the ρ grid, and the fixed ρ runs."""
    from gpts_fairseq.report.replay import build_run_policy

    policy_name, rho, options = demo.DEMO_POLICIES[label]
    policy, cfg = build_run_policy(["<data>", *demo.DEMO_TRAIN, "--gpts-policy", policy_name,
                                    "--mask-prob", str(rho), *options])
    assert policy.name == policy_name and policy.seed == demo.DEMO_SEED
    assert cfg.max_update == demo.DEMO_UPDATES and cfg.mask_prob == rho
    if policy_name == "gp-ts":
        assert policy.reward_model == "trend" and policy.space.dims == ("mask_prob",)
        assert cfg.gpts_interaction_updates == demo.DEMO_INTERACTION_UPDATES
        assert demo.DEMO_UPDATES // demo.DEMO_INTERACTION_UPDATES >= 10  # enough decisions to show a posterior
    else:  # the task masks a constant run with the first ψ for good (no bandit loop)
        assert cfg.gpts_policy == "constant" and cfg.leave_unmasked_prob == cfg.random_token_prob == 0.1
