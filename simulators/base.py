"""The simulator protocol, and a small base class that validates inputs for it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["Simulator", "SimulatorBase"]


@runtime_checkable
class Simulator(Protocol):
    r"""What ``sbiflow`` needs from a simulator.

    Any object with these attributes plugs in; no base class is required. Where the maths
    allows, a simulator also offers ``log_likelihood(theta, x)`` (exact log-likelihood of
    ``theta`` shaped ``(B, D)`` for one observation ``x``, returns ``(B,)``),
    ``reference_posterior(x_o, n, seed=0)`` (``(n, D)`` exact posterior samples), and
    ``observation(i)`` / ``true_parameters(i)`` (reference observations, ``i`` from 1), and
    ``embedding_net``: the embedding that suits its x (a name of ``sbiflow.embeddings`` or a
    spec dict ``{"type": name, **options}``), which ``embedding_net="auto"`` then takes.

    Attributes:
        name: Registry name, e.g. ``"two_moons"``.
        prior: Prior over parameters, event shape ``(D,)``.
        names: Parameter names, e.g. ``["theta_1", "theta_2"]``.
        labels: LaTeX labels for plots, e.g. ``[r"$\theta_1$", r"$\theta_2$"]``.
    """

    name: str
    prior: Distribution
    names: list[str]
    labels: list[str]

    def simulate(self, theta: Tensor, rng: np.random.Generator) -> Tensor:
        """Simulate one output per parameter row.

        Args:
            theta: Parameters, shape ``(B, D)``.
            rng: The only source of randomness: the same generator state gives the same x.

        Returns:
            Simulated data, shape ``(B, *x_shape)``, float32.
        """
        ...


class SimulatorBase:
    r"""Shared input checks for simulators whose maths runs in numpy.

    A subclass sets ``name`` and calls ``__init__``; it implements ``_simulate`` on float64
    arrays. Instances are plain picklable objects (no closures, no lambdas).

    Args:
        prior: Prior, event shape ``(D,)``.
        low: Lower end of the prior support per parameter, shape ``(D,)`` (``-inf`` if none).
        high: Upper end of the prior support per parameter, shape ``(D,)`` (``inf`` if none).
        x_shape: Shape of one simulator output.
        names: Parameter names; ``theta_1``, ... by default.
        labels: LaTeX labels; ``$\theta_1$``, ... by default.
    """

    name: str = "simulator"

    def __init__(
        self,
        prior: Distribution,
        low: np.ndarray | float,
        high: np.ndarray | float,
        x_shape: tuple[int, ...],
        names: list[str] | None = None,
        labels: list[str] | None = None,
    ) -> None:
        dim = int(prior.event_shape[0])
        self.prior = prior
        self.low = np.broadcast_to(np.asarray(low, dtype=np.float64), (dim,)).copy()
        self.high = np.broadcast_to(np.asarray(high, dtype=np.float64), (dim,)).copy()
        self.x_shape = tuple(x_shape)
        self.names = list(names) if names else [f"theta_{i + 1}" for i in range(dim)]
        self.labels = list(labels) if labels else [_theta_label(i + 1) for i in range(dim)]

    @property
    def dim(self) -> int:
        """Number of parameters ``D``."""
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, x_shape={self.x_shape})"

    def simulate(self, theta: Tensor, rng: np.random.Generator | int) -> Tensor:
        """Simulate one output per parameter row, vectorized over the batch.

        Args:
            theta: Parameters inside the prior support, shape ``(B, D)``.
            rng: A ``numpy.random.Generator``, the only source of randomness (an int seed
                is accepted too).

        Returns:
            Simulated data, shape ``(B, *x_shape)``, float32.

        Raises:
            ValueError: If ``theta`` is not ``(B, D)`` or lies outside the prior support.
        """
        th = self.check_theta(theta)
        x = self._simulate(th, np.random.default_rng(rng))
        return torch.as_tensor(x, dtype=torch.float32)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def check_theta(self, theta: Tensor | np.ndarray, support: bool = True) -> np.ndarray:
        """Check parameters and return them as a float64 array.

        Args:
            theta: Parameters, shape ``(B, D)``.
            support: Also check that every row lies inside the prior support.

        Returns:
            The parameters as a numpy array, shape ``(B, D)``.

        Raises:
            ValueError: If the shape is wrong, or (with ``support``) a value is out of range.
        """
        th = _as_numpy(theta)
        if th.ndim != 2 or th.shape[1] != self.dim:
            raise ValueError(
                f"{self.name}: theta must have shape (B, {self.dim}) for parameters "
                f"{self.names}, got {tuple(th.shape)}."
            )
        if support:
            bad = ~((th >= self.low) & (th <= self.high))  # (B, D), NaN counts as bad
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.name}: parameter {self.names[col]} = {th[row, col]:.6g} (row {row}) "
                    f"is outside the prior support [{self.low[col]:g}, {self.high[col]:g}]; "
                    f"{int(bad.any(axis=1).sum())} of {len(th)} rows are out of range."
                )
        return th

    def check_x(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Check observed data and return it as float64 trials.

        Args:
            x: One observation ``x_shape``, or iid trials ``(N, *x_shape)``.

        Returns:
            The trials as a numpy array, shape ``(N, *x_shape)``.

        Raises:
            ValueError: If the trailing shape is not ``x_shape``.
        """
        xs = _as_numpy(x)
        k = len(self.x_shape)
        if xs.shape == self.x_shape:
            return xs[None]
        if xs.ndim == k + 1 and xs.shape[1:] == self.x_shape and len(xs) > 0:
            return xs
        raise ValueError(
            f"{self.name}: x must have shape {self.x_shape} (one observation) or "
            f"(N, {', '.join(map(str, self.x_shape))}) (N iid trials), got {tuple(xs.shape)}."
        )


def _theta_label(i: int) -> str:
    return rf"$\theta_{i}$" if i < 10 else rf"$\theta_{{{i}}}$"


def _as_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)
