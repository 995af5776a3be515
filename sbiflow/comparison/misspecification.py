r"""Is an observation typical of any candidate model? A test in the classifier's summary space.

Held-out simulations of each model (never trained on) are mapped to summaries of x (see
``ModelComparison._summaries``: the statistics the embedding pools, such as dispersion
profiles or a power spectrum, or else the classifier's last hidden layer). Half of them
fit a Gaussian in that space (each coordinate standardized, the correlation matrix shrunk
towards the identity); the other half give the null distribution of the squared
Mahalanobis distance to it. An observation's p-value under model :math:`m` is the share of
those null distances at least as large as its own,
:math:`p_m = (1 + \#\{d_{\rm null} \ge d\}) / (n_{\rm null} + 1)`, valid (super-uniform)
for data from :math:`m` whatever the shape of the summaries. The observation's p-value is
:math:`\max_m p_m`: it is small only if x is atypical of every model, and for data from
any one candidate :math:`P(\max_m p_m \le \alpha) \le \alpha`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Misspecification", "SummaryReference"]

#: Shrinkage of the summaries' correlation matrix towards the identity: the summaries have
#: up to a few hundred dimensions and are fit on a few hundred points, so some shrinkage
#: keeps the matrix invertible and its smallest eigenvalues from swamping the distance.
SHRINKAGE = 0.05


@dataclass
class Misspecification:
    r"""The result of :meth:`ModelComparison.misspecification`.

    Floats for one observation, ``(N,)`` tensors for a batch.

    Attributes:
        score: Squared Mahalanobis distance to the nearest model in summary space, in units
            of that model's median null distance (about 1 for typical data).
        p_value: :math:`\max_m p_m`; small when x is typical of no candidate model.
        p_values: The p-value under each model.
    """

    score: float | Tensor
    p_value: float | Tensor
    p_values: dict[str, float | Tensor]

    def flagged(self, level: float = 0.05) -> bool | Tensor:
        """Whether x is atypical of every model at false-positive rate ``level``."""
        return self.p_value <= level


class SummaryReference:
    """Null distances of held-out simulations, per model, in summary space.

    Args:
        summaries: Per model, summaries ``(n_m, H)`` of held-out simulations (at least 20);
            the first half fits the Gaussian, the second half is the null sample.
    """

    def __init__(self, summaries: dict[str, Tensor]) -> None:
        self.summaries = {name: s.detach().double().cpu() for name, s in summaries.items()}
        self.mean: dict[str, Tensor] = {}
        self.scale: dict[str, Tensor] = {}
        self.precision: dict[str, Tensor] = {}
        self.null: dict[str, Tensor] = {}
        for name, s in self.summaries.items():
            if s.shape[0] < 20:
                raise ValueError(
                    f"The misspecification check needs at least 20 held-out simulations of "
                    f"model {name!r}, got {s.shape[0]}: fit with more simulations or a larger "
                    "n_reference."
                )
            half = s.shape[0] // 2
            fit, null = s[:half], s[half:]
            self.mean[name] = fit.mean(dim=0)
            std = fit.std(dim=0)
            # a coordinate (nearly) constant over the fit half keeps a small scale, not zero
            self.scale[name] = std.clamp_min(1e-3 * float(std.mean().clamp_min(1e-12)))
            z = (fit - self.mean[name]) / self.scale[name]
            corr = torch.cov(z.T).reshape(s.shape[1], s.shape[1])
            corr = (1 - SHRINKAGE) * corr + SHRINKAGE * torch.eye(s.shape[1], dtype=s.dtype)
            self.precision[name] = torch.linalg.inv(corr)
            self.null[name] = torch.sort(self._distance(name, null)).values

    def _distance(self, name: str, s: Tensor) -> Tensor:
        z = (s.double() - self.mean[name]) / self.scale[name]  # (N, H)
        return ((z @ self.precision[name]) * z).sum(dim=1)

    def test(self, summaries: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Score, p-value and per-model p-values ``(N,)`` of summaries ``(N, H)``."""
        p_values, scores = {}, []
        for name, null in self.null.items():
            d = self._distance(name, summaries.cpu())
            at_least = null.shape[0] - torch.searchsorted(null, d, right=False)
            p_values[name] = ((1 + at_least) / (null.shape[0] + 1)).float()
            scores.append(d / null.median())
        score = torch.stack(scores).min(dim=0).values.float()
        p_value = torch.stack(list(p_values.values())).max(dim=0).values
        return score, p_value, p_values
