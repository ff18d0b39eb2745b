"""Policies that choose ψ once per interaction, behind one interface.

    policy = make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=1)
    decision = policy.decide(interaction=t, progress=p, start_loss=l)  # Decision(psi, arm, info)
    policy.observe(decision.arm, reward, progress=p, start_loss=l)     # reward None: ignored

(``start_loss``: the reference loss at the start of the interaction; only the trend reward
model reads it.)

A decision is a pure function of (configuration, seed, observations so far, interaction,
progress): the GP is refitted inside ``observe`` (so its hyperparameters follow from the
sequence of observations alone, however often ``decide`` is called) and each decision draws
from a generator seeded by (seed, interaction). ``state_dict()`` holds the observations and
the fitted hyperparameters as tensors and plain numbers; a fresh policy loading it decides
exactly as the original would have.
"""

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..masking.spec import Psi
from ..psi_names import FAIRSEQ_DEFAULT_PSI, PSI_FIELDS
from .arms import ArmSpace
from .fit import FitSettings, fit_hyperparameters
from ..runtime import single_thread
from .gp import ArmGP, GPNumericalError, check_choice, posterior
from .reward_model import REWARD_MODELS, TrendGP, trend_inputs
from .rewards import ROBUST_CLIP, robust_standardise
from .thompson import interaction_generator, thompson_draw

POLICIES = ("constant", "schedule", "random", "gp-ts")
SCHEDULE_SHAPES = ("linear", "cosine", "step")
CONTEXTS = ("none", "progress")
STATE_FORMAT = 2  # 2: previous arms, start losses and the reward model
ANKNER_END_PSI = FAIRSEQ_DEFAULT_PSI
ANKNER_START_PSI = {**FAIRSEQ_DEFAULT_PSI, "mask_prob": 0.30}


class BanditWarning(RuntimeWarning):
    """The bandit fell back to a safe choice (failed GP fit or posterior)."""


@dataclass(frozen=True)
class Decision:
    """ψ for the next interaction. ``psi``: all three names -> float; ``arm``: the searched
    dimensions as a float64 tensor (pass it back to ``observe``); ``info``: JSON-ready numbers
    (``decision_time_s``, ``fallback``, ``posterior_mean``/``posterior_std`` at the arm for
    GP-TS, ...)."""

    interaction: int
    psi: dict
    arm: torch.Tensor
    info: dict


def _check_interaction(interaction):
    if isinstance(interaction, bool) or not isinstance(interaction, int) or interaction < 0:
        raise ValueError(f"interaction must be an integer >= 0, got {interaction!r}")
    return interaction


def _check_start_loss(start_loss):
    """None or a finite number: the reference loss at the start of an interaction."""
    if start_loss is None:
        return None
    try:
        start_loss = float(start_loss)
    except (TypeError, ValueError):
        raise ValueError(f"start_loss must be None or a finite number, got {start_loss!r}") from None
    if not math.isfinite(start_loss):
        raise ValueError(f"start_loss must be None or a finite number, got {start_loss}")
    return start_loss


def _check_progress(progress):
    try:
        progress = float(progress)
    except (TypeError, ValueError):
        raise ValueError(f"progress must be a number in [0, 1], got {progress!r}") from None
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return progress


