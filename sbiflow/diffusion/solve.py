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

#: Residual growth (relative to |b|) at which a row is taken as diverging and stopped.
_BLOWUP = 100.0


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int,
    tol: float = 0.0,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Solve :math:`K v = b` row by row for a symmetric positive definite :math:`K`.

    Starts at :math:`v = 0`; one iteration is the steepest-descent step along ``b`` (along
    :math:`P b` with a preconditioner).

    Args:
        apply: ``v (N, M) -> K v (N, M)``, the same K-action on every row (each row its own K).
        b: Right-hand sides ``(N, M)``.
        iterations: Largest number of iterations (products with K).
        tol: Stop early once every row's residual norm is below ``tol`` times its
            ``|b|`` (0: always run ``iterations``).
        precondition: ``r (N, M) -> P r``, a symmetric positive definite approximation of
            :math:`K^{-1}` (preconditioned CG; ``None``: plain CG).

    Returns:
        The approximate solutions ``(N, M)``. A row stops early where K shows
        non-positive curvature or its residual grows 100-fold (safeguards for operators
        that are only nearly positive definite, such as a learned prior's Tweedie
        covariance).
    """
    v = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rs = (r * z).sum(dim=-1, keepdim=True)  # rᵀ P r
    norm_b = (b * b).sum(dim=-1, keepdim=True)
    target = (tol**2) * norm_b
    tiny = torch.finfo(b.dtype).tiny
    blowup = _BLOWUP**2 * norm_b
    active = torch.ones_like(rs, dtype=torch.bool)
    for _ in range(iterations):
        kp = apply(p)
        curvature = (p * kp).sum(dim=-1, keepdim=True)
        # A learned prior's Tweedie covariance need not be positive definite; a row whose
        # operator shows non-positive curvature stops where it is (CG would diverge there).
        active = active & (curvature > tiny)
        alpha = torch.where(active, rs / curvature.clamp_min(tiny), 0.0)
        v_next, r_next = v + alpha * p, r - alpha * kp
        norm_r = (r_next * r_next).sum(dim=-1, keepdim=True)
        # CG's residual may rise between iterations, but not by orders of magnitude unless
        # K is indefinite: such a row keeps its previous iterate and stops.
        active = active & (norm_r <= blowup)
        v = torch.where(active, v_next, v)
        r = torch.where(active, r_next, r)
        if tol > 0 and bool(((norm_r <= target) | ~active).all()):
            break
        z = r if precondition is None else precondition(r)
        rs_new = torch.where(active, (r * z).sum(dim=-1, keepdim=True), rs)
        p = z + torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), 0.0) * p
        rs = rs_new
    return v
