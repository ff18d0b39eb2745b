"""Surrogates of the validation loss over the architecture embedding, and their acquisition.

``Boshnas`` (Tuli et al., JAIR 2023): an MLP with dropout for the mean, its MC-dropout spread
for the epistemic uncertainty, and a natural-parameter network (NPN, Wang et al. 2016:
Gaussian weights, moments propagated in closed form) trained by Gaussian likelihood for the
aleatoric one. Acquisition (a lower bound on the loss, minimised):
``μ - k_e σ_epistemic - k_a σ_aleatoric`` with k = 0.5 each. GOBI minimises it over the
continuous embedding by second-order steps (AdaHessian, Yao et al. 2021: Hutchinson's
diagonal of the Hessian, its moving RMS as preconditioner) from several starts; the result is
snapped to the nearest untrained model of the library.

``GaussianProcess``: the project's GPyTorch GP (``gpts_fairseq.bandit.gp.ArmGP``, Matérn-5/2,
ARD, fitted by type-II ML) on the embedding scaled to the unit cube; the same acquisition
``μ - 0.5 σ``, minimised exactly over the untrained library (the posterior is cheap there).
When type-II ML fails numerically the GP keeps the paper's initial hyperparameters.

Both train on standardised losses, seeded, and run single-threaded: the same observations
give the same choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EXPLORATION = 0.5  # k in mu - k * sigma


@dataclass(frozen=True)
class SurrogateSettings:
    hidden: int = 64
    dropout: float = 0.1
    mc_samples: int = 32
    epochs: int = 400
    lr: float = 3e-3
    gobi_restarts: int = 10
    gobi_steps: int = 200
    gobi_lr: float = 0.05
    gobi_tolerance: float = 1e-4


def _standardise(y: np.ndarray) -> tuple[torch.Tensor, float, float]:
    mean, std = float(y.mean()), float(y.std()) or 1.0
    return torch.as_tensor((y - mean) / std, dtype=torch.float32), mean, std


class _DropoutMLP(nn.Module):
    def __init__(self, dims: int, settings: SurrogateSettings):
        super().__init__()
        self.first, self.second = nn.Linear(dims, settings.hidden), nn.Linear(settings.hidden, settings.hidden)
        self.out = nn.Linear(settings.hidden, 1)
        self.dropout = settings.dropout

    def forward(self, x, masks=None):
        """``masks``: fixed dropout masks (a pair, each S x hidden) for a differentiable MC
        estimate over S samples; None = ordinary (train-mode) dropout."""
        h = torch.relu(self.first(x))
        if masks is None:
            h = torch.relu(self.second(nn.functional.dropout(h, self.dropout, self.training)))
            return self.out(nn.functional.dropout(h, self.dropout, self.training)).squeeze(-1)
        h = torch.relu(self.second(h.unsqueeze(0) * masks[0].unsqueeze(1)))
        return self.out(h * masks[1].unsqueeze(1)).squeeze(-1)  # S x N


class _NPNLinear(nn.Module):
    """A linear layer with independent Gaussian weights: (mean, var) in, (mean, var) out."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight_mean = nn.Parameter(torch.randn(inputs, outputs) / math.sqrt(inputs))
        self.weight_rho = nn.Parameter(torch.full((inputs, outputs), -6.0))
        self.bias_mean = nn.Parameter(torch.zeros(outputs))
        self.bias_rho = nn.Parameter(torch.full((outputs,), -6.0))

    def forward(self, mean, var):
        weight_var, bias_var = nn.functional.softplus(self.weight_rho), nn.functional.softplus(self.bias_rho)
        out_mean = mean @ self.weight_mean + self.bias_mean
        out_var = var @ (weight_var + self.weight_mean ** 2) + (mean ** 2) @ weight_var + bias_var
        return out_mean, out_var


def _relu_moments(mean, var):
    """Mean and variance of max(0, X) for X ~ N(mean, var)."""
    std = var.clamp(min=1e-10).sqrt()
    ratio = mean / std
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf, pdf = normal.cdf(ratio), normal.log_prob(ratio).exp()
    out_mean = mean * cdf + std * pdf
    second = (mean ** 2 + var) * cdf + mean * std * pdf
    return out_mean, (second - out_mean ** 2).clamp(min=1e-10)


