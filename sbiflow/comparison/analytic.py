r"""Linear-Gaussian models whose evidences are closed form: the reference for Bayes factors.

A model :math:`x = \Phi \theta + \sigma \epsilon` with :math:`\theta \sim \mathcal N(0, s^2 I)`
and :math:`\epsilon \sim \mathcal N(0, I)` has the evidence
:math:`p(x \mid M) = \mathcal N(x; 0, s^2 \Phi \Phi^\top + \sigma^2 I)`, so every Bayes factor
between such models is exact. Two families make the analytic suite of model comparison:
prior-width pairs (same design, different :math:`s`) and nested regressions (polynomials of
increasing degree). The models follow the simulator protocol (``prior``,
``simulate(theta, rng)``), so :func:`sbiflow.simulate` and :class:`ModelComparison` take them
as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal

__all__ = ["LinearGaussianModel", "nested_regressions", "prior_widths"]


class LinearGaussianModel:
    r"""A linear-Gaussian model :math:`x = \Phi \theta + \sigma \epsilon` with a Gaussian prior.

    Args:
        design: The design matrix :math:`\Phi`, shape ``(d, p)``: ``d`` data points, ``p``
            parameters.
        prior_std: :math:`s`, the prior standard deviation of every parameter.
        noise_std: :math:`\sigma`, the noise standard deviation of every data point.
        name: A name for the model (stores and messages use it).

    Example:
        >>> model = LinearGaussianModel(torch.eye(3), prior_std=2.0)
        >>> x = model.simulate(model.prior.sample((4,)), np.random.default_rng(0))
        >>> x.shape, model.log_evidence(x).shape
        (torch.Size([4, 3]), torch.Size([4]))
        >>> model.log_likelihood(torch.zeros(5, 3), x[0]).shape
        torch.Size([5])
    """

    def __init__(
        self, design: Tensor, prior_std: float = 1.0, noise_std: float = 1.0, name: str = "lg"
    ) -> None:
        design = torch.as_tensor(design, dtype=torch.float64)
        if design.ndim != 2:
            raise ValueError(f"design must have shape (d, p), got {tuple(design.shape)}.")
        if prior_std <= 0 or noise_std <= 0:
            raise ValueError("prior_std and noise_std must be positive.")
        self.design, self.prior_std, self.noise_std = design, float(prior_std), float(noise_std)
        self.name = name
        dim_theta = design.shape[1]
        self.prior = Independent(
            Normal(torch.zeros(dim_theta), torch.full((dim_theta,), self.prior_std)), 1
        )
        covariance = self.prior_std**2 * design @ design.T + self.noise_std**2 * torch.eye(
            design.shape[0], dtype=torch.float64
        )
        self.marginal = MultivariateNormal(
            torch.zeros(design.shape[0], dtype=torch.float64), covariance_matrix=covariance
        )

    def simulate(self, theta: Tensor, rng: np.random.Generator) -> Tensor:
        """Simulate ``x`` ``(B, d)`` for parameters ``theta`` ``(B, p)``."""
        theta = torch.as_tensor(theta, dtype=torch.float64)
        noise = torch.from_numpy(rng.standard_normal((theta.shape[0], self.design.shape[0])))
        return (theta @ self.design.T + self.noise_std * noise).float()

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The exact :math:`\log p(x \mid \theta)` of one observation for a batch of parameters.

        Args:
            theta: Parameters ``(B, p)``.
            x: One observation ``(d,)``, or iid trials ``(n, d)`` sharing theta (summed).

        Returns:
            Log-likelihoods ``(B,)`` in the dtype of ``theta`` (float32 if not floating).
        """
        theta = torch.as_tensor(theta)
        dtype = theta.dtype if theta.is_floating_point() else torch.float32
        x = torch.as_tensor(x, dtype=torch.float64)
        trials = x.unsqueeze(0) if x.ndim == 1 else x  # (n, d)
        if trials.ndim != 2 or trials.shape[1] != self.design.shape[0]:
            raise ValueError(
                f"{self.name}: x must be one observation ({self.design.shape[0]},) or trials "
                f"(n, {self.design.shape[0]}), got {tuple(x.shape)}."
            )
        mean = theta.to(torch.float64) @ self.design.T  # (B, d)
        noise = Normal(mean.unsqueeze(1), self.noise_std)  # batch (B, 1, d)
        return noise.log_prob(trials).sum(dim=(1, 2)).to(dtype)

    def log_evidence(self, x: Tensor) -> Tensor:
        r"""The exact :math:`\log p(x \mid M)` of data ``(N, d)`` (or ``(d,)``), in float64."""
        return self.marginal.log_prob(torch.as_tensor(x, dtype=torch.float64))


def prior_widths(
    dim: int, widths: list[float] | tuple[float, ...], noise_std: float = 1.0
) -> dict[str, LinearGaussianModel]:
    r"""Models :math:`x = \theta + \sigma\epsilon` in ``dim`` dimensions that differ in prior width.

    Args:
        dim: Data (and parameter) dimension.
        widths: Prior standard deviations, one model each.
        noise_std: Noise standard deviation.

    Returns:
        ``{"width_<s>": model}`` in the order of ``widths``.
    """
    design = torch.eye(dim, dtype=torch.float64)
    return {
        f"width_{s:g}": LinearGaussianModel(design, s, noise_std, name=f"width_{s:g}_d{dim}")
        for s in widths
    }


def nested_regressions(
    dim: int,
    num_coefficients: list[int] | tuple[int, ...],
    prior_std: float = 1.0,
    noise_std: float = 1.0,
) -> dict[str, LinearGaussianModel]:
    r"""Nested polynomial regressions on ``dim`` points in :math:`[-1, 1]`.

    Model ``k`` has the first ``k`` Legendre polynomials as its design; each model is nested
    in every model with more coefficients (its extra coefficients set to zero).

    Args:
        dim: Number of data points.
        num_coefficients: Number of coefficients of each model, e.g. ``(1, 2, 3, 4)``.
        prior_std: Prior standard deviation of every coefficient.
        noise_std: Noise standard deviation.

    Returns:
        ``{"poly_<k>": model}`` in the order of ``num_coefficients``.
    """
    t = np.linspace(-1.0, 1.0, dim)
    largest = max(num_coefficients)
    basis = np.stack(
        [np.polynomial.legendre.Legendre.basis(j)(t) for j in range(largest)], axis=1
    )  # (dim, largest)
    return {
        f"poly_{k}": LinearGaussianModel(
            torch.from_numpy(basis[:, :k]), prior_std, noise_std, name=f"poly_{k}_d{dim}"
        )
        for k in num_coefficients
    }
