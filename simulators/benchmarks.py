"""Four sbibm benchmark tasks with exact likelihoods and reference posteriors.

The definitions, priors and the ten official observations per task follow sbibm.

References:
    Benchmarking Simulation-Based Inference, Lueckmann et al. 2021 (arXiv:2101.04653).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from importlib import resources

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Normal, Uniform

from simulators.base import SimulatorBase
from simulators.reference import emcee_posterior

__all__ = ["GaussianLinear", "GaussianMixture", "SLCP", "TwoMoons"]

_LOG_2PI = math.log(2.0 * math.pi)
_N_OBSERVATIONS = 10


@functools.cache
def _official(task: str) -> dict[str, list[list[float]]]:
    """The ten sbibm observations and true parameters of ``task`` (shipped as JSON)."""
    path = resources.files("simulators") / "data" / "benchmark_observations.json"
    return json.loads(path.read_text())[task]


def _box(low: float, high: float, dim: int) -> Independent:
    """Uniform prior on ``[low, high)^dim`` (same structure as ``sbi``'s ``BoxUniform``)."""
    return Independent(Uniform(torch.full((dim,), low), torch.full((dim,), high)), 1)


def _rejection(
    propose: Callable[[int], np.ndarray], n: int, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Keep proposals inside the box ``[low, high)`` until ``n`` are found.

    Args:
        propose: Maps a batch size ``m`` to at most ``m`` candidates, shape ``(m', D)``.
        n: Number of samples wanted.
        low: Lower corner of the box, shape ``(D,)``.
        high: Upper corner of the box, shape ``(D,)``.

    Returns:
        Accepted samples, shape ``(n, D)``.
    """
    batch, kept, have, tried = max(2 * n, 1024), [], 0, 0
    while have < n:
        if tried > 1000 * batch:
            raise RuntimeError(
                f"rejection sampling accepted {have} of {tried} proposals; the observation "
                f"is probably incompatible with the prior."
            )
        cand = propose(batch)
        cand = cand[np.all((cand >= low) & (cand < high), axis=1)]
        kept.append(cand)
        have, tried = have + len(cand), tried + batch
    return np.concatenate(kept)[:n]


class _Benchmark(SimulatorBase):
    """Common parts: official observations, the likelihood and posterior wrappers."""

    def _official_config(self) -> None:
        """Raise if this instance differs from sbibm's task (overridden where options exist)."""

    def _official_row(self, key: str, i: int) -> Tensor:
        self._official_config()
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"{self.name}: observation number must be an int, got {i!r}.")
        if not 1 <= i <= _N_OBSERVATIONS:
            raise ValueError(
                f"{self.name}: observation number must be in 1..{_N_OBSERVATIONS}, got {i}."
            )
        return torch.tensor(_official(self.name)[key][i - 1], dtype=torch.float32)

    def observation(self, i: int) -> Tensor:
        """The official sbibm observation number ``i`` (1 to 10).

        Returns:
            The observation, shape ``x_shape``, float32.
        """
        return self._official_row("observations", i).reshape(self.x_shape)

    def true_parameters(self, i: int) -> Tensor:
        """The parameters that generated observation number ``i`` (1 to 10).

        Returns:
            The parameters, shape ``(D,)``, float32.
        """
        return self._official_row("true_parameters", i)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """Exact log-likelihood (normalized in x) of each parameter row.

        Not restricted to the prior support: the prior is the caller's business.

        Args:
            theta: Parameters, shape ``(B, D)``.
            x: One observation ``x_shape``, or iid trials ``(N, *x_shape)`` (summed).

        Returns:
            Log-likelihoods, shape ``(B,)``, in the dtype of ``theta`` if floating.
        """
        ll = self._log_likelihood(self.check_theta(theta, support=False), self.check_x(x))
        dtype = theta.dtype if isinstance(theta, Tensor) and theta.is_floating_point() else None
        return torch.as_tensor(ll, dtype=dtype or torch.float32)

    def reference_posterior(self, x_o: Tensor, n: int, seed: int = 0) -> Tensor:
        """Samples of the exact posterior given ``x_o``.

        Args:
            x_o: One observation ``x_shape`` (tasks that say so also take ``(N, *x_shape)``).
            n: Number of samples.
            seed: Seed of the ``numpy`` generator; the same seed gives the same samples.

        Returns:
            Posterior samples, shape ``(n, D)``, float32.
        """
        rng = np.random.default_rng(seed)
        samples = self._reference_posterior(self.check_x(x_o), int(n), rng)
        samples = torch.as_tensor(samples, dtype=torch.float32)
        # Rounding to float32 must not move a sample onto the open upper end of the support.
        high = torch.as_tensor(self.high, dtype=torch.float32)
        return torch.minimum(samples, torch.nextafter(high, torch.tensor(-math.inf)))

    def _one_trial(self, xs: np.ndarray) -> np.ndarray:
        if len(xs) != 1:
            raise ValueError(
                f"{self.name}: the reference posterior takes one observation, got {len(xs)} trials."
            )
        return xs[0]

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reference_posterior(self, xs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class TwoMoons(_Benchmark):
    r"""Two moons: a crescent-shaped, bimodal posterior in 2-D.

    Prior :math:`\mathcal{U}(-1, 1)^2`. With :math:`a \sim \mathcal{U}(-\pi/2, \pi/2)`,
    :math:`r \sim \mathcal{N}(0.1, 0.01^2)` and :math:`p = (r\cos a + 0.25, r \sin a)`,
    :math:`x = p + (-|\theta_1 + \theta_2| / \sqrt{2}, (-\theta_1 + \theta_2) / \sqrt{2})`.

    Example:
        >>> sim = TwoMoons()
        >>> sim.simulate(sim.prior.sample((3,)), np.random.default_rng(0)).shape
        torch.Size([3, 2])
    """

    name = "two_moons"

    def __init__(self) -> None:
        super().__init__(_box(-1.0, 1.0, 2), -1.0, 1.0, (2,))

    @staticmethod
    def _noise(rng: np.random.Generator, m: int) -> np.ndarray:
        a = rng.uniform(-math.pi / 2, math.pi / 2, m)
        r = rng.normal(0.1, 0.01, m)
        return np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)  # (m, 2)

    @staticmethod
    def _shift(theta: np.ndarray) -> np.ndarray:
        z0 = (theta[:, 0] + theta[:, 1]) / math.sqrt(2)
        z1 = (theta[:, 1] - theta[:, 0]) / math.sqrt(2)
        return np.stack([-np.abs(z0), z1], axis=1)  # (B, 2)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._noise(rng, len(theta)) + self._shift(theta)

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        p = xs[None, :, :] - self._shift(theta)[:, None, :]  # (B, N, 2)
        u, v = p[..., 0] - 0.25, p[..., 1]
        rho = np.hypot(u, v)
        # Polar density of (r cos a, r sin a): N(r) / (pi |r|); u < 0 needs r < 0.
        r = np.where(u >= 0, rho, -rho)
        with np.errstate(divide="ignore"):
            ll = -0.5 * ((r - 0.1) / 0.01) ** 2 - 0.5 * _LOG_2PI - math.log(0.01 * math.pi)
            ll = ll - np.log(rho)
        return ll.sum(axis=1)

    def _reference_posterior(self, xs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        # Draw the noise p; x - p fixes (-|z0|, z1); the map theta -> (-|z0|, z1) is a
        # rotation folded by |.|, so both preimages (z0 = +-|z0|) weigh the same: pick one
        # with probability 1/2, then keep the draws inside the prior.
        x = self._one_trial(xs)

        def propose(m: int) -> np.ndarray:
            p = self._noise(rng, m)
            abs_z0, z1 = p[:, 0] - x[0], x[1] - p[:, 1]
            z0 = np.where(rng.random(m) < 0.5, abs_z0, -abs_z0)
            theta = np.stack([z0 - z1, z0 + z1], axis=1) / math.sqrt(2)
            return theta[abs_z0 >= 0]

        return _rejection(propose, n, self.low, self.high)


class GaussianLinear(_Benchmark):
    r"""Gaussian linear: Gaussian prior and likelihood, a Gaussian posterior.

    Prior :math:`\mathcal{N}(0, \sigma_p^2 I_D)`, :math:`x \sim \mathcal{N}(\theta, \sigma^2 I_D)`;
    sbibm uses :math:`D = 10`, :math:`\sigma_p^2 = \sigma^2 = 0.1`. The posterior for
    :math:`N` iid trials is Gaussian with precision :math:`1/\sigma_p^2 + N/\sigma^2`.

    Args:
        dim: Number of parameters ``D`` (= data dimension).
        prior_var: Prior variance per dimension.
        noise_var: Noise variance per dimension.

    Example:
        >>> sim = GaussianLinear()
        >>> sim.reference_posterior(sim.observation(1), 4).shape
        torch.Size([4, 10])
    """

    name = "gaussian_linear"

    def __init__(self, dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1) -> None:
        self.prior_var, self.noise_var = float(prior_var), float(noise_var)
        prior = Independent(Normal(torch.zeros(dim), math.sqrt(prior_var) * torch.ones(dim)), 1)
        super().__init__(prior, -np.inf, np.inf, (dim,))

    def _official_config(self) -> None:
        if (self.dim, self.prior_var, self.noise_var) != (10, 0.1, 0.1):
            raise ValueError(
                f"{self.name}: official observations exist only for dim=10, prior_var=0.1, "
                f"noise_var=0.1, not {(self.dim, self.prior_var, self.noise_var)}."
            )

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + math.sqrt(self.noise_var) * rng.standard_normal(theta.shape)

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        sq = ((xs[None, :, :] - theta[:, None, :]) ** 2).sum(axis=(1, 2))  # (B,)
        return -0.5 * (sq / self.noise_var + xs.size * (_LOG_2PI + math.log(self.noise_var)))

    def posterior(self, x_o: Tensor) -> Independent:
        """The exact posterior distribution given one observation or iid trials.

        Args:
            x_o: One observation ``(D,)`` or iid trials ``(N, D)``.

        Returns:
            A Gaussian with event shape ``(D,)``.
        """
        loc, var = self._posterior_moments(self.check_x(x_o))
        loc = torch.as_tensor(loc, dtype=torch.float32)
        return Independent(Normal(loc, math.sqrt(var) * torch.ones_like(loc)), 1)

    def _posterior_moments(self, xs: np.ndarray) -> tuple[np.ndarray, float]:
        precision = 1.0 / self.prior_var + len(xs) / self.noise_var
        return xs.sum(axis=0) / self.noise_var / precision, 1.0 / precision

    def _reference_posterior(self, xs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        loc, var = self._posterior_moments(xs)
        return loc + math.sqrt(var) * rng.standard_normal((n, self.dim))

    def log_evidence(self, x_o: Tensor) -> float:
        r"""Exact log evidence :math:`\log p(x_o)` of one observation or iid trials.

        Per dimension the :math:`N` trials are jointly Gaussian with covariance
        :math:`\sigma^2 I_N + \sigma_p^2 \mathbf{1}\mathbf{1}^\top`.

        Args:
            x_o: One observation ``(D,)`` or iid trials ``(N, D)``.

        Returns:
            The log evidence.
        """
        xs = self.check_x(x_o)
        n, s2, t2 = len(xs), self.noise_var, self.prior_var
        logdet = n * math.log(s2) + math.log1p(n * t2 / s2)  # per dimension
        quad = ((xs**2).sum(axis=0) - t2 * xs.sum(axis=0) ** 2 / (s2 + n * t2)) / s2  # (D,)
        return float(-0.5 * (self.dim * (n * _LOG_2PI + logdet) + quad.sum()))


class GaussianMixture(_Benchmark):
    r"""Gaussian mixture: a broad and a narrow component sharing the mean :math:`\theta`.

    Prior :math:`\mathcal{U}(-10, 10)^2`,
    :math:`x \sim \tfrac12 \mathcal{N}(\theta, I) + \tfrac12 \mathcal{N}(\theta, 0.01 I)`.
    The posterior is the same mixture centred on :math:`x_o`, truncated to the prior box.

    Example:
        >>> sim = GaussianMixture()
        >>> sim.log_likelihood(sim.true_parameters(1)[None], sim.observation(1)).shape
        torch.Size([1])
    """

    name = "gaussian_mixture"
    _scales = (1.0, 0.1)

    def __init__(self) -> None:
        super().__init__(_box(-10.0, 10.0, 2), -10.0, 10.0, (2,))

    def _component_scales(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return np.where(rng.random(m) < 0.5, *self._scales)[:, None]  # (m, 1)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = self._component_scales(rng, len(theta))
        return theta + scale * rng.standard_normal(theta.shape)

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        sq = ((xs[None, :, :] - theta[:, None, :]) ** 2).sum(axis=2)  # (B, N)
        d = self.dim
        comps = [
            math.log(0.5) - 0.5 * d * (_LOG_2PI + 2 * math.log(s)) - 0.5 * sq / s**2
            for s in self._scales
        ]
        return np.logaddexp(*comps).sum(axis=1)

    def _reference_posterior(self, xs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self._one_trial(xs)

        def propose(m: int) -> np.ndarray:
            return x + self._component_scales(rng, m) * rng.standard_normal((m, self.dim))

        return _rejection(propose, n, self.low, self.high)


class SLCP(_Benchmark):
    r"""SLCP: simple likelihood, complex posterior (four sign-symmetric modes).

    Prior :math:`\mathcal{U}(-3, 3)^5`. With :math:`m = (\theta_1, \theta_2)`,
    :math:`s_1 = \theta_3^2`, :math:`s_2 = \theta_4^2`, :math:`\rho = \tanh \theta_5`, four iid
    draws :math:`x_j \sim \mathcal{N}(m, S)`,
    :math:`S = [[s_1^2, \rho s_1 s_2], [\rho s_1 s_2, s_2^2]] + 10^{-6} I`, flattened to 8
    numbers :math:`(x_{1,1}, x_{1,2}, x_{2,1}, \dots)`.

    Args:
        num_walkers: emcee walkers of the reference posterior.
        burn_in: Steps discarded before the reference posterior keeps samples.
        thin: Keep every ``thin``-th step (about one autocorrelation time: 80 to 100 steps
            on the official observations).

    Example:
        >>> sim = SLCP()
        >>> sim.simulate(sim.prior.sample((3,)), np.random.default_rng(0)).shape
        torch.Size([3, 8])
    """

    name = "slcp"
    _eps = 1e-6

    def __init__(self, num_walkers: int = 100, burn_in: int = 1500, thin: int = 100) -> None:
        super().__init__(_box(-3.0, 3.0, 5), -3.0, 3.0, (8,))
        self.num_walkers, self.burn_in, self.thin = num_walkers, burn_in, thin

    def _covariance(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, np.tanh(theta[:, 4])
        return s1**2 + self._eps, rho * s1 * s2, s2**2 + self._eps  # S11, S12, S22: (B,)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s11, s12, s22 = self._covariance(theta)
        l11 = np.sqrt(s11)  # Cholesky factor [[l11, 0], [l21, l22]]
        l21 = s12 / l11
        l22 = np.sqrt(s22 - l21**2)
        z = rng.standard_normal((len(theta), 4, 2))
        x0 = theta[:, None, 0] + l11[:, None] * z[..., 0]  # (B, 4)
        x1 = theta[:, None, 1] + l21[:, None] * z[..., 0] + l22[:, None] * z[..., 1]
        return np.stack([x0, x1], axis=2).reshape(len(theta), 8)

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        pts = xs.reshape(-1, 2)  # (4N, 2)
        s11, s12, s22 = (c[:, None] for c in self._covariance(theta))
        det = s11 * s22 - s12**2  # (B, 1)
        d0 = pts[None, :, 0] - theta[:, None, 0]  # (B, 4N)
        d1 = pts[None, :, 1] - theta[:, None, 1]
        quad = (s22 * d0**2 - 2 * s12 * d0 * d1 + s11 * d1**2) / det
        return (-_LOG_2PI - 0.5 * np.log(det) - 0.5 * quad).sum(axis=1)

    def _reference_posterior(self, xs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        # The likelihood depends on theta_3 and theta_4 only through their squares, so the
        # posterior is symmetric under each sign flip: sample the fold theta_3, theta_4 >= 0
        # (one mode) with emcee, then flip each sign with probability 1/2 (all four modes).
        low, high = self.low.copy(), self.high.copy()
        low[2:4] = 0.0
        target = _FoldedTarget(self, xs, low, high)
        pool = rng.uniform(low, high, size=(50 * self.num_walkers, self.dim))
        samples = emcee_posterior(
            target, pool, n, rng, num_walkers=self.num_walkers, burn_in=self.burn_in, thin=self.thin
        )
        samples[:, 2:4] *= rng.choice([-1.0, 1.0], size=(n, 2))
        return samples


class _FoldedTarget:
    """Log posterior of ``SLCP`` on the box ``[low, high)`` (picklable, vectorized)."""

    def __init__(self, sim: SLCP, xs: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        self.sim, self.xs, self.low, self.high = sim, xs, low, high

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        inside = np.all((theta >= self.low) & (theta < self.high), axis=1)
        ll = np.full(len(theta), -np.inf)
        ll[inside] = self.sim._log_likelihood(theta[inside], self.xs)
        return ll