class _NPN(nn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.first, self.out = _NPNLinear(dims, hidden), _NPNLinear(hidden, 1)
        self.log_noise = nn.Parameter(torch.tensor(-2.0))

    def forward(self, x):
        mean, var = _relu_moments(*self.first(x, torch.zeros_like(x)))
        mean, var = self.out(mean, var)
        return mean.squeeze(-1), var.squeeze(-1) + self.log_noise.exp()


def _train(network: nn.Module, loss_of, settings: SurrogateSettings) -> None:
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    network.train()
    for _ in range(settings.epochs):
        optimizer.zero_grad()
        loss_of().backward()
        optimizer.step()
    network.eval()


class Boshnas:
    """Fit on (embeddings, losses); ``acquisition`` and ``uncertainty`` on any embeddings."""

    def __init__(self, settings: SurrogateSettings, seed: int):
        self.settings, self.seed = settings, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Boshnas":
        settings = self.settings
        torch.manual_seed(self.seed)
        inputs = torch.as_tensor(x, dtype=torch.float32)
        targets, self.y_mean, self.y_std = _standardise(y)
        self.teacher = _DropoutMLP(x.shape[1], settings)
        self.student = _NPN(x.shape[1], settings.hidden)
        def teacher_loss():
            return ((self.teacher(inputs) - targets) ** 2).mean()

        def student_loss():
            mean, var = self.student(inputs)
            return nn.functional.gaussian_nll_loss(mean, targets, var)

        _train(self.teacher, teacher_loss, settings)
        _train(self.student, student_loss, settings)
        generator = torch.Generator().manual_seed(self.seed)
        keep = 1.0 - settings.dropout
        self.masks = [torch.bernoulli(torch.full((settings.mc_samples, settings.hidden), keep), generator=generator)
                      / keep for _ in range(2)]
        return self

    def _moments(self, x: torch.Tensor):
        samples = self.teacher(x, self.masks)  # S x N, standardised
        mean, epistemic = samples.mean(0), samples.std(0)
        aleatoric = self.student(x)[1].sqrt()
        return mean, epistemic, aleatoric

    def _acquisition(self, x: torch.Tensor) -> torch.Tensor:
        mean, epistemic, aleatoric = self._moments(x)
        return mean - EXPLORATION * (epistemic + aleatoric)

    @torch.no_grad()
    def acquisition(self, x: np.ndarray) -> np.ndarray:
        return self._acquisition(torch.as_tensor(x, dtype=torch.float32)).numpy()

    @torch.no_grad()
    def uncertainty(self, x: np.ndarray) -> np.ndarray:
        _, epistemic, aleatoric = self._moments(torch.as_tensor(x, dtype=torch.float32))
        return (epistemic + aleatoric).numpy()

    def gobi(self, starts: np.ndarray) -> np.ndarray:
        """AdaHessian descent of the acquisition from each start (rows); the end points."""
        settings = self.settings
        generator = torch.Generator().manual_seed(self.seed + 1)
        x = torch.as_tensor(starts, dtype=torch.float32).clone().requires_grad_(True)
        first, second = torch.zeros_like(x), torch.zeros_like(x)
        beta1, beta2, eps = 0.9, 0.999, 1e-4
        for step in range(1, settings.gobi_steps + 1):
            value = self._acquisition(x).sum()  # starts are independent: the sum separates
            (gradient,) = torch.autograd.grad(value, x, create_graph=True)
            probe = torch.randint(0, 2, x.shape, generator=generator).float() * 2 - 1
            (hessian_probe,) = torch.autograd.grad(gradient, x, grad_outputs=probe)
            diagonal = (probe * hessian_probe).abs()
            gradient = gradient.detach()
            first = beta1 * first + (1 - beta1) * gradient
            second = beta2 * second + (1 - beta2) * diagonal ** 2
            update = settings.gobi_lr * (first / (1 - beta1 ** step)) / ((second / (1 - beta2 ** step)).sqrt() + eps)
            with torch.no_grad():
                x -= update
            if float(update.abs().max()) < settings.gobi_tolerance:
                break
        return x.detach().numpy()


class GaussianProcess:
    """The project's ArmGP over the embedding in the unit cube (bounds from the library)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int):
        self.low, self.span, self.seed = low, np.where(high > low, high - low, 1.0), seed
        self.fit_failed = False

    def _scaled(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - self.low) / self.span, dtype=torch.float64)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GaussianProcess":
        from ..bandit.fit import FitSettings, fit_hyperparameters
        from ..bandit.gp import ArmGP, GPNumericalError

        torch.manual_seed(self.seed)
        self.x = self._scaled(x)
        self.y = torch.as_tensor((y - y.mean()) / (y.std() or 1.0), dtype=torch.float64)
        self.model = ArmGP(x.shape[1], kernel="matern52")
        self.model.set_train_data(self.x, self.y, strict=False)
        try:
            fit_hyperparameters(self.model, self.x, self.y, FitSettings())
        except GPNumericalError:  # the fit put the initial hyperparameters back: use those
            self.fit_failed = True
        return self

    def _moments(self, x: np.ndarray):
        from ..bandit.gp import posterior

        mean, variance = posterior(self.model, self.x, self.y, self._scaled(x), diag=True)
        return mean.numpy(), variance.clamp(min=0).sqrt().numpy()

    def acquisition(self, x: np.ndarray) -> np.ndarray:
        mean, std = self._moments(x)
        return mean - EXPLORATION * std

    def uncertainty(self, x: np.ndarray) -> np.ndarray:
        return self._moments(x)[1]
