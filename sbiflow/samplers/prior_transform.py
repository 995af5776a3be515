"""Unit-cube transforms of priors, for nested sampling: u ~ U(0, 1)^D  ->  θ ~ prior."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, Uniform

__all__ = ["UnsupportedPriorError", "prior_transform"]

SUPPORTED = (
    "BoxUniform / Independent(Uniform) (sbi's BoxUniform too), Independent(Normal), "
    "Independent(<any univariate distribution with icdf>, 1), MultivariateNormal, "
    "and a univariate prior with icdf (D = 1)"
)
_TINY = np.finfo(np.float64).tiny  # u is clipped to [tiny, 1 - eps/2]: finite Normal quantiles
_ONE_BELOW = np.nextafter(1.0, 0.0)


class UnsupportedPriorError(TypeError):
    """The prior has no known unit-cube transform (it is not a product of icdfs or a Gaussian)."""


class _BoxTransform:
    """θ = low + u (high - low), kept below ``high`` also after rounding to float32."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.width = low, high - low
        top = np.nextafter(high.astype(np.float32), np.float32(-np.inf))
        self.top = top.astype(np.float64)  # largest float32 below high: stays inside [low, high)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(self.low + np.asarray(u, dtype=np.float64) * self.width, self.top)


class _GaussianTransform:
    """θ = loc + Φ⁻¹(u) Lᵀ with L a Cholesky factor (diagonal for independent normals)."""

    def __init__(self, loc: np.ndarray, scale_tril: np.ndarray) -> None:
        from scipy.special import ndtri  # here: scipy.special costs ``import sbiflow`` 0.4 s

        self.loc, self.scale_tril, self._ndtri = loc, scale_tril, ndtri

    def __call__(self, u: np.ndarray) -> np.ndarray:
        z = self._ndtri(np.clip(np.asarray(u, dtype=np.float64), _TINY, _ONE_BELOW))  # (*, D)
        return self.loc + z @ self.scale_tril.T


class _IcdfTransform:
    """θ_i = F_i⁻¹(u_i) with torch's ``icdf`` of independent univariate marginals."""

    def __init__(self, marginals: Distribution) -> None:
        self.marginals = marginals  # batch shape (D,), or () for a univariate prior

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(np.asarray(u, dtype=np.float64), _TINY, _ONE_BELOW)
        with torch.no_grad():
            theta = self.marginals.icdf(torch.as_tensor(u, dtype=torch.float64))
        return theta.numpy().astype(np.float64)


def _numpy(t: torch.Tensor, dim: int) -> np.ndarray:
    return np.broadcast_to(t.detach().cpu().to(torch.float64).numpy(), (dim,)).copy()


def _has_icdf(dist: Distribution) -> bool:
    try:
        with torch.no_grad():
            dist.icdf(torch.full(dist.batch_shape, 0.5))
    except (NotImplementedError, AttributeError, TypeError, ValueError):
        return False
    return True


def _unsupported(prior: Distribution, why: str = "") -> UnsupportedPriorError:
    return UnsupportedPriorError(
        f"No unit-cube transform for a prior of type {type(prior).__name__}{why}. "
        f"Supported: {SUPPORTED}. Use MCMC instead (sbiflow.samplers.mcmc works with any "
        f"prior), or pass nested() your own prior_transform=, mapping u in [0, 1)^D to θ."
    )


def prior_transform(prior: Distribution) -> Callable[[np.ndarray], np.ndarray]:
    r"""The map from the unit cube to the prior that nested samplers draw through.

    If :math:`u \sim \mathcal{U}(0, 1)^D`, the returned function's output has the prior's
    distribution. The function takes ``(D,)`` or ``(B, D)`` numpy arrays and returns float64
    arrays of the same shape; it is picklable (it holds numpy arrays or a torch
    distribution only).

    Args:
        prior: A box uniform (ours or sbi's), an ``Independent`` product of univariate
            distributions whose ``icdf`` torch implements (``Normal``, ``Uniform``,
            ``Laplace``, ``Cauchy``, ``LogNormal``, ...), a ``MultivariateNormal``, or a
            univariate distribution with ``icdf`` (then ``D = 1``).

    Returns:
        The transform ``u -> θ``.

    Raises:
        UnsupportedPriorError: For any other prior (a ``TypeError``); the message says what
            to do instead.

    Example:
        >>> from sbiflow.priors import BoxUniform
        >>> transform = prior_transform(BoxUniform(torch.zeros(2), 2 * torch.ones(2)))
        >>> transform(np.array([0.25, 0.5]))
        array([0.5, 1. ])
    """
    if isinstance(prior, MultivariateNormal):
        loc = prior.loc.detach().to(torch.float64)
        if loc.ndim != 1:
            raise _unsupported(prior, f" with batch shape {tuple(prior.batch_shape)}")
        dim = loc.shape[0]
        return _GaussianTransform(_numpy(loc, dim), prior.scale_tril.detach().double().numpy())
    if isinstance(prior, Independent):
        base = prior.base_dist
        if prior.reinterpreted_batch_ndims != 1 or len(base.batch_shape) != 1 or base.event_shape:
            raise _unsupported(prior, " that is not a product over one axis of univariate laws")
        dim = base.batch_shape[0]
        if isinstance(base, Uniform):
            return _BoxTransform(_numpy(base.low, dim), _numpy(base.high, dim))
        if isinstance(base, Normal):
            return _GaussianTransform(_numpy(base.loc, dim), np.diag(_numpy(base.scale, dim)))
        if _has_icdf(base):
            return _IcdfTransform(base)
        raise _unsupported(prior, f" of {type(base).__name__} (no icdf)")
    if not prior.event_shape and not prior.batch_shape and _has_icdf(prior):
        return _IcdfTransform(prior)  # D = 1: (*, 1) -> (*, 1)
    raise _unsupported(prior)
