r"""Dwarf-spheroidal stellar kinematics: a gNFW halo, a Plummer star sphere, spherical Jeans.

Dark matter follows a generalized NFW profile, the stars a Plummer sphere of fixed scale
radius ``a`` that only traces the potential; with a constant velocity anisotropy
:math:`\beta` (or, as a variant, the Osipkov-Merritt profile
:math:`\beta(r) = r^2/(r^2 + r_a^2)`) the spherical Jeans equation gives
:math:`\sigma_r(r)` and its projection :math:`\sigma_{\rm los}(R)`. A galaxy is a set of
stars with projected radii and line-of-sight velocities, padded to a fixed size with a
mask. See ``docs/dwarf.md``.

References:
    Uncovering dark matter density profiles in dwarf galaxies with graph neural networks,
    Nguyen, Mishra-Sharma, Williams & Necib 2023 (arXiv:2208.12825).
    Accurate masses for dispersion-supported galaxies, Wolf et al. 2010 (arXiv:0908.2995).
    Galactic Dynamics, Binney & Tremaine 2008, section 4.8 (the Jeans equations).
    Osipkov 1979 (Pisma Astron. Zh. 5, 77); Merritt 1985 (AJ 90, 1027): the anisotropy
    profile; Mamon & Lokas 2005 (arXiv:astro-ph/0405466), its Jeans solution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import exprel, hyp2f1
from torch import Tensor
from torch.distributions import Independent, Uniform

from simulators.base import SimulatorBase
from simulators.reference import emcee_posterior

__all__ = ["G", "Dwarf", "JeansSolver", "gnfw_mass", "plummer_mass"]

G = 4.300917e-6
"""Newton's constant in kpc (km/s)^2 / M_sun."""

_LOG_2PI = math.log(2.0 * math.pi)

# Parameters of the free-slope model: name, LaTeX label, prior range (uniform).
_PARAMETERS = {
    "log10_rho_s": (r"$\log_{10}\,\rho_s\ [M_\odot\,\mathrm{kpc}^{-3}]$", 6.5, 8.5),
    "log10_r_s": (r"$\log_{10}\,r_s\ [\mathrm{kpc}]$", -0.7, 0.5),
    "gamma": (r"$\gamma$", 0.0, 2.0),
    "beta": (r"$\beta$", -0.5, 0.5),
}
# The Osipkov-Merritt variant replaces beta by the anisotropy radius r_a (kpc): beta(r) =
# r^2 / (r^2 + r_a^2). With a = 0.25 kpc the range is r_a / a in [0.4, 12.6]: from orbits
# already half radial at 0.4 half-light radii (near the smallest r_a / a for which a
# Plummer tracer has a non-negative distribution function) to nearly isotropic over the
# whole field (beta < 0.4 out to 10 a).
_ANISOTROPY_RADIUS = (r"$\log_{10}\,r_a\ [\mathrm{kpc}]$", -1.0, 0.5)
_ANISOTROPIES = ("constant", "osipkov_merritt")
_MODELS = {"gnfw": None, "cored": 0.0, "cusped": 1.0}  # model -> fixed inner slope gamma

# Reference galaxies: (log10 rho_s, log10 r_s, gamma, beta); variants fix gamma instead.
_REFERENCE = (
    (8.3, -0.3, 0.0, 0.0),  # cored halo, isotropic
    (7.3, 0.0, 1.0, 0.0),  # NFW cusp, isotropic
    (6.8, 0.2, 1.5, 0.25),  # steep cusp, radially biased orbits
)
_REFERENCE_SEED = 1000  # observation i is simulated with numpy seed 1000 + i
# log10 r_a of the reference galaxies in the Osipkov-Merritt variant (in place of beta):
# nearly isotropic, nearly isotropic, radially biased.
_REFERENCE_R_A = (0.5, 0.5, -0.5)


