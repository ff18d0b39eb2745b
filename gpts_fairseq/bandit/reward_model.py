"""The trend-aware reward model: the reward as a trend in the training state plus an arm effect.

In pre-training the reward is mostly trend: over 36 logged runs, training progress explains
~98% of its variance and ρ 2-3%; the arm effect is front-loaded and partly paid back
(r_k ≈ +0.011 ρ_k - 0.008 ρ_{k-1}, residual sd 0.003). A GP over the arms alone then fits
"all noise". This GP is additive over the training state and the arm:

    r_k = g(t_k, log L_k) + h(ψ_{k-1}) + f(ψ_k) [× forgetting in t] + ε

- g, the trend: progress t and the log reference loss at the start of the interaction
  (Ray Tune's PB2 gives its GP time and the value at the start of the interval for the same
  reason); the loss is min-max scaled over the observations the GP sees.
- h, the carry-over (``payback=True``): the previous arm's effect on this reward.
- f, the arm effect; with ``forgetting=τ`` it is multiplied by exp(-|t - t'| / τ) in progress
  units (Bogunovic et al. 2016's time-varying GP), so old evidence about the arms fades.

Inputs are laid out as ``[arm (d) | t | log L | previous arm (d, with payback)]``, arms in the
unit cube. Thompson sampling draws f at the current progress (``arm_effect`` is its kernel).
"""

import gpytorch
import torch

from .gp import SurrogateGP, base_kernel, scale_summary, scaled

REWARD_MODELS = ("arm", "trend")


class TrendGP(SurrogateGP):
    """Additive GP: trend over (t, log L) + optional carry-over of the previous arm + the arm
    effect (optionally forgetting over t); each part a scaled RBF/Matérn-5/2 (ARD) kernel."""

    def __init__(self, arm_dims: int, *, kernel: str = "rbf", mean: str = "zero", ard: bool = True,
                 priors: str = "none", payback: bool = False, forgetting: float | None = None):
        super().__init__(mean=mean, priors=priors)
        self.arm_dims = arm_dims
        arms = list(range(arm_dims))
        self.time_column, self.loss_column = arm_dims, arm_dims + 1
        if forgetting is None:
            effect = scaled(base_kernel(kernel, arm_dims, ard=ard, priors=priors), priors, active_dims=arms)
        else:  # a product calls its factors, so each factor selects its own inputs
            fading = gpytorch.kernels.MaternKernel(nu=0.5, active_dims=[self.time_column])
            fading.lengthscale = forgetting
            fading.raw_lengthscale.requires_grad_(False)  # a fixed time scale, not fitted
            effect = scaled(gpytorch.kernels.ProductKernel(
                base_kernel(kernel, arm_dims, ard=ard, priors=priors, active_dims=arms), fading), priors)
        trend = scaled(base_kernel(kernel, 2, ard=ard, priors=priors), priors,
                       active_dims=[self.time_column, self.loss_column])
        parts = [trend, effect]
        if payback:
            previous = list(range(arm_dims + 2, 2 * arm_dims + 2))
            parts.append(scaled(base_kernel(kernel, arm_dims, ard=ard, priors=priors), priors, active_dims=previous))
        # the parts live only in the sum: a second reference would register them twice
        # (their priors counted twice in the fit, their parameters saved twice)
        self.covar_module = gpytorch.kernels.AdditiveKernel(*parts)
        self.double()
        self.reset_hyperparameters()

    @property
    def trend(self) -> gpytorch.kernels.ScaleKernel:
        return self.covar_module.kernels[0]

    @property
    def arm_effect(self) -> gpytorch.kernels.ScaleKernel:
        return self.covar_module.kernels[1]

    @property
    def carry_over(self) -> gpytorch.kernels.ScaleKernel | None:
        return self.covar_module.kernels[2] if len(self.covar_module.kernels) > 2 else None

    @property
    def input_dim(self) -> int:
        return 2 * self.arm_dims + 2 if self.carry_over is not None else self.arm_dims + 2

    def summary(self) -> dict:
        parts = {"trend": self.trend, "arm_effect": self.arm_effect, "carry_over": self.carry_over}
        summary = {name: dict(zip(("lengthscale", "outputscale"), scale_summary(part)))
                   for name, part in parts.items() if part is not None}
        return {**summary, **super().summary()}


def scaled_log_losses(losses: torch.Tensor) -> torch.Tensor:
    """log L min-max scaled to [0, 1] over ``losses`` (0 when they are all equal): the trend's
    second input, on the same unit scale as progress."""
    logs = losses.log()
    if logs.numel() == 0 or not logs.max() > logs.min():
        return torch.zeros_like(logs)
    return (logs - logs.min()) / (logs.max() - logs.min())


def trend_inputs(unit_arms: torch.Tensor, progress: torch.Tensor, losses: torch.Tensor,
                 previous_unit_arms: torch.Tensor | None) -> torch.Tensor:
    """The GP inputs ``[arm | t | log L scaled | previous arm]`` of each observation."""
    columns = [unit_arms, progress.reshape(-1, 1), scaled_log_losses(losses).reshape(-1, 1)]
    if previous_unit_arms is not None:
        columns.append(previous_unit_arms)
    return torch.cat(columns, dim=1)
