"""The ``--gpts-*`` options of the interactions (the policy, its arms, the reward) and their
checks, done before any data is read. Options whose field metadata is ``reward_defining``
(``masking.options.reward_defining``) define what a reward means: ``reward_options`` collects
them for the checkpoint, and a resume with another value is refused (``--gpts-allow-option-change``
overrides). A new reward-model option is marked the same way.
"""

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from ..bandit import POLICIES, ArmSpace, make_policy
from ..bandit.policies import CONTEXTS, SCHEDULE_SHAPES
from ..bandit.reward_model import REWARD_MODELS
from ..bandit.rewards import REWARD_KINDS
from ..masking.options import REWARD_DEFINING, MaskingConfig, parse_numbers, parse_psi_list, reward_defining, \
    selects_something
from ..masking.spec import PSI_FIELDS, Psi
from ..option_changes import option_name
from ..psi_names import FAIRSEQ_DEFAULT_PSI

logger = logging.getLogger(__name__)

ARM_POLICIES = ("random", "gp-ts")  # the policies that play the arms of --gpts-arm-*
# the option that sets each keyword argument of the gp-ts policy
POLICY_ARGUMENT_OPTIONS = {"reward_model": "--gpts-reward-model", "forgetting": "--gpts-forgetting",
                           "context": "--gpts-context", "window": "--gpts-window", "kernel": "--gpts-kernel"}


@dataclass
class InteractionConfig(FairseqDataclass):
    gpts_policy: ChoiceEnum(list(POLICIES)) = field(
        default="constant",
        metadata=reward_defining("how psi changes between interactions: constant (masked_lm), schedule, "
                                 "random, gp-ts (GP Thompson sampling on the validation loss)"))
    gpts_arms: ChoiceEnum(["rho", "psi"]) = field(
        default="rho",
        metadata=reward_defining("what random/gp-ts search: rho only (gamma, lambda as given) or all of psi"))
    gpts_arm_bounds: str = field(
        default="0.05,0.5", metadata=reward_defining("lower,upper bound of every searched dimension"))
    gpts_arm_step: float = field(
        default=0.05, metadata=reward_defining("grid step of the arms; 0 = continuous (1,024 Sobol candidates)"))
    gpts_interaction_updates: int = field(
        default=0, metadata=reward_defining("updates per interaction; 0 = one interaction per epoch"))
    gpts_reward_batches: int = field(
        default=0, metadata=reward_defining("validation batches the reward is measured on (the first K, fixed); "
                                            "0 = all"))
    gpts_reward: ChoiceEnum(list(REWARD_KINDS)) = field(
        default="relative", metadata=reward_defining("relative: (l_prev - l) / l_prev; difference: l_prev - l"))
    gpts_schedule: ChoiceEnum(list(SCHEDULE_SHAPES)) = field(
        default="linear", metadata=reward_defining("shape of the schedule policy from the first psi to the end psi"))
    gpts_schedule_end: str = field(
        default=",".join(str(FAIRSEQ_DEFAULT_PSI[name]) for name in PSI_FIELDS),
        metadata=reward_defining("schedule policy: psi at the end of training, 'RHO,GAMMA,LAMBDA'"))
    gpts_context: ChoiceEnum(list(CONTEXTS)) = field(
        default="none", metadata=reward_defining("gp-ts: progress = training progress as an extra GP input"))
    gpts_window: int = field(
        default=0, metadata=reward_defining("gp-ts: fit only the last N observations; 0 = all"))
    gpts_reward_model: ChoiceEnum(list(REWARD_MODELS)) = field(
        default="arm", metadata=reward_defining("gp-ts: arm = a GP over the arms (the paper's); trend = the reward "
                                                "as a trend in progress and the start loss plus an arm effect"))
    gpts_forgetting: float = field(
        default=0.0, metadata=reward_defining("gp-ts, --gpts-reward-model trend: evidence on the arm effect fades "
                                              "as exp(-|t - t'| / this), t = progress; 0 = never"))
    gpts_kernel: ChoiceEnum(["rbf", "matern52"]) = field(default="rbf", metadata=reward_defining("gp-ts kernel"))
    gpts_allow_option_change: bool = field(
        default=False, metadata={"help": "resume even if an option that defines the rewards changed (the "
                                         "bandit keeps what still fits; the history notes the change)"})

    # fairseq's options that fix the reward batches and their masks
    seed: int = field(default=II("common.seed"), metadata={REWARD_DEFINING: True})
    valid_subset: str = field(default=II("dataset.valid_subset"), metadata={REWARD_DEFINING: True})
    max_tokens_valid: Optional[int] = field(default=II("dataset.max_tokens_valid"), metadata={REWARD_DEFINING: True})
    batch_size_valid: Optional[int] = field(default=II("dataset.batch_size_valid"), metadata={REWARD_DEFINING: True})


REWARD_FIELDS = tuple(f.name for config in (MaskingConfig, InteractionConfig) for f in dataclasses.fields(config)
                      if f.metadata.get(REWARD_DEFINING))


def reward_options(cfg) -> dict:
    """The values of the reward-defining options, as plain numbers, strings and None (fairseq's
    choices are enums), by their command-line names."""
    values = {}
    for name in REWARD_FIELDS:
        value = getattr(cfg, name)
        values[option_name(name)] = value if value is None or isinstance(value, (int, float)) else str(value)
    return values


