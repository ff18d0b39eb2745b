"""The task's masking options (``--gpts-masking``, ``--gpts-valid-masking``, the reference ψ)
and the two ψ the options define, checked before any data is read. Fields marked
``reward_defining`` change what a reward means (``interactions.options.reward_options``)."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..psi_names import FAIRSEQ_DEFAULT_PSI, PSI_FIELDS
from .spec import Psi, validate_span

PSI_OPTIONS = ("--mask-prob", "--leave-unmasked-prob", "--random-token-prob")
REF_OPTIONS = ("--gpts-ref-mask-prob", "--gpts-ref-leave-unmasked-prob", "--gpts-ref-random-token-prob")
REWARD_DEFINING = "reward_defining"  # field metadata key: the option defines what a reward means


def reward_defining(help_text: str) -> dict:
    """Field metadata of an option that defines what a reward means (and the bandit's state): the
    checkpoint keeps its value and a resume with another one is refused."""
    return {"help": help_text, REWARD_DEFINING: True}


@dataclass
class MaskingConfig(FairseqDataclass):
    gpts_masking: ChoiceEnum(["exact", "bernoulli"]) = field(
        default="exact",
        metadata=reward_defining("exact: masked_lm's per-sequence count int(p*n/span + u) (parity); "
                                 "bernoulli: each token independently with probability --mask-prob"))
    gpts_valid_masking: ChoiceEnum(["reference", "train"]) = field(
        default="reference",
        metadata=reward_defining("reference: validate at the fixed --gpts-ref-* masking with the same masks "
                                 "every time (comparable losses); train: at the masking in force"))
    gpts_ref_mask_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["mask_prob"], metadata=reward_defining("reference masking: rho"))
    gpts_ref_leave_unmasked_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["leave_unmasked_prob"], metadata=reward_defining("reference masking: gamma"))
    gpts_ref_random_token_prob: float = field(
        default=FAIRSEQ_DEFAULT_PSI["random_token_prob"], metadata=reward_defining("reference masking: lambda"))


def check_span_options(cfg) -> None:
    """The masking spec's span rule, before any data is read, naming the options."""
    validate_span(cfg.mask_multiple_length, cfg.mask_stdev, names=("--mask-multiple-length", "--mask-stdev"))


def selects_something(option: str, psi: Psi) -> Psi:
    """ρ = 0 masks no token: the loss is 0/0 and no reward exists. Refused for every ψ a run can
    play or measure with."""
    if psi.mask_prob <= 0.0:
        raise ValueError(f"{option} must be > 0 (a masking with rho = 0 selects no token, so its loss is NaN), "
                         f"got {psi.mask_prob}")
    return psi


def first_psi(cfg) -> Psi:
    """ψ of ``--mask-prob/--leave-unmasked-prob/--random-token-prob``: the first interaction's."""
    return selects_something(PSI_OPTIONS[0], Psi.from_options(
        cfg.mask_prob, cfg.leave_unmasked_prob, cfg.random_token_prob, names=PSI_OPTIONS))


def reference_psi(cfg) -> Psi:
    """ψ of ``--gpts-ref-*``: validation and rewards mask with it."""
    return selects_something(REF_OPTIONS[0], Psi.from_options(
        cfg.gpts_ref_mask_prob, cfg.gpts_ref_leave_unmasked_prob, cfg.gpts_ref_random_token_prob, names=REF_OPTIONS))


def parse_psi_list(option: str, text) -> Psi:
    """ψ from 'RHO,GAMMA,LAMBDA', errors naming ``option``."""
    values = parse_numbers(option, text, 3)
    return Psi.from_options(*values, names=tuple(f"{option} {name}" for name in PSI_FIELDS))


def parse_numbers(option: str, text, count: int) -> list[float]:
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{option} must be {count} comma-separated numbers, got {text!r}")
    return values
