"""The trend-aware reward model (bandit/reward_model.py) and robust rewards: the additive GP
finds a planted arm effect under a planted trend, its algebra matches GPyTorch's, its state
round-trips (policy and interaction loop), its decisions do not depend on threads, bad options
(Python and fairseq) are named, and one outlier reward has a bounded influence."""

import dataclasses
import warnings
from types import SimpleNamespace

import pytest
import torch

from gpts_fairseq.bandit import ArmSpace, BanditWarning, make_policy
from gpts_fairseq.bandit.loop import InteractionLoop
from gpts_fairseq.bandit.gp import posterior
from gpts_fairseq.bandit.reward_model import TrendGP
from gpts_fairseq.bandit.rewards import ROBUST_CLIP, robust_standardise
from gpts_fairseq.bandit.synthetic import TrendProblem
from gpts_fairseq.bandit.thompson import interaction_generator
from gpts_fairseq.masking import Psi
from gpts_fairseq.tasks.gpts_mlm import GPTSMaskedLMConfig
from gpts_fairseq.interactions.options import build_policy


def feed(policy, problem, rounds, seed=0):
    """Every arm once per round, in a seeded order; the loss follows the rewards."""
    space, loss, previous, t = policy.space, problem.initial_loss, None, 0
    for r in range(rounds):
        order = torch.randperm(len(space), generator=interaction_generator(seed, r, "test-order"))
        for index in order.tolist():
            arm = space.candidates[index]
            progress = t / (rounds * len(space))
            reward = problem.reward(arm, progress, t, previous)
            policy.observe(arm, reward, progress, start_loss=loss)
            loss, previous, t = loss * (1 - reward), arm, t + 1
    return loss


def trend_policy(seed=3, **options):
    return make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=seed, reward_model="trend", **options)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_arm_effect_is_recovered_under_a_large_trend(seed):
    """Trend 0.35 -> 0.002 over the run, a peaked arm effect at ρ = 0.35 (0.01 high), 75% of
    it paid back on the next reward, noise sd 0.002: after 4 rounds over the 10 arms the
    posterior arm effect peaks at the planted ρ, and its size is about right."""
    space = ArmSpace.paper_grid("rho")
    problem = TrendProblem(space, height=0.01, width=0.1, noise=0.002, seed=seed)
    trend = trend_policy(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BanditWarning)  # the first rewards are clipped
        feed(trend, problem, 4, seed)
    arms, mean, _ = trend.posterior(1.0)
    assert float(arms[int(mean.argmax()), 0]) == pytest.approx(0.35)
    best, worst = mean.max(), mean[0]
    assert float(best - worst) == pytest.approx(0.01 * (1 - torch.exp(torch.tensor(-9.0)).item()), rel=0.5)


def test_posterior_matches_gpytorch_and_the_parts_add_up():
    torch.manual_seed(0)
    model = TrendGP(2, priors="gamma", payback=True, forgetting=0.5)
    for index, part in enumerate(model.covar_module.kernels):
        part.outputscale = 0.5 + index
    x, y = torch.rand(30, model.input_dim, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    test_x = torch.rand(12, model.input_dim, dtype=torch.float64)
    model.set_train_data(x, y, strict=False)
    model.eval()
    with torch.no_grad():
        predictive = model(test_x)  # GPyTorch's own exact prediction of the latent function
        mean, covariance = posterior(model, x, y, test_x)
        assert torch.allclose(mean, predictive.mean, atol=1e-8)
        assert torch.allclose(covariance, predictive.covariance_matrix, atol=1e-8)
        parts = [posterior(model, x, y, test_x, component=part)[0] for part in model.covar_module.kernels]
        assert torch.allclose(sum(parts), mean, atol=1e-10)


def test_state_round_trip_and_decisions_after_restore(tmp_path):
    space = ArmSpace.paper_grid("psi")
    problem = TrendProblem(space, seed=5)
    policy = make_policy("gp-ts", space=space, seed=5, reward_model="trend", forgetting=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BanditWarning)
        loss = problem.initial_loss
        for t in range(8):
            decision = policy.decide(t, t / 20, start_loss=loss)
            reward = problem.reward(decision.arm, t / 20, t)
            policy.observe(decision.arm, reward, t / 20, start_loss=loss)
            loss *= 1 - reward
    torch.save(policy.state_dict(), tmp_path / "bandit.pt")
    fresh = make_policy("gp-ts", space=space, seed=5, reward_model="trend", forgetting=0.5)
    fresh.load_state_dict(torch.load(tmp_path / "bandit.pt", weights_only=True))
    for t in range(8, 11):
        a, b = policy.decide(t, t / 20, start_loss=loss), fresh.decide(t, t / 20, start_loss=loss)
        assert torch.equal(a.arm, b.arm) and a.info["posterior_mean"] == b.info["posterior_mean"]
        for p in (policy, fresh):
            p.observe(a.arm, 0.001 * t, t / 20, start_loss=loss)
    assert policy.model.summary() == fresh.model.summary()


def test_a_state_of_another_reward_model_is_refused():
    state = trend_policy().state_dict()
    with pytest.raises(ValueError, match="reward_model: saved 'trend', now 'arm'"):
        make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=3).load_state_dict(state)


