"""--tensorboard-logdir shows ψ, the reward and the masking statistics: a tiny GP-TS run, its
event files read back with tensorboard's own reader."""

import pytest

from conftest import TINY_MODEL, run_fairseq

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is not installed"
)

INTERACTION_UPDATES = 3
MAX_UPDATE = 9


def scalars(logdir):
    """{tag: [(step, value), ...]} of one fairseq log tag's event files."""
    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_shows_psi_reward_and_masking_statistics(tiny_corpus, tmp_path):
    logdir = tmp_path / "tb"
    run_fairseq([
        tiny_corpus, *TINY_MODEL, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
        "--gpts-policy", "gp-ts", "--gpts-interaction-updates", INTERACTION_UPDATES,
        "--gpts-reward-batches", "2", "--max-update", MAX_UPDATE, "--no-save",
        "--save-dir", tmp_path / "save", "--tensorboard-logdir", logdir,
    ])
    train_inner = scalars(logdir / "train_inner")
    for tag in ("psi_rho", "psi_gamma", "psi_lambda", "selected_frac", "loss_mask", "loss_random",
                "loss_kept", "loss"):
        assert [step for step, _ in train_inner.get(tag, [])] == list(range(1, MAX_UPDATE + 1)), tag
    assert all(0.05 <= value <= 0.5 for _, value in train_inner["psi_rho"])  # the paper's ρ grid
    # one reward and one decision per finished interaction, at the update that starts the next;
    # the last interaction, ended by --max-update, has a reward and no decision
    decided_at = list(range(INTERACTION_UPDATES + 1, MAX_UPDATE + 1, INTERACTION_UPDATES))
    for tag in ("gpts_next_mask_prob", "gpts_decision_ms"):
        assert [step for step, _ in train_inner.get(tag, [])] == decided_at, tag
    assert [step for step, _ in train_inner["gpts_reward"]] == decided_at + [MAX_UPDATE]
    # the ψ decided at an interaction is the ψ in force from that update on
    psi_rho = dict(train_inner["psi_rho"])
    assert all(psi_rho[step] == pytest.approx(value, abs=1e-3) for step, value in train_inner["gpts_next_mask_prob"])
    assert "loss" in scalars(logdir / "valid")
