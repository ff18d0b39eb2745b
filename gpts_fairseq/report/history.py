"""Load finished (or running) pre-training runs: the bandit history, fairseq's JSON log, run.json.

A run is a fairseq save dir holding any of
- ``gpts_history.jsonl``: one JSON object per finished interaction, :data:`RECORD_FIELDS` (the
  one schema: the interaction controller checks each record with :func:`parse_interaction`
  before writing it, gpts-report parses it with the same function);
- ``train.log``: fairseq's ``--log-file`` written with ``--log-format json``. fairseq 0.12
  writes bare messages there (no time/level/tag prefix, and a stats line once per progress bar
  created so far, hence repeats): ``{"epoch": 1, "valid_loss": "8.894", ..., "valid_num_updates":
  "100"}``. Lines with ``valid_loss`` and ``valid_num_updates`` give the reference-masking
  validation loss (base 2) per update. Captured stdout (``... | INFO | valid | {...}``) reads too;
- ``run.json``: what the run is, written by whoever launched it (see :class:`RunInfo`).
A run can also be rebuilt from the result JSON written by ``Run.to_result`` (no posteriors),
so reports can be regenerated after the save dirs are gone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..psi_names import FAIRSEQ_DEFAULT_PSI

HISTORY_FILE = "gpts_history.jsonl"
LOG_FILE = "train.log"
RUN_INFO_FILE = "run.json"

# The history record, name -> what it holds. ``update``/``end_update``: the updates where
# ``psi`` started and ended; ``val_loss``: the reference-masking validation loss (bits) at
# ``end_update``, null when not finite; ``prev_val_loss``: the one the reward starts from (at
# ``update``, or earlier after a non-finite loss); ``reward``: null when a loss is missing;
# ``reward_span``: interactions the reward covers (more than 1 after a non-finite loss; the
# reward is divided by it); ``note``: what changed when the run was resumed with other options;
# ``progress``: training progress at ``update``; ``next_psi``: chosen for the next interaction;
# ``posterior_mean``/``posterior_std``: at the chosen arm, ``posterior``: over the arms (a ρ
# slice for ψ) after this observation, null for non-GP policies; its ``quantity`` (one of
# POSTERIOR_QUANTITIES, "reward" when absent) says whether it is of the reward (reward model
# ``arm``) or of the arm effect alone (``trend``: a reward difference between arms).
RECORD_FIELDS = {
    "interaction": "count", "epoch": "count or null", "update": "count", "end_update": "count or null",
    "progress": "number or null", "psi": "psi", "prev_val_loss": "number or null", "val_loss": "number or null",
    "reward": "number or null", "reward_span": "count or null", "note": "text or null", "policy": "text or null",
    "next_psi": "psi or null",
    "decision_time_s": "number or null", "fallback": "flag or null", "posterior_mean": "number or null",
    "posterior_std": "number or null", "posterior": "posterior or null",
}
REQUIRED_FIELDS = ("interaction", "update", "psi", "val_loss", "reward")
POSTERIOR_QUANTITIES = ("reward", "arm_effect")

_LOG_PAYLOAD = re.compile(r"(?:^|\|\s*[\w.-]+\s*\|\s*)(?P<payload>\{\".*\})\s*$")


class RunFormatError(ValueError):
    """A history, log or run.json that does not follow the documented format."""


@dataclass(frozen=True)
class Posterior:
    """GP posterior after one observation, over arms (rows) in the named dimensions."""

    dims: tuple[str, ...]
    arms: np.ndarray  # (n_arms, len(dims))
    mean: np.ndarray  # (n_arms,)
    std: np.ndarray  # (n_arms,)
    fixed: dict[str, float] = field(default_factory=dict)  # the other dims of a slice (e.g. γ, λ)
    quantity: str = "reward"  # one of POSTERIOR_QUANTITIES


@dataclass(frozen=True)
class Interaction:
    """One finished bandit interaction: psi in force over [update, end_update) and its reward."""

    interaction: int
    epoch: int | None
    update: int
    end_update: int | None
    psi: dict[str, float]
    prev_val_loss: float | None
    val_loss: float | None
    reward: float | None
    policy: str | None
    decision_time_s: float | None
    posterior: Posterior | None = None
    next_psi: dict[str, float] | None = None  # chosen for the next interaction


@dataclass(frozen=True)
class RunInfo:
    """Contents of run.json: written by the benchmark driver (or by hand) into a save dir.

    ``label`` groups runs in plots and tables (one colour per label); ``policy`` is the
    ``--gpts-policy`` value; ``psi`` is the starting (for ``constant``: the only) psi.
    """

    label: str
    policy: str | None = None
    seed: int | None = None
    corpus: str | None = None
    budget_updates: int | None = None
    psi: dict[str, float] | None = None
    arms: str | None = None
    context: str | None = None
    fairseq_args: list[str] = field(default_factory=list)

    def write(self, save_dir: Path) -> Path:
        path = Path(save_dir) / RUN_INFO_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path


@dataclass
class Run:
    """Everything the report needs about one run."""

    name: str
    info: RunInfo
    interactions: list[Interaction]
    val_curve: list[tuple[int, float]]  # (update, reference validation loss), sorted by update
    wall_time_s: float | None = None

    @property
    def final_val_loss(self) -> float | None:
        return self.val_curve[-1][1] if self.val_curve else None

    @property
    def end_update(self) -> int | None:
        """Where training ended: the budget, else the last validated or interaction update."""
        ends = [u for u, _ in self.val_curve[-1:]] + [i.end_update for i in self.interactions if i.end_update is not None]
        return self.info.budget_updates or (max(ends) if ends else None)

    @property
    def psi_sequence(self) -> list[dict[str, Any]]:
        """The ψ in force over the whole run, as [update, end_update) segments.

        One per finished interaction, plus the ψ chosen by the last one (its ``next_psi``),
        in force until the end of training: no interaction record closes it, because
        training stops before the next boundary. A ``constant`` run writes no history: its
        one ψ (from run.json) holds from update 0 to the end.
        """
        segments = [{"interaction": i.interaction, "update": i.update, "end_update": i.end_update, "psi": i.psi}
                    for i in self.interactions]
        end = self.end_update
        if self.interactions:
            last = self.interactions[-1]
            if last.next_psi is not None and last.end_update is not None and end is not None and end > last.end_update:
                segments.append({"interaction": last.interaction + 1, "update": last.end_update,
                                 "end_update": end, "psi": last.next_psi})
        elif self.info.policy == "constant" and self.info.psi:
            segments.append({"interaction": 0, "update": 0, "end_update": end, "psi": dict(self.info.psi)})
        return segments

    def is_reference_constant(self) -> bool:
        """A ``constant`` run at fairseq's default masking (rho=0.15, gamma=lambda=0.1)."""
        if self.info.policy != "constant":
            return False
        psis = [self.info.psi] if self.info.psi else [i.psi for i in self.interactions]
        return bool(psis) and all(_same_psi(p, FAIRSEQ_DEFAULT_PSI) for p in psis)

    def to_result(self) -> dict[str, Any]:
        """Plain-JSON summary (no posteriors), readable back with :func:`run_from_result`."""
        return {
            "name": self.name,
            "corpus": self.info.corpus,
            "policy": self.info.label,
            "seed": self.info.seed,
            "budget_updates": self.info.budget_updates,
            "final_val_loss": self.final_val_loss,
            "val_curve": [[u, loss] for u, loss in self.val_curve],
            "wall_time_s": self.wall_time_s,
            "psi_sequence": self.psi_sequence,
            "interactions": [_interaction_to_json(i) for i in self.interactions],
            "run_info": asdict(self.info),
        }


