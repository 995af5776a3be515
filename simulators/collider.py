r"""A toy resonance search: a staged generative chain binned into a dijet mass histogram.

The chain :math:`p(x \mid \theta) = \int p(z_p \mid \theta)\, p(z_s \mid z_p)\,
p(z_d \mid z_s)\, p(x \mid z_d)\, dz` runs event by event:

* parton level: a Poisson process in the mass :math:`m` on :math:`[M_{lo}, M_{hi}]` with
  intensity :math:`\lambda(m) = \lambda_b(m; p_2) + \mu\, S_0\, f_{BW}(m; m_X)`, the
  CMS-style dijet spectrum :math:`\lambda_b \propto (1 - m/\sqrt{s})^{p_1} (m/\sqrt{s})^{-p_2}`
  plus a relativistic Breit–Wigner of width :math:`\Gamma = \gamma\, m_X`;
* shower: radiation out of the jets keeps a fraction :math:`r = e^{-\kappa E}`,
  :math:`E \sim \mathrm{Exp}(1)`, of the mass: :math:`m_s = r\, m`;
* detector: a relative Gaussian resolution in :math:`\ln m`,
  :math:`\ln m_d = \ln m_s + s_\sigma \sigma_0 Z`, :math:`Z \sim \mathcal{N}(0, 1)`, and a
  trigger that keeps an event with probability :math:`\varepsilon(m_d)`;
* reconstruction: counts in bins uniform in :math:`\ln m_d` on :math:`[m_{min}, m_{max}]`.

Thinning and binning a Poisson process leaves Poisson counts, so the exact likelihood is a
product of Poisson terms whose means are the chain integrated numerically: in
:math:`u = \ln m` the shower and the resolution are one convolution kernel (an
exponentially modified Gaussian, exact in Fourier space), applied to the parton intensity
on a fine grid by FFT, then multiplied by the trigger efficiency and integrated over each
bin (Simpson). See ``docs/collider.md`` for the equations.

References:
    The frontier of simulation-based inference, Cranmer, Brehmer & Louppe 2020
    (arXiv:1911.01429).
    Search for narrow and broad dijet resonances in proton-proton collisions at 13 TeV,
    CMS Collaboration 2018 (arXiv:1806.00843).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from scipy import fft as sfft
from scipy.special import gammaln, xlogy
from torch import Tensor
from torch.distributions import Independent, Uniform

from simulators.base import SimulatorBase
from simulators.reference import emcee_posterior

__all__ = ["Collider", "ColliderPhysics"]


@dataclasses.dataclass(frozen=True)
class ColliderPhysics:
    r"""The fixed constants of the chain (masses in TeV, yields in expected events).

    Attributes:
        sqrt_s: Centre-of-mass energy :math:`\sqrt{s}` of the dijet function.
        p1: Exponent of :math:`(1 - m/\sqrt{s})` in the background spectrum.
        m_ref: Pivot mass where the background intensity is ``n_ref``.
        n_ref: Background intensity at ``m_ref`` (events per TeV), i.e. integrated
            luminosity times the differential cross section there.
        signal_yield: Signal events :math:`S_0` produced in the parton window at
            :math:`\mu = 1`.
        width: Relative width :math:`\gamma = \Gamma / m_X` of the Breit–Wigner.
        shower_loss: Mean :math:`\kappa` of the shower's log-mass loss
            :math:`-\ln r = \kappa E` (0: no shower).
        resolution: Nominal relative mass resolution :math:`\sigma_0` (scaled by the
            nuisance :math:`s_\sigma`).
        trigger_plateau: Efficiency :math:`\varepsilon_{max}` far above the turn-on.
        trigger_mass: Mass of half-plateau efficiency (TeV).
        trigger_width: Width of the logistic turn-on (TeV).
        m_min: Lower edge of the histogram (TeV).
        m_max: Upper edge of the histogram (TeV).
        n_bins: Number of bins, uniform in :math:`\ln m`.
        margin_low: Parton window below the histogram, in bins: :math:`M_{lo} = m_{min}
            e^{-\text{margin\_low}\, w}` with :math:`w` the bin width in :math:`\ln m`.
        margin_high: Parton window above the histogram, in bins.
        grid: Quadrature nodes per bin for the expected counts (even).
    """

    sqrt_s: float = 13.0
    p1: float = 10.0
    m_ref: float = 1.0
    n_ref: float = 8_000.0
    signal_yield: float = 110.0
    width: float = 0.03
    shower_loss: float = 0.05
    resolution: float = 0.05
    trigger_plateau: float = 0.9
    trigger_mass: float = 1.0
    trigger_width: float = 0.04
    m_min: float = 1.0
    m_max: float = 4.0
    n_bins: int = 30
    margin_low: int = 3
    margin_high: int = 5
    grid: int = 12

    @property
    def log_bin_width(self) -> float:
        r"""Bin width :math:`w` in :math:`\ln m`."""
        return math.log(self.m_max / self.m_min) / self.n_bins

    @property
    def parton_window(self) -> tuple[float, float]:
        """The parton-level mass window :math:`[M_{lo}, M_{hi}]` (TeV)."""
        w = self.log_bin_width
        return self.m_min * math.exp(-self.margin_low * w), self.m_max * math.exp(
            self.margin_high * w
        )

    def efficiency(self, m: np.ndarray) -> np.ndarray:
        r"""Trigger efficiency :math:`\varepsilon(m)` at reconstructed mass ``m`` (TeV)."""
        z = (m - self.trigger_mass) / self.trigger_width
        return self.trigger_plateau * 0.5 * (1.0 + np.tanh(0.5 * z))  # logistic, no overflow


# Parameters, prior bounds and labels of the two models.
_PARAMETERS = {
    "m_X": (1.5, 3.5, r"$m_X\,[\mathrm{TeV}]$"),
    "mu": (0.0, 2.0, r"$\mu$"),
    "p2": (4.0, 6.0, r"$p_2$"),
    "s_res": (0.5, 1.5, r"$s_\sigma$"),
}
_MODELS = {"signal": ["m_X", "mu", "p2", "s_res"], "background": ["p2", "s_res"]}

# Reference observations: documented true parameters, generated with seed base + i.
_TRUE = {
    "signal": [
        (2.0, 1.0, 5.0, 1.0),
        (2.8, 0.5, 4.6, 0.8),
        (1.6, 1.5, 5.4, 1.2),
        (3.2, 0.3, 5.0, 1.0),
    ],
    "background": [(5.0, 1.0), (4.6, 0.8), (5.4, 1.2), (4.3, 1.4)],
}
_SEED = {"signal": 1000, "background": 2000}
_BLOCK = 32  # rows simulated together
_TRANSFORMS = ("none", "anscombe")


class Collider(SimulatorBase):
    r"""Toy resonance search: a binned dijet invariant-mass spectrum from a staged chain.

    Parameters (signal model): resonance mass :math:`m_X` (TeV), signal strength
    :math:`\mu`, background slope :math:`p_2`, resolution scale :math:`s_\sigma`; the prior
    is uniform on :math:`[1.5, 3.5] \times [0, 2] \times [4, 6] \times [0.5, 1.5]`. The
    background model has :math:`\mu = 0` and parameters :math:`(p_2, s_\sigma)` only.
    ``x`` holds the counts of the ``n_bins`` mass bins (``bin_edges``, TeV).

    Args:
        model: ``"signal"`` (signal plus background) or ``"background"`` (background only).
        exact: Accepted for the common interface: every variant has its exact likelihood.
        transform: ``"none"``: ``x`` holds the counts :math:`n_k`; ``"anscombe"``: their
            variance-stabilizing transform :math:`2\sqrt{n_k + 3/8}` (Anscombe 1948), whose
            noise has a standard deviation close to 1 in every bin whatever the expected
            count. The transform is one-to-one on counts, so the posterior is the same
            (``docs/collider.md``). The likelihood and reference posterior take ``x`` in the
            same form.
        physics: The fixed constants of the chain.
        num_walkers: emcee walkers of the reference posterior.
        burn_in: Steps discarded before the reference posterior keeps samples.
        thin: Keep every ``thin``-th step.

    Example:
        >>> sim = Collider()
        >>> x = sim.simulate(sim.true_parameters(1)[None], np.random.default_rng(0))
        >>> tuple(x.shape), tuple(sim.expected_counts(sim.true_parameters(1)[None]).shape)
        ((1, 30), (1, 30))
    """

    name = "collider"

    def __init__(
        self,
        model: str = "signal",
        exact: bool = True,
        transform: str = "none",
        physics: ColliderPhysics | None = None,
        num_walkers: int = 64,
        burn_in: int = 1000,
        thin: int = 50,
    ) -> None:
        if model not in _MODELS:
            raise ValueError(f"collider: model must be one of {sorted(_MODELS)}, got {model!r}.")
        if transform not in _TRANSFORMS:
            raise ValueError(
                f"collider: transform must be one of {_TRANSFORMS}, got {transform!r}."
            )
        self.model, self.exact, self.transform = model, bool(exact), transform
        self.physics = physics if physics is not None else ColliderPhysics()
        if self.physics.grid % 2 or self.physics.grid < 2:
            raise ValueError(f"collider: physics.grid must be even, got {self.physics.grid}.")
        self.num_walkers, self.burn_in, self.thin = num_walkers, burn_in, thin
        names = _MODELS[model]
        low = np.array([_PARAMETERS[k][0] for k in names])
        high = np.array([_PARAMETERS[k][1] for k in names])
        prior = Independent(
            Uniform(
                torch.as_tensor(low, dtype=torch.float32),
                torch.as_tensor(high, dtype=torch.float32),
            ),
            1,
        )
        labels = [_PARAMETERS[k][2] for k in names]
        super().__init__(prior, low, high, (self.physics.n_bins,), names, labels)
        self._quadrature = _Quadrature(self.physics, sigma_max=high[-1])

    @property
    def bin_edges(self) -> np.ndarray:
        """Bin edges of the histogram in TeV, shape ``(n_bins + 1,)``."""
        ph = self.physics
        return ph.m_min * np.exp(ph.log_bin_width * np.arange(ph.n_bins + 1))

    # ---- parameters ---------------------------------------------------------------------

    def _full(self, theta: np.ndarray) -> np.ndarray:
        """Parameters of either model as the signal model's ``(B, 4)`` (μ = 0 for background)."""
        if self.model == "signal":
            return theta
        full = np.zeros((len(theta), 4))
        full[:, 0] = 2.0  # any mass: its signal has zero yield
        full[:, 2:] = theta
        return full

    # ---- simulation ---------------------------------------------------------------------

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Blocks of rows keep the per-event arrays small enough to stay in cache.
        th = self._full(theta)
        blocks = [self._simulate_block(th[i : i + _BLOCK], rng) for i in range(0, len(th), _BLOCK)]
        counts = np.concatenate(blocks) if blocks else np.zeros((0, self.physics.n_bins))
        return 2.0 * np.sqrt(counts + 0.375) if self.transform == "anscombe" else counts

    def counts(self, x: Tensor | np.ndarray) -> np.ndarray:
        """The bin counts behind simulator outputs ``x`` (undoes ``transform``).

        Args:
            x: Outputs of this simulator, shape ``(..., n_bins)``.

        Returns:
            Counts, the shape of ``x``, float64.

        Raises:
            ValueError: If ``x`` is not the (transformed) counts of some histogram.
        """
        x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
        n = (0.5 * x) ** 2 - 0.375 if self.transform == "anscombe" else x
        counts = np.rint(n)
        if not np.all((counts >= 0) & (np.abs(n - counts) < 1e-2)):
            raise ValueError(
                f"{self.name}: x must hold (transform={self.transform!r}) bin counts, "
                "non-negative integers."
            )
        return counts

    def _simulate_block(self, th: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Events of every row of ``th`` (signal-model parameters ``(B, 4)``) through the chain."""
        ph, (lo, hi) = self.physics, self.physics.parton_window
        m_x, mu, p2, s_res = th.T
        b = len(th)
        # Parton level, background: a power law m^-p2 (inverse CDF), thinned by (1-x)^p1.
        n_env = rng.poisson(self._envelope_yield(p2))  # (B,)
        a_lo, a_hi = (lo / ph.m_ref) ** (1.0 - p2), (hi / ph.m_ref) ** (1.0 - p2)  # (B,)
        base, slope = np.repeat(a_lo, n_env), np.repeat(a_lo - a_hi, n_env)
        power = np.repeat(1.0 / (1.0 - p2), n_env)
        m_b = ph.m_ref * np.exp(np.log(base - rng.random(len(base)) * slope) * power)
        x_lo = lo / ph.sqrt_s
        keep = rng.random(len(m_b)) < ((1.0 - m_b / ph.sqrt_s) / (1.0 - x_lo)) ** ph.p1
        rows_b, m_b = np.repeat(np.arange(b), n_env)[keep], m_b[keep]
        # Parton level, signal: a Cauchy in s = m^2, truncated to the window (inverse CDF).
        n_sig = rng.poisson(mu * ph.signal_yield)
        loc, scale = np.repeat(m_x**2, n_sig), np.repeat(ph.width * m_x**2, n_sig)
        t_lo, t_hi = np.arctan((lo**2 - loc) / scale), np.arctan((hi**2 - loc) / scale)
        t = t_lo + rng.random(len(loc)) * (t_hi - t_lo)
        m_s = np.sqrt(loc + scale * np.tan(t))
        rows = np.concatenate([rows_b, np.repeat(np.arange(b), n_sig)])
        m = np.concatenate([m_b, m_s])
        # Shower: ln m_s = ln m - kappa E. Detector: ln m_d = ln m_s + s_res sigma_0 Z.
        log_m = np.log(m) - ph.shower_loss * rng.standard_exponential(len(m))
        log_m += (ph.resolution * s_res)[rows] * rng.standard_normal(len(m))
        # Binning, then the trigger on the events inside the histogram.
        pos = (log_m - math.log(ph.m_min)) / ph.log_bin_width
        inside = (pos >= 0.0) & (pos < ph.n_bins)
        pos, rows, log_m = pos[inside], rows[inside], log_m[inside]
        keep = rng.random(len(pos)) < ph.efficiency(np.exp(log_m))
        flat = rows[keep] * ph.n_bins + pos[keep].astype(np.int64)
        counts = np.bincount(flat, minlength=b * ph.n_bins)
        return counts.reshape(b, ph.n_bins).astype(np.float64)

    def _envelope_yield(self, p2: np.ndarray) -> np.ndarray:
        """Expected events of the power-law envelope of the background, shape ``(B,)``."""
        ph, (lo, hi) = self.physics, self.physics.parton_window
        x_ref, x_lo = ph.m_ref / ph.sqrt_s, lo / ph.sqrt_s
        norm = ph.n_ref * ((1.0 - x_lo) / (1.0 - x_ref)) ** ph.p1
        integral = ((lo / ph.m_ref) ** (1.0 - p2) - (hi / ph.m_ref) ** (1.0 - p2)) / (p2 - 1.0)
        return norm * ph.m_ref * integral

    # ---- expected counts and likelihood -------------------------------------------------

    def expected_counts(self, theta: Tensor) -> Tensor:
        r"""Expected counts :math:`\nu_k(\theta)` of every bin, from the integrated chain.

        Args:
            theta: Parameters, shape ``(B, D)`` (the quadrature is accurate for
                :math:`s_\sigma` up to the top of the prior support).

        Returns:
            Expected counts, shape ``(B, n_bins)``, float64.
        """
        th = self._full(self.check_theta(theta, support=False))
        return torch.as_tensor(self._quadrature.expected(th), dtype=torch.float64)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """Exact log-likelihood: independent Poisson counts with means ``expected_counts``.

        Args:
            theta: Parameters, shape ``(B, D)``.
            x: One observation ``(n_bins,)``, or iid trials ``(N, n_bins)`` (summed).

        Returns:
            Log-likelihoods, shape ``(B,)``, in the dtype of ``theta`` if floating.
        """
        ll = self._log_likelihood(self.check_theta(theta, support=False), self.check_x(x))
        dtype = theta.dtype if isinstance(theta, Tensor) and theta.is_floating_point() else None
        return torch.as_tensor(ll, dtype=dtype or torch.float32)

    def _log_likelihood(self, theta: np.ndarray, xs: np.ndarray) -> np.ndarray:
        xs = self.counts(xs)
        nu = self._quadrature.expected(self._full(theta))  # (B, K)
        with np.errstate(divide="ignore"):
            counts = xlogy(xs.sum(axis=0), nu).sum(axis=1)  # (B,); 0 log 0 = 0
        return counts - len(xs) * nu.sum(axis=1) - gammaln(xs + 1.0).sum()

    def reference_posterior(self, x_o: Tensor, n: int, seed: int = 0) -> Tensor:
        """Samples of the exact posterior given ``x_o`` (emcee on the exact likelihood).

        Args:
            x_o: One observation ``(n_bins,)``, or iid trials ``(N, n_bins)``.
            n: Number of samples.
            seed: Seed of the ``numpy`` generator; the same seed gives the same samples.

        Returns:
            Posterior samples, shape ``(n, D)``, float32, inside the prior support.
        """
        rng = np.random.default_rng(seed)
        target = _LogPosterior(self, self.check_x(x_o))
        pool = rng.uniform(self.low, self.high, size=(100 * self.num_walkers, self.dim))
        samples = emcee_posterior(
            target, pool, int(n), rng, self.num_walkers, self.burn_in, self.thin
        )
        samples = torch.as_tensor(samples, dtype=torch.float32)
        high = torch.as_tensor(self.high, dtype=torch.float32)
        return torch.minimum(samples, torch.nextafter(high, torch.tensor(-math.inf)))

    # ---- reference observations ---------------------------------------------------------

    def true_parameters(self, i: int) -> Tensor:
        """The documented parameters of reference observation ``i`` (1 to 4).

        Returns:
            The parameters, shape ``(D,)``, float32.
        """
        return torch.tensor(_TRUE[self.model][self._number(i) - 1], dtype=torch.float32)

    def observation(self, i: int) -> Tensor:
        """Reference observation ``i`` (1 to 4), simulated from ``true_parameters(i)``.

        It is generated on the fly with ``numpy.random.default_rng(base + i)``, ``base``
        1000 (signal model) or 2000 (background model).

        Returns:
            The counts, shape ``(n_bins,)``, float32.
        """
        rng = np.random.default_rng(_SEED[self.model] + self._number(i))
        return self.simulate(self.true_parameters(i)[None], rng)[0]

    def _number(self, i: int) -> int:
        n = len(_TRUE[self.model])
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"{self.name}: observation number must be an int, got {i!r}.")
        if not 1 <= i <= n:
            raise ValueError(f"{self.name}: observation number must be in 1..{n}, got {i}.")
        return int(i)


class _Quadrature:
    r"""Expected counts by quadrature of the chain.

    The parton intensity on a grid in :math:`\ln m` (end-corrected trapezoid weights) is
    convolved by FFT with the shower-and-resolution kernel, multiplied by the trigger
    efficiency and integrated over each bin by Simpson's rule.

    Args:
        physics: The chain's constants.
        sigma_max: Largest resolution scale :math:`s_\sigma` the FFT period must allow.
    """

    def __init__(self, physics: ColliderPhysics, sigma_max: float) -> None:
        ph, (lo, hi) = physics, physics.parton_window
        self.physics = ph
        w = ph.log_bin_width
        self.step = w / ph.grid
        n_nodes = ph.grid * (ph.margin_low + ph.n_bins + ph.margin_high) + 1
        self.u = math.log(lo) + self.step * np.arange(n_nodes)  # (G,) parton nodes in ln m
        # Trapezoid weights with fourth-order end corrections (the window's edges are
        # discontinuities of the parton intensity); Numerical Recipes eq. 4.1.14.
        self.trapezoid = np.full(n_nodes, self.step)
        ends = np.array([3.0 / 8.0, 7.0 / 6.0, 23.0 / 24.0])
        self.trapezoid[:3] *= ends
        self.trapezoid[-3:] *= ends[::-1]
        # The circular convolution must not wrap: a lag v = u_d - u_p between a histogram
        # node and a parton node lies in [v_min, v_max]; the kernel is below e^-30 of its
        # peak beyond 10 sigma above and 30 kappa + 10 sigma below.
        v_min, v_max = math.log(ph.m_min / hi), math.log(ph.m_max / lo)
        sigma = ph.resolution * sigma_max
        period = max(v_max + 30.0 * ph.shower_loss + 10.0 * sigma, 10.0 * sigma - v_min)
        self.n_fft = sfft.next_fast_len(max(int(math.ceil(period / self.step)), n_nodes), True)
        omega = 2.0 * math.pi * np.fft.rfftfreq(self.n_fft, d=self.step)  # (F,)
        self.half_omega2 = 0.5 * omega**2
        self.shower = 1.0 / (1.0 - 1j * ph.shower_loss * omega)  # FT of -kappa E
        # Histogram nodes: Simpson weights per bin, times the trigger efficiency.
        first = ph.grid * ph.margin_low
        self.hist = slice(first, first + ph.grid * ph.n_bins + 1)
        simpson = np.ones(ph.grid + 1)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        weights = np.zeros((ph.n_bins, ph.grid * ph.n_bins + 1))
        for k in range(ph.n_bins):
            weights[k, k * ph.grid : (k + 1) * ph.grid + 1] = simpson * self.step / 3.0
        self.weights = (weights * ph.efficiency(np.exp(self.u[self.hist]))).T  # (H, K)
        # Background intensity per unit ln m, up to the factor exp(-p2 * (u - ln m_ref)).
        x, x_ref = np.exp(self.u) / ph.sqrt_s, ph.m_ref / ph.sqrt_s
        self.log_background = (
            math.log(ph.n_ref) + self.u + ph.p1 * np.log((1.0 - x) / (1.0 - x_ref))
        )
        self.window, self.s = (lo, hi), np.exp(2.0 * self.u)

    def parton(self, theta: np.ndarray) -> np.ndarray:
        r"""Parton intensity per unit :math:`\ln m` at the nodes, shape ``(B, G)``."""
        ph, (lo, hi) = self.physics, self.window
        m_x, mu, p2 = theta[:, :1], theta[:, 1:2], theta[:, 2:3]
        rate = np.exp(self.log_background - p2 * (self.u - math.log(ph.m_ref)))  # (B, G)
        if not mu.any():
            return rate
        # Relativistic Breit-Wigner: Cauchy in s = m^2 (loc m_X^2, scale gamma m_X^2),
        # truncated to the window; ds = 2 s du.
        loc, scale = m_x**2, ph.width * m_x**2
        mass = np.arctan((hi**2 - loc) / scale) - np.arctan((lo**2 - loc) / scale)  # (B, 1)
        cauchy = scale / ((self.s - loc) ** 2 + scale**2)  # (B, G)
        return rate + (mu * (2.0 * ph.signal_yield) / mass) * (cauchy * self.s)

    def kernel(self, s_res: np.ndarray) -> np.ndarray:
        r"""Fourier transform of the density of :math:`\sigma Z - \kappa E`, shape ``(B, F)``."""
        sigma2 = (self.physics.resolution * s_res[:, None]) ** 2  # (B, 1)
        return np.exp(-sigma2 * self.half_omega2) * self.shower

    def expected(self, theta: np.ndarray) -> np.ndarray:
        """Expected counts for signal-model parameters ``(B, 4)``, shape ``(B, K)``."""
        weighted = self.parton(theta) * self.trapezoid  # (B, G)
        spectrum = sfft.rfft(weighted, n=self.n_fft, axis=1) * self.kernel(theta[:, 3])
        density = sfft.irfft(spectrum, n=self.n_fft, axis=1) / self.step  # (B, N)
        return density[:, self.hist] @ self.weights  # (B, K)


class _LogPosterior:
    """Log posterior of a ``Collider`` for fixed data, flat prior (picklable, vectorized)."""

    def __init__(self, sim: Collider, xs: np.ndarray) -> None:
        self.sim, self.xs = sim, xs

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        inside = np.all((theta >= self.sim.low) & (theta < self.sim.high), axis=1)
        out = np.full(len(theta), -np.inf)
        if inside.any():
            out[inside] = self.sim._log_likelihood(theta[inside], self.xs)
        return out
