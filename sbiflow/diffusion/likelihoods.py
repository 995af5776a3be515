r"""Likelihoods :math:`p(y \mid z)` that guide a diffusion prior towards an observation.

- :class:`LinearGaussianLikelihood`: :math:`y = A z + n`, :math:`n \sim \mathcal{N}(0, \Sigma_y)`,
  with every guidance (MMPS, DPS, convolved).
- :class:`LogLikelihood`: any differentiable :math:`\log p(y \mid z)` (a nonlinear forward
  model, or a learned likelihood: a fitted ``sbiflow.NLE`` becomes one with iid trials
  summed, see :func:`as_likelihood`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sbiflow.diffusion.operators import GaussianNoise, LinearOperator, as_operator

__all__ = ["LinearGaussianLikelihood", "LogLikelihood", "as_likelihood"]


class LinearGaussianLikelihood:
    r"""The likelihood of :math:`y = A z + n`, :math:`n \sim \mathcal{N}(0, \Sigma_y)`.

    Units: ``A`` maps z (in the prior's units) to y's units, and ``noise`` is in y's units
    (a standard deviation, or a covariance in y's units squared). Nothing is rescaled.

    Args:
        A: The forward operator: an ``(M, D)`` tensor (dense or torch sparse) acting on
            flattened z, a :class:`~sbiflow.diffusion.operators.LinearOperator`, or a linear
            function of rows ``(N, D) -> (N, M)`` (then give ``in_features`` and
            ``out_features``; its adjoint is taken from an attribute ``T`` if it has one,
            else by autograd).
        noise: A scalar std, an ``(M,)`` vector of stds, or an ``(M, M)`` covariance.
        in_features: D, for a function ``A``.
        out_features: M, for a function ``A``.

    Example:
        >>> lik = LinearGaussianLikelihood(torch.eye(3)[:2], 0.1)
        >>> lik.log_prob(torch.zeros(2), torch.zeros(4, 3)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        A: Tensor | LinearOperator | Callable[[Tensor], Tensor],  # noqa: N803
        noise: float | Tensor,
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> None:
        self.operator = as_operator(A, in_features, out_features)
        self.noise = GaussianNoise(noise, self.operator.out_features)

    @property
    def in_features(self) -> int:
        """D, the size of flattened z."""
        return self.operator.in_features

    @property
    def out_features(self) -> int:
        """M, the size of flattened y."""
        return self.operator.out_features

    def check_observation(self, y: Tensor) -> Tensor:
        """``y`` flattened to ``(M,)``, with a clear error for a wrong size or NaN/inf.

        Args:
            y: The observation, any shape with ``M`` elements.

        Returns:
            ``y`` as a tensor ``(M,)``.

        Raises:
            ValueError: ``y`` has the wrong number of elements, or holds NaN or inf.
        """
        y = torch.as_tensor(y)
        if y.numel() != self.out_features:
            raise ValueError(
                f"y has {y.numel()} numbers (shape {tuple(y.shape)}), but the operator A "
                f"produces {self.out_features}."
            )
        if not torch.isfinite(y).all():
            raise ValueError("y holds NaN or inf; mask those entries out of A and y instead.")
        return y.reshape(-1)

    def log_prob(self, y: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(y \mid z)` for one y and rows of z.

        Args:
            y: The observation, ``M`` elements.
            z: Rows ``(N, *z_shape)``.

        Returns:
            The log-likelihood of each row, ``(N,)``, in ``z``'s dtype.
        """
        y = self.check_observation(y).to(z.dtype)
        residual = y - self.operator(z.reshape(z.shape[0], -1))
        return self.noise.log_prob(residual)

    def simulate(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draws of y for rows of z: ``A z`` plus noise.

        Args:
            z: Rows ``(N, *z_shape)``.
            generator: Torch generator of the noise (``None``: the global one).

        Returns:
            Simulated observations ``(N, M)``, float64.
        """
        mean = self.operator(z.reshape(z.shape[0], -1).to(torch.float64))
        white = torch.randn(mean.shape, dtype=torch.float64, generator=generator)
        if self.noise.diagonal:
            return mean + white * self.noise.var.sqrt()
        return mean + white @ self.noise.chol.T  # type: ignore[union-attr]


class LogLikelihood:
    r"""A differentiable :math:`\log p(y \mid z)` given as a function.

    Args:
        fn: ``fn(z, y) -> (N,)`` for rows ``z`` ``(N, *z_shape)`` and one observation ``y``;
            differentiable in z by autograd.
        name: What it is, for messages.

    Example:
        >>> lik = LogLikelihood(lambda z, y: -0.5 * ((z - y) ** 2).sum(-1))
        >>> lik.log_prob(torch.zeros(2), torch.ones(5, 2)).shape
        torch.Size([5])
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "log-likelihood"):
        self.fn, self.name = fn, name

    def check_observation(self, y: Tensor) -> Tensor:
        """``y`` as a tensor, with a clear error for NaN/inf.

        Args:
            y: The observation, in the shape ``fn`` expects.

        Returns:
            ``y`` as a tensor, same shape.

        Raises:
            ValueError: ``y`` holds NaN or inf.
        """
        y = torch.as_tensor(y)
        if not torch.isfinite(y).all():
            raise ValueError("y holds NaN or inf.")
        return y

    def log_prob(self, y: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(y \mid z)` for rows of z, by the function given.

        Args:
            y: The observation.
            z: Rows ``(N, *z_shape)``.

        Returns:
            The log-likelihood of each row, ``(N,)``.

        Raises:
            ValueError: The function did not return one value per row.
        """
        out = self.fn(z, y)
        if out.shape != (z.shape[0],):
            raise ValueError(
                f"The {self.name} must return one value per row, shape ({z.shape[0]},); "
                f"got {tuple(out.shape)}."
            )
        return out


def as_likelihood(likelihood: Any) -> LinearGaussianLikelihood | LogLikelihood:
    r"""Accept a likelihood object, a fitted ``sbiflow.NLE`` or a function ``fn(z, y) -> (N,)``.

    A fitted NLE gives :math:`\\sum_i \\log q(y_i \\mid z)` over the iid trials in ``y``
    (``y`` one observation or ``(n, *x_shape)`` trials), differentiable in z.
    """
    if isinstance(likelihood, LinearGaussianLikelihood | LogLikelihood):
        return likelihood
    if hasattr(likelihood, "differentiable_log_likelihood"):
        return LogLikelihood(
            lambda z, y: likelihood.differentiable_log_likelihood(z, y).to(z.dtype),
            name=f"{type(likelihood).__name__} emulator",
        )
    if callable(likelihood):
        return LogLikelihood(likelihood)
    raise TypeError(
        "likelihood must be a LinearGaussianLikelihood, a LogLikelihood, a fitted sbiflow.NLE "
        f"or a function fn(z, y) -> (N,), not {type(likelihood).__name__}."
    )
