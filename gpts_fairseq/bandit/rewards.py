"""The reward of an interaction from the validation losses before and after it.

``relative`` (default): r = (l_prev - l) / l_prev, the paper's definition with the sign slip of
its printed formula corrected (a lower loss gives a positive reward). ``difference``:
r = l_prev - l, what the authors' code computes. A missing or non-finite loss gives no reward
(``None``): the caller keeps the arm, warns, and does not feed the bandit.
"""

import math

REWARD_KINDS = ("relative", "difference")


def check_reward_kind(kind: str) -> str:
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {list(REWARD_KINDS)}, got {kind!r}")
    return kind


def compute_reward(prev_loss: float | None, loss: float | None, kind: str = "relative") -> float | None:
    """The reward, or None when a loss is missing, NaN or infinite (or ``prev_loss`` is 0 for
    ``relative``)."""
    check_reward_kind(kind)
    if prev_loss is None or loss is None:
        return None
    prev_loss, loss = float(prev_loss), float(loss)
    if not (math.isfinite(prev_loss) and math.isfinite(loss)):
        return None
    if kind == "difference":
        return prev_loss - loss
    if prev_loss == 0.0:
        return None
    return (prev_loss - loss) / prev_loss