def _as_psi(option, value, default):
    """A full, validated ψ dict from a dict (missing names taken from ``default``) or 3 numbers."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(PSI_FIELDS)
        if unknown:
            raise ValueError(f"{option}: unknown names {sorted(unknown)}; valid: {list(PSI_FIELDS)}")
        values = [value.get(name, default[name]) for name in PSI_FIELDS]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        values = list(value)
    else:
        raise ValueError(f"{option} must be a dict over {list(PSI_FIELDS)} or 3 numbers, got {value!r}")
    names = tuple(f"{option}[{name!r}]" for name in PSI_FIELDS)
    return dict(zip(PSI_FIELDS, Psi.validate(*values, names=names)))


class Policy:
    """The common interface; subclasses set ``name`` and implement ``_choose``."""

    name = ""

    def __init__(self, space: ArmSpace | None = None, seed: int = 0):
        if space is not None and not isinstance(space, ArmSpace):
            raise ValueError(f"space must be an ArmSpace, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.space = ArmSpace.paper_grid("rho") if space is None else space
        self.seed = seed

    def config(self) -> dict:
        """Everything that defines the policy, as plain values (checked by ``load_state_dict``)."""
        return {"policy": self.name, "seed": self.seed, "space": self.space.config()}

    def decide(self, interaction: int, progress: float = 0.0, start_loss: float | None = None) -> Decision:
        """ψ for interaction ``interaction`` (0-based), at training progress in [0, 1];
        ``start_loss``: the reference loss just measured, i.e. at the start of that interaction
        (used by reward models of the training state; others ignore it)."""
        interaction = _check_interaction(interaction)
        progress = _check_progress(progress)
        start_loss = _check_start_loss(start_loss)
        start = time.perf_counter()
        arm, psi, info = self._choose(interaction, progress, start_loss)
        info = {"policy": self.name, "decision_time_s": time.perf_counter() - start, "fallback": False,
                "posterior_mean": None, "posterior_std": None, **info}  # subclasses may override
        return Decision(interaction, psi, arm, info)

    def _choose(self, interaction, progress, start_loss):
        raise NotImplementedError

    def observe(self, arm: torch.Tensor, reward: float | None, progress: float = 0.0,
                start_loss: float | None = None) -> bool:
        """Record the reward of ``arm`` (played from ``progress``, where the reference loss was
        ``start_loss``). A None or non-finite reward is ignored; returns whether the
        observation was used."""
        self.space.psi(arm)  # validates the arm's shape
        _check_progress(progress)
        _check_start_loss(start_loss)
        return False

    def posterior(self, progress: float = 0.0):
        """(arms, mean, std) of the reward over the candidate arms; None for non-GP policies."""
        return None

    @property
    def posterior_quantity(self) -> str | None:
        """What ``posterior`` is of: "reward", "arm_effect" (a reward difference between arms,
        the trend left out), or None without a posterior."""
        return None

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "config": self.config()}

    def load_state_dict(self, state: Mapping):
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"bandit state format {state.get('format')!r} is not {STATE_FORMAT}")
        saved, ours = state["config"], self.config()
        differing = sorted(key for key in set(saved) | set(ours) if saved.get(key) != ours.get(key))
        if differing:
            details = "; ".join(f"{key}: saved {saved.get(key)!r}, now {ours.get(key)!r}" for key in differing)
            raise ValueError(f"bandit state was saved with a different configuration ({details})")


class ConstantPolicy(Policy):
    """The same ψ every interaction (fairseq's default 0.15/0.1/0.1 unless given)."""

    name = "constant"

    def __init__(self, space=None, seed=0, *, psi=FAIRSEQ_DEFAULT_PSI):
        super().__init__(space, seed)
        self.psi = _as_psi("psi", psi, FAIRSEQ_DEFAULT_PSI)

    def config(self):
        return {**super().config(), "psi": dict(self.psi)}

    def _choose(self, interaction, progress, start_loss):
        return self.space.arm(self.psi), dict(self.psi), {}


class SchedulePolicy(Policy):
    """ψ moves from ``psi_start`` (progress 0) to ``psi_end`` (progress 1): linearly, along a
    half cosine, or in ``n_steps`` equal stairs. Default: Ankner et al.'s ρ 0.30 -> 0.15.
    Every ψ on the way is a convex combination of the two ends, so γ + λ <= 1 holds."""

    name = "schedule"

    def __init__(self, space=None, seed=0, *, psi_start=ANKNER_START_PSI, psi_end=ANKNER_END_PSI,
                 shape="linear", n_steps=2):
        super().__init__(space, seed)
        self.psi_start = _as_psi("psi_start", psi_start, ANKNER_START_PSI)
        self.psi_end = _as_psi("psi_end", psi_end, self.psi_start)
        self.shape = check_choice("schedule", shape, SCHEDULE_SHAPES)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2:
            raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
        self.n_steps = n_steps

    def config(self):
        return {**super().config(), "psi_start": dict(self.psi_start), "psi_end": dict(self.psi_end),
                "shape": self.shape, "n_steps": self.n_steps}

    def weight(self, progress: float) -> float:
        """How far along from start (0) to end (1) the schedule is at ``progress``."""
        if self.shape == "linear":
            return progress
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * progress))
        return min(math.floor(progress * self.n_steps), self.n_steps - 1) / (self.n_steps - 1)

    def _choose(self, interaction, progress, start_loss):
        weight = self.weight(progress)
        psi = {
            name: min(max((1.0 - weight) * self.psi_start[name] + weight * self.psi_end[name], 0.0), 1.0)
            for name in PSI_FIELDS
        }
        return self.space.arm(psi), psi, {}


