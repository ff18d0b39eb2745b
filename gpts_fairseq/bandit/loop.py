"""The interaction loop: play ψ, measure the validation loss, reward, observe, decide.

Independent of fairseq: a training loop calls ``start(loss)`` once with the loss of the
untrained model and ``finish(loss, ...)`` at every interaction boundary; ``psi`` is the
masking in force, and the loop is its only owner (the policy's decision is converted to a
``Psi`` once, here; the arm is recovered from ψ when it is observed). The first interaction
plays the configured ψ; from the second on, the policy decides. ``state_dict()`` is plain
numbers, lists and tensors, so a run resumed from it continues exactly (the history goes with
it). A loop that only follows another one (a data-parallel rank other than 0) needs the
boundary alone: ψ and the counters (``boundary_state`` / ``follow``).

A non-finite loss gives no reward and keeps ψ; the next reward then spans several interactions
of that same ψ and is divided by their number (``reward_span`` in the record; docs/bandit.md
says why it is kept, divided, rather than skipped). The last interaction of a run may end
without a decision (``finish(..., decide=False)``).
"""

import math
import warnings
from collections.abc import Mapping

import torch

from ..masking.spec import Psi
from .policies import BanditWarning, Policy
from .rewards import check_reward_kind, compute_reward

STATE_FORMAT = 2
# what every data-parallel rank must agree on: ψ and where the current interaction started
BOUNDARY_COUNTERS = ("interaction", "start_update", "start_epoch", "started")


class InteractionLoop:
    def __init__(self, policy: Policy, first_psi: Psi, reward: str = "relative"):
        self.policy = policy
        self.reward_kind = check_reward_kind(reward)
        self.psi = first_psi
        self.interaction = 0
        self.start_update = 0
        self.start_epoch = 1
        self.start_progress = 0.0
        self.start_loss = None  # the last finite loss, measured at the start of the reward's span
        self.reward_span = 1  # interactions since start_loss was measured
        self.started = False
        self.history = []  # one JSON-ready record per finished interaction

    def start(self, loss: float, *, update: int = 0, epoch: int = 1, progress: float = 0.0):
        """The loss before the first interaction, so that the first arm gets a reward; or, to
        restart the interaction in progress (it then gets no reward of its own), the loss now."""
        self.start_loss, self.reward_span = _finite_or_none(loss), 1
        self.start_update, self.start_epoch, self.start_progress = update, epoch, progress
        self.started = True

    def finish(self, loss: float, *, update: int, epoch: int, progress: float, decide: bool = True) -> dict:
        """End the current interaction with validation loss ``loss`` (measured at ``update``,
        ``progress``); observe its reward, decide the next ψ and return the interaction's record.
        ``decide`` False (the last interaction of a run): no decision, ψ stays, the record's
        ``next_psi`` is None and its posterior the belief after the last reward."""
        loss = _finite_or_none(loss)
        reward = compute_reward(self.start_loss, loss, self.reward_kind)
        if reward is not None:
            reward /= self.reward_span
        if reward is None:
            warnings.warn(
                f"interaction {self.interaction}: no reward (validation loss before {self.start_loss}, "
                f"after {loss}); keeping psi {self.psi.as_dict()} and not updating the bandit", BanditWarning)
            decision_info, next_psi = {"decision_time_s": 0.0}, self.psi
        else:
            arm = self.policy.space.arm(self.psi.as_dict())
            self.policy.observe(arm, reward, progress=self.start_progress, start_loss=self.start_loss)
            decision_info, next_psi = {"decision_time_s": 0.0}, self.psi
            if decide:
                decision = self.policy.decide(self.interaction + 1, progress, start_loss=loss)
                decision_info, next_psi = decision.info, Psi(**decision.psi)
        record = {
            "interaction": self.interaction, "epoch": self.start_epoch, "update": self.start_update,
            "end_update": update, "progress": self.start_progress, "psi": self.psi.as_dict(),
            "prev_val_loss": self.start_loss, "val_loss": loss, "reward": reward, "reward_span": self.reward_span,
            "policy": self.policy.name, "next_psi": next_psi.as_dict() if decide else None,
            "decision_time_s": float(decision_info.get("decision_time_s", 0.0)),
            "fallback": bool(decision_info.get("fallback", False)),
            "posterior_mean": decision_info.get("posterior_mean"),  # at the chosen arm (GP policies)
            "posterior_std": decision_info.get("posterior_std"),
            "posterior": posterior_record(self.policy, progress, next_psi),
        }
        self.history.append(record)
        self.interaction += 1
        self.psi = next_psi
        self.start_update, self.start_epoch, self.start_progress = update, epoch, progress
        if loss is not None:
            self.start_loss, self.reward_span = loss, 1
        else:
            self.reward_span += 1
        return record

    # -- state ----------------------------------------------------------------------------------

    def boundary_state(self) -> dict:
        """ψ and the counters: all a following rank needs, and all it can save."""
        return {"format": STATE_FORMAT, "psi": self.psi.as_dict(),
                **{name: getattr(self, name) for name in BOUNDARY_COUNTERS}}

    def follow(self, psi: Psi, *, interaction: int, start_update: int, start_epoch: int, started: bool):
        """Adopt the boundary decided by the leading loop (another rank's)."""
        self.psi = psi
        self.interaction, self.start_update, self.start_epoch = interaction, start_update, start_epoch
        self.started = started

    def state_dict(self) -> dict:
        return {
            **self.boundary_state(), "policy": self.policy.state_dict(), "reward": self.reward_kind,
            "start_progress": self.start_progress, "start_loss": self.start_loss, "reward_span": self.reward_span,
            "history": [dict(record) for record in self.history],
        }

    def load_boundary_state(self, state: Mapping):
        """Restore ψ and the counters only (from a full or a boundary-only state)."""
        _check_format(state)
        self.follow(Psi(**state["psi"]), interaction=int(state["interaction"]),
                    start_update=int(state["start_update"]), start_epoch=int(state["start_epoch"]),
                    started=bool(state["started"]))

    def load_state_dict(self, state: Mapping):
        _check_format(state)
        if "policy" not in state:
            raise ValueError("this interaction loop state holds the boundary only (saved by a following rank); "
                             "resume from the checkpoint of data-parallel rank 0")
        if state["reward"] != self.reward_kind:
            raise ValueError(f"the run was started with reward {state['reward']!r}, not {self.reward_kind!r}")
        self.policy.load_state_dict(state["policy"])
        self.load_boundary_state(state)
        self.start_progress = float(state["start_progress"])
        self.start_loss, self.reward_span = state["start_loss"], int(state["reward_span"])
        self.history = [dict(record) for record in state["history"]]


