"""Batched log-likelihood calls restricted to the prior's support, shared by the samplers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbiflow.priors import in_support

__all__ = ["log_likelihood_in_support"]


@torch.no_grad()
def log_likelihood_in_support(
    log_likelihood: Callable[[Tensor], Tensor], prior: Distribution, theta: Tensor
) -> tuple[np.ndarray, Tensor]:
    """Call ``log_likelihood`` once, on the rows of ``theta`` inside the prior's support.

    Args:
        log_likelihood: Batched log-likelihood, ``(B, D) -> (B,)``.
        prior: The prior whose support bounds the rows.
        theta: Parameter rows, ``(B, D)``.

    Returns:
        The log-likelihoods as float64 ``(B,)``, ``-inf`` outside the support and where the
        likelihood is NaN (a NaN is never accepted), and the boolean mask of the rows inside
        the support, ``(B,)``; the likelihood is not called when no row is inside.

    Raises:
        ValueError: If ``log_likelihood`` returns another shape than ``(n_inside,)``.
    """
    log_l = np.full(len(theta), -np.inf)
    inside = in_support(prior, theta)
    if bool(inside.any()):
        rows = theta[inside]
        values = torch.as_tensor(log_likelihood(rows))
        if values.shape != (len(rows),):
            raise ValueError(
                f"log_likelihood must return shape ({len(rows)},) for {len(rows)} "
                f"parameter rows, got {tuple(values.shape)}."
            )
        log_l[inside.numpy()] = values.detach().to(torch.float64).cpu().numpy()
    log_l[np.isnan(log_l)] = -np.inf
    return log_l, inside
