"""The ``--subset-*`` options of gpts_mlm and their checks (done before any data is read)."""

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

SELECTORS = ("full", "ingenious", "random-fixed", "random-online")
GREEDY_MODES = ("lazy", "stochastic")
MIDDLE_LAYER = -1  # --subset-feature-layer: the encoder's middle layer


@dataclass
class SubsetConfig(FairseqDataclass):
    """Train each epoch on a fraction of the training blocks (INGENIOUS, Renduchintala et al.,
    Findings of EMNLP 2023). A mixin of the task's config: every field has a default, and the
    default selector ``full`` leaves training exactly as it is without these options."""

    subset_selector: ChoiceEnum(list(SELECTORS)) = field(
        default="full",
        metadata={"help": "which blocks an epoch trains on: full (all; off), ingenious (facility location "
                          "over the model's features, sampled from the greedy gains), random-fixed (one "
                          "uniform subset for the whole run), random-online (a new uniform subset at every "
                          "selection)"})
    subset_fraction: float = field(
        default=0.25, metadata={"help": "fraction of the training blocks an epoch trains on, in (0, 1]"})
    subset_warmup_epochs: int = field(
        default=1,
        metadata={"help": "the first N epochs train on a fresh uniform subset each (every epoch has the "
                          "subset's length: the stream a full-data warm start gives, cut to it)"})
    subset_resample_epochs: int = field(
        default=1, metadata={"help": "select again every N epochs after the warm-up (ingenious, random-online)"})
    subset_partition_size: int = field(
        default=2000,
        metadata={"help": "ingenious: blocks per random partition; a partition of s blocks needs a 4*s^2-byte "
                          "similarity kernel"})
    subset_feature_layer: int = field(
        default=MIDDLE_LAYER,
        metadata={"help": "ingenious: hidden state whose mean over a block's tokens is its feature (0 = "
                          "embeddings, L = last layer); -1 = the middle layer"})
    subset_greedy: ChoiceEnum(list(GREEDY_MODES)) = field(
        default="lazy",
        metadata={"help": "ingenious: exact lazy greedy, or stochastic greedy (a random candidate sample "
                          "per step, see --subset-stochastic-epsilon)"})
    subset_stochastic_epsilon: float = field(
        default=0.01,
        metadata={"help": "stochastic greedy: each step evaluates (s/k) log(1/eps) random candidates, in (0, 1)"})
    subset_temperature: float = field(
        default=1.0,
        metadata={"help": "ingenious: temperature T of the Taylor-softmax 1 + g/T + (g/T)^2/2 over the greedy "
                          "gains g, > 0"})
    subset_report_facility_location: int = field(
        default=0,
        metadata={"help": "ingenious: N > 0 adds to every selection event the facility-location value of the "
                          "chosen subset, of N uniform random subsets with its size in every partition, and of "
                          "the exact greedy's subset of those sizes, timed apart from the selection "
                          "(facility_location_seconds); 0 = off"})

    train_subset: str = II("dataset.train_subset")
    no_save: bool = II("checkpoint.no_save")


def subsets_enabled(cfg) -> bool:
    return cfg.subset_selector != "full" and cfg.subset_fraction < 1.0


def validate_subset_config(cfg) -> None:
    """ValueError naming the option and its valid range for a bad ``--subset-*`` value."""
    if not 0.0 < cfg.subset_fraction <= 1.0:
        raise ValueError(f"--subset-fraction must be in (0, 1], got {cfg.subset_fraction}")
    for option, value, low in (("--subset-warmup-epochs", cfg.subset_warmup_epochs, 0),
                               ("--subset-resample-epochs", cfg.subset_resample_epochs, 1),
                               ("--subset-partition-size", cfg.subset_partition_size, 2),
                               ("--subset-report-facility-location", cfg.subset_report_facility_location, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"{option} must be an integer >= {low}, got {value}")
    if cfg.subset_report_facility_location and cfg.subset_selector != "ingenious":
        raise ValueError(f"--subset-report-facility-location measures ingenious selections: it needs "
                         f"--subset-selector ingenious, got {cfg.subset_selector}")
    layer = cfg.subset_feature_layer
    if int(layer) != layer or layer < MIDDLE_LAYER:
        raise ValueError(f"--subset-feature-layer must be -1 (the middle layer) or a layer index >= 0, got {layer}")
    if not 0.0 < cfg.subset_stochastic_epsilon < 1.0:
        raise ValueError(f"--subset-stochastic-epsilon must be in (0, 1), got {cfg.subset_stochastic_epsilon}")
    if not cfg.subset_temperature > 0.0:
        raise ValueError(f"--subset-temperature must be > 0, got {cfg.subset_temperature}")
