r"""Losses of the model classifier: cross-entropy and the l-POP exponential loss.

Both are proper scoring rules: at their minimum the network's scores are the log posterior
model probabilities of the training mix, up to a constant per x, so differences of scores
are log Bayes factors plus the log prior odds of the training mix (removed by
:class:`~sbiflow.comparison.ModelComparison`).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LOSSES", "cross_entropy", "exponential", "leaky_parity_odd_power"]

#: The l-POP exponential loss clips its log-odds here (as Jeffrey & Wandelt's code does):
#: beyond ``exp(25)`` one sample's loss would swamp a batch, and |log K| > 50 is decided anyway.
EXPONENTIAL_CLIP = 50.0


def leaky_parity_odd_power(f: Tensor, alpha: float = 2.0) -> Tensor:
    r"""The l-POP transform :math:`f + f |f|^{\alpha - 1}`: odd, monotonic, leaky near 0.

    The network's output :math:`f` stays moderate while the log Bayes factor it stands for
    grows like :math:`f^\alpha`, which makes large Bayes factors easier to learn.
    """
    return f + f * f.abs() ** (alpha - 1)


def cross_entropy(scores: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per member and sample.

    Args:
        scores: Unnormalized log probabilities ``(K, B, M)`` of ``K`` ensemble members.
        labels: Model index of each sample ``(B,)``.

    Returns:
        Losses ``(K, B)``.
    """
    members, batch, models = scores.shape
    losses = nn.functional.cross_entropy(
        scores.reshape(members * batch, models), labels.repeat(members), reduction="none"
    )
    return losses.reshape(members, batch)


def exponential(scores: Tensor, labels: Tensor) -> Tensor:
    r"""The exponential loss :math:`\exp((\tfrac12 - m)\, g)` of two models per member and sample.

    :math:`g` is the log-odds of model 1 against model 0, the difference of the two scores
    (for the l-POP head the transformed output). The loss is minimal at
    :math:`g = \log p(M_1 \mid x) / p(M_0 \mid x)`.

    Args:
        scores: Scores ``(K, B, 2)``.
        labels: Model index of each sample, 0 or 1, ``(B,)``.

    Returns:
        Losses ``(K, B)``.

    References:
        Evidence Networks: simple losses for fast, amortized, neural Bayesian model
        comparison (Jeffrey & Wandelt, 2024), arXiv:2305.11241.
    """
    log_odds = (scores[..., 1] - scores[..., 0]).clamp(-EXPONENTIAL_CLIP, EXPONENTIAL_CLIP)
    return ((0.5 - labels.to(scores.dtype)) * log_odds).exp()


#: Losses by name: the ``loss=`` of :class:`~sbiflow.comparison.ModelComparison`.
LOSSES = {"cross_entropy": cross_entropy, "exponential": exponential}