def _non_negative_int(option, value):
    if int(value) != value or value < 0:
        raise ValueError(f"{option} must be an integer >= 0, got {value}")


def validate_config(cfg) -> None:
    """ValueError naming the option (and its valid range) for a bad count; a warning for options
    this policy ignores. ``build_policy`` checks the options of the policy itself."""
    for option, value in (("--gpts-interaction-updates", cfg.gpts_interaction_updates),
                          ("--gpts-reward-batches", cfg.gpts_reward_batches),
                          ("--gpts-window", cfg.gpts_window)):
        _non_negative_int(option, value)
    if cfg.gpts_policy != "schedule":
        _warn_if_set(cfg, ("gpts_schedule", "gpts_schedule_end"), "only --gpts-policy schedule reads it")


def build_policy(cfg, first: Psi):
    """The policy of --gpts-policy (and its options) over the arms of ``arm_space``."""
    options = {}
    if cfg.gpts_policy == "schedule":
        end = selects_something("--gpts-schedule-end rho", parse_psi_list("--gpts-schedule-end", cfg.gpts_schedule_end))
        options = dict(psi_start=first.as_dict(), psi_end=end.as_dict(), shape=str(cfg.gpts_schedule))
    elif cfg.gpts_policy == "gp-ts":
        options = dict(kernel=str(cfg.gpts_kernel), context=str(cfg.gpts_context), window=cfg.gpts_window or None,
                       **_reward_model_options(cfg))
    needs_progress = cfg.gpts_policy == "schedule" or (
        cfg.gpts_policy == "gp-ts" and (cfg.gpts_context == "progress" or cfg.gpts_reward_model == "trend"))
    if needs_progress and cfg.max_update <= 0 and cfg.max_epoch <= 0:
        raise ValueError("--gpts-policy schedule, --gpts-context progress and --gpts-reward-model trend need the "
                         "length of training: set --max-update or --max-epoch")
    # str(): fairseq's choice options are enums, the bandit's state holds plain strings
    try:
        return make_policy(str(cfg.gpts_policy), space=arm_space(cfg, first), seed=int(cfg.seed), **options)
    except ValueError as error:  # the policy checks its arguments (one rule); its errors name the options
        raise ValueError(named_by_option(str(error))) from None


def named_by_option(text: str) -> str:
    """A policy's error with each of its keyword arguments named by the option that sets it."""
    for argument, option in POLICY_ARGUMENT_OPTIONS.items():
        text = re.sub(rf"(?<![\w-]){argument}\b", option, text)
    return text


def _reward_model_options(cfg) -> dict:
    """--gpts-reward-model and --gpts-forgetting as the gp-ts policy's arguments (forgetting 0,
    "never", is the policy's None)."""
    if not 0.0 <= cfg.gpts_forgetting < math.inf:
        raise ValueError(f"--gpts-forgetting must be a time scale >= 0 in units of training progress "
                         f"(0 = never forget), got {cfg.gpts_forgetting}")
    return {"reward_model": str(cfg.gpts_reward_model), "forgetting": cfg.gpts_forgetting or None}


def arm_space(cfg, first: Psi) -> ArmSpace:
    """The arms random/gp-ts choose among: ρ (γ, λ fixed at the first ψ) or all of ψ, on a
    grid of --gpts-arm-step within --gpts-arm-bounds, or continuous when the step is 0."""
    lower, upper = parse_numbers("--gpts-arm-bounds", cfg.gpts_arm_bounds, 2)
    if not 0.0 <= lower < upper <= 1.0:
        raise ValueError(f"--gpts-arm-bounds must satisfy 0 <= lower < upper <= 1, got {cfg.gpts_arm_bounds!r}")
    if lower == 0.0 and cfg.gpts_policy in ARM_POLICIES:  # both arm spaces search rho
        raise ValueError(f"--gpts-arm-bounds lower bound must be > 0: it bounds rho, and an arm with rho = 0 "
                         f"selects no token (its loss is NaN); got {cfg.gpts_arm_bounds!r}")
    if not 0.0 <= cfg.gpts_arm_step <= upper - lower:
        raise ValueError(f"--gpts-arm-step must be in [0, {upper - lower:g}] (0 = continuous; at most the "
                         f"width of --gpts-arm-bounds), got {cfg.gpts_arm_step}")
    dims = ("mask_prob",) if cfg.gpts_arms == "rho" else PSI_FIELDS
    fixed = {name: value for name, value in first.as_dict().items() if name not in dims}
    try:
        return ArmSpace(dims, {name: (lower, upper) for name in dims}, fixed=fixed,
                        step=cfg.gpts_arm_step or None, seed=int(cfg.seed))
    except ValueError as error:
        raise ValueError(f"--gpts-arms {cfg.gpts_arms} with --gpts-arm-bounds {cfg.gpts_arm_bounds} "
                         f"--gpts-arm-step {cfg.gpts_arm_step}: {error}") from None


def _warn_if_set(cfg, fields, why):
    """Warn about options given a non-default value that this run ignores."""
    defaults = InteractionConfig()
    for field in fields:
        if getattr(cfg, field) != getattr(defaults, field):
            logger.warning(f"{option_name(field)} {getattr(cfg, field)} is ignored with --gpts-policy "
                           f"{cfg.gpts_policy}: {why}")
