r"""Batched conjugate gradients for the symmetric positive definite solves of guidance.

Written here rather than taken from a library: scipy's ``cg`` solves one system at a time
on NumPy arrays, and each product here is a batch of autograd passes through a network
(one per row of the batch), so the iteration has to run on torch tensors, all rows at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient"]


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int,
    tol: float = 0.0,
) -> Tensor:
    r"""Solve :math:`K v = b` row by row for a symmetric positive definite :math:`K`.

    Starts at :math:`v = 0`; one iteration is the steepest-descent step along ``b``.

    Args:
        apply: ``v (N, M) -> K v (N, M)``, the same K-action on every row (each row its own K).
        b: Right-hand sides ``(N, M)``.
        iterations: Largest number of iterations (products with K).
        tol: Stop early once every row's residual norm is below ``tol`` times its
            ``|b|`` (0: always run ``iterations``).

    Returns:
        The approximate solutions ``(N, M)``.
    """
    v = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dim=-1, keepdim=True)
    target = (tol**2) * rs
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(iterations):
        kp = apply(p)
        curvature = (p * kp).sum(dim=-1, keepdim=True)
        alpha = torch.where(curvature > tiny, rs / curvature.clamp_min(tiny), 0.0)
        v = v + alpha * p
        r = r - alpha * kp
        rs_new = (r * r).sum(dim=-1, keepdim=True)
        if tol > 0 and bool((rs_new <= target).all()):
            break
        p = r + torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), 0.0) * p
        rs = rs_new
    return v