class RandomPolicy(Policy):
    """A candidate arm drawn uniformly, from a generator seeded by (seed, interaction)."""

    name = "random"

    def _choose(self, interaction, progress, start_loss):
        generator = interaction_generator(self.seed, interaction, "random")
        index = int(torch.randint(len(self.space), (), generator=generator))
        arm = self.space.candidates[index].clone()
        return arm, self.space.psi(arm), {}


class GPThompsonPolicy(Policy):
    """GP-TS: refit a GP to the rewards after each observation (type-II ML); decide by one
    joint posterior draw over the candidate arms, then argmax.

    Defaults differ from the paper where a measurement says so (benchmarks/nonstationary.py,
    tests/test_bandit.py): BoTorch's classic Gamma priors on length-scale, output-scale
    and noise (MAP instead of plain ML-II, which with a handful of noisy rewards often lands
    on "all noise" or vanishing length-scales), fitted by warm-started L-BFGS. The paper's
    set-up is ``priors="none", fit=FitSettings.paper()``. The GP sees the rewards robustly
    standardised (``rewards.robust_standardise``: clipped at ±10 robust standard deviations from
    the median, a BanditWarning when a new reward is, then z-scored), so one diverging
    interaction cannot dominate it.

    ``reward_model="arm"`` (the paper's): a GP over the arms; ``context="progress"`` adds
    training progress as an input (contextual GP-TS), ``window=W`` fits the last W
    observations only. ``reward_model="trend"``: the additive GP of ``reward_model.TrendGP``,
    reward = trend(progress, log start loss) + arm effect (fading over ``forgetting`` progress
    units if given) [+ carry-over of the previous arm with ``payback=True``: off by default,
    as it raised the regret on benchmarks/nonstationary.py's development seeds, 9.8 vs 7.6];
    it needs ``start_loss`` in ``observe``.

    The trend model draws the arm effect alone, from its own posterior at the current
    progress (``posterior(..., component=arm_effect)``), and reports it as ``posterior_mean``
    (a reward difference, not a predicted reward). A joint draw of the whole reward at the
    current state would pick the argmax with the same law — trend and carry-over are common
    to every candidate — but it needs the loss at the decision, and their extrapolated
    variance, shared by all candidates and large next to the arm effect's, sets the jitter
    that the sample's Cholesky adds (relative to the mean variance), blurring the arm effect.
    """

    name = "gp-ts"

    def __init__(self, space=None, seed=0, *, kernel="rbf", mean="zero", ard=True, priors="gamma",
                 context="none", window=None, reward_model="arm", payback=False, forgetting=None,
                 fit: FitSettings | Mapping | None = None):
        super().__init__(space, seed)
        self.context = check_choice("context", context, CONTEXTS)
        self.reward_model = check_choice("reward_model", reward_model, REWARD_MODELS)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or an integer >= 1, got {window!r}")
        self.window = window
        if not isinstance(payback, bool):
            raise ValueError(f"payback must be True or False, got {payback!r}")
        if forgetting is not None:
            if isinstance(forgetting, bool) or not isinstance(forgetting, (int, float)) or not 0 < forgetting < math.inf:
                raise ValueError(f"forgetting must be None or a time scale > 0 in progress units, got {forgetting!r}")
            forgetting = float(forgetting)
        if self.reward_model == "trend" and self.context != "none":
            raise ValueError("context must be 'none' with reward_model 'trend' (the trend model already sees "
                             f"progress), got {self.context!r}")
        for argument, value in (("forgetting", forgetting), ("payback", payback)):
            if self.reward_model == "arm" and value not in (None, False):
                raise ValueError(f"{argument} needs reward_model 'trend', got {argument} {value!r} with reward_model 'arm'")
        self.payback, self.forgetting = payback, forgetting
        if fit is None or isinstance(fit, Mapping):
            fit = FitSettings(**(fit or {}))
        if not isinstance(fit, FitSettings):
            raise ValueError(f"fit must be a FitSettings or a dict of its fields, got {type(fit).__name__}")
        self.fit_settings = fit
        self.kernel, self.mean, self.ard, self.priors = kernel, mean, bool(ard), priors
        dims = len(self.space.dims)
        if self.reward_model == "trend":
            self.model = TrendGP(dims, kernel=kernel, mean=mean, ard=self.ard, priors=priors, payback=payback,
                                 forgetting=forgetting)
        else:
            self.model = ArmGP(dims + (self.context == "progress"), kernel=kernel, mean=mean, ard=self.ard,
                               priors=priors)
        self.arms = torch.empty(0, dims, dtype=torch.float64)
        self.previous_arms = torch.empty(0, dims, dtype=torch.float64)  # the arm observed before each
        self.rewards = torch.empty(0, dtype=torch.float64)
        self.progress = torch.empty(0, dtype=torch.float64)
        self.start_losses = torch.empty(0, dtype=torch.float64)  # NaN where none was given
        self.last_fit = {"fit_time_s": 0.0, "fit_failed": False, "fit_error": None}

    def config(self):
        fit = self.fit_settings
        return {**super().config(), "kernel": self.kernel, "mean": self.mean, "ard": self.ard, "priors": self.priors,
                "context": self.context, "window": self.window, "reward_model": self.reward_model,
                "payback": self.payback, "forgetting": self.forgetting,
                "fit": {"method": fit.method, "max_iter": fit.max_iter, "tolerance": fit.tolerance,
                        "lr": fit.lr, "warm_start": fit.warm_start}}

    # -- data ---------------------------------------------------------------------------------

    def _inputs(self, arms, progress, start_losses, previous_arms):
        unit = self.space.to_unit(arms)
        if self.reward_model == "trend":
            previous = self.space.to_unit(previous_arms) if self.payback else None
            return trend_inputs(unit, progress, start_losses, previous)
        if self.context == "progress":
            unit = torch.cat([unit, progress.reshape(-1, 1)], dim=1)
        return unit

    def _training_data(self):
        """Inputs, robustly standardised rewards, the (shift, scale) that standardised them
        and which rewards were clipped."""
        columns = (self.arms, self.rewards, self.progress, self.start_losses, self.previous_arms)
        if self.window is not None:
            columns = tuple(column[-self.window :] for column in columns)
        arms, rewards, progress, start_losses, previous_arms = columns
        y, shift, scale, clipped = robust_standardise(rewards)
        return self._inputs(arms, progress, start_losses, previous_arms), y, shift, scale, clipped

    def observe(self, arm, reward, progress=0.0, start_loss=None):
        arm = torch.as_tensor(arm, dtype=torch.float64).reshape(-1)
        self.space.psi(arm)
        progress = _check_progress(progress)
        start_loss = _check_start_loss(start_loss)
        if reward is None or not math.isfinite(float(reward)):
            return False
        if self.reward_model == "trend" and start_loss is None:
            raise ValueError("reward_model 'trend' needs start_loss (the reference loss at the start of the "
                             "interaction) with every reward")
        previous = self.arms[-1] if self.arms.shape[0] else arm
        self.arms = torch.cat([self.arms, arm.unsqueeze(0)])
        self.previous_arms = torch.cat([self.previous_arms, previous.unsqueeze(0)])
        self.rewards = torch.cat([self.rewards, torch.tensor([float(reward)], dtype=torch.float64)])
        self.progress = torch.cat([self.progress, torch.tensor([progress], dtype=torch.float64)])
        loss = math.nan if start_loss is None else start_loss
        self.start_losses = torch.cat([self.start_losses, torch.tensor([loss], dtype=torch.float64)])
        self._refit()
        return True

    def _refit(self):
        x, y, shift, scale, clipped = self._training_data()
        if clipped.numel() and bool(clipped[-1]):
            warnings.warn(f"gp-ts: reward {float(self.rewards[-1]):.6g} lies more than {ROBUST_CLIP:g} robust standard "
                          f"deviations (1.4826 MAD) from the median of the {len(y)} rewards the GP sees; it is "
                          "clipped to that distance", BanditWarning, stacklevel=3)
        with single_thread():
            try:
                result = fit_hyperparameters(self.model, x, y, self.fit_settings)
                self.last_fit = {"fit_time_s": result.seconds, "fit_failed": False, "fit_error": None}
            except GPNumericalError as error:
                self.model.set_train_data(x, y, strict=False)
                warnings.warn(f"gp-ts: the GP fit failed after {len(self.rewards)} observations ({error}); "
                              "keeping the previous hyperparameters", BanditWarning, stacklevel=3)
                self.last_fit = {"fit_time_s": 0.0, "fit_failed": True, "fit_error": str(error)}

    # -- decisions ----------------------------------------------------------------------------

    def _candidate_posterior(self, progress, *, diag):
        """Posterior (mean, covariance or variances) over the candidates at ``progress``, and the
        (shift, scale) back to reward units: of the reward (arm model) or of the arm effect
        (trend model: the state columns are placeholders its kernel does not read)."""
        x, y, shift, scale, _ = self._training_data()
        candidates = self.space.candidates
        count = len(candidates)
        state = torch.full((count,), progress, dtype=torch.float64)
        component = None
        if self.reward_model == "trend":
            component, shift = self.model.arm_effect, 0.0
            test_x = self._inputs(candidates, state, torch.ones(count, dtype=torch.float64), candidates)
        else:
            test_x = self._inputs(candidates, state, None, None)
        mean, covariance = posterior(self.model, x, y, test_x, diag=diag, component=component)
        return mean, covariance, shift, scale, int(y.shape[0])

    def _choose(self, interaction, progress, start_loss):
        start = time.perf_counter()
        info = {**self.last_fit, "observations": int(self.rewards.shape[0]), "jitter": None, "fallback_reason": None}
        with single_thread():
            try:
                mean, covariance, shift, scale, info["observations"] = self._candidate_posterior(progress, diag=False)
                generator = interaction_generator(self.seed, interaction, "gp-ts")
                index, info["jitter"] = thompson_draw(mean, covariance, generator)
                info["posterior_mean"] = float(mean[index]) * scale + shift
                info["posterior_std"] = math.sqrt(max(float(covariance[index, index]), 0.0)) * scale
            except GPNumericalError as error:
                generator = interaction_generator(self.seed, interaction, "fallback")
                index = int(torch.randint(len(self.space), (), generator=generator))
                warnings.warn(f"gp-ts: interaction {interaction}: {error}; playing a random arm instead",
                              BanditWarning, stacklevel=3)
                info.update(fallback=True, fallback_reason=str(error))
        info["hyperparameters"] = self.model.summary()
        info["sample_time_s"] = time.perf_counter() - start
        info["decision_time_s"] = info["fit_time_s"] + info["sample_time_s"]  # the refit ran in observe
        arm = self.space.candidates[index].clone()
        return arm, self.space.psi(arm), info

    def posterior(self, progress=0.0):
        """(arms [m, d], mean [m], std [m]) over the candidates, in reward units: of the reward
        (arm model) or of the arm effect (trend model)."""
        progress = _check_progress(progress)
        with single_thread():
            mean, variance, shift, scale, _ = self._candidate_posterior(progress, diag=True)
        return self.space.candidates.clone(), mean * scale + shift, variance.clamp_min(0.0).sqrt() * scale

    @property
    def posterior_quantity(self):
        return "arm_effect" if self.reward_model == "trend" else "reward"

    # -- state --------------------------------------------------------------------------------

    def state_dict(self):
        return {**super().state_dict(), "arms": self.arms.clone(), "previous_arms": self.previous_arms.clone(),
                "rewards": self.rewards.clone(), "progress": self.progress.clone(),
                "start_losses": self.start_losses.clone(),
                "model": {name: value.clone() for name, value in self.model.state_dict().items()},
                "last_fit": dict(self.last_fit)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for name in ("arms", "previous_arms", "rewards", "progress", "start_losses"):
            setattr(self, name, state[name].to(torch.float64).clone())
        self.model.load_state_dict(state["model"])
        self.last_fit = dict(state["last_fit"])
        x, y, _, _, _ = self._training_data()
        self.model.set_train_data(x, y, strict=False)


_POLICY_CLASSES = {cls.name: cls for cls in (ConstantPolicy, SchedulePolicy, RandomPolicy, GPThompsonPolicy)}


def make_policy(name: str, *, space: ArmSpace | None = None, seed: int = 0, **options) -> Policy:
    """The policy called ``name`` (one of POLICIES) over ``space`` (default: the paper's ρ grid)."""
    check_choice("policy", name, POLICIES)
    return _POLICY_CLASSES[name](space, seed, **options)