def test_decisions_do_not_depend_on_the_thread_count():
    def decisions():
        policy = trend_policy(seed=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BanditWarning)
            loss = feed(policy, TrendProblem(policy.space, seed=8), 1, 8)
        return [policy.decide(t, 0.5, start_loss=loss).arm.tolist() for t in range(10, 14)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decisions()
        torch.set_num_threads(max(2, threads))
        many = decisions()
    finally:
        torch.set_num_threads(threads)
    assert one == many


@pytest.mark.parametrize("options, message", [
    ({"reward_model": "state"}, r"reward_model must be one of \['arm', 'trend'\]"),
    ({"reward_model": "trend", "context": "progress"}, "context must be 'none' with reward_model 'trend'"),
    ({"reward_model": "trend", "forgetting": 0.0}, "forgetting must be None or a time scale > 0"),
    ({"reward_model": "trend", "forgetting": float("inf")}, "forgetting must be None or a time scale > 0"),
    ({"forgetting": 0.5}, "forgetting needs reward_model 'trend', got forgetting 0.5 with reward_model 'arm'"),
    ({"payback": True}, "payback needs reward_model 'trend', got payback True with reward_model 'arm'"),
    ({"reward_model": "trend", "payback": "yes"}, "payback must be True or False"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        make_policy("gp-ts", **options)


def test_the_trend_model_needs_the_start_loss():
    policy = trend_policy()
    arm = policy.space.candidates[0]
    with pytest.raises(ValueError, match="reward_model 'trend' needs start_loss"):
        policy.observe(arm, 0.01, 0.1)
    with pytest.raises(ValueError, match="start_loss must be None or a finite number"):
        policy.observe(arm, 0.01, 0.1, start_loss=float("nan"))
    assert policy.observe(arm, None, 0.1) is False  # no reward: nothing needed


def test_robust_standardise():
    rewards = torch.tensor([0.010, 0.012, 0.008, 0.011, 0.009, -126235.0], dtype=torch.float64)
    y, shift, scale, clipped = robust_standardise(rewards)
    assert clipped.tolist() == [False] * 5 + [True]
    spread = 1.4826 * 0.0015  # the MAD around the median 0.0095
    winsorised = rewards.clone()
    winsorised[-1] = 0.0095 - ROBUST_CLIP * spread
    assert shift == pytest.approx(float(winsorised.mean())) and scale == pytest.approx(float(winsorised.std(correction=0)))
    assert torch.allclose(y, (winsorised - shift) / scale)
    clean = rewards[:5]  # no outlier: a plain z-score
    y, shift, scale, clipped = robust_standardise(clean)
    assert not clipped.any() and torch.equal(y, (clean - clean.mean()) / clean.std(correction=0))


@pytest.mark.parametrize("reward_model", ["arm", "trend"])
def test_one_outlier_reward_has_a_bounded_influence(reward_model):
    """A reward of -126,235 (a diverging run) warns, and the GP's posterior is exactly what it
    would be if that reward were -1,000: beyond the clip, its size no longer matters."""
    space = ArmSpace.paper_grid("rho")
    posteriors = []
    for outlier in (-126235.0, -1000.0):
        policy = make_policy("gp-ts", space=space, seed=2, reward_model=reward_model)
        generator = torch.Generator().manual_seed(0)
        for t in range(12):
            arm = space.candidates[t % len(space)]
            reward = 0.01 + 0.002 * float(torch.randn((), generator=generator, dtype=torch.float64))
            policy.observe(arm, reward, t / 20, start_loss=5.0 - 0.01 * t)
        with pytest.warns(BanditWarning, match="lies more than 10 robust standard deviations .* clipped"):
            policy.observe(space.candidates[3], outlier, 12 / 20, start_loss=4.8)
        posteriors.append(policy.posterior(13 / 20))
    (_, mean_a, std_a), (_, mean_b, std_b) = posteriors
    assert torch.allclose(mean_a, mean_b, atol=1e-7) and torch.allclose(std_a, std_b, atol=1e-7)
    assert float(mean_a.abs().max()) < 0.1  # in reward units: nowhere near -126,235


def _loop_run(tmp_path, stop=None, resume_from=None):
    """Ten interactions through InteractionLoop with the trend model; losses fall with a trend
    and faster at ρ near 0.35. Optionally saved after ``stop`` interactions, or resumed."""
    def fresh():
        return InteractionLoop(trend_policy(seed=6), Psi(0.15, 0.1, 0.1))

    loop, loss = fresh(), 6.9
    first = 0
    if resume_from is not None:
        loop.load_state_dict(torch.load(resume_from, weights_only=True))
        first, loss = len(loop.history), loop.history[-1]["val_loss"]
    else:
        loop.start(loss)
    for k in range(first, 10):
        if k == stop:
            torch.save(loop.state_dict(), tmp_path / "loop.pt")
            return None
        rho = loop.psi.as_dict()["mask_prob"]
        loss *= 1 - (0.3 / (k + 1) ** 2 + 0.01 * (1 - abs(rho - 0.35)))
        loop.finish(loss, update=10 * (k + 1), epoch=1, progress=(k + 1) / 10)
    return [(r["psi"], r["reward"], r["next_psi"], r["posterior_mean"]) for r in loop.history]


def test_resume_through_the_interaction_loop_is_exact(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BanditWarning)
        full = _loop_run(tmp_path)
        _loop_run(tmp_path, stop=6)
        resumed = _loop_run(tmp_path, resume_from=tmp_path / "loop.pt")
    assert resumed == full
    assert len({str(next_psi) for _, _, next_psi, _ in full}) > 1  # the bandit did choose


def _task_options(**values):
    """The task's config fields with their defaults, as build_policy reads them."""
    config = {f.name: f.default for f in dataclasses.fields(GPTSMaskedLMConfig) if f.default is not dataclasses.MISSING}
    config.update(seed=1, max_update=100, max_epoch=0, gpts_policy="gp-ts")
    config.update(values)
    return SimpleNamespace(**config)


def test_fairseq_options_build_the_trend_model():
    policy = build_policy(_task_options(gpts_reward_model="trend", gpts_forgetting=0.5), Psi(0.15, 0.1, 0.1))
    assert policy.config()["reward_model"] == "trend" and policy.config()["forgetting"] == 0.5


@pytest.mark.parametrize("values, message", [
    ({"gpts_reward_model": "trend", "gpts_context": "progress"},
     "--gpts-context must be 'none' with --gpts-reward-model 'trend'"),
    ({"gpts_forgetting": 0.5}, "--gpts-forgetting needs --gpts-reward-model 'trend', got --gpts-forgetting 0.5 with "
                               "--gpts-reward-model 'arm'"),
    ({"gpts_reward_model": "trend", "gpts_forgetting": -1.0}, "--gpts-forgetting must be a time scale >= 0"),
    ({"gpts_reward_model": "trend", "max_update": 0}, "--gpts-reward-model trend need the length of training"),
])
def test_bad_fairseq_options_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        build_policy(_task_options(**values), Psi(0.15, 0.1, 0.1))
