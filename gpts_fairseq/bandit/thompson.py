"""Thompson sampling: one joint draw of the posterior over the candidate arms, then argmax.

Randomness comes from a fresh ``torch.Generator`` seeded from (seed, stream, interaction), so
the draw at interaction t depends on nothing but those numbers: a resumed run reproduces it
without saving generator state, and a run that skips or repeats a call cannot shift later
draws.
"""

import torch

from ..runtime import seeded_generator
from .gp import GPNumericalError, robust_cholesky

SAMPLE_JITTERS = (1e-8, 1e-6, 1e-4)


def interaction_generator(seed: int, interaction: int, stream: str) -> torch.Generator:
    """A CPU generator for one interaction; ``stream`` separates independent uses. The key's
    text 'SEED/STREAM/INTERACTION' is part of every decision: changing it changes them all."""
    return seeded_generator(f"{int(seed)}/{stream}/{int(interaction)}")


def thompson_draw(mean: torch.Tensor, covariance: torch.Tensor, generator: torch.Generator) -> tuple[int, float]:
    """Index of the argmax of one joint draw from N(mean, covariance), and the relative jitter
    that made the covariance factorisable (posterior covariances over dense grids are
    numerically singular, so sampling always adds some, as GPyTorch does)."""
    factor, jitter = robust_cholesky(covariance, "the posterior covariance over the arms", SAMPLE_JITTERS)
    noise = torch.randn(mean.shape[0], generator=generator, dtype=mean.dtype)
    sample = mean + factor @ noise
    if not torch.isfinite(sample).all():
        raise GPNumericalError("the posterior sample has non-finite values")
    return int(torch.argmax(sample)), jitter
