r"""A 2-D galaxy count map on a periodic grid, conditioned on :math:`(\Omega_m, \sigma_8)`.

The map is the projection, through its full depth, of a periodic box of side
:math:`L = 500` Mpc/h and depth :math:`\Delta = 500` Mpc/h, on an :math:`N \times N` grid
(cells of :math:`\ell = L / N`). A Gaussian random field with the linear power spectrum of
:mod:`simulators.cosmology` is biased and lognormal-transformed, and galaxies are Poisson
sampled from it. The Gaussian variant (``exact=True``) replaces the last two steps by their
linearization, a Gaussian field plus white noise, whose likelihood is diagonal in Fourier
space. See ``docs/galaxy_field.md`` for the equations.

References:
    The statistics of peaks of Gaussian random fields, Bardeen et al. 1986 (ApJ 304, 15).
    Baryonic features in the matter transfer function, Eisenstein & Hu 1998
    (arXiv:astro-ph/9709112). Power spectra for cold dark matter and its variants,
    Eisenstein & Hu 1999 (arXiv:astro-ph/9710252). A lognormal model for the cosmological
    mass distribution, Coles & Jones 1991 (MNRAS 248, 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Uniform

from simulators.base import SimulatorBase
from simulators.cosmology import Cosmology, LinearPower
from simulators.reference import emcee_posterior

__all__ = ["GalaxyField"]

# model name -> what it changes in the fixed cosmology (see docs/galaxy_field.md)
_MODELS: dict[str, dict[str, float]] = {
    "lcdm": {},
    "wdm": {"wdm_alpha": 1.6},  # half-power at k = 0.2 h/Mpc
    "mnu": {"m_nu": 0.3},  # three degenerate species, 0.1 eV each
}
_LOW, _HIGH = (0.1, 0.6), (0.5, 1.0)  # prior box of (Omega_m, sigma_8)
# (Omega_m, sigma_8) of the reference observations 1, 2, ...; observation i uses seed 1000 + i
_TRUE_PARAMETERS = ((0.3, 0.8), (0.2, 0.9), (0.4, 0.7), (0.15, 0.65), (0.45, 0.95))
_LOG_2PI = math.log(2.0 * math.pi)


class GalaxyField(SimulatorBase):
    r"""Galaxy counts in cells of a projected lognormal density field.

    Parameters :math:`\theta = (\Omega_m, \sigma_8)` with prior
    :math:`\mathcal{U}(0.1, 0.5) \times \mathcal{U}(0.6, 1.0)`. One simulation is a map of
    shape ``(N, N)``, float32: galaxy counts (lognormal variant) or their Gaussian analogue
    (``exact=True``).

    Args:
        model: ``"lcdm"`` (cold dark matter, massless neutrinos), ``"wdm"`` (a warm-dark-
            matter-like cutoff, power halved at k = 0.2 h/Mpc) or ``"mnu"`` (three
            degenerate massive neutrinos, :math:`\sum m_\nu = 0.3` eV).
        exact: The Gaussian variant, which has ``log_likelihood`` and
            ``reference_posterior``.
        n_grid: Cells per side ``N`` (the box stays 500 Mpc/h: cells grow as N shrinks).
        num_walkers: emcee walkers of the reference posterior.
        burn_in: Steps discarded before the reference posterior keeps samples.
        thin: Keep every ``thin``-th step (several autocorrelation times).

    Example:
        >>> sim = GalaxyField()
        >>> sim.simulate(sim.prior.sample((3,)), np.random.default_rng(0)).shape
        torch.Size([3, 32, 32])
    """

    name = "galaxy_field"
    #: The embedding NPE's "auto" takes for x: the binned power spectrum (docs/galaxy_field.md).
    embedding_net = "power_spectrum"
    box_size = 500.0  # L, Mpc/h
    depth = 500.0  # Delta, Mpc/h
    number_density = 2.5e-4  # galaxies per (Mpc/h)^3
    bias = 1.5  # linear galaxy bias b

    def __init__(
        self,
        model: str = "lcdm",
        exact: bool = False,
        n_grid: int = 32,
        num_walkers: int = 32,
        burn_in: int = 300,
        thin: int = 30,
    ) -> None:
        if model not in _MODELS:
            raise ValueError(f"galaxy_field: model must be in {sorted(_MODELS)}, not {model!r}.")
        if isinstance(n_grid, bool) or not isinstance(n_grid, int | np.integer) or n_grid < 2:
            raise ValueError(f"galaxy_field: n_grid must be an integer >= 2, not {n_grid!r}.")
        super().__init__(
            Independent(Uniform(torch.tensor(_LOW), torch.tensor(_HIGH)), 1),
            np.array(_LOW),
            np.array(_HIGH),
            (int(n_grid), int(n_grid)),
            names=["Omega_m", "sigma_8"],
            labels=[r"$\Omega_m$", r"$\sigma_8$"],
        )
        self.model, self.exact, self.n_grid = model, bool(exact), int(n_grid)
        self.num_walkers, self.burn_in, self.thin = num_walkers, burn_in, thin
        self.cosmology = Cosmology(**_MODELS[model])
        self.linear_power = LinearPower(self.cosmology)
        self.cell_size = self.box_size / self.n_grid  # l, Mpc/h
        self.mean_count = self.number_density * self.cell_size**2 * self.depth  # n-bar
        self._set_fourier_grid()

    def __repr__(self) -> str:
        return (
            f"GalaxyField(model={self.model!r}, exact={self.exact}, n_grid={self.n_grid}, "
            f"mean_count={self.mean_count:.4g})"
        )

    def _set_fourier_grid(self) -> None:
        """Distinct |k| of the real-FFT grid, and how often each occurs in the full grid."""
        n = self.n_grid
        kx = np.fft.fftfreq(n, 1.0 / n)  # integers 0, 1, ..., -1
        ky = np.arange(n // 2 + 1)
        k2 = (kx[:, None] ** 2 + ky[None, :] ** 2).astype(np.int64)  # (N, N//2 + 1)
        # rfft2 keeps one of each pair (k, -k); columns 0 and N/2 (N even) hold both members.
        mult = np.full(k2.shape, 2.0)
        mult[:, 0] = 1.0
        if n % 2 == 0:
            mult[:, -1] = 1.0
        k2_unique, inverse = np.unique(k2, return_inverse=True)
        self._k_unique = 2.0 * math.pi / self.box_size * np.sqrt(k2_unique)  # (U,) h/Mpc
        self._inverse = inverse.reshape(k2.shape)  # (N, N//2 + 1) -> index into (U,)
        self._mult = mult  # (N, N//2 + 1), sums to N^2
        self._count = np.bincount(self._inverse.ravel(), weights=mult.ravel())  # (U,)

    # ---- physics -----------------------------------------------------------------------

    def power_spectrum(self, theta: Tensor | np.ndarray, k: Tensor | np.ndarray) -> Tensor:
        r"""The 3-D linear matter power spectrum :math:`P(k)` at z = 0 of each parameter row.

        Args:
            theta: Parameters :math:`(\Omega_m, \sigma_8)`, shape ``(B, 2)``; any physical
                values, not only inside the prior.
            k: Wavenumbers in h/Mpc, shape ``(K,)``.

        Returns:
            :math:`P(k)` in (Mpc/h)^3, shape ``(B, K)``, float64.
        """
        th = self._check_physical(theta)
        k = np.asarray(k.detach().cpu() if isinstance(k, Tensor) else k, dtype=np.float64)
        return torch.as_tensor(self.linear_power(k, th[:, 0], th[:, 1]))

    def _cell_spectrum(self, th: np.ndarray) -> np.ndarray:
        r"""Variance spectrum :math:`p_k = P(|k|) / (\Delta \ell^2)` of one cell, ``(B, U)``.

        The map's modes :math:`\delta_k = \sum_x \delta_x e^{-i k x}` have
        :math:`\langle |\delta_k|^2 \rangle = N^2 p_k`; the mean mode :math:`k = 0` is zero.
        """
        p = self.linear_power(self._k_unique, th[:, 0], th[:, 1])  # (B, U), (Mpc/h)^3
        p = p / (self.depth * self.cell_size**2)
        p[:, self._k_unique == 0] = 0.0
        return p

    def cell_variance(self, theta: Tensor | np.ndarray) -> Tensor:
        r"""Variance :math:`\sigma_G^2 = N^{-2} \sum_k p_k` of the Gaussian field in one cell.

        Args:
            theta: Parameters, shape ``(B, 2)``.

        Returns:
            :math:`\sigma_G^2`, shape ``(B,)``, float64.
        """
        p = self._cell_spectrum(self._check_physical(theta))
        return torch.as_tensor(p @ self._count / self.n_grid**2)

    def gaussian_field(self, theta: Tensor | np.ndarray, rng: np.random.Generator | int) -> Tensor:
        r"""Realizations of the projected Gaussian matter field :math:`\delta_G`.

        :math:`\delta_G` = the inverse FFT of :math:`\sqrt{p_k}` times the FFT of white
        noise, so its covariance is exactly the circulant matrix with eigenvalues
        :math:`p_k`.

        Args:
            theta: Parameters inside the prior support, shape ``(B, 2)``.
            rng: The only source of randomness.

        Returns:
            :math:`\delta_G`, shape ``(B, N, N)``, float64.
        """
        th = self.check_theta(theta)
        return torch.as_tensor(self._field(self._cell_spectrum(th), np.random.default_rng(rng)))

    def _field(self, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.n_grid
        white = np.fft.rfft2(rng.standard_normal((len(p), n, n)))  # (B, N, N//2 + 1)
        return np.fft.irfft2(np.sqrt(p)[:, self._inverse] * white, s=(n, n))  # (B, N, N)

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self._cell_spectrum(theta)  # (B, U)
        delta = self._field(p, rng)  # (B, N, N)
        nbar, b = self.mean_count, self.bias
        if self.exact:
            return nbar * (1.0 + b * delta) + math.sqrt(nbar) * rng.standard_normal(delta.shape)
        var = (p @ self._count / self.n_grid**2)[:, None, None]  # sigma_G^2, (B, 1, 1)
        rate = nbar * np.exp(b * delta - 0.5 * b**2 * var)  # n-bar (1 + delta_g)
        return rng.poisson(rate).astype(np.float64)

    def _check_physical(self, theta: Tensor | np.ndarray) -> np.ndarray:
        th = self.check_theta(theta, support=False)
        omega_min = self.cosmology.omega_b + self.cosmology.omega_nu
        bad = ~((th[:, 0] > omega_min) & (th[:, 0] <= 1.0) & (th[:, 1] > 0.0))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"galaxy_field: theta row {row} = {th[row].tolist()} is unphysical: need "
                f"{omega_min:.4g} < Omega_m <= 1 (baryons and neutrinos are fixed) and "
                f"sigma_8 > 0."
            )
        return th

    # ---- reference observations --------------------------------------------------------

    def true_parameters(self, i: int) -> Tensor:
        r"""The :math:`(\Omega_m, \sigma_8)` of reference observation ``i`` (1 to 5).

        Returns:
            The parameters, shape ``(2,)``, float32.
        """
        return torch.tensor(_TRUE_PARAMETERS[self._observation_index(i)], dtype=torch.float32)

    def observation(self, i: int) -> Tensor:
        """Reference observation ``i`` (1 to 5): this variant simulated with seed ``1000 + i``.

        Returns:
            The map, shape ``(N, N)``, float32.
        """
        theta = self.true_parameters(i)[None]
        return self.simulate(theta, np.random.default_rng(1000 + i))[0]

    def _observation_index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"{self.name}: observation number must be an int, got {i!r}.")
        if not 1 <= i <= len(_TRUE_PARAMETERS):
            raise ValueError(
                f"{self.name}: observation number must be in 1..{len(_TRUE_PARAMETERS)}, got {i}."
            )
        return int(i) - 1

    # ---- exact likelihood (Gaussian variant) -------------------------------------------

    @property
    def log_likelihood(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Exact log-likelihood of the Gaussian variant (absent otherwise: ``hasattr`` is False).

        See :meth:`gaussian_log_likelihood`.
        """
        self._require_exact("log_likelihood")
        return self.gaussian_log_likelihood

    @property
    def reference_posterior(self) -> Callable[..., Tensor]:
        """Exact posterior samples of the Gaussian variant (absent otherwise).

        See :meth:`gaussian_reference_posterior`.
        """
        self._require_exact("reference_posterior")
        return self.gaussian_reference_posterior

    def _require_exact(self, what: str) -> None:
        if not self.exact:
            raise AttributeError(
                f"galaxy_field: {what} exists only for the Gaussian variant, "
                f"simulators.get('galaxy_field', exact=True); the lognormal-Poisson map has no "
                f"tractable likelihood."
            )

    def gaussian_log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Log-density of Gaussian-variant maps, normalized in x.

        :math:`y = x - \bar n` is a zero-mean Gaussian with circulant covariance, eigenvalues
        :math:`c_k = \bar n^2 b^2 p_k + \bar n`, so with :math:`Y_k` the DFT of y over all
        :math:`N^2` modes,
        :math:`\log p = -\tfrac12 \sum_k [|Y_k|^2 / (N^2 c_k) + \log c_k] - \tfrac{N^2}{2}
        \log 2\pi`. The sum runs over the real-FFT half plane with multiplicity 2, except the
        self-conjugate columns :math:`k_y = 0` and :math:`k_y = N/2`.

        Not restricted to the prior support (the prior is the caller's business), but the
        parameters must be physical.

        Args:
            theta: Parameters, shape ``(B, 2)``.
            x: One map ``(N, N)``, or iid maps ``(M, N, N)`` (summed).

        Returns:
            Log-likelihoods, shape ``(B,)``, in the dtype of ``theta`` if floating.
        """
        ll = self._log_likelihood(self._check_physical(theta), self.check_x(x))
        dtype = theta.dtype if isinstance(theta, Tensor) and theta.is_floating_point() else None
        return torch.as_tensor(ll, dtype=dtype or torch.float32)

    def _log_likelihood(self, th: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return self._log_likelihood_binned(th, self._binned_power(xs), len(xs))

    def _binned_power(self, xs: np.ndarray) -> np.ndarray:
        """Sum of :math:`|Y_k|^2` over trials and over the full-grid modes of each distinct |k|.

        Args:
            xs: Maps, shape ``(M, N, N)``.

        Returns:
            Binned power, shape ``(U,)``.
        """
        power = (np.abs(np.fft.rfft2(xs - self.mean_count)) ** 2).sum(axis=0)  # (N, N//2 + 1)
        return np.bincount(self._inverse.ravel(), weights=(self._mult * power).ravel())

    def mode_variances(self, th: np.ndarray) -> np.ndarray:
        r"""Variances :math:`c_k = \bar n^2 b^2 p_k + \bar n` of the Gaussian variant's modes.

        Args:
            th: Physical parameters, shape ``(B, 2)``.

        Returns:
            One per distinct |k| of the grid, shape ``(B, U)``.
        """
        nbar = self.mean_count
        return nbar**2 * self.bias**2 * self._cell_spectrum(th) + nbar

    def _log_likelihood_binned(self, th: np.ndarray, power: np.ndarray, m: int) -> np.ndarray:
        return self._log_likelihood_of_variances(self.mode_variances(th), power, m)

    def _log_likelihood_of_variances(self, c: np.ndarray, power: np.ndarray, m: int) -> np.ndarray:
        """Log-likelihood of ``m`` maps' binned power ``(U,)`` given mode variances ``(B, U)``."""
        n2 = self.n_grid**2
        quad = (1.0 / c) @ power / n2
        logdet = np.log(c) @ self._count
        return -0.5 * (quad + m * (logdet + n2 * _LOG_2PI))

    def gaussian_reference_posterior(self, x_o: Tensor, n: int, seed: int = 0) -> Tensor:
        """Samples of the exact posterior of the Gaussian variant, by emcee.

        Walkers start at the best of ``20 * num_walkers`` prior draws.

        Args:
            x_o: One map ``(N, N)``, or iid maps ``(M, N, N)``.
            n: Number of samples.
            seed: Seed of the ``numpy`` generator; the same seed gives the same samples.

        Returns:
            Posterior samples, shape ``(n, 2)``, float32, inside the prior support.
        """
        rng = np.random.default_rng(seed)
        target = _LogPosterior(self, self.check_x(x_o))
        pool = rng.uniform(self.low, self.high, size=(20 * self.num_walkers, self.dim))
        samples = emcee_posterior(
            target,
            pool,
            int(n),
            rng,
            num_walkers=self.num_walkers,
            burn_in=self.burn_in,
            thin=self.thin,
        )
        samples = torch.as_tensor(samples, dtype=torch.float32)
        # Rounding to float32 must not move a sample onto the open upper end of the support.
        high = torch.as_tensor(self.high, dtype=torch.float32)
        return torch.minimum(samples, torch.nextafter(high, torch.tensor(-math.inf)))


class _LogPosterior:
    """Log posterior of the Gaussian variant on the prior box (picklable, vectorized)."""

    def __init__(self, sim: GalaxyField, xs: np.ndarray) -> None:
        self.sim, self.power, self.m = sim, sim._binned_power(xs), len(xs)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        inside = np.all((theta >= self.sim.low) & (theta < self.sim.high), axis=1)
        ll = np.full(len(theta), -np.inf)
        ll[inside] = self.sim._log_likelihood_binned(theta[inside], self.power, self.m)
        return ll
