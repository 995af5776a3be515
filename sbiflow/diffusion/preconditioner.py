r"""A preconditioner for MMPS's solve: the same system with the prior's Gaussian baseline.

MMPS solves :math:`(\Sigma_y + B \Sigma_{0|t} B^\top) v = r` with :math:`B = A S` at every
step, :math:`\Sigma_{0|t}` being the learned prior's Tweedie covariance (applied through
vector-Jacobian products). When the data are informative (:math:`\Sigma_y` small against
:math:`B \Sigma_{0|t} B^\top`, as in strong lensing at a peak S/N of 10-30) this system is
badly conditioned and a few CG iterations stop far from its solution: the guidance is too
weak and the posterior too wide. The prior's Gaussian baseline :math:`C` (sample
covariance or power spectrum, fitted with the prior) gives the same system in closed form,
with the baseline's Tweedie covariance
:math:`C_t = \sigma_t^2 C (m_t^2 C + \sigma_t^2)^{-1}`:

.. math::

    K_t = \Sigma_y + B C_t B^\top, \qquad
    K_t^{-1} = \Sigma_y^{-1} - \Sigma_y^{-1} B \,(C_t^{-1} + G)^{-1} B^\top \Sigma_y^{-1},
    \qquad G = B^\top \Sigma_y^{-1} B,

(Woodbury: a :math:`D \times D` Cholesky factorization per diffusion time instead of an
:math:`M \times M` one). Preconditioned CG with :math:`K_t^{-1}` converges in one
iteration for a Gaussian prior and in a few where the network departs from its baseline.

Written here rather than taken from a library: the matrices come from the prior's own
baseline and the likelihood's operator, and the factorization changes with t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbiflow.diffusion.covariance import Covariance
from sbiflow.diffusion.operators import GaussianNoise, LinearOperator

__all__ = ["BaselinePreconditioner", "MAX_PRECONDITIONED_DIM", "MAX_DENSE_ENTRIES"]

#: Largest z dimension D for the preconditioner (a ``(D, D)`` Cholesky factor per step).
MAX_PRECONDITIONED_DIM = 4096
#: Largest ``M * D`` for the dense ``B = A S`` it keeps (float64: 8 bytes each).
MAX_DENSE_ENTRIES = 2**25


class BaselinePreconditioner:
    r"""Applies :math:`K_t^{-1}` (module docstring) to rows of y-space vectors.

    Args:
        operator: The likelihood's A, ``(M, D)``.
        noise: The likelihood's Gaussian noise :math:`\Sigma_y`.
        covariance: The prior's baseline covariance :math:`C` of standardized u.
        scale: The prior's standardization :math:`S`, ``(D,)`` (z = loc + S u).
        sde: ``(t) -> (m_t, sigma_t)``, the prior's forward-process mean scale and std.
    """

    def __init__(
        self,
        operator: LinearOperator,
        noise: GaussianNoise,
        covariance: Covariance,
        scale: Tensor,
        sde: Callable[[Tensor], tuple[Tensor, Tensor]],
    ) -> None:
        b = operator.dense(torch.float64) * scale.to(torch.float64).reshape(1, -1)  # (M, D)
        self.b = b
        self.noise = noise
        self.white_b = noise.solve(b.T).T  # Σ_y⁻¹ B, (M, D)
        self.gram = b.T @ self.white_b  # G = Bᵀ Σ_y⁻¹ B, (D, D)
        self.covariance = covariance
        self.sde = sde
        self.eye = torch.eye(b.shape[1], dtype=torch.float64)
        self._cache: tuple[float, Tensor] | None = None

    @staticmethod
    def supports(operator: LinearOperator, dim: int) -> bool:
        """Whether a problem is small enough for the dense factorization."""
        return dim <= MAX_PRECONDITIONED_DIM and operator.out_features * dim <= MAX_DENSE_ENTRIES

    def _factor(self, t: Tensor) -> Tensor:
        """Cholesky factor of :math:`C_t^{-1} + G` at time t (kept for repeated calls)."""
        key = float(t)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        m, s = self.sde(torch.as_tensor(key, dtype=torch.float64))
        # C_t⁻¹ = m²/σ² + 1/λ per eigenvalue: finite because the baseline's eigenvalues are
        # floored (covariance.py), positive definite with G ⪰ 0.
        inverse_cov = self.covariance.apply(self.eye, lambda lam: m**2 / s**2 + 1.0 / lam)
        inner = inverse_cov + self.gram
        factor = torch.linalg.cholesky(0.5 * (inner + inner.T))
        self._cache = (key, factor)
        return factor

    def __call__(self, r: Tensor, t: Tensor) -> Tensor:
        r""":math:`K_t^{-1} r` for rows ``r`` ``(N, M)`` (any float dtype; returned in it)."""
        r64 = r.to(torch.float64)
        white = self.noise.solve(r64)  # Σ_y⁻¹ r
        inner = torch.cholesky_solve((white @ self.b).T, self._factor(t)).T  # (N, D)
        return (white - inner @ self.white_b.T).to(r.dtype)
