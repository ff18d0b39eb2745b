"""The bandit without fairseq: regret on synthetic problems, state, determinism, constraints,
bad configuration, ignored rewards and the failed-fit fallback."""

import math

import pytest
import torch

from gpts_fairseq.bandit import ArmSpace, BanditWarning, GPNumericalError, compute_reward, make_policy
from gpts_fairseq.bandit import policies as policies_module
from gpts_fairseq.bandit.synthetic import SyntheticProblem, run_bandit

SEEDS = (1, 2, 3)


def mean_cumulative_regret(name, problem_for, interactions, **options):
    """Over SEEDS, on the paper's ρ grid."""
    space = ArmSpace.paper_grid("rho")
    totals = [sum(run_bandit(make_policy(name, space=space, seed=seed, **options), problem_for(space, seed),
                             interactions)) for seed in SEEDS]
    return sum(totals) / len(totals)


def test_gp_ts_beats_random_on_a_static_problem():
    def problem(space, seed):
        return SyntheticProblem(space, rho_start=0.30, noise=0.2, seed=seed)

    gp = mean_cumulative_regret("gp-ts", problem, 30)
    rand = mean_cumulative_regret("random", problem, 30)
    assert gp < 0.6 * rand, (gp, rand)


def test_contextual_gp_ts_beats_random_when_the_optimum_drifts():
    """ρ* moves 0.35 -> 0.15 over training; progress as a GP input tracks it. (With a reward
    level that also decays, benchmarks/nonstationary.py shows a sliding window does better.)"""
    def problem(space, seed):
        return SyntheticProblem.drifting(space, noise=0.2, seed=seed, decay=0.0)

    gp = mean_cumulative_regret("gp-ts", problem, 30, context="progress")
    rand = mean_cumulative_regret("random", problem, 30)
    assert gp < 0.75 * rand, (gp, rand)


def observed_policy(name="gp-ts", variant="psi", seed=4, steps=6, **options):
    space = ArmSpace.paper_grid(variant)
    policy = make_policy(name, space=space, seed=seed, **options)
    problem = SyntheticProblem(space, seed=seed)
    run_bandit(policy, problem, steps)
    return policy


def test_state_round_trip_through_weights_only_load(tmp_path):
    policy = observed_policy(context="progress")
    torch.save(policy.state_dict(), tmp_path / "bandit.pt")
    fresh = make_policy("gp-ts", space=ArmSpace.paper_grid("psi"), seed=4, context="progress")
    fresh.load_state_dict(torch.load(tmp_path / "bandit.pt", weights_only=True))
    for t in range(6, 9):
        a, b = policy.decide(t, t / 10), fresh.decide(t, t / 10)
        assert torch.equal(a.arm, b.arm) and a.psi == b.psi


def test_state_from_another_configuration_is_refused():
    state = observed_policy(kernel="rbf").state_dict()
    other = make_policy("gp-ts", space=ArmSpace.paper_grid("psi"), seed=4, kernel="matern52")
    with pytest.raises(ValueError, match="different configuration.*kernel"):
        other.load_state_dict(state)


def test_decisions_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [d.psi for d in _decisions()]
        torch.set_num_threads(max(2, threads))
        many = [d.psi for d in _decisions()]
    finally:
        torch.set_num_threads(threads)
    assert one == many


def _decisions():
    policy = observed_policy(seed=9)
    return [policy.decide(t, 0.5) for t in range(6, 10)]


