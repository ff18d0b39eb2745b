"""The arm space: which masking hyperparameters the bandit searches, over which values.

An arm is a float64 tensor holding the searched dimensions in natural units (e.g. ``[0.15]``
for ρ only); the other ψ components are fixed. The GP sees arms mapped to the unit cube, so
one length-scale means the same thing whatever the bounds. Every arm the space offers obeys
``leave_unmasked_prob + random_token_prob <= 1``.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch.quasirandom import SobolEngine

from ..masking.spec import PSI_FIELDS, Psi, check_probability

VARIANTS = ("rho", "psi")
PAPER_BOUNDS = (0.05, 0.50)
PAPER_STEP = 0.05
PAPER_FIXED = {"leave_unmasked_prob": 0.1, "random_token_prob": 0.1}
MIN_CANDIDATES = 1024


def _grid_values(name, lower, upper, step):
    """``lower, lower + step, ...`` up to ``upper`` (inclusive up to rounding)."""
    try:
        step = float(step)
    except (TypeError, ValueError):
        raise ValueError(f"step must be a positive number, got {step!r}") from None
    if not step > 0.0 or math.isinf(step):
        raise ValueError(f"step must be a positive finite number, got {step}")
    if step > upper - lower + 1e-12:
        raise ValueError(
            f"step {step} is larger than the range of {name} [{lower}, {upper}]: the grid would "
            f"hold a single value; fix {name} instead or widen its bounds"
        )
    count = math.floor((upper - lower) / step + 1e-9) + 1
    return [round(lower + k * step, 12) for k in range(count)]


class ArmSpace:
    """Named dimensions with bounds, as a grid (``step``) or a continuous box (Sobol candidates).

    ``dims`` are searched; ``fixed`` gives the remaining ψ components. Thompson sampling and the
    ``random`` policy choose among ``candidates`` (a grid: every grid point; continuous: a
    seeded scrambled Sobol set of ``n_candidates`` feasible points).
    """

    def __init__(
        self,
        dims: Sequence[str] = PSI_FIELDS,
        bounds: Mapping[str, Sequence[float]] | None = None,
        *,
        fixed: Mapping[str, float] | None = None,
        step: float | None = PAPER_STEP,
        n_candidates: int = MIN_CANDIDATES,
        seed: int = 0,
    ):
        dims = tuple(dims)
        fixed = dict(PAPER_FIXED if fixed is None else fixed)
        bounds = {} if bounds is None else dict(bounds)
        if not dims:
            raise ValueError(f"dims must name at least one of {list(PSI_FIELDS)}, got none")
        for option, names in (("dims", dims), ("bounds", bounds), ("fixed", fixed)):
            for name in names:
                if name not in PSI_FIELDS:
                    raise ValueError(f"{option}: unknown dimension {name!r}; valid: {list(PSI_FIELDS)}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims must not repeat a dimension, got {list(dims)}")
        for name in bounds:
            if name not in dims:
                raise ValueError(f"bounds: {name!r} is not a searched dimension {list(dims)}")
        self.dims = dims
        self.fixed = {}
        for name in PSI_FIELDS:
            if name in dims:
                fixed.pop(name, None)
            elif name in fixed:
                self.fixed[name] = check_probability(f"fixed[{name!r}]", fixed[name])
            else:
                raise ValueError(f"fixed must give {name!r}, which is not searched (dims={list(dims)})")
        self.bounds = {}
        for name in dims:
            pair = bounds.get(name, PAPER_BOUNDS)
            if len(pair) != 2:
                raise ValueError(f"bounds[{name!r}] must be (lower, upper), got {pair!r}")
            lower = check_probability(f"bounds[{name!r}] lower", pair[0])
            upper = check_probability(f"bounds[{name!r}] upper", pair[1])
            if lower > upper:
                raise ValueError(f"bounds[{name!r}]: lower {lower} > upper {upper}")
            self.bounds[name] = (lower, upper)
        self.step = None if step is None else float(step)
        self.seed = int(seed)
        if step is None:
            if not isinstance(n_candidates, int) or n_candidates < MIN_CANDIDATES:
                raise ValueError(f"n_candidates must be an integer >= {MIN_CANDIDATES}, got {n_candidates!r}")
            for name, (lower, upper) in self.bounds.items():
                if lower == upper:
                    raise ValueError(f"bounds[{name!r}] is empty ({lower} == {upper}); fix {name} instead")
            self.candidates = self._sobol_candidates(n_candidates)
        else:
            self.candidates = self._grid_candidates(step)
        self._lower = torch.tensor([self.bounds[n][0] for n in dims], dtype=torch.float64)
        self._width = torch.tensor([self.bounds[n][1] - self.bounds[n][0] for n in dims], dtype=torch.float64)

    @classmethod
    def paper_grid(cls, variant: str = "rho", *, fixed: Mapping[str, float] | None = None):
        """The authors' grid 0.05, 0.10, ..., 0.50: 10 arms for ``"rho"`` (γ = λ = 0.1 fixed),
        1,000 for ``"psi"``."""
        return cls(_variant_dims(variant), fixed=fixed, step=PAPER_STEP)

    @classmethod
    def continuous(cls, variant: str = "rho", bounds=None, *, fixed=None, n_candidates=MIN_CANDIDATES, seed=0):
        """A continuous box (default 0.05..0.50 per dimension) searched over Sobol candidates."""
        return cls(_variant_dims(variant), bounds, fixed=fixed, step=None, n_candidates=n_candidates, seed=seed)

    @property
    def is_grid(self) -> bool:
        return self.step is not None

    def __len__(self):
        return self.candidates.shape[0]

    def __repr__(self):
        kind = f"grid step {self.step}" if self.is_grid else f"continuous, seed {self.seed}"
        return f"ArmSpace(dims={list(self.dims)}, bounds={self.bounds}, fixed={self.fixed}, {kind}, {len(self)} candidates)"

    def config(self) -> dict:
        """Plain numbers and strings that rebuild this space (checked on state loading)."""
        return {
            "dims": list(self.dims),
            "bounds": {name: list(pair) for name, pair in self.bounds.items()},
            "fixed": dict(self.fixed),
            "step": self.step,
            "n_candidates": len(self),
            "seed": self.seed,
        }

    def to_unit(self, arms: torch.Tensor) -> torch.Tensor:
        return (arms.to(torch.float64) - self._lower) / self._width

    def psi(self, arm: torch.Tensor) -> dict:
        """The full ψ (all three names, fixed ones included) of one arm."""
        arm = torch.as_tensor(arm, dtype=torch.float64).reshape(-1)
        if arm.numel() != len(self.dims):
            raise ValueError(f"arm must hold {len(self.dims)} values {list(self.dims)}, got {arm.numel()}")
        searched = dict(zip(self.dims, arm.tolist()))
        return {name: searched[name] if name in searched else self.fixed[name] for name in PSI_FIELDS}

    def arm(self, psi: Mapping[str, float]) -> torch.Tensor:
        """The arm (searched dimensions) of a full ψ."""
        return torch.tensor([float(psi[name]) for name in self.dims], dtype=torch.float64)

    def feasible(self, arms: torch.Tensor) -> torch.Tensor:
        """Per-row mask: ``leave_unmasked_prob + random_token_prob <= 1``."""
        columns = {name: arms[..., i] for i, name in enumerate(self.dims)}
        gamma = columns.get("leave_unmasked_prob", self.fixed.get("leave_unmasked_prob"))
        lam = columns.get("random_token_prob", self.fixed.get("random_token_prob"))
        return torch.as_tensor(gamma + lam <= 1.0 + 1e-12).expand(arms.shape[:-1])

    def _check_fixed_feasible(self):
        if "leave_unmasked_prob" in self.fixed and "random_token_prob" in self.fixed:
            Psi.validate(0.0, self.fixed["leave_unmasked_prob"], self.fixed["random_token_prob"],
                         names=("mask_prob", "fixed['leave_unmasked_prob']", "fixed['random_token_prob']"))

    def _grid_candidates(self, step):
        self._check_fixed_feasible()
        axes = [
            torch.tensor(_grid_values(name, *self.bounds[name], step), dtype=torch.float64)
            for name in self.dims
        ]
        grid = torch.cartesian_prod(*axes).reshape(-1, len(self.dims))
        grid = grid[self.feasible(grid)]
        if grid.shape[0] == 0:
            raise ValueError(
                f"the grid is empty: no point of bounds {self.bounds} satisfies "
                "leave_unmasked_prob + random_token_prob <= 1"
            )
        return grid

    def _sobol_candidates(self, count):
        """``count`` feasible points: a scrambled Sobol sequence filtered by the constraint."""
        self._check_fixed_feasible()
        engine = SobolEngine(len(self.dims), scramble=True, seed=self.seed)
        lower = torch.tensor([self.bounds[n][0] for n in self.dims], dtype=torch.float64)
        width = torch.tensor([self.bounds[n][1] - self.bounds[n][0] for n in self.dims], dtype=torch.float64)
        kept, total = [], 0
        for _ in range(64):
            points = lower + engine.draw(count, dtype=torch.float64) * width
            points = points[self.feasible(points)]
            kept.append(points)
            total += points.shape[0]
            if total >= count:
                return torch.cat(kept)[:count]
        raise ValueError(
            f"bounds {self.bounds} leave (almost) no room for leave_unmasked_prob + "
            "random_token_prob <= 1"
        )


def _variant_dims(variant):
    if variant == "rho":
        return ("mask_prob",)
    if variant == "psi":
        return PSI_FIELDS
    raise ValueError(f"arms must be one of {list(VARIANTS)}, got {variant!r}")