def gnfw_mass(r: np.ndarray, rho_s: np.ndarray, r_s: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    r"""Mass inside radius ``r`` of a generalized NFW halo, by the hypergeometric closed form.

    :math:`\rho(r) = \rho_s (r/r_s)^{-\gamma} (1 + r/r_s)^{\gamma - 3}` encloses
    :math:`M(r) = 4\pi\rho_s r_s^3\, x^{3-\gamma}/(3-\gamma)\;
    {}_2F_1(3-\gamma, 3-\gamma; 4-\gamma; -x)` with :math:`x = r/r_s`, for :math:`\gamma < 3`.

    Args:
        r: Radii in kpc, any shape broadcasting with the others, e.g. ``(1, R)``.
        rho_s: Scale density in M_sun / kpc^3, e.g. ``(B, 1)``.
        r_s: Scale radius in kpc.
        gamma: Inner logarithmic slope, below 3.

    Returns:
        Enclosed mass in M_sun, the broadcast shape, e.g. ``(B, R)``.
    """
    x = r / r_s
    p = 3.0 - gamma
    return 4.0 * math.pi * rho_s * r_s**3 * x**p / p * hyp2f1(p, p, p + 1.0, -x)


def plummer_mass(r: np.ndarray, mass: float, a: float) -> np.ndarray:
    r"""Mass inside radius ``r`` of a Plummer sphere, :math:`M r^3 / (r^2 + a^2)^{3/2}`.

    Args:
        r: Radii in kpc, any shape.
        mass: Total mass in M_sun.
        a: Scale radius in kpc.

    Returns:
        Enclosed mass in M_sun, the shape of ``r``.
    """
    return mass * r**3 / (r**2 + a**2) ** 1.5


class JeansSolver:
    r"""Spherical Jeans equation for a Plummer tracer, batched over mass profiles.

    With constant anisotropy :math:`\beta` and tracer density
    :math:`\nu(r) \propto (1 + r^2/a^2)^{-5/2}`,

    .. math::
        \nu\sigma_r^2(r) = r^{-2\beta} \int_r^\infty r'^{2\beta}\,\nu(r')\,
        \frac{G M(r')}{r'^2}\,dr', \qquad
        \Sigma\sigma_{\rm los}^2(R) = 2\int_0^\infty \Big(1 - \beta\,
        \mathrm{sech}^2 t\Big)\, \nu\sigma_r^2(R\cosh t)\, R\cosh t\, dt,

    the second being the usual projection :math:`2\int_R^\infty (1 - \beta R^2/r^2)\,
    \nu\sigma_r^2\, r\,dr/\sqrt{r^2 - R^2}` after :math:`r = R\cosh t`, which removes the
    singularity at :math:`r = R`. The radial integral runs on a logarithmic grid
    :math:`r \in [10^{-3}, 10^3]\,a` (rule exact for a power law between nodes, with a
    curvature correction, see :func:`_segments`), plus a power-law tail beyond the grid;
    relative error about :math:`10^{-6}` on :math:`\sigma_r^2`. The projection
    interpolates :math:`\sigma_r^2` linearly in :math:`\ln r`, multiplies by the exact
    :math:`\nu`, and integrates in :math:`t` by Simpson's rule; being linear in
    :math:`\sigma_r^2` for given :math:`\beta`, it is two fixed matrices (relative error
    about :math:`3\times 10^{-4}` on :math:`\sigma_{\rm los}^2`).

    Args:
        a: Plummer scale radius of the stars in kpc.
        r_out: Largest projected radius needed, in units of ``a``.
        n_r: Nodes of the radial grid.
        n_proj: Nodes of the projected-radius grid on :math:`[10^{-3}, r_{\rm out}]\,a`.
        n_t: Simpson nodes of the line-of-sight integral (odd).

    Example:
        >>> solver = JeansSolver(a=0.25)
        >>> mass = plummer_mass(solver.r, 1e7, 0.25)[None]  # (1, n_r)
        >>> s2 = solver.sigma_r2(mass, np.zeros(1))  # (1, n_r)
        >>> exact = G * 1e7 / (6 * np.sqrt(solver.r**2 + 0.25**2))
        >>> bool(np.allclose(s2[0], exact, rtol=1e-4))
        True
    """

    def __init__(
        self, a: float, r_out: float = 10.0, n_r: int = 241, n_proj: int = 81, n_t: int = 201
    ) -> None:
        self.a = float(a)
        self.log_s = np.linspace(math.log(1e-3), math.log(1e3), n_r)  # ln(r / a)
        self.r = self.a * np.exp(self.log_s)  # (n_r,) kpc
        self.log_S = np.linspace(math.log(1e-3), math.log(r_out), n_proj)  # ln(R / a)
        self.R = self.a * np.exp(self.log_S)  # (n_proj,) kpc
        self._log_nu = -2.5 * np.log1p(np.exp(2 * self.log_s))  # (n_r,)
        self._k0, self._k1 = self._projection_matrices(n_t)  # (n_proj, n_r) each

    def enclosed_mass(self, rho_s: np.ndarray, r_s: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        r"""Enclosed gNFW mass on the grid ``self.r``, by cumulative quadrature.

        :func:`gnfw_mass` (hypergeometric closed form) gives the mass inside the first node;
        :math:`\int 4\pi r^3 \rho\, d\ln r` on the grid adds the rest (the closed form at
        every node costs ten times more).

        Args:
            rho_s: Scale density in M_sun / kpc^3, shape ``(B,)``.
            r_s: Scale radius in kpc, shape ``(B,)``.
            gamma: Inner slope, below 3, shape ``(B,)``.

        Returns:
            Enclosed mass in M_sun, shape ``(B, n_r)``.
        """
        rho_s, r_s, gamma = (np.asarray(v, dtype=np.float64)[:, None] for v in (rho_s, r_s, gamma))
        log_x = np.log(self.r) - np.log(r_s)  # (B, n_r)
        log_g = np.log(4.0 * math.pi * rho_s * r_s**3) + (3.0 - gamma) * log_x
        log_g = log_g + (gamma - 3.0) * np.log1p(np.exp(log_x))  # ln(4 pi r^3 rho)
        inner = gnfw_mass(self.r[0], rho_s, r_s, gamma)  # (B, 1)
        seg = _segments(log_g, self.log_s[1] - self.log_s[0])  # (B, n_r - 1)
        return np.concatenate([inner, inner + np.cumsum(seg, axis=1)], axis=1)

    def sigma_r2(self, mass: np.ndarray, beta: np.ndarray) -> np.ndarray:
        r"""Radial velocity dispersion squared on the grid ``self.r``.

        Args:
            mass: Enclosed mass :math:`M(r)` on ``self.r`` in M_sun, shape ``(B, n_r)``.
            beta: Constant anisotropy :math:`1 - \sigma_t^2/\sigma_r^2`, shape ``(B,)``.

        Returns:
            :math:`\sigma_r^2` in (km/s)^2, shape ``(B, n_r)``.
        """
        two_beta = 2.0 * np.asarray(beta, dtype=np.float64)[:, None]  # (B, 1)
        # integrand per d ln r (with r in units of a): r^(2 beta - 1) nu(r) M(r)
        log_g = (two_beta - 1.0) * self.log_s + self._log_nu + np.log(mass)  # (B, n_r)
        step = self.log_s[1] - self.log_s[0]
        seg = _segments(log_g, step)  # (B, n_r - 1)
        slope = (log_g[:, -1] - log_g[:, -2]) / step  # power law beyond the grid
        tail = np.exp(log_g[:, -1]) / np.maximum(-slope, 1e-2)
        outer = np.cumsum(seg[:, ::-1], axis=1)[:, ::-1] + tail[:, None]  # (B, n_r - 1)
        integral = np.concatenate([outer, tail[:, None]], axis=1)  # (B, n_r)
        log_norm = two_beta * self.log_s + self._log_nu  # ln(r^(2 beta) nu)
        return (G / self.a) * integral * np.exp(-log_norm)

    def sigma_r2_osipkov_merritt(self, mass: np.ndarray, r_a: np.ndarray) -> np.ndarray:
        r"""Radial dispersion squared on ``self.r`` for Osipkov-Merritt anisotropy.

        With :math:`\beta(r) = r^2/(r^2 + r_a^2)` the integrating factor of the Jeans
        equation is :math:`f(r) = (r^2 + r_a^2)/r_a^2` and
        :math:`\nu\sigma_r^2(r) = f(r)^{-1}\int_r^\infty f(s)\,\nu(s)\,G M(s)/s^2\,ds`,
        integrated on the same grid and with the same rule as :meth:`sigma_r2`.

        Args:
            mass: Enclosed mass on ``self.r`` in M_sun, shape ``(B, n_r)``.
            r_a: Anisotropy radius in kpc, shape ``(B,)``.

        Returns:
            :math:`\sigma_r^2` in (km/s)^2, shape ``(B, n_r)``.
        """
        log_f = self._log_om_factor(r_a)  # (B, n_r): ln f(r)
        log_g = log_f - self.log_s + self._log_nu + np.log(mass)  # per d ln r: f nu M / r
        step = self.log_s[1] - self.log_s[0]
        seg = _segments(log_g, step)
        slope = (log_g[:, -1] - log_g[:, -2]) / step
        tail = np.exp(log_g[:, -1]) / np.maximum(-slope, 1e-2)
        outer = np.cumsum(seg[:, ::-1], axis=1)[:, ::-1] + tail[:, None]
        integral = np.concatenate([outer, tail[:, None]], axis=1)
        return (G / self.a) * integral * np.exp(-(log_f + self._log_nu))

    def beta_osipkov_merritt(self, r_a: np.ndarray) -> np.ndarray:
        r""":math:`\beta(r) = r^2/(r^2 + r_a^2)` on ``self.r``, shape ``(B, n_r)``."""
        s2 = np.exp(2.0 * self.log_s)  # (n_r,) (r / a)^2
        rho2 = (np.asarray(r_a, dtype=np.float64)[:, None] / self.a) ** 2  # (B, 1)
        return s2 / (s2 + rho2)

    def _log_om_factor(self, r_a: np.ndarray) -> np.ndarray:
        log_rho2 = 2.0 * np.log(np.asarray(r_a, dtype=np.float64)[:, None] / self.a)  # (B, 1)
        return np.logaddexp(2.0 * self.log_s, log_rho2) - log_rho2  # ln((s^2 + rho^2) / rho^2)

    def sigma_los2(self, sigma_r2: np.ndarray, beta: np.ndarray) -> np.ndarray:
        r"""Line-of-sight velocity dispersion squared on the grid ``self.R``.

        The projection weight :math:`1 - \beta(r) R^2/r^2 = 1 - \beta(r)\,\mathrm{sech}^2 t`
        is exact for a radially varying :math:`\beta(r)` too (for Osipkov-Merritt it is
        :math:`1 - R^2/(r^2 + r_a^2)`); then :math:`\beta\sigma_r^2` is interpolated on the
        r grid like :math:`\sigma_r^2`.

        Args:
            sigma_r2: :math:`\sigma_r^2` on ``self.r``, shape ``(B, n_r)``.
            beta: Constant anisotropy, shape ``(B,)``, or :math:`\beta(r)` on ``self.r``,
                shape ``(B, n_r)``.

        Returns:
            :math:`\sigma_{\rm los}^2` in (km/s)^2, shape ``(B, n_proj)``.
        """
        beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim == 2:
            return sigma_r2 @ self._k0.T - (beta * sigma_r2) @ self._k1.T
        beta = beta[:, None]
        return sigma_r2 @ self._k0.T - beta * (sigma_r2 @ self._k1.T)

    def _projection_matrices(self, n_t: int) -> tuple[np.ndarray, np.ndarray]:
        """Matrices mapping sigma_r^2 on the r grid to Sigma sigma_los^2 / Sigma on R."""
        n_r = len(self.log_s)
        S = np.exp(self.log_S)[:, None]  # (n_proj, 1), units of a
        t_max = np.arccosh(np.exp(self.log_s[-1]) / S)  # (n_proj, 1)
        u = np.linspace(0.0, 1.0, n_t)[None, :]
        t = t_max * u  # (n_proj, n_t)
        simpson = np.ones(n_t)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        s_node = S * np.cosh(t)  # (n_proj, n_t)
        nu = (1.0 + s_node**2) ** -2.5
        weight = simpson * (t_max / (3 * (n_t - 1))) * nu * s_node  # (n_proj, n_t)
        weight /= weight.sum(axis=1, keepdims=True)  # divide by Sigma, same quadrature
        pos = (np.log(s_node) - self.log_s[0]) / (self.log_s[1] - self.log_s[0])
        idx = np.clip(np.floor(pos).astype(int), 0, n_r - 2)
        frac = np.clip(pos - idx, 0.0, 1.0)
        rows = np.broadcast_to(np.arange(len(S))[:, None], idx.shape)
        sech2 = 1.0 / np.cosh(t) ** 2
        mats = []
        for w in (weight, weight * sech2):
            k = np.zeros((len(S), n_r))
            np.add.at(k, (rows, idx), w * (1.0 - frac))
            np.add.at(k, (rows, idx + 1), w * frac)
            mats.append(k)
        return mats[0], mats[1]

    def interpolation(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices and weights of linear interpolation in ln R on ``self.R`` (clamped).

        Args:
            R: Projected radii in kpc, any shape.

        Returns:
            ``(idx, frac)``, the shape of ``R``: value = ``(1 - frac) f[idx] + frac f[idx+1]``.
        """
        with np.errstate(divide="ignore"):
            pos = (np.log(R / self.a) - self.log_S[0]) / (self.log_S[1] - self.log_S[0])
        pos = np.nan_to_num(pos, nan=0.0, neginf=0.0)
        idx = np.clip(np.floor(pos).astype(int), 0, len(self.log_S) - 2)
        return idx, np.clip(pos - idx, 0.0, 1.0)


class Dwarf(SimulatorBase):
    r"""Line-of-sight velocities of a dwarf spheroidal's stars in a gNFW dark-matter halo.

    Parameters (uniform prior, see ``docs/dwarf.md``): ``log10_rho_s`` in [6.5, 8.5]
    (:math:`\rho_s` in M_sun/kpc^3), ``log10_r_s`` in [-0.7, 0.5] (:math:`r_s` in kpc),
    ``gamma`` in [0, 2] (inner slope; fixed to 0 by ``model="cored"``, to 1 by
    ``model="cusped"``, and then not a parameter), ``beta`` in [-0.5, 0.5] (constant
    velocity anisotropy). With ``anisotropy="osipkov_merritt"`` the anisotropy is
    :math:`\beta(r) = r^2/(r^2 + r_a^2)` instead, and ``log10_r_a`` in [-1.0, 0.5]
    (:math:`r_a` in kpc) takes the place of ``beta``.

    A galaxy has :math:`N = \mathrm{clip}(\mathrm{Poisson}(n_{\rm mean}), n_{\rm min},
    n_{\max})` stars, projected radii from the Plummer surface density truncated at
    ``r_field`` :math:`a`, measurement errors :math:`\delta v \sim \mathcal{U}(1, 3)` km/s
    and :math:`v \sim \mathcal{N}(0, \sigma_{\rm los}^2(R) + \delta v^2)`. ``x`` has shape
    ``(n_max, 4)``: one row per star ``(R [kpc], v [km/s], dv [km/s], mask)``, mask 1 for a
    star, padding rows all zero. Every instance has the exact likelihood; ``exact`` is
    accepted for the common interface and changes nothing.

    Args:
        model: ``"gnfw"`` (free inner slope), ``"cored"`` (gamma = 0) or ``"cusped"`` (gamma = 1).
        anisotropy: ``"constant"`` (parameter ``beta``) or ``"osipkov_merritt"``
            (parameter ``log10_r_a``).
        exact: Accepted for ``simulators.get(name, exact=True)``; every instance is exact.
        a: Plummer scale radius (= projected half-light radius) of the stars in kpc.
        n_mean: Mean of the Poisson number of stars.
        n_min: Fewest stars (smaller draws are raised to it).
        n_max: Most stars (larger draws are capped); the number of rows of ``x``.
        r_field: Radius of the observed field in units of ``a``.
        num_walkers: emcee walkers of the reference posterior.
        burn_in: emcee steps discarded before the reference posterior keeps samples.
        thin: Keep every ``thin``-th step of the reference posterior's chains.

    Example:
        >>> sim = Dwarf(model="cored")
        >>> x = sim.simulate(sim.prior.sample((2,)), np.random.default_rng(0))
        >>> tuple(x.shape), sim.names
        ((2, 150, 4), ['log10_rho_s', 'log10_r_s', 'beta'])
    """

    name = "dwarf"
    #: The embedding NPE's "auto" takes for x (sbiflow reads it; see docs/dwarf.md).
    embedding_net = "kinematic_set"
    dv_range = (1.0, 3.0)  # per-star velocity errors, km/s, drawn uniformly

    def __init__(
        self,
        model: str = "gnfw",
        exact: bool = True,
        anisotropy: str = "constant",
        a: float = 0.25,
        n_mean: float = 100.0,
        n_min: int = 10,
        n_max: int = 150,
        r_field: float = 10.0,
        num_walkers: int = 64,
        burn_in: int = 1500,
        thin: int = 80,
    ) -> None:
        if model not in _MODELS:
            raise ValueError(f"dwarf: model must be one of {sorted(_MODELS)}, got {model!r}.")
        if anisotropy not in _ANISOTROPIES:
            raise ValueError(
                f"dwarf: anisotropy must be one of {list(_ANISOTROPIES)}, got {anisotropy!r}."
            )
        if not 1 <= n_min <= n_max:
            raise ValueError(f"dwarf: need 1 <= n_min <= n_max, got {n_min}, {n_max}.")
        self.model, self.exact, self.gamma = model, bool(exact), _MODELS[model]
        self.anisotropy = anisotropy
        self.a, self.n_mean, self.n_min, self.n_max = float(a), float(n_mean), n_min, n_max
        self.r_field = float(r_field)
        self.num_walkers, self.burn_in, self.thin = num_walkers, burn_in, thin
        table = dict(_PARAMETERS)
        if anisotropy == "osipkov_merritt":
            del table["beta"]
            table["log10_r_a"] = _ANISOTROPY_RADIUS
        names = [n for n in table if not (n == "gamma" and self.gamma is not None)]
        low = np.array([table[n][1] for n in names])
        high = np.array([table[n][2] for n in names])
        prior = Independent(Uniform(torch.tensor(low).float(), torch.tensor(high).float()), 1)
        labels = [table[n][0] for n in names]
        super().__init__(prior, low, high, (n_max, 4), names, labels)
        self.solver = JeansSolver(self.a, r_out=self.r_field)

    # ---- physics ---------------------------------------------------------------------

    def full_parameters(self, theta: np.ndarray) -> np.ndarray:
        """Insert the fixed inner slope of the cored/cusped models.

        Args:
            theta: Parameters of this model, shape ``(B, D)``.

        Returns:
            ``(log10_rho_s, log10_r_s, gamma, beta)`` (``log10_r_a`` in place of ``beta`` for
            Osipkov-Merritt), shape ``(B, 4)``.
        """
        if self.gamma is None:
            return theta
        return np.insert(theta, 2, self.gamma, axis=1)

    def sigma_los2_grid(self, theta: np.ndarray) -> np.ndarray:
        r"""Line-of-sight dispersion squared on ``self.solver.R`` for each parameter row.

        Args:
            theta: Parameters of this model, shape ``(B, D)``.

        Returns:
            :math:`\sigma_{\rm los}^2` in (km/s)^2, shape ``(B, n_proj)``.
        """
        full = self.full_parameters(theta)
        mass = self.solver.enclosed_mass(10.0 ** full[:, 0], 10.0 ** full[:, 1], full[:, 2])
        if self.anisotropy == "osipkov_merritt":
            r_a = 10.0 ** full[:, 3]
            sigma_r2 = self.solver.sigma_r2_osipkov_merritt(mass, r_a)
            return self.solver.sigma_los2(sigma_r2, self.solver.beta_osipkov_merritt(r_a))
        beta = full[:, 3]
        return self.solver.sigma_los2(self.solver.sigma_r2(mass, beta), beta)

    def sigma_los(self, theta: Tensor | np.ndarray, R: np.ndarray) -> np.ndarray:
        r"""Line-of-sight velocity dispersion at projected radii, as the simulator uses it.

        Args:
            theta: Parameters, shape ``(B, D)``.
            R: Projected radii in kpc, shape ``(B, N)`` or ``(N,)``.

        Returns:
            :math:`\sigma_{\rm los}` in km/s, shape ``(B, N)``.
        """
        th = self.check_theta(theta, support=False)
        grid = self.sigma_los2_grid(th)
        R = np.broadcast_to(np.asarray(R, dtype=np.float64), (len(th), np.shape(R)[-1]))
        return np.sqrt(_interpolate(grid, *self.solver.interpolation(R)))

    # ---- simulation ------------------------------------------------------------------

    def _simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, n_max = len(theta), self.n_max
        grid = self.sigma_los2_grid(theta)  # (B, n_proj)
        count = np.clip(rng.poisson(self.n_mean, b), self.n_min, n_max)  # (B,)
        # Plummer: fraction of stars inside R is R^2 / (R^2 + a^2); truncated at r_field a.
        u = rng.uniform(0.0, self._field_fraction(), (b, n_max))
        R = self.a * np.sqrt(u / (1.0 - u))  # (B, n_max)
        dv = rng.uniform(*self.dv_range, (b, n_max))
        sigma2 = _interpolate(grid, *self.solver.interpolation(R)) + dv**2
        v = np.sqrt(sigma2) * rng.standard_normal((b, n_max))
        mask = np.arange(n_max) < count[:, None]  # (B, n_max)
        x = np.stack([R, v, dv, np.ones_like(R)], axis=2)  # (B, n_max, 4)
        return np.where(mask[..., None], x, 0.0)

    def _field_fraction(self) -> float:
        return self.r_field**2 / (1.0 + self.r_field**2)

    # ---- exact likelihood ------------------------------------------------------------

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Exact log-likelihood of the velocities given the radii and errors.

        :math:`\sum_i \log\mathcal{N}(v_i; 0, \sigma_{\rm los}^2(R_i) + \delta v_i^2)` over
        the stars (mask 1). The number of stars, their radii and errors do not depend on
        :math:`\theta` (``a`` is fixed), so their terms are constants, left out. Not
        restricted to the prior support.

        Args:
            theta: Parameters, shape ``(B, D)``; needs gamma < 3 and beta < 1 (any
                ``log10_r_a`` for Osipkov-Merritt).
            x: One galaxy ``(n_max, 4)``, or several ``(M, n_max, 4)`` sharing theta (summed).

        Returns:
            Log-likelihoods, shape ``(B,)``, in the dtype of ``theta`` if floating.

        Raises:
            ValueError: Wrong shapes, a mask other than 0/1, or theta outside gamma < 3, beta < 1.
        """
        th = self.check_theta(theta, support=False)
        full = self.full_parameters(th)
        beta_ok = full[:, 3] < 1.0 if self.anisotropy == "constant" else np.isfinite(full[:, 3])
        if not np.all((full[:, 2] < 3.0) & beta_ok):
            raise ValueError(f"{self.name}: the Jeans model needs gamma < 3 and beta < 1.")
        ll = _StarLikelihood(self, self.check_x(x))(th)
        dtype = theta.dtype if isinstance(theta, Tensor) and theta.is_floating_point() else None
        return torch.as_tensor(ll, dtype=dtype or torch.float32)

    def reference_posterior(self, x_o: Tensor, n: int, seed: int = 0) -> Tensor:
        """Samples of the exact posterior given ``x_o`` (emcee on the uniform prior box).

        Args:
            x_o: One galaxy ``(n_max, 4)`` (or several sharing theta).
            n: Number of samples.
            seed: Seed of the ``numpy`` generator; the same seed gives the same samples.

        Returns:
            Posterior samples, shape ``(n, D)``, float32.
        """
        rng = np.random.default_rng(seed)
        target = _LogPosterior(_StarLikelihood(self, self.check_x(x_o)), self.low, self.high)
        pool = rng.uniform(self.low, self.high, (50 * self.num_walkers, self.dim))
        samples = emcee_posterior(
            target, pool, int(n), rng, self.num_walkers, self.burn_in, self.thin
        )
        samples = torch.as_tensor(samples, dtype=torch.float32)
        high = torch.as_tensor(self.high, dtype=torch.float32)
        return torch.minimum(samples, torch.nextafter(high, torch.tensor(-math.inf)))

    # ---- reference observations ------------------------------------------------------

    def true_parameters(self, i: int) -> Tensor:
        """Parameters of reference galaxy ``i`` (1: cored, 2: NFW cusp, 3: steep cusp).

        The cored/cusped models keep ``log10_rho_s``, ``log10_r_s`` and ``beta`` of the
        galaxy and use their own fixed gamma; the Osipkov-Merritt variant has ``log10_r_a``
        0.5, 0.5, -0.5 in place of ``beta``.

        Returns:
            The parameters, shape ``(D,)``, float32.
        """
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"{self.name}: observation number must be an int, got {i!r}.")
        if not 1 <= i <= len(_REFERENCE):
            raise ValueError(
                f"{self.name}: observation number must be in 1..{len(_REFERENCE)}, got {i}."
            )
        row = list(_REFERENCE[i - 1])
        if self.anisotropy == "osipkov_merritt":
            row[3] = _REFERENCE_R_A[i - 1]
        if self.gamma is not None:
            del row[2]
        return torch.tensor(row, dtype=torch.float32)

    def observation(self, i: int) -> Tensor:
        """Reference galaxy ``i``, simulated from ``true_parameters(i)`` with seed 1000 + i.

        Returns:
            The observation, shape ``(n_max, 4)``, float32.
        """
        theta = self.true_parameters(i)[None]
        return self.simulate(theta, np.random.default_rng(_REFERENCE_SEED + i))[0]


def _segments(log_g: np.ndarray, step: float) -> np.ndarray:
    r"""Integrals of :math:`e^{\phi}` over the cells of a uniform grid, from :math:`\phi` at nodes.

    Exact when :math:`\phi` is linear in a cell (a power law in r): the cell integral is
    step times the logarithmic mean of the end values. A curvature term
    :math:`-\phi'' h^2/12` (second differences, one-sided at the ends) makes the rule
    fourth order for smooth :math:`\phi`.

    Args:
        log_g: :math:`\phi` at the nodes, shape ``(B, n)`` with ``n >= 3``.
        step: Node spacing ``h``.

    Returns:
        Cell integrals, shape ``(B, n - 1)``.
    """
    d = np.diff(log_g, axis=1)  # (B, n - 1)
    d2 = np.diff(d, axis=1)  # (B, n - 2): h^2 phi'' at interior nodes
    d2 = np.concatenate([d2[:, :1], d2, d2[:, -1:]], axis=1)  # (B, n)
    curvature = 0.5 * (d2[:, :-1] + d2[:, 1:])  # (B, n - 1): h^2 phi'' per cell
    return step * np.exp(log_g[:, :-1]) * exprel(d) * (1.0 - curvature / 12.0)


def _interpolate(grid: np.ndarray, idx: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``grid`` (B, K) at ``idx``/``frac`` (B, N) -> (B, N)."""
    lo = np.take_along_axis(grid, idx, axis=1)
    hi = np.take_along_axis(grid, idx + 1, axis=1)
    return (1.0 - frac) * lo + frac * hi


class _StarLikelihood:
    """Velocity log-likelihood of one data set for batches of theta (picklable)."""

    def __init__(self, sim: Dwarf, xs: np.ndarray) -> None:
        mask = xs[..., 3].reshape(-1)
        if not np.all((mask == 0.0) | (mask == 1.0)):
            raise ValueError(f"{sim.name}: the mask column of x must be 0 or 1.")
        stars = xs.reshape(-1, 4)[mask == 1.0]  # (N, 4)
        if np.any(stars[:, 0] <= 0.0) or np.any(stars[:, 2] < 0.0):
            raise ValueError(f"{sim.name}: stars need R > 0 and dv >= 0.")
        self.sim = sim
        idx, frac = sim.solver.interpolation(stars[:, 0])
        n_proj = len(sim.solver.R)
        self.interp = np.zeros((n_proj, len(stars)))  # sigma_los^2 grid -> stars
        np.add.at(self.interp, (idx, np.arange(len(stars))), 1.0 - frac)
        np.add.at(self.interp, (idx + 1, np.arange(len(stars))), frac)
        self.v2, self.dv2 = stars[:, 1] ** 2, stars[:, 2] ** 2  # (N,)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        var = self.sim.sigma_los2_grid(theta) @ self.interp + self.dv2  # (B, N)
        return -0.5 * (np.log(var) + self.v2 / var + _LOG_2PI).sum(axis=1)


class _LogPosterior:
    """Log-likelihood inside the prior box ``[low, high)``, ``-inf`` outside (picklable)."""

    def __init__(self, likelihood: _StarLikelihood, low: np.ndarray, high: np.ndarray) -> None:
        self.likelihood, self.low, self.high = likelihood, low, high

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        inside = np.all((theta >= self.low) & (theta < self.high), axis=1)
        out = np.full(len(theta), -np.inf)
        if inside.any():
            out[inside] = self.likelihood(theta[inside])
        return out
