"""Priors: any ``torch.distributions.Distribution`` works; helpers to check and describe them."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, Uniform

__all__ = [
    "BoxUniform",
    "in_support",
    "prior_dim",
    "prior_from_spec",
    "prior_to_spec",
    "validate_theta",
]


class BoxUniform(Independent):
    r"""Uniform prior on the box :math:`\prod_i [\text{low}_i, \text{high}_i)`.

    Interchangeable with ``sbi.utils.BoxUniform`` (same structure: an ``Independent`` of a
    ``Uniform``), so sbi priors are accepted everywhere a ``BoxUniform`` is.

    Args:
        low: Lower bounds, shape ``(D,)``.
        high: Upper bounds, shape ``(D,)``.

    Example:
        >>> prior = BoxUniform(-torch.ones(2), torch.ones(2))
        >>> prior.sample((5,)).shape
        torch.Size([5, 2])
    """

    def __init__(self, low: Tensor | float, high: Tensor | float) -> None:
        low = torch.as_tensor(low, dtype=torch.float32)
        high = torch.as_tensor(high, dtype=torch.float32)
        if low.ndim == 0:
            low, high = low.reshape(1), high.reshape(1)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(
                f"BoxUniform needs 1-D low and high of the same shape, got {tuple(low.shape)} "
                f"and {tuple(high.shape)}."
            )
        if not bool((high > low).all()):
            raise ValueError("BoxUniform needs high > low in every dimension.")
        super().__init__(Uniform(low, high), 1)


def prior_dim(prior: Distribution) -> int:
    """Number of parameters ``D`` of a prior with event shape ``(D,)``."""
    shape = prior.event_shape
    if len(shape) == 0:
        return 1
    if len(shape) != 1:
        raise ValueError(f"Priors need event shape (D,), got {tuple(shape)}.")
    return int(shape[0])


def in_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Whether each row of ``theta`` lies inside the prior's support.

    Args:
        prior: The prior.
        theta: Parameters, shape ``(B, D)``.

    Returns:
        Boolean tensor, shape ``(B,)``.
    """
    try:
        inside = prior.support.check(theta)
    except NotImplementedError:
        inside = None
    if inside is not None and inside.ndim == 2:  # a non-independent support constraint
        inside = inside.all(dim=-1)
    if inside is None:
        with torch.no_grad():
            inside = torch.isfinite(prior.log_prob(theta))
    return inside & torch.isfinite(theta).all(dim=-1)


def validate_theta(prior: Distribution, theta: Tensor, name: str = "theta") -> Tensor:
    """Return ``theta`` as a float32 ``(B, D)`` tensor or raise a ``ValueError`` saying why not."""
    theta = torch.as_tensor(theta, dtype=torch.float32)
    dim = prior_dim(prior)
    if theta.ndim == 1 and theta.shape[0] == dim:
        theta = theta.unsqueeze(0)
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(
            f"{name} must have shape (B, {dim}) for a prior with {dim} parameters, "
            f"got {tuple(theta.shape)}."
        )
    return theta


def prior_to_spec(prior: Distribution) -> dict | None:
    """Describe a prior with plain tensors (for a safe save), or None if its type is unknown.

    Known: box uniforms (ours and sbi's), ``MultivariateNormal``, independent ``Normal``.
    """
    base = prior.base_dist if isinstance(prior, Independent) else None
    if isinstance(base, Uniform) and prior.reinterpreted_batch_ndims == 1:
        return {"type": "box_uniform", "low": base.low.clone(), "high": base.high.clone()}
    if isinstance(base, Normal) and prior.reinterpreted_batch_ndims == 1:
        return {"type": "normal", "loc": base.loc.clone(), "scale": base.scale.clone()}
    if isinstance(prior, MultivariateNormal):
        return {
            "type": "mvn",
            "loc": prior.loc.clone(),
            "covariance_matrix": prior.covariance_matrix.clone(),
        }
    return None


def prior_from_spec(spec: dict) -> Distribution:
    """Rebuild a prior described by :func:`prior_to_spec`."""
    kind = spec.get("type")
    if kind == "box_uniform":
        return BoxUniform(spec["low"], spec["high"])
    if kind == "normal":
        return Independent(Normal(spec["loc"], spec["scale"]), 1)
    if kind == "mvn":
        return MultivariateNormal(spec["loc"], covariance_matrix=spec["covariance_matrix"])
    raise ValueError(f"Unknown prior type {kind!r} in the saved file.")