def posterior_record(policy: Policy, progress: float, chosen_psi: Psi) -> dict | None:
    """The history's ``posterior``: the policy's GP posterior over the candidate arms at
    ``progress`` (a ρ slice through the chosen γ, λ when the space has more dimensions); None
    for policies without a GP."""
    result = policy.posterior(progress)
    if result is None:
        return None
    arms, mean, std = result
    dims = list(policy.space.dims)
    fixed = dict(policy.space.fixed)
    if len(dims) > 1 and "mask_prob" in dims:
        chosen_arm = policy.space.arm(chosen_psi.as_dict())
        rho = dims.index("mask_prob")
        others = [i for i in range(len(dims)) if i != rho]
        nearest = int(torch.cdist(arms[:, others], chosen_arm[others].reshape(1, -1)).argmin())
        fixed.update({dims[i]: float(arms[nearest, i]) for i in others})
        keep = (arms[:, others] == arms[nearest, others]).all(dim=1)
        arms, mean, std, dims = arms[keep][:, [rho]], mean[keep], std[keep], ["mask_prob"]
    return {"dims": dims, "fixed": fixed, "quantity": policy.posterior_quantity, "arms": arms.tolist(),
            "mean": mean.tolist(), "std": std.tolist()}


def _check_format(state: Mapping):
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"interaction loop state format {state.get('format')!r} is not {STATE_FORMAT}")


def _finite_or_none(loss):
    if loss is None:
        return None
    loss = float(loss)
    return loss if math.isfinite(loss) else None
