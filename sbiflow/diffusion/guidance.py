r"""Guidance: the guided denoiser :math:`E[u_0 \mid u_t, y]`.

The prior's denoiser :math:`\hat u(u_t) = E[u_0 \mid u_t]` runs on standardized
:math:`u = (z - \mu)/s`. With :math:`\gamma_t = \sigma_t^2 / m_t` and
:math:`J = \partial\hat u/\partial u_t`, Tweedie's formula gives the prior's posterior
covariance :math:`\Sigma_{0|t} = \gamma_t J` and turns a likelihood score into a denoiser:
:math:`\hat u_y = \hat u + \gamma_t \nabla_{u_t} \log p(y \mid u_t)`. The guidance methods
differ in the approximation of :math:`p(y \mid u_t)`:

- ``"mmps"`` (Rozet et al. 2024): :math:`p(u_0 \mid u_t) \approx \mathcal{N}(\hat u, \Sigma_{0|t})`,
  so :math:`p(y \mid u_t) \approx \mathcal{N}(y; A\hat z, \Sigma_y + A S \Sigma_{0|t} S A^\top)`;
  the solve runs by conjugate gradients with :math:`\Sigma_{0|t}` applied through
  vector-Jacobian products. Exact for a Gaussian prior and a linear A when solved to
  convergence. For a nonlinear :class:`LogLikelihood` the same moment matching is done on
  its local Gaussian (Laplace) form at :math:`\hat z` (gradient and Hessian by autograd).
- ``"dps"`` (Chung et al. 2022): :math:`p(y \mid u_t) \approx p(y \mid \hat z)` (known to
  be overconfident; a baseline), scaled by ``dps_scale`` and, as in Chung et al., damped
  while the residual is large (by :math:`\max(1, \chi^2/M)`).
- ``"convolved"`` (Adam et al. 2022): :math:`p(y \mid u_t) = \mathcal{N}(y; A z_t/m_t,
  \Sigma_y + (\sigma_t/m_t)^2 A S^2 A^\top)`, exact for a flat prior, needs no Jacobian of
  the network (one network pass per step) and errs on the wide side.

References:
    Learning Diffusion Priors from Observations by Expectation Maximization (Rozet et al.,
    2024), arXiv:2405.13712.
    Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung et al., 2022),
    arXiv:2209.14687.
    Posterior samples of source galaxies in strong gravitational lenses with score-based
    priors (Adam et al., 2022), arXiv:2211.03812.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from sbiflow.diffusion.covariance import Covariance
from sbiflow.diffusion.likelihoods import LinearGaussianLikelihood, LogLikelihood
from sbiflow.diffusion.preconditioner import BaselinePreconditioner
from sbiflow.diffusion.solve import conjugate_gradient
from sbiflow.estimators.sde import SDE

__all__ = ["GUIDANCES", "DenoiserPrior", "baseline_preconditioner", "posterior_denoiser"]

GUIDANCES = ("mmps", "dps", "convolved")
TWEEDIE = ("network", "baseline")
#: Largest z dimension for the Laplace form of a nonlinear likelihood (D Hessian rows).
MAX_LAPLACE_DIM = 64
#: Rows whose Hessians are averaged into the Laplace precision shared by a batch.
HESSIAN_ROWS = 64

#: ``(u_t (N, D), t scalar) -> E[u_0 | u_t, y] (N, D)``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


class DenoiserPrior(Protocol):
    """What guidance needs of a prior (``ScorePrior`` and ``GaussianScorePrior`` have it)."""

    z_shape: tuple[int, ...]
    dim: int
    dtype: torch.dtype
    sde: SDE
    t_min: float
    loc: Tensor
    scale: Tensor
    covariance: Covariance

    def denoise(self, u: Tensor, t: Tensor) -> Tensor: ...  # noqa: D102

    def baseline_tweedie(self, v: Tensor, t: Tensor) -> Tensor: ...  # noqa: D102

    def terminal(self, n: int) -> Tensor: ...  # noqa: D102

    def to_z(self, u: Tensor) -> Tensor: ...  # noqa: D102


def posterior_denoiser(
    prior: DenoiserPrior,
    likelihood: LinearGaussianLikelihood | LogLikelihood,
    y: Tensor,
    guidance: str = "mmps",
    cg_iterations: int = 16,
    cg_tol: float = 1e-4,
    dps_scale: float = 1.0,
    tweedie: str = "network",
    preconditioner: BaselinePreconditioner | None = None,
) -> Denoiser:
    r"""The guided denoiser for one observation ``y`` (see the module docstring).

    Args:
        prior: The diffusion prior.
        likelihood: The likelihood of y.
        y: The observation (already checked by the likelihood).
        guidance: One of :data:`GUIDANCES`.
        cg_iterations: Largest number of conjugate-gradient iterations (``"mmps"`` and
            ``"convolved"``; each ``"mmps"`` iteration is one backward pass of the prior).
        cg_tol: Relative residual at which CG stops early.
        dps_scale: Factor on the DPS likelihood score.
        tweedie: The covariance :math:`\Sigma_{0|t}` inside MMPS's conjugate-gradient solve:
            ``"network"`` (the prior denoiser's Jacobian, by vector-Jacobian products) or
            ``"baseline"`` (the learned prior's Gaussian baseline, in closed form: positive
            definite and free, where a learned Jacobian can be indefinite). The final
            update goes through the network's Jacobian either way.
        preconditioner: Preconditions MMPS's CG solve with the prior's Gaussian baseline
            (:func:`baseline_preconditioner`; ``None``: plain CG).
    """
    if tweedie not in TWEEDIE:
        raise ValueError(f"Unknown tweedie {tweedie!r}; choose one of {TWEEDIE}.")
    if guidance not in GUIDANCES:
        raise ValueError(f"Unknown guidance {guidance!r}; choose one of {GUIDANCES}.")
    if isinstance(likelihood, LinearGaussianLikelihood):
        if likelihood.in_features != prior.dim:
            raise ValueError(
                f"A acts on {likelihood.in_features} numbers but z has {prior.dim} "
                f"(shape {prior.z_shape})."
            )
        return _LinearGuidance(
            prior,
            likelihood,
            y,
            guidance,
            cg_iterations,
            cg_tol,
            dps_scale,
            tweedie,
            preconditioner,
        )
    if guidance == "convolved":
        raise ValueError(
            "guidance='convolved' needs a LinearGaussianLikelihood; use 'mmps' or 'dps' for a "
            "general log-likelihood."
        )
    if guidance == "mmps" and prior.dim > MAX_LAPLACE_DIM:
        raise ValueError(
            f"guidance='mmps' with a general log-likelihood builds its {prior.dim}x{prior.dim} "
            f"Hessian (at most {MAX_LAPLACE_DIM} dimensions); use guidance='dps', or write the "
            "likelihood as a LinearGaussianLikelihood if it is linear-Gaussian."
        )
    return _LogLikelihoodGuidance(prior, likelihood, y, guidance, dps_scale)


def baseline_preconditioner(
    prior: DenoiserPrior, likelihood: LinearGaussianLikelihood
) -> BaselinePreconditioner | None:
    """The baseline preconditioner of MMPS's solve, or ``None`` where it does not fit.

    ``None`` when the problem is too large for its dense ``(D, D)`` factorization
    (``preconditioner.MAX_PRECONDITIONED_DIM``, ``MAX_DENSE_ENTRIES``).
    """
    if not BaselinePreconditioner.supports(likelihood.operator, prior.dim):
        return None
    sde = prior.sde
    return BaselinePreconditioner(
        likelihood.operator,
        likelihood.noise,
        prior.covariance,
        prior.scale,
        lambda t: (sde.mean_scale(t), sde.std(t)),
    )


def _prior_denoise_with_graph(prior: DenoiserPrior, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""``u_t`` as a leaf that requires grad, and :math:`\\hat u(u_t)` with its graph."""
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        return leaf, prior.denoise(leaf, t)


def _vjp(out: Tensor, leaf: Tensor, v: Tensor, retain: bool = True) -> Tensor:
    r""":math:`J^\top v` per row (rows are independent: the batched VJP is per-row)."""
    (grad,) = torch.autograd.grad(out, leaf, v, retain_graph=retain)
    return grad


class _LinearGuidance:
    def __init__(
        self,
        prior: DenoiserPrior,
        likelihood: LinearGaussianLikelihood,
        y: Tensor,
        guidance: str,
        cg_iterations: int,
        cg_tol: float,
        dps_scale: float,
        tweedie: str = "network",
        preconditioner: BaselinePreconditioner | None = None,
    ) -> None:
        self.prior, self.guidance, self.tweedie = prior, guidance, tweedie
        self.preconditioner = preconditioner
        self.op = likelihood.operator.to(prior.dtype)
        self.noise = likelihood.noise
        self.y = y.to(prior.dtype).reshape(1, -1)
        self.loc = prior.loc.to(prior.dtype).reshape(1, -1)
        self.scale = prior.scale.to(prior.dtype).reshape(1, -1)
        self.cg_iterations, self.cg_tol, self.dps_scale = cg_iterations, cg_tol, dps_scale

    def _adjoint_u(self, v: Tensor) -> Tensor:
        r""":math:`S A^\top v`: the adjoint of :math:`u \mapsto A(\mu + S u)`'s linear part."""
        return self.scale * self.op.T(v)

    def _residual(self, u_hat: Tensor) -> Tensor:
        return self.y - self.op(self.loc + self.scale * u_hat)

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        sde = self.prior.sde
        m, s = sde.mean_scale(t.double()).item(), sde.std(t.double()).item()
        gamma = s**2 / m
        if self.guidance == "convolved":
            with torch.no_grad():
                u_hat = self.prior.denoise(u, t)
                c = (s / m) ** 2
                r = self.y - self.op(self.loc + self.scale * u / m)

                def cov_conv(v: Tensor) -> Tensor:
                    return self.noise.cov(v) + c * self.op(self.scale * self._adjoint_u(v))

                v = conjugate_gradient(cov_conv, r, self.cg_iterations, self.cg_tol)
                return u_hat + (s**2 / m**2) * self._adjoint_u(v)
        leaf, u_hat = _prior_denoise_with_graph(self.prior, u, t)
        r = self._residual(u_hat.detach())
        if self.guidance == "dps":
            # Chung et al.'s step normalization, capped at the plain likelihood score: the
            # score of N(y; A ẑ, Σ_y) divided by max(1, χ²/M) (unstable without it early on).
            white = self.noise.solve(r)
            chi2 = (r * white).sum(dim=-1, keepdim=True) / r.shape[-1]
            direction = self.dps_scale * self._adjoint_u(white / chi2.clamp_min(1.0))
            return (u_hat + gamma * _vjp(u_hat, leaf, direction, retain=False)).detach()

        def cov_y(v: Tensor) -> Tensor:  # Σ_y + A S Σ_{0|t} S Aᵀ
            if self.tweedie == "baseline":
                cov_u = self.prior.baseline_tweedie(self._adjoint_u(v), t)
            else:
                cov_u = gamma * _vjp(u_hat, leaf, self._adjoint_u(v))
            return self.noise.cov(v) + self.op(self.scale * cov_u)

        pre = self.preconditioner
        precondition = None if pre is None else (lambda v: pre(v, t))
        v = conjugate_gradient(cov_y, r, self.cg_iterations, self.cg_tol, precondition)
        return (u_hat + gamma * _vjp(u_hat, leaf, self._adjoint_u(v), retain=False)).detach()


class _LogLikelihoodGuidance:
    def __init__(
        self,
        prior: DenoiserPrior,
        likelihood: LogLikelihood,
        y: Tensor,
        guidance: str,
        dps_scale: float,
    ) -> None:
        self.prior, self.likelihood, self.y = prior, likelihood, y
        self.guidance, self.dps_scale = guidance, dps_scale
        self.loc = prior.loc.to(prior.dtype).reshape(1, -1)
        self.scale = prior.scale.to(prior.dtype).reshape(1, -1)

    def _log_lik(self, z_rows: Tensor) -> Tensor:
        z = z_rows.reshape(-1, *self.prior.z_shape)
        return self.likelihood.log_prob(self.y, z).to(z_rows.dtype)

    def _grad(self, z_rows: Tensor) -> Tensor:
        """Gradient ``(N, D)`` of the log-likelihood in z."""
        with torch.enable_grad():
            z = z_rows.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._log_lik(z).sum(), z)
        return grad.detach()

    def _precision(self, z_rows: Tensor) -> Tensor:
        """Minus the Hessian of the log-likelihood, averaged over at most ``HESSIAN_ROWS`` rows.

        One ``(D, D)`` matrix shared by the batch: the curvature of a likelihood varies slowly
        over a posterior's width, and D double-backward passes over every row would cost D
        times the gradient. Clipped to positive semi-definite.
        """
        rows = z_rows
        if rows.shape[0] > HESSIAN_ROWS:
            pick = torch.randperm(rows.shape[0], device=rows.device)[:HESSIAN_ROWS]
            rows = rows[pick]
        with torch.enable_grad():
            z = rows.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._log_lik(z).sum(), z, create_graph=True)
            hess = torch.stack(
                [
                    torch.autograd.grad(grad[:, i].sum(), z, retain_graph=True)[0].mean(dim=0)
                    for i in range(z.shape[1])
                ]
            )
        evals, evecs = torch.linalg.eigh(-0.5 * (hess + hess.T).detach())
        return (evecs * evals.clamp_min(0.0)) @ evecs.T

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        sde = self.prior.sde
        m, s = sde.mean_scale(t.double()).item(), sde.std(t.double()).item()
        gamma = s**2 / m
        leaf, u_hat = _prior_denoise_with_graph(self.prior, u, t)
        z_hat = self.loc + self.scale * u_hat.detach()
        grad = self._grad(z_hat)
        if not torch.isfinite(grad).all():
            raise FloatingPointError(
                f"The {self.likelihood.name} has a NaN/inf gradient at the current estimate; "
                "check that it is defined over the whole prior range."
            )
        if self.guidance == "dps":
            direction = self.dps_scale * self.scale * grad
            return (u_hat + gamma * _vjp(u_hat, leaf, direction, retain=False)).detach()
        # Laplace: log p(y|z) ≈ g·(z - ẑ) - ½ (z - ẑ)ᵀ P (z - ẑ). Moment matching with
        # p(z0 | u_t) ≈ N(ẑ, K), K = S Σ_{0|t} S: the guided mean moves by K (I + P K)^{-1} g,
        # exact when the likelihood is Gaussian in z.
        precision = self._precision(z_hat)
        dim = u.shape[1]
        eye = torch.eye(dim, dtype=u.dtype, device=u.device)
        jac = torch.stack(  # rows of J = ∂û/∂u_t, (N, D, D)
            [_vjp(u_hat, leaf, eye[i].expand_as(u)) for i in range(dim)], dim=1
        )
        k = gamma * self.scale.unsqueeze(-1) * jac * self.scale.unsqueeze(1)  # S Σ S
        step = torch.linalg.solve(eye + precision @ k, grad.unsqueeze(-1))  # (N, D, 1)
        direction = self.scale * step.squeeze(-1)
        return (u_hat + gamma * _vjp(u_hat, leaf, direction, retain=False)).detach()
