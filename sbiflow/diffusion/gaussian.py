r"""Gaussian priors, whose diffused score is exact, and the closed-form linear-Gaussian posterior.

For :math:`z \sim \mathcal{N}(\mu, \Sigma)` and :math:`y = A z + n`,
:math:`n \sim \mathcal{N}(0, \Sigma_y)`, the posterior is Gaussian with

.. math:: \Sigma_{z|y} = (\Sigma^{-1} + A^\top \Sigma_y^{-1} A)^{-1}, \qquad
    \mu_{z|y} = \mu + \Sigma A^\top (A \Sigma A^\top + \Sigma_y)^{-1} (y - A\mu),

the mean being the Wiener filter. These are the baselines and the references of the
diffusion posterior's tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from sbiflow.diffusion.covariance import Covariance, EigenCovariance
from sbiflow.diffusion.operators import GaussianNoise, LinearOperator, as_operator
from sbiflow.diffusion.standardized import StandardizedPrior
from sbiflow.estimators.sde import SDE, VPSDE

__all__ = ["GaussianScorePrior", "gaussian_posterior", "wiener_filter"]


class GaussianScorePrior(StandardizedPrior):
    r"""A Gaussian prior over z as a diffusion model with the exact denoiser.

    The diffusion runs on the standardized :math:`u = (z - \mu) / s` (``s`` the prior's
    marginal stds), :math:`u \sim \mathcal{N}(0, C)`. Under the forward process
    :math:`u_t = m_t u + \sigma_t \epsilon`, the denoiser is exact and linear:
    :math:`E[u \mid u_t] = m_t C (m_t^2 C + \sigma_t^2 I)^{-1} u_t`.

    Args:
        mean: :math:`\mu`, shape ``z_shape``.
        covariance: :math:`\Sigma` over flattened z, ``(D, D)``; or a :class:`Covariance`
            in standardized units with ``scale`` given.
        scale: Marginal stds ``z_shape`` when ``covariance`` is a :class:`Covariance`.
        sde: The forward process (default: VP with :math:`\beta \in [0.1, 20]`).
        t_min: Smallest diffusion time.
        dtype: Precision of the sampler (float64 by default: a reference).
    """

    def __init__(
        self,
        mean: Tensor,
        covariance: Tensor | Covariance,
        scale: Tensor | None = None,
        sde: SDE | None = None,
        t_min: float = 1e-3,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        mean = torch.as_tensor(mean, dtype=dtype)
        self.z_shape = tuple(mean.shape)
        self.dim = mean.numel()
        self.dtype = dtype
        self.loc = mean.reshape(-1)
        if isinstance(covariance, Covariance):
            if scale is None:
                raise ValueError("A Covariance object needs the marginal stds as scale=.")
            self.scale = torch.as_tensor(scale, dtype=dtype).reshape(-1).expand(self.dim)
            self.covariance = covariance
        else:
            cov = torch.as_tensor(covariance, dtype=torch.float64)
            if cov.shape != (self.dim, self.dim):
                raise ValueError(
                    f"covariance must be ({self.dim}, {self.dim}) for a mean of shape "
                    f"{self.z_shape}, got {tuple(cov.shape)}."
                )
            std = cov.diagonal().sqrt()
            if not (std > 0).all():
                raise ValueError("The prior covariance must have a positive diagonal.")
            self.scale = std.to(dtype)
            self.covariance = EigenCovariance(cov / (std[:, None] * std[None, :]))
        self.sde = sde or VPSDE()
        self.t_min = float(t_min)

    @classmethod
    def from_distribution(cls, prior: Distribution, **options: object) -> GaussianScorePrior:
        """From a torch ``MultivariateNormal``, ``Normal`` or ``Independent(Normal)``.

        Args:
            prior: The distribution; its event shape is ``z_shape`` (a scalar ``Normal``
                gives ``(1,)``).
            **options: Passed to the constructor (``sde``, ``t_min``, ``dtype``).

        Returns:
            The prior with the distribution's mean and covariance.

        Raises:
            TypeError: For any other distribution.
        """
        if isinstance(prior, MultivariateNormal):
            return cls(prior.loc, prior.covariance_matrix, **options)  # type: ignore[arg-type]
        base = prior.base_dist if isinstance(prior, Independent) else prior
        if isinstance(base, Normal):
            shape = prior.event_shape
            loc = base.loc.expand(prior.batch_shape + shape) if shape else base.loc
            scale = base.scale.expand_as(loc)
            if loc.ndim == 0:
                loc, scale = loc.reshape(1), scale.reshape(1)
            cov = torch.diag(scale.reshape(-1).to(torch.float64) ** 2)
            return cls(loc, cov, **options)  # type: ignore[arg-type]
        raise TypeError(
            f"An exact Gaussian prior needs a MultivariateNormal or Normal, not "
            f"{type(prior).__name__}; fit an sbiflow.ScorePrior to draws of it instead."
        )

    def denoise(self, u: Tensor, t: Tensor) -> Tensor:
        r""":math:`E[u_0 \mid u_t]` for rows ``u`` ``(N, D)`` at a scalar time ``t``.

        Args:
            u: Diffused standardized rows :math:`u_t`, ``(N, D)``.
            t: Diffusion time, a scalar tensor.

        Returns:
            The exact denoised rows, ``(N, D)``.
        """
        m, s = self.sde.mean_scale(t.double()), self.sde.std(t.double())
        return self.covariance.apply(u, lambda lam: m * lam / (m**2 * lam + s**2))

    def covariance_matrix(self) -> Tensor:
        r""":math:`\Sigma` over flattened z, dense (for references).

        Returns:
            The covariance, ``(D, D)`` float64.
        """
        eye = torch.eye(self.dim, dtype=torch.float64)
        c = self.covariance.matmul(eye)
        s = self.scale.to(torch.float64)
        return c * s[:, None] * s[None, :]


def gaussian_posterior(
    y: Tensor,
    A: Tensor | LinearOperator,  # noqa: N803
    noise: float | Tensor,
    prior_cov: Tensor,
    prior_mean: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The exact posterior of :math:`z \sim \mathcal{N}(\mu, \Sigma)`, :math:`y = Az + n`.

    Dense linear algebra in float64 (D and M up to a few thousand).

    Args:
        y: Observation ``(M,)``.
        A: ``(M, D)`` matrix (dense or sparse) or a :class:`LinearOperator`.
        noise: Scalar std, ``(M,)`` stds or an ``(M, M)`` covariance, in y's units.
        prior_cov: :math:`\Sigma`, ``(D, D)``.
        prior_mean: :math:`\mu`, ``(D,)`` (default 0).

    Returns:
        The posterior mean ``(D,)`` and covariance ``(D, D)``, float64.
    """
    op = as_operator(A)
    a = op.dense(torch.float64)
    noise_model = GaussianNoise(noise, op.out_features)
    sigma = torch.as_tensor(prior_cov, dtype=torch.float64)
    mu = torch.zeros(op.in_features, dtype=torch.float64) if prior_mean is None else prior_mean
    mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    s_at = sigma @ a.T  # (D, M)
    gram = a @ s_at + noise_model.matrix()  # (M, M)
    chol = torch.linalg.cholesky(0.5 * (gram + gram.T))
    gain = torch.cholesky_solve(s_at.T, chol).T  # Σ Aᵀ (AΣAᵀ + Σ_y)^{-1}, (D, M)
    mean = mu + gain @ (y - a @ mu)
    cov = sigma - gain @ s_at.T
    return mean, 0.5 * (cov + cov.T)


def wiener_filter(
    y: Tensor,
    A: Tensor | LinearOperator,  # noqa: N803
    noise: float | Tensor,
    prior_cov: Tensor,
    prior_mean: Tensor | None = None,
) -> Tensor:
    r"""The Wiener filter :math:`\mu + \Sigma A^\top (A\Sigma A^\top + \Sigma_y)^{-1}(y - A\mu)`.

    The posterior mean for a Gaussian prior, and the standard estimate of a field from
    masked, noisy data; the baseline the diffusion posterior is measured against.

    Args:
        y: Observation ``(M,)``.
        A: ``(M, D)`` matrix (dense or sparse) or a :class:`LinearOperator`.
        noise: Scalar std, ``(M,)`` stds or an ``(M, M)`` covariance, in y's units.
        prior_cov: The (assumed) prior covariance :math:`\Sigma`, ``(D, D)``.
        prior_mean: :math:`\mu`, ``(D,)`` (default 0).

    Returns:
        The filtered field ``(D,)``, float64.

    Example:
        >>> A = torch.eye(2)
        >>> wiener_filter(torch.tensor([1.0, 2.0]), A, 1.0, torch.eye(2))
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    return gaussian_posterior(y, A, noise, prior_cov, prior_mean)[0]
