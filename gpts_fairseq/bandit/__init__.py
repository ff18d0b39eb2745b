"""GP-TS over the masking hyperparameters ψ, independent of fairseq (plain torch + GPyTorch).

    from gpts_fairseq.bandit import ArmSpace, make_policy, compute_reward
    policy = make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=1, reward_model="trend")
    decision = policy.decide(interaction=0, progress=0.0, start_loss=loss0)   # decision.psi -> dict
    ...train with decision.psi, measure the validation loss...
    policy.observe(decision.arm, compute_reward(loss0, loss), progress=0.0, start_loss=loss0)
    torch.save(policy.state_dict(), path)                      # tensors and plain values

One module per job: ``arms`` (the arm space), ``gp`` (the GPyTorch models' shared parts and
their algebra), ``reward_model`` (the trend-aware additive GP), ``fit`` (type-II ML),
``thompson`` (the seeded posterior draw), ``rewards`` (rewards and their robust scaling),
``policies``.
"""

from .arms import ArmSpace
from .fit import FitSettings
from .gp import GPNumericalError
from .policies import POLICIES, BanditWarning, Decision, Policy, make_policy
from .rewards import REWARD_KINDS, compute_reward

__all__ = [
    "POLICIES", "REWARD_KINDS", "ArmSpace", "BanditWarning", "Decision", "FitSettings",
    "GPNumericalError", "Policy", "compute_reward", "make_policy",
]
