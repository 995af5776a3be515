r"""Balanced neural posterior estimation (BNPE): a loss that keeps a posterior conservative.

The posterior estimate defines a classifier between joint pairs :math:`(\theta, x)` and
marginal pairs :math:`(\theta', x)` through
:math:`d(\theta, x) = \sigma(\log q(\theta \mid x) - \log p(\theta))`. The classifier of the
exact posterior is *balanced*,

.. math::
    \mathbb{E}_{p(\theta, x)}[d(\theta, x)] + \mathbb{E}_{p(\theta)p(x)}[d(\theta, x)] = 1,

while an overconfident estimate (too much density near the truth, too little elsewhere)
pushes both terms up. BNPE adds :math:`\lambda` times the squared violation of that
condition, estimated on each batch with the batch's θ shifted by one row as the marginal
pairs, to the negative log density. The penalty is zero at the exact posterior, so the
optimum does not move; on finite budgets it trades a little tightness for coverage.

References:
    Balancing Simulation-based Inference for Conservative Posteriors (Delaunoy et al.,
    2023), arXiv:2304.10978. ``lampe.inference.BNPELoss`` (λ = 100 by default there too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbiflow.estimators.base import ConditionalEstimator

__all__ = ["BalancedLoss", "supports_balance"]

#: Estimator families with an exact, cheap log density (what the balance term needs).
BALANCEABLE = ("nsf", "maf", "ensemble")


def supports_balance(kind: str, options: dict) -> bool:
    """Whether an estimator ``kind`` (with ``options``) can be trained with the balance term."""
    if kind == "ensemble":
        return options.get("member", "nsf") in ("nsf", "maf")
    return kind in BALANCEABLE


class BalancedLoss(nn.Module):
    """Negative log density plus λ times the squared balance violation, per batch.

    Wraps a posterior estimator q(θ | x) for training (``sbiflow.training.train`` calls
    :meth:`loss`); its parameters are the estimator's. An ensemble balances every member
    on its own (each member's penalty, then the members' mean), so ``balance`` means the
    same for one network and for K; a bootstrapped ensemble's members weigh their negative
    log densities by their bootstrap weights (the penalty is unweighted).

    Args:
        estimator: The estimator q(a = θ | b = x).
        prior: The prior p(θ) the simulations were drawn from.
        weight: λ ≥ 0; 0 is plain NPE.

    Example:
        >>> from sbiflow.estimators import build_estimator
        >>> prior = torch.distributions.Independent(
        ...     torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1)
        >>> q = build_estimator("nsf", (2,), (3,))
        >>> BalancedLoss(q, prior, 100.0).loss(prior.sample((8,)), torch.randn(8, 3)).shape
        torch.Size([8])
    """

    def __init__(self, estimator: ConditionalEstimator, prior: Distribution, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"The balance weight must be >= 0, got {weight}.")
        self.estimator = estimator
        self.weight = float(weight)
        self.__dict__["prior"] = prior  # not a module: kept out of parameters and state

    def _log_probs(self, a: Tensor, b: Tensor) -> Tensor:
        """Log densities ``(K, B)`` (K = 1 for one network)."""
        members = getattr(self.estimator, "member_log_probs", None)
        if callable(members):
            return members(a, b)
        return self.estimator.log_prob(a, b)[None]

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample loss ``(B,)``: NLL plus the batch's penalty (the same for every row).

        Args:
            a: Parameters θ, ``(B, D)``.
            b: Simulations x, ``(B, *x_shape)``.
        """
        weights = None
        if getattr(self.estimator, "bootstrap", False):  # a bootstrapped ensemble
            weights = self.estimator.bootstrap_weights(a, b)  # (K, B)
        if self.weight == 0.0:
            log_q = self._log_probs(a, b)
            return -(log_q if weights is None else log_q * weights).mean(dim=0)
        a_marginal = a.roll(1, dims=0)  # (θ', x): θ from another row of the batch
        both = self._log_probs(torch.cat([a, a_marginal]), torch.cat([b, b]))  # (K, 2B)
        log_q, log_q_marginal = both.chunk(2, dim=1)  # (K, B) each
        nll = -(log_q if weights is None else log_q * weights).mean(dim=0)  # (B,)
        log_prior = self.prior.log_prob(a.cpu()).to(a.device)  # (B,)
        log_prior_marginal = log_prior.roll(1, dims=0)
        joint = torch.sigmoid(log_q - log_prior).mean(dim=1)  # (K,)
        marginal = torch.sigmoid(log_q_marginal - log_prior_marginal).mean(dim=1)  # (K,)
        penalty = (joint + marginal - 1.0).square().mean()
        return nll + self.weight * penalty

    def clip_gradients_(self, max_norm: float | None) -> None:
        """Clip as the estimator does (an ensemble clips each member on its own)."""
        own = getattr(self.estimator, "clip_gradients_", None)
        if callable(own):
            own(max_norm)
        elif max_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), max_norm, foreach=True)
