"""The interaction loop: play ψ, measure the validation loss, reward, observe, decide.

Independent of fairseq: a training loop calls ``start(loss)`` once with the loss of the
untrained model and ``finish(loss, ...)`` at every interaction boundary; ``psi`` is the
masking in force. The first interaction plays the configured ψ (``first_psi``); from the
second on, the policy decides. ``state_dict()`` is plain numbers, lists and tensors, so a run
resumed from it continues exactly (the history goes with it).
"""

import math
import warnings
from collections.abc import Mapping

import torch

from .policies import BanditWarning, Policy
from .rewards import check_reward_kind, compute_reward

STATE_FORMAT = 1


class InteractionLoop:
    def __init__(self, policy: Policy, first_psi: Mapping[str, float], reward: str = "relative"):
        self.policy = policy
        self.reward_kind = check_reward_kind(reward)
        self.psi = dict(first_psi)
        self.arm = policy.space.arm(self.psi)
        self.interaction = 0
        self.start_update = 0
        self.start_epoch = 1
        self.start_progress = 0.0
        self.prev_loss = None  # the loss at the start of the current interaction
        self.started = False
        self.history = []  # one JSON-ready record per finished interaction

    def start(self, loss: float):
        """The loss before the first interaction, so that the first arm gets a reward."""
        self.prev_loss = _finite_or_none(loss)
        self.started = True

    def finish(self, loss: float, *, update: int, epoch: int, progress: float) -> dict:
        """End the current interaction with validation loss ``loss`` (measured at ``update``,
        ``progress``); decide the next ψ and return the interaction's record."""
        loss = _finite_or_none(loss)
        reward = compute_reward(self.prev_loss, loss, self.reward_kind)
        if reward is None:
            warnings.warn(
                f"interaction {self.interaction}: no reward (validation loss before {self.prev_loss}, "
                f"after {loss}); keeping psi {self.psi} and not updating the bandit", BanditWarning)
            decision_info, next_psi, next_arm = {"decision_time_s": 0.0}, dict(self.psi), self.arm
        else:
            self.policy.observe(self.arm, reward, progress=self.start_progress)
            decision = self.policy.decide(self.interaction + 1, progress)
            decision_info, next_psi, next_arm = decision.info, decision.psi, decision.arm
        record = {
            "interaction": self.interaction, "epoch": self.start_epoch, "update": self.start_update,
            "end_update": update, "progress": self.start_progress, "psi": dict(self.psi),
            "prev_val_loss": self.prev_loss, "val_loss": loss, "reward": reward,
            "policy": self.policy.name, "next_psi": dict(next_psi),
            "decision_time_s": float(decision_info.get("decision_time_s", 0.0)),
            "fallback": bool(decision_info.get("fallback", False)),
            "posterior_mean": decision_info.get("posterior_mean"),  # at the chosen arm (GP policies)
            "posterior_std": decision_info.get("posterior_std"),
            "posterior": self._posterior_record(progress, next_arm),
        }
        self.history.append(record)
        self.interaction += 1
        self.psi, self.arm = dict(next_psi), next_arm
        self.start_update, self.start_epoch, self.start_progress = update, epoch, progress
        if loss is not None:
            self.prev_loss = loss
        return record

    def _posterior_record(self, progress, chosen_arm):
        """The GP posterior over the candidate arms (a ρ slice through the chosen γ, λ when the
        space has more dimensions); None for policies without a GP."""
        result = self.policy.posterior(progress)
        if result is None:
            return None
        arms, mean, std = result
        dims = list(self.policy.space.dims)
        fixed = dict(self.policy.space.fixed)
        if len(dims) > 1 and "mask_prob" in dims:
            rho = dims.index("mask_prob")
            others = [i for i in range(len(dims)) if i != rho]
            nearest = int(torch.cdist(arms[:, others], chosen_arm[others].reshape(1, -1)).argmin())
            fixed.update({dims[i]: float(arms[nearest, i]) for i in others})
            keep = (arms[:, others] == arms[nearest, others]).all(dim=1)
            arms, mean, std, dims = arms[keep][:, [rho]], mean[keep], std[keep], ["mask_prob"]
        return {"dims": dims, "fixed": fixed, "arms": arms.tolist(), "mean": mean.tolist(), "std": std.tolist()}

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT, "policy": self.policy.state_dict(), "reward": self.reward_kind,
            "psi": dict(self.psi), "arm": self.arm.clone(), "interaction": self.interaction,
            "start_update": self.start_update, "start_epoch": self.start_epoch,
            "start_progress": self.start_progress, "prev_loss": self.prev_loss, "started": self.started,
            "history": [dict(record) for record in self.history],
        }

    def load_state_dict(self, state: Mapping):
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"interaction loop state format {state.get('format')!r} is not {STATE_FORMAT}")
        if state["reward"] != self.reward_kind:
            raise ValueError(f"the run was started with reward {state['reward']!r}, not {self.reward_kind!r}")
        self.policy.load_state_dict(state["policy"])
        self.psi = dict(state["psi"])
        self.arm = state["arm"].to(torch.float64).clone()
        self.interaction = int(state["interaction"])
        self.start_update, self.start_epoch = int(state["start_update"]), int(state["start_epoch"])
        self.start_progress = float(state["start_progress"])
        self.prev_loss, self.started = state["prev_loss"], bool(state["started"])
        self.history = [dict(record) for record in state["history"]]


def _finite_or_none(loss):
    if loss is None:
        return None
    loss = float(loss)
    return loss if math.isfinite(loss) else None
