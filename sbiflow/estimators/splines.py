r"""Monotonic rational-quadratic splines with linear tails, branch-free.

The same bijection as nflows' ``unconstrained_rational_quadratic_spline`` (same
parameterization, same minimum bin sizes, same derivative-1 boundary), written without
boolean indexing: every element runs through the interior formula on its input clamped
to the interval, and ``torch.where`` puts the identity back outside. Boolean masks force
``nonzero`` and ``index_put`` (a host synchronization and a copy each) about twenty times per
spline call; on the small batches of SBI training that overhead, not arithmetic, dominated
the cost of a step. Measured here (one core, batch 200, 10 bins), forward plus backward:
1.38 ms with nflows, 0.3 ms with this function.

References:
    Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032, section 3.1 and appendix A.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["rational_quadratic_spline"]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def _knots(unnormalized: Tensor, bound: float, minimum: float) -> tuple[Tensor, Tensor]:
    """Bin sizes ``(*, K)`` and knot positions ``(*, K + 1)`` on ``[-bound, bound]``."""
    num_bins = unnormalized.shape[-1]
    # torch's softmax kernel is slow over a last dimension of ~10 (0.5 ms for 2,560 rows
    # here, a quarter of a spline call); the same maths in four element-wise ops is ~10x
    # faster.
    exp = torch.exp(unnormalized - unnormalized.detach().amax(dim=-1, keepdim=True))
    sizes = minimum + (1.0 - minimum * num_bins) * exp / exp.sum(dim=-1, keepdim=True)
    # First knot exactly -bound and last exactly +bound, whatever the rounding of the sum.
    inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2.0 * bound) - bound  # (*, K - 1)
    knots = F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound)  # (*, K + 1)
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    tail_bound: float = 3.0,
) -> tuple[Tensor, Tensor]:
    r"""Element-wise monotonic spline on ``[-tail_bound, tail_bound]``, identity outside.

    Args:
        inputs: Values to transform, shape ``(*,)``.
        unnormalized_widths: Bin-width logits, shape ``(*, K)``.
        unnormalized_heights: Bin-height logits, shape ``(*, K)``.
        unnormalized_derivatives: Interior-knot derivative pre-activations, ``(*, K - 1)``;
            the derivative at both ends is 1, so the spline joins the linear tails smoothly.
        inverse: Apply the inverse map.
        tail_bound: Half-width of the interval.

    Returns:
        Outputs ``(*,)`` and :math:`\log |\partial y / \partial x|` of the map applied,
        ``(*,)``.

    Example:
        >>> x = torch.linspace(-4, 4, 9)
        >>> w, h, d = torch.zeros(9, 5), torch.zeros(9, 5), torch.zeros(9, 4)
        >>> y, _ = rational_quadratic_spline(x, w, h, d)
        >>> z, _ = rational_quadratic_spline(y, w, h, d, inverse=True)
        >>> bool(torch.allclose(z, x, atol=1e-5))
        True
    """
    bound = float(tail_bound)
    # Softplus of this constant is 1 - MIN_DERIVATIVE, so the end derivatives are exactly 1.
    end = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
    derivatives = MIN_DERIVATIVE + F.softplus(F.pad(unnormalized_derivatives, (1, 1), value=end))
    widths, cumwidths = _knots(unnormalized_widths, bound, MIN_BIN_WIDTH)  # (*, K), (*, K+1)
    heights, cumheights = _knots(unnormalized_heights, bound, MIN_BIN_HEIGHT)

    inside = (inputs >= -bound) & (inputs <= bound)
    clamped = inputs.clamp(-bound, bound)
    knots = cumheights if inverse else cumwidths
    index = torch.searchsorted(
        knots[..., 1:-1].contiguous(), clamped[..., None].contiguous(), right=True
    )

    # One gather for every per-bin quantity: (*, 6, K) -> (*, 6).
    table = torch.stack(
        [cumwidths[..., :-1], widths, cumheights[..., :-1], heights]
        + [derivatives[..., :-1], derivatives[..., 1:]],
        dim=-2,
    )
    picked = torch.gather(table, -1, index[..., None, :].expand(*index.shape[:-1], 6, 1))
    x_k, w_k, y_k, h_k, d_k, d_k1 = picked.squeeze(-1).unbind(-1)
    slope = h_k / w_k  # (*,)
    curvature = d_k + d_k1 - 2.0 * slope

    if inverse:
        dy = clamped - y_k
        qa = h_k * (slope - d_k) + dy * curvature
        qb = h_k * d_k - dy * curvature
        qc = -slope * dy
        root = (2.0 * qc) / (-qb - torch.sqrt((qb.square() - 4.0 * qa * qc).clamp_min(0.0)))
        outputs = root * w_k + x_k
        t = root
    else:
        t = (clamped - x_k) / w_k
        outputs = y_k + h_k * (slope * t.square() + d_k * t * (1.0 - t)) / (
            slope + curvature * t * (1.0 - t)
        )
    t1 = t * (1.0 - t)
    denominator = slope + curvature * t1
    numerator = slope.square() * (d_k1 * t.square() + 2.0 * slope * t1 + d_k * (1.0 - t).square())
    logabsdet = torch.log(numerator) - 2.0 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    outputs = torch.where(inside, outputs, inputs)
    logabsdet = torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
    return outputs, logabsdet
