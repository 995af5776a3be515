r"""iid composition of score posteriors: the diffused score of :math:`p(a \mid b_{1:k})`.

A posterior model trained on single observations gives per-trial scores :math:`s_j` of
the diffused :math:`q_t(a \mid b_j)`. For k iid trials the posterior is
:math:`p(a \mid b_{1:k}) \propto p(a)^{1-k} \prod_j q(a \mid b_j)`, whose diffused score is
assembled here from the :math:`s_j` and the diffused prior score :math:`s_\lambda`.
Like ``sde.py``, this knows nothing about networks: per-trial scores come in as a function.

- :func:`geffner_score` (Geffner et al. 2023): :math:`s = (1-k)s_\lambda + \sum_j s_j`,
  exact only as :math:`t \to 0`.
- :func:`gauss_score` (GAUSS, Linhart et al. 2024): the correction for :math:`t > 0` that is
  exact when the prior and the per-trial posteriors are Gaussian,
  :math:`s = \Lambda^{-1}[\sum_j P_j s_j + (1-k) P_\lambda s_\lambda]` with
  :math:`P_j = \Sigma_j^{-1} + \frac{m_t^2}{\sigma_t^2} I`,
  :math:`P_\lambda = \Sigma_\lambda^{-1} + \frac{m_t^2}{\sigma_t^2} I` and
  :math:`\Lambda = \sum_j \Sigma_j^{-1} + (1-k)\Sigma_\lambda^{-1} + \frac{m_t^2}{\sigma_t^2} I`.

References:
    Compositional Score Modeling for Simulation-Based Inference (Geffner et al., 2023),
    arXiv:2209.14249.
    Diffusion posterior sampling for simulation-based inference in tall data settings
    (Linhart et al., 2024), arXiv:2404.07593.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbiflow.estimators.sde import SDE, BoxPrior, GaussianPrior, ScoreFn

__all__ = ["IID_METHODS", "TrialScoreFn", "gauss_score", "geffner_score", "precisions_from_draws"]

IID_METHODS = ("gauss", "geffner")
#: Per-trial scores ``(z (N, D), t scalar tensor) -> (k, N, D)``.
TrialScoreFn = Callable[[Tensor, Tensor], Tensor]


def geffner_score(
    trial_scores: TrialScoreFn, k: int, prior: GaussianPrior | BoxPrior, sde: SDE
) -> ScoreFn:
    r""":math:`(1-k)s_\lambda + \sum_j s_j` (Geffner et al. 2023).

    Args:
        trial_scores: Scores of the k diffused per-trial posteriors.
        k: Number of trials.
        prior: The prior in the diffusion's coordinates.
        sde: The forward SDE.
    """

    def score_fn(z: Tensor, t: Tensor) -> Tensor:
        t = t.to(z.dtype)
        m, s = sde.mean_scale(t), sde.std(t)
        return (1 - k) * prior.score(z, m, s) + trial_scores(z, t).sum(0)

    return score_fn


def precisions_from_draws(draws: Tensor, jitter: float = 1e-6) -> Tensor:
    """Inverse sample covariances ``(k, D, D)`` of per-trial draws ``(k, num, D)``."""
    centred = draws - draws.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / (draws.shape[1] - 1)  # (k, D, D)
    eye = torch.eye(draws.shape[-1], dtype=cov.dtype, device=cov.device)
    return torch.linalg.inv(cov + jitter * eye)


def gauss_score(
    trial_scores: TrialScoreFn, precisions: Tensor, prior: GaussianPrior | BoxPrior, sde: SDE
) -> ScoreFn:
    r"""The Gaussian-corrected composition (GAUSS, Linhart et al. 2024).

    Eigenvalues of the composed precision :math:`\sum_j \Sigma_j^{-1} + (1-k)\Sigma_\lambda^{-1}`
    are floored at the prior's smallest precision, so it stays positive definite.

    Args:
        trial_scores: Scores of the k diffused per-trial posteriors.
        precisions: :math:`\Sigma_j^{-1}`, shape ``(k, D, D)`` (:func:`precisions_from_draws`).
        prior: The prior in the diffusion's coordinates (its ``precision`` is used).
        sde: The forward SDE.
    """
    k, dim = precisions.shape[0], precisions.shape[-1]
    eye = torch.eye(dim, dtype=precisions.dtype, device=precisions.device)
    prior_precision = prior.precision.to(precisions)
    composed = precisions.sum(0) + (1 - k) * prior_precision
    evals, evecs = torch.linalg.eigh(0.5 * (composed + composed.T))
    floor = torch.linalg.eigvalsh(prior_precision).min()
    composed = evecs @ torch.diag(evals.clamp(min=floor)) @ evecs.T

    def score_fn(z: Tensor, t: Tensor) -> Tensor:
        t = t.to(z.dtype)
        m, s = sde.mean_scale(t), sde.std(t)
        r = m**2 / s**2
        scores = trial_scores(z, t)  # (k, N, D)
        weighted = torch.einsum("kde,kne->nd", precisions, scores) + r * scores.sum(0)
        weighted = weighted + (1 - k) * prior.score(z, m, s) @ (prior_precision + r * eye).T
        return torch.linalg.solve(composed + r * eye, weighted.T).T

    return score_fn
