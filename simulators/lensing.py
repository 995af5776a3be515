r"""Galaxy-scale strong lensing as a sparse linear forward model :math:`y = A z + n`.

A singular isothermal ellipsoid (SIE) plus external shear deflects light from a pixelated
source galaxy :math:`z` (a ``(32, 32)`` image over :math:`\pm 1` arcsec, flattened to
``(D,)``) into an observed image :math:`y` (``(48, 48)`` over :math:`\pm 2` arcsec,
flattened to ``(M,)``). Lensing conserves surface brightness, so each image pixel sees the
source at the point its ray lands on, :math:`\beta = \theta - \alpha(\theta)`: the operator
:math:`A` (``(M, D)``, sparse) is the bilinear interpolation of the source at the traced
points, averaged over sub-pixels, then convolved with a Gaussian PSF. With Gaussian pixel
noise this is the linear-Gaussian likelihood of ``sbiflow.LinearGaussianLikelihood``.
This is a forward model for inverse problems, not a :math:`\theta \to x` simulator: it is
not in the ``simulators.get`` registry. See ``docs/lensing.md`` for the equations.

Units: angles in arcsec; surface brightness in arbitrary units (the brightest pixel of a
generated source lies in [0.5, 1.5]).

References:
    Isothermal elliptical gravitational lens models, Kormann, Schneider & Bartelmann
    1994 (A&A 284, 285). A catalog of mass models for
    gravitational lensing, Keeton 2001 (arXiv:astro-ph/0102341). Semilinear
    gravitational lens inversion, Warren & Dye 2003 (arXiv:astro-ph/0302587).
    Sersic 1963 (BAAA 6, 41); Ciotti & Bertin 1999 (arXiv:astro-ph/9911078).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import erf, gammaincinv
from torch import Tensor

__all__ = [
    "LensSystem",
    "LensingProblem",
    "lensing_operator",
    "make_problem",
    "observe",
    "psf_operator",
    "random_lens",
    "ray_trace_operator",
    "source_coverage",
    "source_galaxies",
]

# Default geometry (arcsec): a 32^2 source over +-1", a 48^2 image over +-2" (0.083"
# pixels), an HST-like 0.1" PSF. The Einstein radii of random_lens (0.8-1.5") put the ring
# well inside the image, and the whole source square has images inside it (docs/lensing.md).
SOURCE_SHAPE, SOURCE_EXTENT = (32, 32), 1.0
IMAGE_SHAPE, IMAGE_EXTENT = (48, 48), 2.0
PSF_FWHM = 0.1
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
_PSF_TRUNCATION = 4.0  # kernel radius, in PSF sigmas: 6e-5 of the 1-D mass lies beyond
_Q_ROUND = 1e-12  # 1 - q below this: the SIS formula, exact to O(1 - q)


@dataclass(frozen=True)
class LensSystem:
    r"""A singular isothermal ellipsoid plus external shear.

    Convergence (lens frame :math:`x', y'` centred on :math:`(x_0, y_0)` and rotated by
    :math:`\phi`, major axis along :math:`x'`):

    .. math:: \kappa = \frac{\theta_E}{2 \sqrt{q x'^2 + y'^2 / q}}

    so :math:`\theta_E` is the radius of the circle with the same area as the critical
    isodensity ellipse (the "intermediate axis" convention, as in lenstronomy's SIE). The
    shear potential is :math:`\tfrac12 \gamma_1 (x^2 - y^2) + \gamma_2 x y`, about the
    lens centre.

    Args:
        theta_e: Einstein radius :math:`\theta_E` in arcsec, >= 0 (0: no lens).
        q: Axis ratio (minor / major) of the isodensity ellipses, in (0, 1].
        phi: Position angle of the major axis, radians counter-clockwise from +x.
        x0: Lens centre x in arcsec.
        y0: Lens centre y in arcsec.
        gamma1: External shear along x / y.
        gamma2: External shear along the diagonals.

    Example:
        >>> lens = LensSystem(theta_e=1.0)
        >>> [float(a) for a in lens.deflection(np.array(3.0), np.array(4.0))]
        [0.6, 0.8]
    """

    theta_e: float = 1.2
    q: float = 1.0
    phi: float = 0.0
    x0: float = 0.0
    y0: float = 0.0
    gamma1: float = 0.0
    gamma2: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_real(value) or not np.isfinite(value):
                raise ValueError(f"LensSystem: {f.name} must be a finite number, not {value!r}.")
            object.__setattr__(self, f.name, float(value))
        if self.theta_e < 0:
            raise ValueError(
                f"LensSystem: theta_e = {self.theta_e} is negative; the Einstein radius is a "
                "size in arcsec, >= 0 (0 means no lens)."
            )
        if not 0 < self.q <= 1:
            raise ValueError(
                f"LensSystem: q = {self.q} must be in (0, 1] (minor / major axis ratio); for "
                "an ellipse elongated the other way use 1 / q and rotate phi by pi / 2."
            )

    def _lens_frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        x, y = _as_xy(x, y)
        c, s = math.cos(self.phi), math.sin(self.phi)
        dx, dy = x - self.x0, y - self.y0
        return dx, dy, c * dx + s * dy, -s * dx + c * dy

    def deflection(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r"""The deflection angle :math:`\alpha = \nabla \psi` at image-plane positions.

        SIE (Kormann et al. 1994; Keeton 2001 with core 0), in the lens frame, with
        :math:`e = \sqrt{1 - q^2}`, :math:`\Psi = \sqrt{q^2 x'^2 + y'^2}`:
        :math:`\alpha_{x'} = \theta_E \sqrt{q} / e \, \arctan(e x' / \Psi)`,
        :math:`\alpha_{y'} = \theta_E \sqrt{q} / e \, \operatorname{artanh}(e y' / \Psi)`;
        for :math:`q = 1` the SIS, :math:`\theta_E (x, y) / r`. At the centre it is 0.
        The shear adds :math:`(\gamma_1 x + \gamma_2 y, \gamma_2 x - \gamma_1 y)`.

        Args:
            x: Image-plane x in arcsec, any shape.
            y: Image-plane y in arcsec, broadcastable with ``x``.

        Returns:
            ``(alpha_x, alpha_y)`` in arcsec, each of the broadcast shape, float64.
        """
        dx, dy, xp, yp = self._lens_frame(x, y)
        q = self.q
        big_psi = np.sqrt(q * q * xp * xp + yp * yp)
        safe = np.where(big_psi > 0, big_psi, 1.0)  # alpha := 0 at the centre
        if 1.0 - q < _Q_ROUND:
            ax, ay = self.theta_e * xp / safe, self.theta_e * yp / safe
        else:
            e = math.sqrt(1.0 - q * q)
            norm = self.theta_e * math.sqrt(q) / e
            ax, ay = norm * np.arctan(e * xp / safe), norm * np.arctanh(e * yp / safe)
        c, s = math.cos(self.phi), math.sin(self.phi)
        alpha_x = c * ax - s * ay + self.gamma1 * dx + self.gamma2 * dy
        alpha_y = s * ax + c * ay + self.gamma2 * dx - self.gamma1 * dy
        return alpha_x, alpha_y

    def potential(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r"""The lensing potential :math:`\psi`, up to a constant.

        The SIE potential is homogeneous of degree 1 about the centre, so
        :math:`\psi_{SIE} = x' \alpha_{x'} + y' \alpha_{y'}` (Euler's theorem); the shear adds
        :math:`\tfrac12 \gamma_1 (x^2 - y^2) + \gamma_2 x y`.

        Args:
            x: Image-plane x in arcsec, any shape.
            y: Image-plane y in arcsec, broadcastable with ``x``.

        Returns:
            :math:`\psi` in arcsec^2, the broadcast shape, float64.
        """
        dx, dy, _, _ = self._lens_frame(x, y)
        ax, ay = self.deflection(x, y)
        shear_x, shear_y = self.gamma1 * dx + self.gamma2 * dy, self.gamma2 * dx - self.gamma1 * dy
        psi_shear = 0.5 * self.gamma1 * (dx * dx - dy * dy) + self.gamma2 * dx * dy
        return dx * (ax - shear_x) + dy * (ay - shear_y) + psi_shear

    def convergence(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r"""The convergence :math:`\kappa = \tfrac12 \nabla \cdot \alpha` (infinite at the centre).

        Args:
            x: Image-plane x in arcsec, any shape.
            y: Image-plane y in arcsec, broadcastable with ``x``.

        Returns:
            :math:`\kappa`, the broadcast shape, float64.
        """
        _, _, xp, yp = self._lens_frame(x, y)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.theta_e / (2.0 * np.sqrt(self.q * xp * xp + yp * yp / self.q))

    def ray_trace(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r"""The lens equation :math:`\beta = \theta - \alpha(\theta)`.

        Args:
            x: Image-plane x in arcsec, any shape.
            y: Image-plane y in arcsec, broadcastable with ``x``.

        Returns:
            Source-plane ``(beta_x, beta_y)`` in arcsec, the broadcast shape, float64.
        """
        x, y = _as_xy(x, y)
        ax, ay = self.deflection(x, y)
        return x - ax, y - ay


def random_lens(rng: np.random.Generator | int) -> LensSystem:
    r"""Draw a galaxy-scale lens whose Einstein ring lies well inside the default image.

    :math:`\theta_E \sim U(0.8, 1.5)` arcsec, :math:`q \sim U(0.6, 1)`,
    :math:`\phi \sim U(0, \pi)`, shear magnitude :math:`\sim U(0, 0.05)` at a uniform
    angle, centre offsets :math:`\sim U(-0.1, 0.1)` arcsec.

    Args:
        rng: The only source of randomness (an int seed is accepted).

    Returns:
        The lens.
    """
    rng = np.random.default_rng(rng)
    theta_e, q, phi = rng.uniform(0.8, 1.5), rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    shear, shear_angle = rng.uniform(0.0, 0.05), rng.uniform(0, np.pi)
    x0, y0 = rng.uniform(-0.1, 0.1, size=2)
    g1, g2 = shear * math.cos(2 * shear_angle), shear * math.sin(2 * shear_angle)
    return LensSystem(theta_e, q, phi, x0, y0, g1, g2)


# ---- the operator -------------------------------------------------------------------------


def ray_trace_operator(
    lens: LensSystem,
    source_shape: tuple[int, int] = SOURCE_SHAPE,
    source_extent: float = SOURCE_EXTENT,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    image_extent: float = IMAGE_EXTENT,
    supersample: int = 2,
    pad: tuple[int, int] = (0, 0),
) -> sp.csr_matrix:
    r"""The lensing matrix without PSF: image pixel <- source pixels, scipy CSR ``(M, D)``.

    Grids: an ``(n_y, n_x)`` grid over :math:`[-E, E]^2` has pixel centres
    :math:`x_j = -E + (j + \tfrac12) 2E / n_x` (same in y), element ``[i, j]`` at
    :math:`(x_j, y_i)` (y grows with the row: plot with ``origin="lower"``); flattening is
    row-major, ``index = i * n_x + j``. Each image pixel is split into ``supersample^2``
    sub-pixels whose centres are ray-traced; the source is the bilinear interpolant of its
    pixel values, held constant over the outer half pixel and zero outside
    :math:`[-E_s, E_s]^2`; a row is the mean over its sub-pixels.

    Args:
        lens: The lens.
        source_shape: Source pixels ``(n_y, n_x)``, each >= 2.
        source_extent: Half-width :math:`E_s` of the source square, arcsec.
        image_shape: Image pixels ``(n_y, n_x)``.
        image_extent: Half-width :math:`E` of the image square, arcsec.
        supersample: Sub-pixels per image pixel side, >= 1.
        pad: Extra image pixels ``(p_y, p_x)`` traced on each side (used by the PSF).

    Returns:
        ``(M, D)`` with M = ``(n_y + 2 p_y) (n_x + 2 p_x)`` image and D source pixels, float64.

    Raises:
        ValueError: For shapes, extents or supersampling out of range.
    """
    where = "ray_trace_operator"
    _check_geometry(where, source_shape, source_extent, image_shape, image_extent, supersample)
    (ny, nx), (sy, sx) = image_shape, source_shape
    dx, dy = 2 * image_extent / nx, 2 * image_extent / ny
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5  # (S,) in pixels
    xs = (-image_extent + (np.arange(-pad[1], nx + pad[1]) + 0.5) * dx)[:, None] + sub * dx
    ys = (-image_extent + (np.arange(-pad[0], ny + pad[0]) + 0.5) * dy)[:, None] + sub * dy
    # rays ordered (row, sub_y, column, sub_x), so each pixel's S^2 rays share its row index
    x, y = np.meshgrid(xs.ravel(), ys.ravel())  # (Ny S, Nx S)
    bx, by = lens.ray_trace(x, y)
    n_rows = (ny + 2 * pad[0]) * (nx + 2 * pad[1])
    row = (np.arange(ny + 2 * pad[0])[:, None] * (nx + 2 * pad[1])).repeat(supersample, 0)
    row = (row + np.arange(nx + 2 * pad[1]).repeat(supersample)[None, :]).ravel()  # (R,)
    cols, weights = _bilinear(bx.ravel(), by.ravel(), (sy, sx), source_extent)  # (R, 4)
    weights /= supersample**2
    matrix = sp.coo_matrix(
        (weights.ravel(), (row.repeat(4), cols.ravel())), shape=(n_rows, sy * sx)
    ).tocsr()  # duplicates summed
    matrix.eliminate_zeros()
    return matrix


def _bilinear(
    bx: np.ndarray, by: np.ndarray, shape: tuple[int, int], extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear stencil of points ``(R,)`` on a grid: flat indices and weights, ``(R, 4)``."""
    sy, sx = shape
    u = (bx + extent) * sx / (2 * extent) - 0.5  # fractional column, -0.5 .. sx - 0.5 inside
    v = (by + extent) * sy / (2 * extent) - 0.5
    inside = (np.abs(bx) <= extent) & (np.abs(by) <= extent)
    j0 = np.clip(np.floor(u), 0, sx - 2).astype(np.int64)
    i0 = np.clip(np.floor(v), 0, sy - 2).astype(np.int64)
    tu, tv = np.clip(u - j0, 0.0, 1.0), np.clip(v - i0, 0.0, 1.0)  # clip: constant edge
    cols = np.stack([i0 * sx + j0, i0 * sx + j0 + 1, (i0 + 1) * sx + j0, (i0 + 1) * sx + j0 + 1])
    w = np.stack([(1 - tv) * (1 - tu), (1 - tv) * tu, tv * (1 - tu), tv * tu]) * inside
    return cols.T, w.T


def _psf_kernel_1d(pixel: float, fwhm: float) -> np.ndarray:
    """A Gaussian integrated over pixels, truncated at 4 sigma, sum 1: ``(2 R + 1,)``."""
    sigma = fwhm / _FWHM_PER_SIGMA
    radius = math.ceil(_PSF_TRUNCATION * sigma / pixel)
    edges = (np.arange(-radius, radius + 2) - 0.5) * pixel / (math.sqrt(2.0) * sigma)
    kernel = np.diff(erf(edges))
    return kernel / kernel.sum()


def psf_operator(
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    image_extent: float = IMAGE_EXTENT,
    fwhm: float = PSF_FWHM,
) -> tuple[sp.csr_matrix, tuple[int, int]]:
    r"""Gaussian PSF convolution as a sparse matrix from a padded image to the image.

    The kernel is the Gaussian of full width at half maximum ``fwhm`` integrated over each
    pixel, truncated at 4 sigma and renormalized, separable in x and y. Boundary: the
    matrix acts on the image padded by the kernel radius ``(p_y, p_x)`` on each side, so
    light from just outside the field is blurred into it and every row sums to exactly 1
    (no zero padding, no edge darkening). ``fwhm = 0`` gives the identity (no padding).

    Args:
        image_shape: Image pixels ``(n_y, n_x)``.
        image_extent: Half-width of the image square, arcsec.
        fwhm: PSF full width at half maximum, arcsec, >= 0.

    Returns:
        ``(P, pad)``: ``P`` scipy CSR of shape ``(n_y n_x, (n_y + 2 p_y)(n_x + 2 p_x))``,
        float64, and ``pad = (p_y, p_x)``.

    Raises:
        ValueError: For a bad shape or extent, or a negative width.
    """
    _check_shape("psf_operator", "image_shape", image_shape, 1)
    _check_extent("psf_operator", "image_extent", image_extent)
    if not _is_real(fwhm) or not fwhm >= 0:
        raise ValueError(f"psf_operator: fwhm must be >= 0 arcsec (0: no PSF), not {fwhm!r}.")
    ny, nx = image_shape
    if fwhm == 0:
        return sp.identity(ny * nx, format="csr"), (0, 0)
    factors = []
    for n in (ny, nx):
        kernel = _psf_kernel_1d(2 * image_extent / n, fwhm)
        radius = len(kernel) // 2
        # (n, n + 2 r) Toeplitz: output i sees padded inputs i .. i + 2 r
        band = sp.diags(list(kernel), list(range(len(kernel))), shape=(n, n + 2 * radius))
        factors.append((band, radius))
    (ky, py), (kx, px) = factors
    return sp.kron(ky, kx, format="csr"), (py, px)


def lensing_operator(
    lens: LensSystem,
    source_shape: tuple[int, int] = SOURCE_SHAPE,
    source_extent: float = SOURCE_EXTENT,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    image_extent: float = IMAGE_EXTENT,
    supersample: int = 2,
    psf_fwhm: float = PSF_FWHM,
    layout: str = "coo",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""The linear forward model :math:`A` of a lens: image = A @ source, ``(M, D)``.

    :math:`A = P R`: ``R`` from :func:`ray_trace_operator` (on the image padded by the PSF
    radius), ``P`` from :func:`psf_operator`. ``A @ source.reshape(-1)`` is the noiseless
    image flattened row-major, ``(M,)``; ``z @ A.T`` maps a batch ``(B, D)`` to ``(B, M)``.
    Built with scipy.sparse in 20-80 ms (one core) at the default geometry.

    Args:
        lens: The lens.
        source_shape: Source pixels ``(n_y, n_x)``, each >= 2.
        source_extent: Half-width of the source square, arcsec.
        image_shape: Image pixels ``(n_y, n_x)``, each >= 1.
        image_extent: Half-width of the image square, arcsec.
        supersample: Sub-pixels per image pixel side, >= 1.
        psf_fwhm: PSF full width at half maximum, arcsec (0: no PSF).
        layout: ``"coo"`` (coalesced torch sparse COO, the default: stable, autograd
            through ``A @ z``), ``"csr"`` or ``"dense"``.
        dtype: Floating dtype of the tensor.

    Returns:
        :math:`A`, shape ``(M, D)`` with ``M = n_y n_x`` of the image, ``D`` of the source.

    Raises:
        ValueError: For non-positive shapes, extents, supersampling or a negative PSF width.

    Example:
        >>> A = lensing_operator(LensSystem(theta_e=1.2, q=0.8))
        >>> tuple(A.shape), A.layout, A.dtype
        ((2304, 1024), torch.sparse_coo, torch.float64)
    """
    where = "lensing_operator"
    _check_geometry(where, source_shape, source_extent, image_shape, image_extent, supersample)
    if not _is_real(psf_fwhm) or not psf_fwhm >= 0:
        raise ValueError(
            f"lensing_operator: psf_fwhm must be >= 0 arcsec (0: no PSF), not {psf_fwhm!r}."
        )
    if layout not in ("coo", "csr", "dense"):
        raise ValueError(
            f"lensing_operator: layout must be 'coo', 'csr' or 'dense', not {layout!r}."
        )
    psf, pad = psf_operator(image_shape, image_extent, float(psf_fwhm))
    ray = ray_trace_operator(
        lens, source_shape, source_extent, image_shape, image_extent, supersample, pad
    )
    return _to_torch((psf @ ray).tocoo(), layout, dtype)


def _to_torch(matrix: sp.coo_matrix, layout: str, dtype: torch.dtype) -> Tensor:
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    if layout == "dense":
        return torch.as_tensor(matrix.toarray(), dtype=dtype)
    indices = torch.as_tensor(np.vstack([matrix.row, matrix.col]).astype(np.int64))
    values = torch.as_tensor(matrix.data, dtype=dtype)
    a = torch.sparse_coo_tensor(indices, values, matrix.shape, check_invariants=True).coalesce()
    return a.to_sparse_csr() if layout == "csr" else a


def source_coverage(a: Tensor) -> Tensor:
    r"""Column sums of :math:`A`: how much image each source pixel lights, ``(D,)``.

    In units of image pixels: a source pixel of value 1 (others 0) adds this much to the
    image's summed pixel values, :math:`\approx |\mu| \, \Delta_s^2 / \Delta^2` summed over
    its images. Zero means the data say nothing about that pixel.

    Args:
        a: The operator, ``(M, D)``, sparse or dense.

    Returns:
        The coverage, shape ``(D,)``, same dtype as ``a``.
    """
    return a.t() @ torch.ones(a.shape[0], dtype=a.dtype) if a.layout != torch.strided else a.sum(0)


# ---- sources and data ---------------------------------------------------------------------

_MAX_CLUMPS = 4  # besides the main component: 1-5 Sersic components per galaxy
_CHUNK = 2000  # galaxies rendered at once: (chunk * ~3, 32, 32) float64, ~50 MB


def source_galaxies(
    n: int,
    shape: tuple[int, int] = SOURCE_SHAPE,
    rng: np.random.Generator | int | None = None,
    extent: float = SOURCE_EXTENT,
) -> np.ndarray:
    r"""Random source galaxies: a main Sersic component and 0-4 smaller clumps.

    Each component has the Sersic profile :math:`I(r) = I_e \exp(-b_n [(r / R_e)^{1/n} -
    1])` in the elliptical radius :math:`r = \sqrt{q x'^2 + y'^2 / q}`, with :math:`b_n`
    exact (half the light within :math:`R_e`); the radius is softened by half a pixel
    in quadrature, a cheap stand-in for averaging the cusp of high-n profiles over the
    pixel. Main component: centre :math:`\sim N(0, 0.1^2)` arcsec per axis, :math:`R_e`
    log-uniform in [0.1, 0.35] arcsec, :math:`n \sim U(0.5, 4)`, :math:`q \sim U(0.3, 1)`,
    uniform angle, :math:`I_e = 1`. Clumps (star-forming knots): uniformly 0-4 of them,
    0.1-0.6 arcsec from the main centre, :math:`R_e` log-uniform in [0.03, 0.12] arcsec,
    :math:`n \sim U(0.5, 2)`, :math:`q \sim U(0.5, 1)`, :math:`I_e` log-uniform in [0.3, 3].
    The sum is rescaled so its brightest pixel is :math:`\sim U(0.5, 1.5)`: surface
    brightness in arbitrary units, 0 far from the galaxy.

    Args:
        n: Number of galaxies, >= 0.
        shape: Pixels ``(n_y, n_x)`` over :math:`[-E, E]^2`, laid out as in
            :func:`ray_trace_operator`.
        rng: The only source of randomness (an int seed is accepted).
        extent: Half-width :math:`E` of the square, arcsec.

    Returns:
        Images, shape ``(n, n_y, n_x)``, float32, non-negative.

    Example:
        >>> source_galaxies(3, (32, 32), np.random.default_rng(0)).shape
        (3, 32, 32)
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"source_galaxies: n must be an integer >= 0, not {n!r}.")
    _check_shape("source_galaxies", "shape", shape, 1)
    _check_extent("source_galaxies", "extent", extent)
    params, peak = _draw_components(int(n), np.random.default_rng(rng))
    ny, nx = shape
    x = -extent + (np.arange(nx) + 0.5) * 2 * extent / nx  # (W,)
    y = -extent + (np.arange(ny) + 0.5) * 2 * extent / ny  # (H,)
    soft2 = (0.5 * 2 * extent / max(ny, nx)) ** 2
    out = np.empty((n, ny, nx), dtype=np.float32)
    owner = params.pop("galaxy")  # (C,), sorted
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        first = np.searchsorted(owner, np.arange(start, stop + 1))  # component ranges
        chunk = {k: v[first[0] : first[-1]] for k, v in params.items()}
        img = _sersic(chunk, x, y, soft2)  # (C, H, W)
        img = np.add.reduceat(img, first[:-1] - first[0], axis=0)  # (chunk, H, W)
        scale = peak[start:stop] / img.reshape(len(img), -1).max(axis=1)
        out[start:stop] = img * scale[:, None, None]
    return out


def _draw_components(n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sersic parameters ``(C,)`` grouped by galaxy (main first), and peak values ``(n,)``."""
    n_clumps = rng.integers(0, _MAX_CLUMPS + 1, size=n)
    peak = rng.uniform(0.5, 1.5, size=n)
    main = {
        "x": rng.normal(0.0, 0.1, n),
        "y": rng.normal(0.0, 0.1, n),
        "r_e": np.exp(rng.uniform(math.log(0.1), math.log(0.35), n)),
        "n": rng.uniform(0.5, 4.0, n),
        "q": rng.uniform(0.3, 1.0, n),
        "phi": rng.uniform(0.0, np.pi, n),
        "i_e": np.ones(n),
    }
    k = int(n_clumps.sum())
    host = np.repeat(np.arange(n), n_clumps)  # (K,) galaxy of each clump
    dist, angle = rng.uniform(0.1, 0.6, k), rng.uniform(0.0, 2 * np.pi, k)
    clumps = {
        "x": main["x"][host] + dist * np.cos(angle),
        "y": main["y"][host] + dist * np.sin(angle),
        "r_e": np.exp(rng.uniform(math.log(0.03), math.log(0.12), k)),
        "n": rng.uniform(0.5, 2.0, k),
        "q": rng.uniform(0.5, 1.0, k),
        "phi": rng.uniform(0.0, np.pi, k),
        "i_e": np.exp(rng.uniform(math.log(0.3), math.log(3.0), k)),
    }
    galaxy = np.concatenate([np.arange(n), host])
    order = np.argsort(galaxy, kind="stable")
    params = {key: np.concatenate([main[key], clumps[key]])[order] for key in main}
    params["galaxy"] = galaxy[order]
    return params, peak


def _sersic(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, soft2: float) -> np.ndarray:
    """Sersic components ``(C,)`` on the grid ``(W,) x (H,)``: images ``(C, H, W)``."""
    dx = x[None, None, :] - p["x"][:, None, None]  # (C, 1, W)
    dy = y[None, :, None] - p["y"][:, None, None]  # (C, H, 1)
    c, s, q = (v[:, None, None] for v in (np.cos(p["phi"]), np.sin(p["phi"]), p["q"]))
    xp, yp = c * dx + s * dy, -s * dx + c * dy  # (C, H, W)
    r = np.sqrt(q * xp * xp + yp * yp / q + soft2)
    b_n = gammaincinv(2.0 * p["n"], 0.5)[:, None, None]  # half light within R_e
    log_ratio = np.log(r / p["r_e"][:, None, None])
    profile = np.exp(-b_n * np.expm1(log_ratio / p["n"][:, None, None]))
    return p["i_e"][:, None, None] * profile


def observe(
    source: Tensor | np.ndarray,
    a: Tensor,
    noise_std: float | Tensor | np.ndarray,
    rng: np.random.Generator | int | None = None,
) -> Tensor:
    r"""Noisy lensed images :math:`y = A z + n`, :math:`n \sim N(0, \sigma^2)` per pixel.

    Args:
        source: Sources ``(..., n_y, n_x)`` or flattened ``(..., D)``; numpy or torch.
        a: The operator :math:`A`, ``(M, D)``, sparse or dense.
        noise_std: :math:`\sigma` per pixel, >= 0: a number or ``(M,)``.
        rng: The only source of randomness for the noise (an int seed is accepted).

    Returns:
        :math:`y`, shape ``(..., M)`` (flattened images), the dtype of ``a``.

    Raises:
        ValueError: If the source does not have D pixels, or ``noise_std`` is negative.
    """
    m, d = a.shape
    z = torch.as_tensor(np.asarray(source) if not isinstance(source, Tensor) else source)
    if z.ndim >= 1 and z.shape[-1] == d:
        batch = z.shape[:-1]
    elif z.ndim >= 2 and z.shape[-2] * z.shape[-1] == d:
        batch = z.shape[:-2]
    else:
        raise ValueError(
            f"observe: source has shape {tuple(z.shape)} but A is {m} x {d}: pass sources "
            f"(..., {d}) or (..., n_y, n_x) with n_y n_x = {d}, on the grid A was built for."
        )
    sigma = torch.as_tensor(np.asarray(noise_std, dtype=np.float64), dtype=a.dtype)
    if sigma.ndim > 1 or (sigma.ndim == 1 and len(sigma) != m) or not bool((sigma >= 0).all()):
        raise ValueError(
            f"observe: noise_std must be a number >= 0 or a ({m},) array of them, got "
            f"shape {tuple(sigma.shape)}, min {float(sigma.min()):g}."
        )
    z = z.reshape(-1, d).to(a.dtype)  # (B, D)
    y = (a @ z.T).T  # (B, M)
    noise = np.random.default_rng(rng).standard_normal(y.shape)
    return (y + sigma * torch.as_tensor(noise, dtype=a.dtype)).reshape(*batch, m)


@dataclass(frozen=True, eq=False)  # tensors: compare fields, not problems
class LensingProblem:
    r"""One lensing inverse problem; unpacks as ``lens, A, source, y, noise_std``.

    Attributes:
        lens: The true lens.
        A: The operator, ``(M, D)``, torch sparse COO, float64.
        source: The true source, ``(n_y, n_x)`` of the source grid, float64.
        y: The observed image, flattened, ``(M,)``, float64.
        noise_std: Pixel noise :math:`\sigma`.
        image_shape: ``(n_y, n_x)`` of the image.
    """

    lens: LensSystem
    A: Tensor
    source: Tensor
    y: Tensor
    noise_std: float
    image_shape: tuple[int, int]

    def __iter__(self) -> Iterator:
        return iter((self.lens, self.A, self.source, self.y, self.noise_std))

    @property
    def image(self) -> Tensor:
        """The observed image, ``image_shape``."""
        return self.y.reshape(self.image_shape)


def make_problem(
    rng: np.random.Generator | int | None = None,
    source_shape: tuple[int, int] = SOURCE_SHAPE,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    noise_std: float = 0.05,
    lens: LensSystem | None = None,
) -> LensingProblem:
    """A random lens (:func:`random_lens`), source (:func:`source_galaxies`) and its image.

    Default extents and PSF; ``noise_std = 0.05`` is a peak signal-to-noise of 10-30.

    Args:
        rng: The only source of randomness (an int seed is accepted).
        source_shape: Source pixels ``(n_y, n_x)``.
        image_shape: Image pixels ``(n_y, n_x)``.
        noise_std: Pixel noise, > 0.
        lens: A fixed lens instead of a random one.

    Returns:
        The problem; ``lens, A, source, y, noise_std = make_problem(0)`` unpacks it.

    Example:
        >>> lens, A, source, y, noise_std = make_problem(0)
        >>> tuple(A.shape), tuple(source.shape), tuple(y.shape)
        ((2304, 1024), (32, 32), (2304,))
    """
    if not _is_real(noise_std) or not noise_std > 0:
        raise ValueError(f"make_problem: noise_std must be a number > 0, not {noise_std!r}.")
    rng = np.random.default_rng(rng)
    lens = random_lens(rng) if lens is None else lens
    a = lensing_operator(lens, source_shape=source_shape, image_shape=image_shape)
    source = torch.as_tensor(source_galaxies(1, source_shape, rng)[0], dtype=torch.float64)
    y = observe(source, a, noise_std, rng)
    return LensingProblem(lens, a, source, y, float(noise_std), tuple(image_shape))


# ---- checks -------------------------------------------------------------------------------


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    try:
        return np.broadcast_arrays(x, y)
    except ValueError:
        raise ValueError(
            f"LensSystem: x and y must have broadcastable shapes, got {x.shape} and {y.shape}."
        ) from None


def _check_shape(where: str, name: str, shape: tuple[int, int], low: int) -> None:
    ok = isinstance(shape, tuple | list) and len(shape) == 2
    ok = ok and all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
    if not ok or min(shape) < low:
        raise ValueError(
            f"{where}: {name} must be two integers (n_y, n_x) >= {low}, not {shape!r}."
        )


def _check_extent(where: str, name: str, extent: float) -> None:
    if not _is_real(extent) or not 0 < extent < np.inf:
        raise ValueError(f"{where}: {name} must be a half-width > 0 in arcsec, not {extent!r}.")


def _check_geometry(
    where: str,
    source_shape: tuple[int, int],
    source_extent: float,
    image_shape: tuple[int, int],
    image_extent: float,
    supersample: int,
) -> None:
    _check_shape(where, "source_shape", source_shape, 2)
    _check_shape(where, "image_shape", image_shape, 1)
    _check_extent(where, "source_extent", source_extent)
    _check_extent(where, "image_extent", image_extent)
    bad = isinstance(supersample, bool) or not isinstance(supersample, int | np.integer)
    if bad or supersample < 1:
        raise ValueError(f"{where}: supersample must be an integer >= 1, not {supersample!r}.")
