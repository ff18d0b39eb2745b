"""The resume rule for options that define what a run's saved state means (the rewards of the
interactions, the subset selections): their values are saved with the state; a resume with
another value stops before it changes anything, naming each option and both values, unless
``--gpts-allow-option-change``, after which each method keeps what still fits.

Importing this module imports neither fairseq nor any method."""

from collections.abc import Mapping

ALLOW_FLAG = "--gpts-allow-option-change"


def option_name(field: str) -> str:
    """The command-line spelling of a config field: gpts_ref_mask_prob -> --gpts-ref-mask-prob."""
    return "--" + field.replace("_", "-")


def by_option_name(values: Mapping) -> dict:
    """``values`` keyed by config field, keyed by option name instead."""
    return {option_name(field): value for field, value in values.items()}


def option_changes(saved: Mapping, current: Mapping, *, allowed: bool, meaning: str, if_allowed: str,
                   source: str = "checkpoint") -> list[str]:
    """'--option: SOURCE X, now Y' for every option (keyed by option name) whose saved value
    differs from the current one. Unless ``allowed``, a change is a ValueError that names them,
    says what they would change (``meaning``), the ways out, and what ``--gpts-allow-option-change``
    does for this state (``if_allowed``)."""
    changes = [f"{name}: {source} {saved.get(name)!r}, now {current.get(name)!r}"
               for name in sorted(set(saved) | set(current)) if saved.get(name) != current.get(name)]
    if changes and not allowed:
        raise ValueError(
            f"resuming would change {meaning} (" + "; ".join(changes) + f"). Resume with the {source}'s values, "
            f"start a new run in another --save-dir, or pass {ALLOW_FLAG} ({if_allowed})")
    return changes
