"""Rebuild the GP posteriors of a finished gp-ts run from its history alone.

A result JSON keeps the history without posteriors. The bandit's decisions are a pure function
of its configuration, seed and observations (``bandit.policies``), so feeding the recorded
arms, rewards, progress and start losses to a fresh policy built from the run's fairseq
arguments (by fairseq's own parser and the task's ``build_policy``) gives back its posterior
after every interaction. The replay checks itself: each decision it draws must be the ψ the
run recorded (``next_psi``); otherwise it raises :class:`ReplayMismatch`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

from .history import Interaction, Run, _posterior

PLACEHOLDERS = {"<data>": "data", "<save>": "save"}  # how drivers write paths in run.json


class ReplayMismatch(ValueError):
    """The replayed bandit chose another ψ than the run did: its posteriors would not be the run's."""


def build_run_policy(fairseq_args: Sequence[str]):
    """(policy, task config) of ``fairseq-train`` ``fairseq_args``, as the task builds them."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from .._fairseq_hook import register
    from ..interactions.options import build_policy, validate_config
    from ..masking.options import first_psi

    register()  # --task gpts_mlm must parse, whatever imported fairseq first

    args, skip = [], False
    for arg in fairseq_args:
        if skip:
            skip = False
            continue
        if arg == "--user-dir":  # the installed plugin registers itself
            skip = True
            continue
        for placeholder, value in PLACEHOLDERS.items():
            arg = arg.replace(placeholder, value)
        args.append(arg)
    with warnings.catch_warnings():  # hydra's deprecation notices about fairseq's own configs
        warnings.simplefilter("ignore")
        namespace = options.parse_args_and_arch(options.get_training_parser(), input_args=args)
        cfg = convert_namespace_to_omegaconf(namespace).task
    validate_config(cfg)
    return build_policy(cfg, first_psi(cfg)), cfg


def _progress(cfg, update: int, epoch: int | None) -> float:
    """Training progress as the interaction controller measures it (by updates when
    --max-update is set, else by epochs)."""
    if cfg.max_update > 0:
        return min(update / cfg.max_update, 1.0)
    if cfg.max_epoch > 0 and epoch is not None:
        return min((epoch - 1) / cfg.max_epoch, 1.0)
    return 0.0


def replay_posteriors(run: Run) -> Run:
    """A copy of ``run`` whose interactions carry the posterior the bandit had after each."""
    from ..bandit.loop import posterior_record
    from ..masking.spec import Psi

    if not run.info.fairseq_args:
        raise ReplayMismatch(f"{run.name}: no fairseq arguments in its run info to rebuild the policy from")
    policy, cfg = build_run_policy(run.info.fairseq_args)
    replayed: list[Interaction] = []
    for k, inter in enumerate(run.interactions):
        following = run.interactions[k + 1] if k + 1 < len(run.interactions) else None
        end_epoch = following.epoch if following is not None else inter.epoch
        start, end = _progress(cfg, inter.update, inter.epoch), _progress(cfg, inter.end_update, end_epoch)
        next_psi = inter.psi
        if inter.reward is not None and math.isfinite(inter.reward):
            policy.observe(policy.space.arm(inter.psi), inter.reward, progress=start, start_loss=inter.prev_val_loss)
            next_psi = policy.decide(inter.interaction + 1, end, start_loss=inter.val_loss).psi
        recorded = inter.next_psi or {}
        if any(not math.isclose(next_psi[name], value, abs_tol=1e-9) for name, value in recorded.items()):
            raise ReplayMismatch(f"{run.name}: after interaction {inter.interaction} the replayed bandit chose "
                                 f"{next_psi}, the run {recorded}")
        record = posterior_record(policy, end, Psi(**next_psi))
        where = f"{run.name}: replayed interaction {inter.interaction}"
        replayed.append(dataclasses.replace(inter, posterior=_posterior(record, where)))
    return dataclasses.replace(run, interactions=replayed)
