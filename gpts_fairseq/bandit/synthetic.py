"""Synthetic bandit problems with a known optimum, for tests and benchmarks.

The mean reward mimics a relative validation-loss improvement: ``scale * (1 + bump)``, where
the bump (height 1, best ψ at ``optimum``) is a Gaussian of ``width`` over the arms, and the
noise has standard deviation ``noise * scale``. Non-stationarity comes in the two forms pre-training shows: the best ρ moves
(``rho_start`` -> ``rho_end`` as progress goes 0 -> 1; the reason masking-rate schedules
exist), and every reward, noise included, shrinks as exp(-decay * p) as the loss flattens.
``drifting()`` has both (ρ* 0.35 -> 0.15, decay 3). Regret is the bump lost against the best candidate at the same
progress, so it is in [0, 1] per interaction whatever the scale.
"""

import math

import torch

from .arms import ArmSpace
from .policies import Policy
from .thompson import interaction_generator

PAPER_OPTIMUM = {"mask_prob": 0.30, "leave_unmasked_prob": 0.10, "random_token_prob": 0.10}


class SyntheticProblem:
    def __init__(self, space: ArmSpace, *, rho_start: float = 0.30, rho_end: float | None = None,
                 decay: float = 0.0, noise: float = 0.2, width: float = 0.12, scale: float = 0.01, seed: int = 0):
        self.space, self.noise, self.width, self.scale, self.seed = space, noise, width, scale, seed
        self.rho_start, self.rho_end, self.decay = rho_start, rho_start if rho_end is None else rho_end, decay

    @classmethod
    def drifting(cls, space: ArmSpace, **options):
        return cls(space, **{"rho_start": 0.35, "rho_end": 0.15, "decay": 3.0, **options})

    def optimum(self, progress: float) -> torch.Tensor:
        """The best arm (searched dimensions) at ``progress``."""
        rho = self.rho_start + (self.rho_end - self.rho_start) * progress
        return self.space.arm({**PAPER_OPTIMUM, "mask_prob": rho})

    def level(self, progress: float) -> float:
        return self.scale * math.exp(-self.decay * progress)

    def bump(self, arms: torch.Tensor, progress: float) -> torch.Tensor:
        distance = ((arms.reshape(-1, len(self.space.dims)) - self.optimum(progress)) / self.width).pow(2).sum(-1)
        return torch.exp(-distance)

    def mean_reward(self, arms: torch.Tensor, progress: float) -> torch.Tensor:
        return self.level(progress) * (1.0 + self.bump(arms, progress))

    def reward(self, arm: torch.Tensor, progress: float, interaction: int) -> float:
        """A noisy reward; the noise depends on (seed, interaction) only, so every policy faces
        the same noise sequence."""
        generator = interaction_generator(self.seed, interaction, "synthetic-noise")
        noise = float(torch.randn((), generator=generator, dtype=torch.float64))
        return float(self.mean_reward(arm, progress)) + self.noise * self.level(progress) * noise

    def regret(self, arm: torch.Tensor, progress: float) -> float:
        return float(self.bump(self.space.candidates, progress).max() - self.bump(arm, progress))


def run_bandit(policy: Policy, problem: SyntheticProblem, interactions: int) -> list[float]:
    """Play ``interactions`` rounds at progress t / interactions; the regret of each round."""
    regrets = []
    for t in range(interactions):
        progress = t / interactions
        decision = policy.decide(t, progress)
        policy.observe(decision.arm, problem.reward(decision.arm, progress, t), progress)
        regrets.append(problem.regret(decision.arm, progress))
    return regrets
