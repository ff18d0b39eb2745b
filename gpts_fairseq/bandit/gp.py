"""The GP surrogates' shared parts and their dense float64 algebra.

A model is a regular ``gpytorch.models.ExactGP`` (``SurrogateGP``: zero or constant mean,
Gaussian likelihood) holding the hyperparameters: ``ArmGP`` has one scaled RBF or Matérn-5/2
kernel over the arms (and any context); reward_model.TrendGP sums several, each on its own
inputs. The marginal likelihood and posterior are computed here with one explicit Cholesky
factorisation of the kernel matrices that GPyTorch's own kernels return: the same formulas
GPyTorch evaluates for small exact GPs (tests/test_reward_model.py checks equality), without
its lazy-tensor dispatch, which costs more than the algebra itself at bandit sizes (tens to
hundreds of observations). The explicit factorisation also gives control over jitter and
failure, and the posterior of one summand of an additive kernel.
"""

import math

import gpytorch
import torch
from linear_operator import to_dense

KERNELS = ("rbf", "matern52")
MEANS = ("zero", "constant")
PRIORS = ("none", "gamma")
PAPER_INIT = {"lengthscale": 0.25, "outputscale": 1.0, "noise": 1.0}
TRAIN_JITTERS = (0.0, 1e-8, 1e-6, 1e-4)
_LOG_2PI = math.log(2.0 * math.pi)


class GPNumericalError(RuntimeError):
    """A GP computation failed numerically (matrix not positive definite, NaN or inf)."""


def check_choice(option: str, value: str, valid) -> str:
    if value not in valid:
        raise ValueError(f"{option} must be one of {list(valid)}, got {value!r}")
    return value


def base_kernel(kind: str, num_dims: int, *, ard: bool = True, priors: str = "none", active_dims=None):
    """An RBF or Matérn-5/2 kernel over ``num_dims`` inputs (``active_dims`` of the GP's
    inputs: only for a kernel called directly, as ScaleKernel.forward bypasses its base's),
    with BoTorch's classic Gamma(3, 6) length-scale prior when ``priors="gamma"``."""
    check_choice("kernel", kind, KERNELS)
    options = {"ard_num_dims": num_dims if ard else None, "active_dims": active_dims}
    if check_choice("priors", priors, PRIORS) == "gamma":
        options["lengthscale_prior"] = gpytorch.priors.GammaPrior(3.0, 6.0)
    if kind == "rbf":
        return gpytorch.kernels.RBFKernel(**options)
    return gpytorch.kernels.MaternKernel(nu=2.5, **options)


def scaled(kernel: gpytorch.kernels.Kernel, priors: str = "none", active_dims=None) -> gpytorch.kernels.ScaleKernel:
    """``kernel`` times an output-scale (Gamma(2, 0.15) prior when ``priors="gamma"``), reading
    the ``active_dims`` of the GP's inputs (all when None)."""
    prior = gpytorch.priors.GammaPrior(2.0, 0.15) if priors == "gamma" else None
    return gpytorch.kernels.ScaleKernel(kernel, outputscale_prior=prior, active_dims=active_dims)


def dense_kernel(kernel: gpytorch.kernels.Kernel, x1: torch.Tensor, x2: torch.Tensor, *, diag: bool = False):
    """``kernel(x1, x2)`` as a dense tensor without GPyTorch's lazy evaluation (which costs more
    than the arithmetic at bandit sizes): an additive kernel summed part by part, each part on
    its own ``active_dims``."""
    if isinstance(kernel, gpytorch.kernels.AdditiveKernel):
        return sum(dense_kernel(part, x1, x2, diag=diag) for part in kernel.kernels)
    if kernel.active_dims is not None:
        x1, x2 = x1[..., kernel.active_dims], x2[..., kernel.active_dims]
    return to_dense(kernel.forward(x1, x2, diag=diag))


