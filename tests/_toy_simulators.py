"""Toy simulators for tests/test_simulate.py, importable by spawned and Dask workers."""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Independent, Uniform


def box(dim: int = 2) -> Independent:
    return Independent(Uniform(-torch.ones(dim), torch.ones(dim)), 1)


class Gaussian:
    """x = theta + 0.1 * noise, batched; counts its calls (state: a private attribute)."""

    name = "gauss"

    def __init__(self, dim: int = 2, noise: float = 0.1) -> None:
        self.prior = box(dim)
        self.noise = noise  # an option: recorded in a store's provenance
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    def simulate(self, theta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        self._calls += 1
        noise = torch.as_tensor(rng.standard_normal(theta.shape), dtype=theta.dtype)
        return theta + self.noise * noise


class NaNWhenPositive(Gaussian):
    """NaN outputs where theta[0] > 0.5."""

    def simulate(self, theta, rng):
        x = super().simulate(theta, rng)
        x[theta[:, 0] > 0.5] = float("nan")
        return x


class RaiseWhenPositive(Gaussian):
    """Raises for any batch holding a row with theta[0] > 0.5."""

    def simulate(self, theta, rng):
        if (theta[:, 0] > 0.5).any():
            raise ValueError("theta[0] > 0.5 is unphysical")
        return super().simulate(theta, rng)


class Interrupt(BaseException):
    """Stands in for Ctrl-C or a killed job."""


class DropsARow(Gaussian):
    """Returns one row too few: a bug, not an invalid simulation."""

    def simulate(self, theta, rng):
        return super().simulate(theta, rng)[1:]


class NoPrior:
    def simulate(self, theta, rng):
        return theta


def batched_square(theta: torch.Tensor) -> torch.Tensor:
    return theta**2 + 0.1 * torch.randn_like(theta)  # global torch RNG


def row_summary(theta: torch.Tensor) -> torch.Tensor:
    assert theta.shape == (2,), "one parameter set at a time"
    return torch.stack([theta.sum(), theta.prod()]) + 0.1 * np.random.standard_normal()


class FlakyBox(Independent):
    """The box prior of ``box()``, whose first ``sample`` call in a process raises OSError.

    Stands in for a transient failure on a worker (a scratch disk full for a moment).
    """

    failed = False  # per process: the class attribute is not pickled

    def __init__(self) -> None:
        super().__init__(Uniform(-torch.ones(2), torch.ones(2)), 1)

    def sample(self, sample_shape=torch.Size()):  # noqa: B008
        if not FlakyBox.failed:
            FlakyBox.failed = True
            raise OSError("scratch disk full (transient)")
        return super().sample(sample_shape)