def _same_psi(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(math.isclose(a.get(k, math.nan), v, abs_tol=1e-9) for k, v in b.items())


def _interaction_to_json(i: Interaction) -> dict[str, Any]:
    out = asdict(i)
    out["posterior"] = None
    return out


def _number(value: Any, key: str, where: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunFormatError(f"{where}: {key!r} must be a number{' or null' if optional else ''}, got {value!r}")
    return float(value)


def _integer(value: Any, key: str, where: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RunFormatError(f"{where}: {key!r} must be an integer >= 0, got {value!r}")
    return value


def _psi(value: Any, key: str, where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise RunFormatError(f"{where}: {key!r} must be an object name -> value, got {value!r}")
    out = {}
    for name, v in value.items():
        x = _number(v, f"{key}.{name}", where, optional=False)
        if not 0.0 <= x <= 1.0:
            raise RunFormatError(f"{where}: {key}.{name} must be in [0, 1], got {x}")
        out[name] = x
    return out


def _posterior(value: Any, where: str) -> Posterior | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not {"dims", "arms", "mean", "std"} <= value.keys():
        raise RunFormatError(f"{where}: 'posterior' must be null or have dims, arms, mean, std")
    dims = tuple(value["dims"])
    try:
        arms = np.asarray(value["arms"], dtype=float).reshape(len(value["arms"]), len(dims))
        mean = np.asarray(value["mean"], dtype=float)
        std = np.asarray(value["std"], dtype=float)
    except (TypeError, ValueError) as err:
        raise RunFormatError(f"{where}: 'posterior' arms/mean/std must be numeric arrays ({err})") from None
    if not len(dims) or mean.shape != (len(arms),) or std.shape != (len(arms),):
        raise RunFormatError(
            f"{where}: 'posterior' needs one arm row per mean/std value with one column per dim "
            f"(dims {len(dims)}, arms {arms.shape}, mean {mean.shape}, std {std.shape})"
        )
    fixed = value.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise RunFormatError(f"{where}: 'posterior.fixed' must be an object name -> value, got {fixed!r}")
    quantity = value.get("quantity", "reward")
    if quantity not in POSTERIOR_QUANTITIES:
        raise RunFormatError(f"{where}: 'posterior.quantity' must be one of {', '.join(POSTERIOR_QUANTITIES)}, "
                             f"got {quantity!r}")
    return Posterior(dims, arms, mean, std, {k: _number(v, f"posterior.fixed.{k}", where, optional=False)
                                             for k, v in fixed.items()}, quantity)


def _check_field(name: str, value: Any, where: str) -> Any:
    kind = RECORD_FIELDS[name]
    if value is None and kind.endswith(" or null"):
        return None
    kind = kind.removesuffix(" or null")
    if kind == "count":
        return _integer(value, name, where)
    if kind == "number":
        return _number(value, name, where)
    if kind == "psi":
        return _psi(value, name, where)
    if kind == "posterior":
        return _posterior(value, where)
    expected = {"text": str, "flag": bool}[kind]
    if not isinstance(value, expected):
        raise RunFormatError(f"{where}: {name!r} must be a {kind}, got {value!r}")
    return value


def parse_interaction(record: Any, where: str) -> Interaction:
    """Validate one history record (a decoded JSON line) against :data:`RECORD_FIELDS`."""
    if not isinstance(record, dict):
        raise RunFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = set(REQUIRED_FIELDS) - record.keys()
    if missing:
        raise RunFormatError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
    unknown = record.keys() - RECORD_FIELDS.keys()
    if unknown:
        raise RunFormatError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    fields = {name: _check_field(name, record.get(name), where) for name in RECORD_FIELDS}
    if fields["end_update"] is not None and fields["end_update"] < fields["update"]:
        raise RunFormatError(f"{where}: 'end_update' ({fields['end_update']}) is before 'update' ({fields['update']})")
    return Interaction(**{name: fields[name] for name in Interaction.__dataclass_fields__})


def read_history(path: Path) -> list[Interaction]:
    """All interactions of a gpts_history.jsonl, checked for order (0, 1, 2, ... by update).

    A last line without its newline is a record being written right now: it is ignored.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] and not text.endswith("\n"):
        lines = lines[:-1]
    out: list[Interaction] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunFormatError(f"{where}: not JSON ({err.msg})") from None
        out.append(parse_interaction(record, where))
    for prev, cur in zip(out, out[1:]):
        if cur.interaction != prev.interaction + 1 or cur.update < prev.update:
            raise RunFormatError(
                f"{path}: interactions must be consecutive and start at non-decreasing updates; "
                f"got interaction {prev.interaction} (update {prev.update}) then "
                f"{cur.interaction} (update {cur.update})"
            )
    return out


def iter_log_records(path: Path) -> Iterable[dict[str, Any]]:
    """Every JSON stats object of a fairseq ``--log-format json`` log file or captured stdout."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _LOG_PAYLOAD.search(line)
            if not match:
                continue
            try:
                payload = json.loads(match["payload"])
            except json.JSONDecodeError:
                continue  # not a stats line, e.g. a message that happens to contain braces
            if isinstance(payload, dict):
                yield payload


def read_valid_curve(path: Path, subset: str = "valid") -> list[tuple[int, float]]:
    """(update, loss) from the ``<subset>`` lines of a fairseq JSON log, sorted by update.

    fairseq writes values as strings ("8.894"); lines repeat (see the module docstring) and a
    run resumed into the same log repeats updates: the later line wins.
    """
    loss_key, update_key = f"{subset}_loss", f"{subset}_num_updates"
    by_update: dict[int, float] = {}
    for stats in iter_log_records(path):
        if loss_key not in stats or update_key not in stats:
            continue
        try:
            update, loss = int(float(stats[update_key])), float(stats[loss_key])
        except (TypeError, ValueError):
            raise RunFormatError(f"{path}: unreadable {subset} line {stats}") from None
        if math.isfinite(loss):
            by_update[update] = loss
    return sorted(by_update.items())


def read_run_info(path: Path) -> RunInfo:
    """Parse a run.json (only ``label`` is required)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{path}: not JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("label"), str):
        raise RunFormatError(f"{path}: must be a JSON object with a string 'label'")
    known = set(RunInfo.__dataclass_fields__)
    return RunInfo(**{k: v for k, v in data.items() if k in known})


def is_run_dir(path: Path) -> bool:
    return any((Path(path) / name).is_file() for name in (HISTORY_FILE, LOG_FILE, RUN_INFO_FILE))


def load_run(save_dir: Path, subset: str = "valid") -> Run:
    """Read a save dir. Without run.json the label is the history's policy (or the dir name)."""
    save_dir = Path(save_dir)
    history = save_dir / HISTORY_FILE
    log = save_dir / LOG_FILE
    interactions = read_history(history) if history.is_file() else []
    curve = read_valid_curve(log, subset) if log.is_file() else []
    if not interactions and not curve:
        raise RunFormatError(f"{save_dir}: no interactions in {HISTORY_FILE} and no {subset} lines in {LOG_FILE}")
    info_path = save_dir / RUN_INFO_FILE
    if info_path.is_file():
        info = read_run_info(info_path)
    else:
        policy = next((i.policy for i in interactions if i.policy), None)
        info = RunInfo(label=policy or save_dir.name, policy=policy)
    return Run(name=save_dir.name, info=info, interactions=interactions, val_curve=curve)


def run_from_result(data: dict[str, Any], where: str = "result") -> Run:
    """Rebuild a :class:`Run` from :meth:`Run.to_result` output."""
    try:
        info = RunInfo(**data["run_info"])
        interactions = [
            parse_interaction(rec, f"{where}: interactions[{k}]") for k, rec in enumerate(data["interactions"])
        ]
        curve = [(int(u), float(loss)) for u, loss in data["val_curve"]]
    except (KeyError, TypeError, ValueError) as err:
        raise RunFormatError(f"{where}: not a run result ({err})") from None
    return Run(data.get("name", info.label), info, interactions, curve, data.get("wall_time_s"))


def discover_runs(paths: Iterable[Path], subset: str = "valid") -> list[Run]:
    """Runs from save dirs, result JSON files, or folders holding either (searched recursively)."""
    runs: list[Run] = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix == ".json":
            runs.append(run_from_result(json.loads(path.read_text()), str(path)))
        elif path.is_dir() and is_run_dir(path):
            runs.append(load_run(path, subset))
        elif path.is_dir():
            found = sorted({p.parent for name in (HISTORY_FILE, LOG_FILE, RUN_INFO_FILE) for p in path.rglob(name)})
            if not found:
                raise RunFormatError(f"{path}: no save dirs ({HISTORY_FILE}, {LOG_FILE} or {RUN_INFO_FILE}) inside")
            runs.extend(load_run(p, subset) for p in found)
        else:
            raise RunFormatError(f"{path}: not a save dir, a folder of save dirs, or a result .json")
    return runs
