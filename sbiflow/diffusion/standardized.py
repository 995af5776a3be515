r"""What the priors of the diffusion posterior share: standardized rows and a Gaussian baseline.

A prior of z (a field or a vector, ``z_shape``) works on standardized rows
:math:`u = (z - \mathrm{loc}) / \mathrm{scale}` of ``dim`` numbers, and diffuses them with
an SDE whose start is the Gaussian baseline :math:`\mathcal{N}(0, C)` (``covariance``). The
exact Gaussian prior (``sbiflow.diffusion.gaussian``) and the learned one
(``sbiflow.diffusion.score_prior``) differ in their denoiser only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbiflow.diffusion.covariance import Covariance
from sbiflow.estimators.sde import SDE

__all__ = ["StandardizedPrior"]


class StandardizedPrior:
    """Mixin of a diffusion prior on standardized rows with a Gaussian baseline.

    The class that uses it sets ``sde`` (:class:`~sbiflow.estimators.sde.SDE`),
    ``covariance`` (the baseline's ``C``), ``loc`` and ``scale`` (``(D,)``), ``z_shape``,
    ``dim`` (``D``) and ``dtype`` (of the rows it works in).
    """

    sde: SDE
    covariance: Covariance
    loc: Tensor
    scale: Tensor
    z_shape: tuple[int, ...]
    dim: int
    dtype: torch.dtype

    def baseline_tweedie(self, v: Tensor, t: Tensor | float) -> Tensor:
        r"""Baseline :math:`\mathrm{Cov}[u_0 \mid u_t]\,v = \sigma^2 C (m^2C + \sigma^2)^{-1} v`.

        Args:
            v: Rows to multiply, ``(N, D)``.
            t: Diffusion time, a scalar.

        Returns:
            The products, ``(N, D)``, from the Gaussian baseline's covariance ``C``.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        m, s = self.sde.mean_scale(t), self.sde.std(t)
        return self.covariance.apply(v, lambda lam: s**2 * lam / (m**2 * lam + s**2))

    def terminal(self, n: int) -> Tensor:
        r"""Draws of :math:`u_1 \sim \mathcal{N}(0, m_1^2 C + \sigma_1^2 I)`, where sampling starts.

        Args:
            n: Number of draws.

        Returns:
            Draws ``(n, D)`` in the prior's ``dtype``.
        """
        one = torch.ones((), dtype=self.dtype)
        m, s = self.sde.mean_scale(one), self.sde.std(one)
        return self.covariance.sample(n, lambda lam: (m**2 * lam + s**2).sqrt(), self.dtype)

    def to_z(self, u: Tensor) -> Tensor:
        """Standardized rows back to z.

        Args:
            u: Standardized rows ``(N, D)``.

        Returns:
            z, ``(N, *z_shape)``.
        """
        return (self.loc.to(u) + self.scale.to(u) * u).reshape(-1, *self.z_shape)

    def from_z(self, z: Tensor) -> Tensor:
        """Map z to standardized rows.

        Args:
            z: Fields ``(N, *z_shape)``.

        Returns:
            Standardized rows ``(N, D)`` in the prior's ``dtype``.
        """
        return (z.reshape(-1, self.dim).to(self.dtype) - self.loc) / self.scale
