r"""Linear matter power spectrum at z = 0, vectorized over :math:`(\Omega_m, \sigma_8)`.

:math:`P(k) = A\, k^{n_s}\, T^2(k)`, with :math:`T` the Eisenstein & Hu (1998) no-wiggle
transfer function (cold dark matter + baryons), optionally times the Eisenstein & Hu (1999)
suppression by massive neutrinos or a warm-dark-matter cutoff, and :math:`A` fixed by
:math:`\sigma_8` (top-hat of radius 8 Mpc/h, by Gauss-Legendre quadrature on fixed nodes).

Units: :math:`k` in h/Mpc, :math:`P` in (Mpc/h)^3.

References:
    Baryonic features in the matter transfer function, Eisenstein & Hu 1998
    (arXiv:astro-ph/9709112). Power spectra for cold dark matter and its variants,
    Eisenstein & Hu 1999 (arXiv:astro-ph/9710252). Halo formation in warm dark matter
    models, Bode, Ostriker & Turok 2001 (arXiv:astro-ph/0010389). Constraining warm dark
    matter candidates including sterile neutrinos and light gravitinos with WMAP and the
    Lyman-alpha forest, Viel et al. 2005 (arXiv:astro-ph/0501562).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Cosmology",
    "LinearPower",
    "eh98_nowiggle",
    "eh99_neutrino_factor",
    "tophat_window",
    "wdm_cutoff",
]

_NU_MASS_TO_OMEGA_H2 = 93.14  # eV: Omega_nu h^2 = sum(m_nu) / 93.14 eV


@dataclass(frozen=True)
class Cosmology:
    r"""The cosmological parameters held fixed (Planck 2018-like, flat, z = 0).

    Attributes:
        h: Hubble constant in units of 100 km/s/Mpc.
        omega_b: Baryon density :math:`\Omega_b`.
        n_s: Primordial spectral index.
        t_cmb: CMB temperature in K.
        m_nu: Sum of the neutrino masses in eV (0: massless neutrinos, plain LCDM).
        n_nu_massive: Number of degenerate massive neutrino species sharing ``m_nu``.
        wdm_alpha: Scale :math:`\alpha` in Mpc/h of a warm-dark-matter-like cutoff
            (0: none), see :func:`wdm_cutoff`.
    """

    h: float = 0.674
    omega_b: float = 0.0493
    n_s: float = 0.965
    t_cmb: float = 2.7255
    m_nu: float = 0.0
    n_nu_massive: int = 3
    wdm_alpha: float = 0.0

    @property
    def omega_nu(self) -> float:
        r"""Massive-neutrino density :math:`\Omega_\nu = \sum m_\nu / (93.14\,h^2\,\mathrm{eV})`."""
        return self.m_nu / (_NU_MASS_TO_OMEGA_H2 * self.h**2)


def eh98_nowiggle(
    k: np.ndarray, omega_m: np.ndarray, h: float, omega_b: float, t_cmb: float
) -> np.ndarray:
    r"""Eisenstein & Hu (1998) no-wiggle transfer function, their eqs. (26), (28)-(31).

    .. math:: T_0(q) = \frac{L_0}{L_0 + C_0 q^2},\quad L_0 = \ln(2e + 1.8 q),\quad
        C_0 = 14.2 + \frac{731}{1 + 62.5 q},\quad
        q = \frac{k\,\Theta_{2.7}^2}{\Gamma_\mathrm{eff}(k)},

    with :math:`\Gamma_\mathrm{eff} = \Omega_m h\,[\alpha_\Gamma + (1 - \alpha_\Gamma) /
    (1 + (0.43\,k s)^4)]` (k in 1/Mpc and the sound horizon s in Mpc there).

    Args:
        k: Wavenumbers in h/Mpc, any shape broadcasting with ``omega_m``.
        omega_m: Matter density :math:`\Omega_m`, broadcasting with ``k``.
        h: Hubble constant in units of 100 km/s/Mpc.
        omega_b: Baryon density :math:`\Omega_b`.
        t_cmb: CMB temperature in K.

    Returns:
        :math:`T(k)`, the broadcast shape of ``k`` and ``omega_m``.
    """
    omh2, obh2, f_b = omega_m * h**2, omega_b * h**2, omega_b / omega_m
    theta2 = (t_cmb / 2.7) ** 2
    s = 44.5 * np.log(9.83 / omh2) / math.sqrt(1.0 + 10.0 * obh2**0.75)  # Mpc, eq. (26)
    alpha = 1.0 - 0.328 * np.log(431.0 * omh2) * f_b + 0.38 * np.log(22.3 * omh2) * f_b**2
    ks2 = (0.43 * h * s * k) ** 2
    gamma = omega_m * h * (alpha + (1.0 - alpha) / (1.0 + ks2 * ks2))
    q = k * theta2 / gamma
    big_l = np.log(2.0 * math.e + 1.8 * q)
    return big_l / (big_l + (14.2 + 731.0 / (1.0 + 62.5 * q)) * q**2)


def eh99_neutrino_factor(
    k: np.ndarray,
    omega_m: np.ndarray,
    h: float,
    omega_b: float,
    t_cmb: float,
    omega_nu: float,
    n_nu: int,
) -> np.ndarray:
    r"""Suppression of the matter transfer function by massive neutrinos, from Eisenstein & Hu 1999.

    The ratio :math:`T_{cb\nu}(k; f_\nu) / T_\mathrm{sup}(k; f_\nu = 0)` of their no-wiggle
    fit at z = 0: the master function :math:`T_\mathrm{sup} B` with free-streaming growth
    :math:`D_{cb\nu}(k) / D_1` (their constants as in the authors' public code),
    divided by the same fit without neutrinos, so that it isolates the neutrino effect. It
    tends to 1 as :math:`k \to 0` and to about :math:`(1 - f_\nu) D_1^{-p_{cb}}` at high k.

    Args:
        k: Wavenumbers in h/Mpc, broadcasting with ``omega_m``.
        omega_m: Total matter density (CDM + baryons + massive neutrinos).
        h: Hubble constant in units of 100 km/s/Mpc.
        omega_b: Baryon density.
        t_cmb: CMB temperature in K.
        omega_nu: Massive-neutrino density :math:`\Omega_\nu > 0`.
        n_nu: Number of degenerate massive species.

    Returns:
        The factor multiplying :math:`T(k)`, the broadcast shape of ``k`` and ``omega_m``.
    """
    omh2, obh2 = omega_m * h**2, omega_b * h**2
    f_b, f_nu = omega_b / omega_m, omega_nu / omega_m
    theta2 = (t_cmb / 2.7) ** 2
    z_eq = 2.5e4 * omh2 / theta2**2  # this is 1 + z_eq
    b1 = 0.313 * omh2**-0.419 * (1.0 + 0.607 * omh2**0.674)
    b2 = 0.238 * omh2**0.223
    z_drag = 1291.0 * omh2**0.251 / (1.0 + 0.659 * omh2**0.828) * (1.0 + b1 * obh2**b2)
    y_d = z_eq / (1.0 + z_drag)
    s = 44.5 * np.log(9.83 / omh2) / math.sqrt(1.0 + 10.0 * obh2**0.75)  # Mpc
    omega_l = 1.0 - omega_m  # flat
    growth = (  # D_1 at z = 0, normalized to 1 + z_eq deep in matter domination
        z_eq
        * 2.5
        * omega_m
        / (omega_m ** (4 / 7) - omega_l + (1.0 + omega_m / 2) * (1.0 + omega_l / 70))
    )
    q = k * h * theta2 / omh2  # k in 1/Mpc over Omega_m h^2
    k_s4 = (0.43 * k * h * s) ** 4

    p_cb = 0.25 * (5.0 - np.sqrt(1.0 + 24.0 * (1.0 - f_nu)))
    y_fs = 17.2 * f_nu * (1.0 + 0.488 * f_nu ** (-7 / 6)) * (n_nu * q / f_nu) ** 2
    free = (growth / (1.0 + y_fs)) ** 0.7
    growth_ratio = ((1.0 - f_nu) ** (0.7 / p_cb) + free) ** (p_cb / 0.7) * growth**-p_cb
    q_nu = 3.92 * q * np.sqrt(n_nu / f_nu)
    big_b = 1.0 + 1.2 * f_nu**0.64 * n_nu ** (0.3 + 0.6 * f_nu) * q_nu**1.6 / (1.0 + q_nu**2.4)
    with_nu = _eh99_suppressed(q, k_s4, y_d, f_b, f_nu, n_nu)
    return with_nu * big_b * growth_ratio / _eh99_suppressed(q, k_s4, y_d, f_b, 0.0, n_nu)


def _eh99_suppressed(
    q: np.ndarray, k_s4: np.ndarray, y_d: np.ndarray, f_b: np.ndarray, f_nu: float, n_nu: int
) -> np.ndarray:
    r"""Eisenstein & Hu (1999) suppressed master function :math:`T_\mathrm{sup}(k; f_\nu)`."""
    f_c, f_cb, f_bnu = 1.0 - f_b - f_nu, 1.0 - f_nu, f_b + f_nu
    p_c = 0.25 * (5.0 - np.sqrt(1.0 + 24.0 * f_c))
    p_cb = 0.25 * (5.0 - np.sqrt(1.0 + 24.0 * f_cb))
    infall = 1.0 + 1.0 / ((3.0 - 4.0 * p_c) * (7.0 - 4.0 * p_cb))
    alpha = (
        f_c / f_cb * (5.0 - 2.0 * (p_c + p_cb)) / (5.0 - 4.0 * p_cb) * (1.0 + y_d) ** (p_cb - p_c)
    )
    alpha = alpha * (1.0 + f_bnu * (-0.553 + 0.126 * f_bnu**2))
    alpha = alpha / (1.0 - 0.193 * np.sqrt(f_nu * n_nu) + 0.169 * f_nu * n_nu**0.2)
    alpha = alpha * (1.0 + (p_c - p_cb) / 2 * infall / (1.0 + y_d))
    alpha_g = np.sqrt(alpha)
    beta_c = 1.0 / (1.0 - 0.949 * f_bnu)
    q_eff = q / (alpha_g + (1.0 - alpha_g) / (1.0 + k_s4))
    big_l = np.log(math.e + 1.84 * beta_c * alpha_g * q_eff)
    return big_l / (big_l + (14.4 + 325.0 / (1.0 + 60.5 * q_eff**1.11)) * q_eff**2)


def wdm_cutoff(k: np.ndarray, alpha: float, nu: float = 1.12) -> np.ndarray:
    r"""Warm-dark-matter free-streaming cutoff of the transfer function.

    .. math:: T_\mathrm{WDM}(k) / T_\mathrm{CDM}(k) = [1 + (\alpha k)^{2\nu}]^{-5/\nu}

    (Bode, Ostriker & Turok 2001; :math:`\nu = 1.12` from Viel et al. 2005). The power
    is halved at :math:`k_{1/2} = (2^{\nu/5} - 1)^{1/(2\nu)} / \alpha \approx 0.325 / \alpha`.

    Args:
        k: Wavenumbers in h/Mpc, any shape.
        alpha: Cutoff scale in Mpc/h.
        nu: Sharpness of the cutoff.

    Returns:
        The factor multiplying :math:`T(k)`, the shape of ``k``.
    """
    return (1.0 + (alpha * k) ** (2.0 * nu)) ** (-5.0 / nu)


def tophat_window(x: np.ndarray) -> np.ndarray:
    r"""Fourier transform of the 3-D top-hat, :math:`W(x) = 3 (\sin x - x \cos x) / x^3`.

    A Taylor series below :math:`x = 0.1` avoids the cancellation.

    Args:
        x: :math:`kR`, any shape.

    Returns:
        :math:`W(x)`, the shape of ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    small = x < 0.1
    xs = np.where(small, 1.0, x)
    exact = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    x2 = x * x
    series = 1.0 - x2 / 10 * (1.0 - x2 / 28 * (1.0 - x2 / 54 * (1.0 - x2 / 88)))
    return np.where(small, series, exact)


class LinearPower:
    r"""The linear power spectrum at z = 0 normalized to :math:`\sigma_8`.

    .. math:: P(k) = \sigma_8^2\, \frac{k^{n_s} T^2(k)}{\int \frac{dk}{k}\,
        \frac{k^{3+n_s} T^2(k)}{2\pi^2} W^2(k R_8)},\quad R_8 = 8\ \mathrm{Mpc}/h.

    The normalizing integral runs over :math:`10^{-5} < k < 30` h/Mpc by composite
    Gauss-Legendre quadrature (200 nodes, see :func:`_quadrature_nodes`): relative error of
    :math:`\sigma_8^2` below :math:`10^{-6}` for :math:`0.1 \le \Omega_m \le 0.5`.

    Args:
        cosmology: The fixed parameters; ``m_nu > 0`` adds the neutrino suppression.

    Example:
        >>> power = LinearPower(Cosmology())
        >>> power(np.array([0.1]), np.array([0.3]), np.array([0.8])).shape
        (1, 1)
    """

    radius = 8.0  # Mpc/h

    def __init__(self, cosmology: Cosmology) -> None:
        self.cosmology = cosmology
        k, dk = _quadrature_nodes()
        # dk times Delta^2 / T^2 = k^(3 + n_s) / (2 pi^2) / k, times the window squared
        self._k_nodes = k  # (Q,)
        window2 = tophat_window(k * self.radius) ** 2
        self._node_weights = dk * k ** (2.0 + cosmology.n_s) / (2.0 * math.pi**2) * window2

    def transfer(self, k: np.ndarray, omega_m: np.ndarray) -> np.ndarray:
        """Matter transfer function, with the neutrino or WDM factor if the cosmology has one.

        Args:
            k: Wavenumbers in h/Mpc, shape ``(K,)`` or ``(B, K)``.
            omega_m: Matter densities, shape ``(B,)``.

        Returns:
            :math:`T(k)`, shape ``(B, K)``.
        """
        c = self.cosmology
        om = np.asarray(omega_m, dtype=np.float64)[:, None]  # (B, 1)
        t = eh98_nowiggle(k, om, c.h, c.omega_b, c.t_cmb)
        if c.m_nu > 0:
            t = t * eh99_neutrino_factor(k, om, c.h, c.omega_b, c.t_cmb, c.omega_nu, c.n_nu_massive)
        if c.wdm_alpha > 0:
            t = t * wdm_cutoff(k, c.wdm_alpha)
        return t

    def unnormalized(self, k: np.ndarray, omega_m: np.ndarray) -> np.ndarray:
        r""":math:`k^{n_s} T^2(k)`, shape ``(B, K)`` (see :meth:`transfer` for the arguments)."""
        return k**self.cosmology.n_s * self.transfer(k, omega_m) ** 2

    def sigma8_unnormalized(self, omega_m: np.ndarray) -> np.ndarray:
        r""":math:`\sigma_8^2` of :math:`k^{n_s} T^2(k)`, shape ``(B,)``, by quadrature."""
        return self.transfer(self._k_nodes, omega_m) ** 2 @ self._node_weights

    def __call__(self, k: np.ndarray, omega_m: np.ndarray, sigma_8: np.ndarray) -> np.ndarray:
        r"""The normalized power spectrum.

        Args:
            k: Wavenumbers in h/Mpc, shape ``(K,)`` or ``(B, K)``.
            omega_m: Matter densities, shape ``(B,)``.
            sigma_8: Amplitudes :math:`\sigma_8`, shape ``(B,)``.

        Returns:
            :math:`P(k)` in (Mpc/h)^3, shape ``(B, K)``.
        """
        q = len(self._k_nodes)
        k = np.asarray(k, dtype=np.float64)
        om = np.asarray(omega_m, dtype=np.float64)
        nodes = np.broadcast_to(self._k_nodes, (*k.shape[:-1], q))
        t2 = self.transfer(np.concatenate([nodes, k], axis=-1), om) ** 2  # one pass: (B, Q + K)
        amplitude = np.asarray(sigma_8, dtype=np.float64) ** 2 / (t2[:, :q] @ self._node_weights)
        return amplitude[:, None] * k**self.cosmology.n_s * t2[:, q:]


# sigma_8 quadrature panels: (k_min, k_max in h/Mpc, panels, Gauss-Legendre order, in ln k?)
_PANELS = ((1e-5, 1.0, 5, 12, True), (1.0, 10.0, 10, 8, False), (10.0, 30.0, 10, 6, False))


def _quadrature_nodes() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights in k for the sigma_8 integral, shape ``(200,)`` each.

    Panels in ln k on [1e-5, 1] h/Mpc, where the integrand is smooth in ln k; linear in k on
    [1, 30], where the window oscillates with period pi / R and its envelope falls as k^-4.
    """
    ks, dks = [], []
    for lo, hi, panels, order, log in _PANELS:
        x, w = np.polynomial.legendre.leggauss(order)
        edges = (
            np.linspace(math.log(lo), math.log(hi), panels + 1)
            if log
            else np.linspace(lo, hi, panels + 1)
        )
        half = np.diff(edges)[:, None] / 2
        t, dt = (edges[:-1, None] + half * (x + 1.0)).ravel(), (half * w).ravel()
        if log:
            t = np.exp(t)
            dt = dt * t  # dk = k d ln k
        ks.append(t)
        dks.append(dt)
    return np.concatenate(ks), np.concatenate(dks)