class SurrogateGP(gpytorch.models.ExactGP):
    """An exact GP on float64 with a Gaussian likelihood and a zero or constant mean; subclasses
    set ``covar_module`` and the paper's initialisation of their kernels."""

    def __init__(self, *, mean: str = "zero", priors: str = "none"):
        check_choice("priors", priors, PRIORS)
        noise_prior = gpytorch.priors.GammaPrior(1.1, 0.05) if priors == "gamma" else None
        super().__init__(None, None, gpytorch.likelihoods.GaussianLikelihood(noise_prior=noise_prior))
        check_choice("mean", mean, MEANS)
        self.mean_module = gpytorch.means.ZeroMean() if mean == "zero" else gpytorch.means.ConstantMean()

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def reset_hyperparameters(self):
        """The paper's initialisation: length-scale 0.25, output-scale 1 (each scaled part),
        noise variance 1, mean 0."""
        for module in self.covar_module.modules():
            if isinstance(module, gpytorch.kernels.ScaleKernel):
                module.outputscale = PAPER_INIT["outputscale"]
            elif getattr(module, "has_lengthscale", False) and module.raw_lengthscale.requires_grad:  # fixed stay
                module.lengthscale = PAPER_INIT["lengthscale"]
        self.likelihood.noise = PAPER_INIT["noise"]
        if isinstance(self.mean_module, gpytorch.means.ConstantMean):
            self.mean_module.constant.data.zero_()

    def kernel(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return dense_kernel(self.covar_module, x1, x2)

    def prior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean_module(x)

    def summary(self) -> dict:
        """The noise (and constant mean) as plain numbers, for logs; subclasses add their kernels'."""
        summary = {"noise": float(self.likelihood.noise.detach())}
        if isinstance(self.mean_module, gpytorch.means.ConstantMean):
            summary["mean"] = float(self.mean_module.constant.detach())
        return summary


def scale_summary(kernel: gpytorch.kernels.ScaleKernel) -> tuple[list, float]:
    """(length-scales, output-scale) of a scaled kernel, as plain numbers (of the first factor
    when the scaled kernel is a product)."""
    inner = kernel.base_kernel
    if isinstance(inner, gpytorch.kernels.ProductKernel):
        inner = inner.kernels[0]
    return inner.lengthscale.detach().reshape(-1).tolist(), float(kernel.outputscale.detach())


class ArmGP(SurrogateGP):
    """Exact GP over ``input_dim`` unit-cube inputs (arm coordinates, then any context): one
    scaled RBF or Matérn-5/2 kernel."""

    def __init__(self, input_dim: int, *, kernel: str = "rbf", mean: str = "zero", ard: bool = True,
                 priors: str = "none"):
        super().__init__(mean=mean, priors=priors)
        self.covar_module = scaled(base_kernel(kernel, input_dim, ard=ard, priors=priors), priors)
        self.double()
        self.reset_hyperparameters()

    def summary(self) -> dict:
        lengthscale, outputscale = scale_summary(self.covar_module)
        return {"lengthscale": lengthscale, "outputscale": outputscale, **super().summary()}


def robust_cholesky(matrix: torch.Tensor, what: str, jitters=TRAIN_JITTERS) -> tuple[torch.Tensor, float]:
    """Cholesky factor of a symmetric PSD matrix, trying ``matrix + jitter * mean(diag) * I``
    for each jitter in turn. Returns (factor, jitter used); GPNumericalError when the matrix
    is not finite or every jitter fails. The jitter is added to ``matrix`` in place (callers
    pass matrices they own: a copy of a 1,000 x 1,000 matrix per try is measurable)."""
    diagonal = matrix.diagonal()
    scale = float(diagonal.detach().mean().abs())
    if not math.isfinite(scale):
        raise GPNumericalError(f"{what} has non-finite entries")
    scale = max(scale, 1e-12)
    added = 0.0
    for jitter in jitters:
        if jitter > added:
            diagonal.add_((jitter - added) * scale)
            added = jitter
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:
            if not torch.isfinite(factor.diagonal()).all():
                raise GPNumericalError(f"{what} has non-finite entries")
            return factor, jitter
    raise GPNumericalError(f"{what} is not positive definite even with jitter {jitters[-1]} x mean(diag)")


def _train_factor(model: SurrogateGP, x: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of K(x, x) + noise * I (differentiable in the hyperparameters)."""
    matrix = model.kernel(x, x) + torch.diag_embed(model.likelihood.noise.expand(x.shape[0]))
    return robust_cholesky(matrix, "the kernel matrix of the observations")[0]


def negative_mll(model: SurrogateGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(y | x, hyperparameters) / n: the loss GPyTorch's ExactMarginalLogLikelihood gives."""
    n = y.shape[0]
    factor = _train_factor(model, x)
    residual = (y - model.prior_mean(x)).unsqueeze(-1)
    alpha = torch.cholesky_solve(residual, factor)
    log_det = torch.log(factor.diagonal()).sum()
    loss = 0.5 * (residual * alpha).sum() + log_det + 0.5 * n * _LOG_2PI
    for _, module, prior, closure, _ in model.named_priors():
        loss = loss - prior.log_prob(closure(module)).sum()
    return loss / n


@torch.no_grad()
def posterior(model: SurrogateGP, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, *, diag: bool = False,
              component: gpytorch.kernels.Kernel | None = None):
    """Mean and covariance of the latent function at ``test_x`` given (x, y): the full matrix,
    or only its diagonal (the variances) with ``diag=True``. With ``component`` (one zero-mean
    summand of an additive ``model.covar_module``), of that summand alone: the same formulas
    with its kernel in the prior and cross-covariance terms."""
    kernel = model.covar_module if component is None else component
    mean = model.prior_mean(test_x) if component is None else test_x.new_zeros(test_x.shape[0])
    covariance = dense_kernel(kernel, test_x, test_x, diag=diag)
    if y.shape[0] > 0:
        factor = _train_factor(model, x)
        cross = dense_kernel(kernel, x, test_x)
        alpha = torch.cholesky_solve((y - model.prior_mean(x)).unsqueeze(-1), factor)
        mean = mean + (cross.transpose(0, 1) @ alpha).squeeze(-1)
        whitened = torch.linalg.solve_triangular(factor, cross, upper=False)
        if diag:
            covariance = covariance - whitened.pow(2).sum(0)
        else:
            covariance = torch.addmm(covariance, whitened.transpose(0, 1), whitened, alpha=-1.0)
    variances = covariance if diag else covariance.diagonal()
    if not (torch.isfinite(mean).all() and torch.isfinite(variances).all()):
        raise GPNumericalError("the posterior has non-finite values")
    return mean, covariance
