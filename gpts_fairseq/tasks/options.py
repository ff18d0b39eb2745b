"""Checks and conversions of the ``--gpts-*`` options, done before any data is read."""

import logging
import math

from ..bandit import ArmSpace, make_policy
from ..masking.spec import PSI_FIELDS, Psi

logger = logging.getLogger(__name__)

PSI_OPTIONS = ("--mask-prob", "--leave-unmasked-prob", "--random-token-prob")
REF_OPTIONS = ("--gpts-ref-mask-prob", "--gpts-ref-leave-unmasked-prob", "--gpts-ref-random-token-prob")
ARM_POLICIES = ("random", "gp-ts")  # the policies that play the arms of --gpts-arm-*
# The options that define what a reward means (and the bandit's state): a run resumed with
# another value would mix two meanings, so the checkpoint keeps them and a resume compares.
# The seed and the validation batching fix the reward batches and their masks.
# A new reward-model option joins this list (its config field name).
REWARD_OPTIONS = (
    "gpts_ref_mask_prob", "gpts_ref_leave_unmasked_prob", "gpts_ref_random_token_prob", "gpts_reward_batches",
    "gpts_reward", "gpts_valid_masking", "gpts_masking", "gpts_interaction_updates", "gpts_policy", "gpts_arms",
    "gpts_arm_bounds", "gpts_arm_step", "gpts_kernel", "gpts_context", "gpts_window", "gpts_schedule",
    "gpts_schedule_end", "gpts_reward_model", "gpts_forgetting",
    "seed", "valid_subset", "max_tokens_valid", "batch_size_valid",
)


def option_name(field: str) -> str:
    """The command-line spelling of a config field: gpts_ref_mask_prob -> --gpts-ref-mask-prob."""
    return "--" + field.replace("_", "-")


def reward_options(cfg) -> dict:
    """The values of REWARD_OPTIONS, as plain numbers, strings and None (fairseq's choices are enums)."""
    values = {}
    for field in REWARD_OPTIONS:
        value = getattr(cfg, field)
        values[option_name(field)] = value if value is None or isinstance(value, (int, float)) else str(value)
    return values


def _selects_something(option, psi: Psi) -> Psi:
    """ρ = 0 masks no token: the loss is 0/0 and no reward exists. Refused for every ψ a run can play or
    measure with."""
    if psi.mask_prob <= 0.0:
        raise ValueError(f"{option} must be > 0 (a masking with rho = 0 selects no token, so its loss is NaN), "
                         f"got {psi.mask_prob}")
    return psi


def _numbers(option, text, count):
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{option} must be {count} comma-separated numbers, got {text!r}")
    return values


def parse_psi_list(option, text) -> Psi:
    """ψ from 'RHO,GAMMA,LAMBDA', errors naming ``option``."""
    values = _numbers(option, text, 3)
    return Psi.from_options(*values, names=tuple(f"{option} {name}" for name in PSI_FIELDS))


def _non_negative_int(option, value):
    if int(value) != value or value < 0:
        raise ValueError(f"{option} must be an integer >= 0, got {value}")


def validate_config(cfg) -> tuple[Psi, Psi]:
    """The first ψ and the reference ψ; ValueError naming the option (and its valid range) for
    a bad value. ``build_policy`` checks the options of the policy itself."""
    first = _selects_something(PSI_OPTIONS[0], Psi.from_options(
        cfg.mask_prob, cfg.leave_unmasked_prob, cfg.random_token_prob, names=PSI_OPTIONS))
    reference = _selects_something(REF_OPTIONS[0], Psi.from_options(
        cfg.gpts_ref_mask_prob, cfg.gpts_ref_leave_unmasked_prob, cfg.gpts_ref_random_token_prob, names=REF_OPTIONS))
    if cfg.mask_multiple_length < 1:
        raise ValueError(f"--mask-multiple-length must be >= 1, got {cfg.mask_multiple_length}")
    if not cfg.mask_stdev >= 0:
        raise ValueError(f"--mask-stdev must be >= 0, got {cfg.mask_stdev}")
    for option, value in (("--gpts-interaction-updates", cfg.gpts_interaction_updates),
                          ("--gpts-reward-batches", cfg.gpts_reward_batches),
                          ("--gpts-window", cfg.gpts_window)):
        _non_negative_int(option, value)
    if cfg.gpts_policy != "schedule":
        _warn_if_set(cfg, ("gpts_schedule", "gpts_schedule_end"), "only --gpts-policy schedule reads it")
    return first, reference


def build_policy(cfg, first: Psi):
    """The policy of --gpts-policy (and its options) over the arms of ``arm_space``."""
    options = {}
    if cfg.gpts_policy == "schedule":
        end = _selects_something("--gpts-schedule-end rho", parse_psi_list("--gpts-schedule-end", cfg.gpts_schedule_end))
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
    return make_policy(str(cfg.gpts_policy), space=arm_space(cfg, first), seed=int(cfg.seed), **options)


def _reward_model_options(cfg) -> dict:
    """--gpts-reward-model and --gpts-forgetting as the gp-ts policy's options, checked."""
    model, forgetting = str(cfg.gpts_reward_model), cfg.gpts_forgetting
    if not 0.0 <= forgetting < math.inf:
        raise ValueError(f"--gpts-forgetting must be a time scale >= 0 in units of training progress "
                         f"(0 = never forget), got {forgetting}")
    if forgetting > 0 and model != "trend":
        raise ValueError(f"--gpts-forgetting needs --gpts-reward-model trend, got --gpts-reward-model {model}")
    if model == "trend" and cfg.gpts_context != "none":
        raise ValueError(f"--gpts-context {cfg.gpts_context} cannot be combined with --gpts-reward-model trend "
                         "(the trend model already sees training progress)")
    return {"reward_model": model, "forgetting": forgetting or None}


def arm_space(cfg, first: Psi) -> ArmSpace:
    """The arms random/gp-ts choose among: ρ (γ, λ fixed at the first ψ) or all of ψ, on a
    grid of --gpts-arm-step within --gpts-arm-bounds, or continuous when the step is 0."""
    lower, upper = _numbers("--gpts-arm-bounds", cfg.gpts_arm_bounds, 2)
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
    from .gpts_mlm import GPTSMaskedLMConfig  # the task's module imports this one

    defaults = GPTSMaskedLMConfig()
    for field in fields:
        if getattr(cfg, field) != getattr(defaults, field):
            logger.warning(f"{option_name(field)} {getattr(cfg, field)} is ignored with --gpts-policy "
                           f"{cfg.gpts_policy}: {why}")
