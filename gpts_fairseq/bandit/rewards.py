"""The reward of an interaction from the validation losses before and after it.

``relative`` (default): r = (l_prev - l) / l_prev, the paper's definition with the sign slip of
its printed formula corrected (a lower loss gives a positive reward). ``difference``:
r = l_prev - l, what the authors' code computes. A missing or non-finite loss gives no reward
(``None``): the caller keeps the arm, warns, and does not feed the bandit.

``robust_standardise`` is how the GP sees the rewards: moved to within ±ROBUST_CLIP robust
standard deviations of their median, then z-scored, so that one reward far outside the others
(a diverging run gives rewards like -126,235) moves the fit by a bounded amount: beyond the
clip its size no longer matters.
"""

import math

import torch

REWARD_KINDS = ("relative", "difference")
# In robust standard deviations (1.4826 MAD). Not the 3.5 of outlier screens for i.i.d. data:
# once Thompson sampling concentrates on the good arms, the MAD shrinks to their noise, and the
# rewards of the other arms lie several such units away (5 on benchmarks/nonstationary.py's
# static problem, where 3.5 clipped them all). 10 leaves arm differences alone and still caps
# a change of regime (the first interactions of a run, a diverging loss).
ROBUST_CLIP = 10.0
MAD_TO_SD = 1.4826  # the MAD of a Gaussian times this is its standard deviation


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


def robust_standardise(rewards: torch.Tensor, clip: float = ROBUST_CLIP):
    """(standardised rewards, shift, scale, clipped mask). Rewards farther than ``clip`` robust
    standard deviations (1.4826 MAD) from their median are first moved to that distance, then
    all are standardised by their mean and standard deviation: rewards with no outlier are
    standardised exactly as a plain z-score (MAD scaling itself would inflate them once the
    policy concentrates and the MAD shrinks to one arm's noise), and an outlier's influence is
    bounded by the clip — how far beyond it lies no longer matters. The robust scale falls back
    to the standard deviation when over half the rewards are equal (MAD 0)."""
    if rewards.numel() == 0:
        return rewards.clone(), 0.0, 1.0, torch.zeros(0, dtype=torch.bool)
    median = float(rewards.quantile(0.5))  # the midpoint of the two middle ones for even n
    spread = MAD_TO_SD * float((rewards - median).abs().quantile(0.5))
    if not (spread > 0.0 and math.isfinite(spread)):
        spread = float(rewards.std(correction=0))
    clipped = (rewards - median).abs() > clip * spread if spread > 0.0 else torch.zeros_like(rewards, dtype=torch.bool)
    if spread > 0.0:
        rewards = rewards.clamp(median - clip * spread, median + clip * spread)
    shift = float(rewards.mean())
    scale = float(rewards.std(correction=0)) if rewards.numel() > 1 else 0.0
    scale = scale if scale > 0.0 and math.isfinite(scale) else 1.0
    return (rewards - shift) / scale, shift, scale, clipped