@pytest.mark.parametrize("name, options", [
    ("random", {}), ("gp-ts", {}), ("gp-ts", {"context": "progress"}), ("gp-ts", {"reward_model": "trend"}),
    ("schedule", {"psi_start": {"mask_prob": 0.3, "leave_unmasked_prob": 0.9, "random_token_prob": 0.1},
                  "psi_end": {"mask_prob": 0.15, "leave_unmasked_prob": 0.0, "random_token_prob": 1.0}}),
])
def test_every_decision_obeys_the_constraint(name, options):
    space = ArmSpace.continuous("psi", bounds={"mask_prob": (0.05, 0.5), "leave_unmasked_prob": (0.0, 1.0),
                                              "random_token_prob": (0.0, 1.0)})
    policy = make_policy(name, space=space, seed=2, **options)
    problem = SyntheticProblem(space, seed=2)
    for t in range(12):
        decision = policy.decide(t, t / 12)
        psi = decision.psi
        assert psi["leave_unmasked_prob"] + psi["random_token_prob"] <= 1 + 1e-12
        assert all(0 <= value <= 1 for value in psi.values())
        policy.observe(decision.arm, problem.reward(decision.arm, t / 12, t), t / 12, start_loss=5.0 - 0.1 * t)


def test_paper_grids_have_the_papers_arms():
    rho = ArmSpace.paper_grid("rho")
    assert len(rho) == 10 and rho.candidates[:, 0].tolist() == pytest.approx([0.05 * k for k in range(1, 11)])
    psi = ArmSpace.paper_grid("psi")
    assert len(psi) == 1000  # 0.05..0.50 in each of ρ, γ, λ: γ + λ <= 1 always holds
    assert len(ArmSpace.continuous("psi")) >= 1024


@pytest.mark.parametrize("build, message", [
    (lambda: ArmSpace(("mask_prob",), {"mask_prob": (0.1, 1.5)}), r"bounds\['mask_prob'\] upper must be in \[0, 1\]"),
    (lambda: ArmSpace(("mask_prob",), {"mask_prob": (-0.1, 0.5)}), r"bounds\['mask_prob'\] lower must be in \[0, 1\]"),
    (lambda: ArmSpace(("mask_prob",), {"mask_prob": (0.1, 0.2)}, step=0.5), "step 0.5 is larger than the range"),
    (lambda: ArmSpace(("leave_unmasked_prob", "random_token_prob"),
                      {"leave_unmasked_prob": (0.8, 1.0), "random_token_prob": (0.8, 1.0)}, fixed={"mask_prob": 0.1},
                      step=0.1), "the grid is empty"),
    (lambda: ArmSpace(("rho",)), "dims: unknown dimension 'rho'"),
    (lambda: make_policy("ucb"), "policy must be one of"),
    (lambda: make_policy("gp-ts", kernel="linear"), "kernel must be one of"),
    (lambda: make_policy("schedule", shape="exp"), "schedule must be one of"),
    (lambda: make_policy("constant", psi={"mask_prob": 0.2, "leave_unmasked_prob": 0.7, "random_token_prob": 0.7}),
     r"psi\['leave_unmasked_prob'\] \+ psi\['random_token_prob'\] must be <= 1"),
])
def test_bad_configuration_names_the_option(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("reward", [None, float("nan"), float("inf")])
def test_missing_or_non_finite_rewards_are_ignored(reward):
    policy = observed_policy(variant="rho", steps=3)
    before = policy.rewards.clone()
    assert policy.observe(torch.tensor([0.2], dtype=torch.float64), reward) is False
    assert torch.equal(policy.rewards, before)


def test_rewards_relative_and_difference():
    assert compute_reward(10.0, 9.0) == pytest.approx(0.1)  # lower loss, positive reward
    assert compute_reward(10.0, 9.0, "difference") == pytest.approx(1.0)
    assert compute_reward(10.0, math.nan) is None and compute_reward(None, 9.0) is None


def test_a_failed_posterior_falls_back_to_a_random_arm(monkeypatch):
    policy = observed_policy(variant="rho", steps=4)

    def broken(*args, **kwargs):
        raise GPNumericalError("covariance not positive definite even with jitter 1e-2")

    monkeypatch.setattr(policies_module, "posterior", broken)
    with pytest.warns(BanditWarning, match="playing a random arm"):
        decision = policy.decide(4, 0.5)
    assert decision.info["fallback"] is True and "positive definite" in decision.info["fallback_reason"]
    assert any(torch.equal(decision.arm, arm) for arm in policy.space.candidates)
