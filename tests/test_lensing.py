"""lensing: the physics checked against formulas typed here, the sparse operator against a
dense build made with scipy's interpolator, and the generator's shapes and seeding.
"""

import dataclasses
import doctest
import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, ndimage, special, stats
from scipy.interpolate import RegularGridInterpolator

from simulators import lensing
from simulators.lensing import (
    LensSystem,
    lensing_operator,
    make_problem,
    observe,
    psf_operator,
    random_lens,
    ray_trace_operator,
    source_coverage,
    source_galaxies,
)

LENSES = [
    LensSystem(theta_e=1.2, q=0.7, phi=0.4, x0=0.05, y0=-0.1),
    LensSystem(theta_e=0.9, q=0.45, phi=2.0, x0=-0.2, y0=0.1, gamma1=0.04, gamma2=-0.03),
    LensSystem(theta_e=1.4, q=0.999, phi=1.0, gamma1=-0.02, gamma2=0.05),
    LensSystem(theta_e=1.0, q=1.0, x0=0.1, gamma2=0.03),
]


def kappa_sie(lens, x, y):
    """kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q)), (x', y') in the rotated lens frame."""
    dx, dy = x - lens.x0, y - lens.y0
    c, s = math.cos(lens.phi), math.sin(lens.phi)
    xp, yp = c * dx + s * dy, -s * dx + c * dy
    return lens.theta_e / (2 * np.sqrt(lens.q * xp**2 + yp**2 / lens.q))


def points(n=50, seed=0):
    """Image-plane points 0.2-2.5 arcsec from the origin (away from the lens centres)."""
    rng = np.random.default_rng(seed)
    r, t = rng.uniform(0.3, 2.5, n), rng.uniform(0, 2 * np.pi, n)
    return r * np.cos(t), r * np.sin(t)


# ---- the lens ---------------------------------------------------------------------------


def test_q_one_is_the_sis_and_the_limit_is_continuous():
    x, y = points()
    sis = LensSystem(theta_e=1.3, q=1.0, x0=0.1, y0=-0.2)
    ax, ay = sis.deflection(x, y)
    r = np.hypot(x - 0.1, y + 0.2)
    np.testing.assert_allclose(ax, 1.3 * (x - 0.1) / r, rtol=1e-14)
    np.testing.assert_allclose(ay, 1.3 * (y + 0.2) / r, rtol=1e-14)
    for q in (1 - 1e-9, 1 - 1e-6):
        near = dataclasses.replace(sis, q=q, phi=0.7).deflection(x, y)
        np.testing.assert_allclose(near, (ax, ay), atol=3 * (1 - q))
    assert sis.deflection(np.array(0.1), np.array(-0.2)) == (0.0, 0.0)  # finite at the centre
    assert np.all(np.isfinite(LENSES[0].deflection(np.array(0.05), np.array(-0.1))))


@pytest.mark.parametrize("lens", LENSES)
def test_divergence_of_the_deflection_is_twice_the_convergence(lens):
    x, y, h = *points(), 1e-5
    ax = lambda x, y: lens.deflection(x, y)[0]  # noqa: E731
    ay = lambda x, y: lens.deflection(x, y)[1]  # noqa: E731
    div = (ax(x + h, y) - ax(x - h, y) + ay(x, y + h) - ay(x, y - h)) / (2 * h)
    np.testing.assert_allclose(div / 2, kappa_sie(lens, x, y), rtol=1e-7)
    np.testing.assert_allclose(lens.convergence(x, y), kappa_sie(lens, x, y), rtol=1e-13)
    # negative control: Keeton's prefactor with b = theta_E (the other usual convention)
    if lens.q < 0.9:
        assert not np.allclose(div / 2, kappa_sie(lens, x, y) / math.sqrt(lens.q), rtol=1e-3)


@pytest.mark.parametrize("lens", LENSES)
def test_deflection_is_the_gradient_of_the_potential(lens):
    x, y, h = *points(seed=1), 1e-5
    gx = (lens.potential(x + h, y) - lens.potential(x - h, y)) / (2 * h)
    gy = (lens.potential(x, y + h) - lens.potential(x, y - h)) / (2 * h)
    np.testing.assert_allclose(np.stack([gx, gy]), np.stack(lens.deflection(x, y)), atol=1e-8)


@pytest.mark.parametrize("q", [0.5, 0.8, 1.0])
def test_einstein_radius_convention_mean_convergence_one(q):
    """Inside the ellipse q x'^2 + y'^2/q = theta_E^2 (area pi theta_E^2) the mean kappa is 1.

    By Gauss: the flux of alpha through the ellipse is 2 * (integral of kappa) = 2 pi theta_E^2.
    """
    lens = LensSystem(theta_e=1.1, q=q, phi=0.6, x0=0.2, y0=-0.3)
    a, b = lens.theta_e / math.sqrt(q), lens.theta_e * math.sqrt(q)
    c, s = math.cos(lens.phi), math.sin(lens.phi)

    def flux_density(t):  # alpha . n dl / dt in the lens frame, n dl = (b cos t, a sin t) dt
        xp, yp = a * math.cos(t), b * math.sin(t)
        ax, ay = lens.deflection(np.array(0.2 + c * xp - s * yp), np.array(-0.3 + s * xp + c * yp))
        axp, ayp = c * ax + s * ay, -s * ax + c * ay
        return float(axp * b * math.cos(t) + ayp * a * math.sin(t))

    flux = integrate.quad(flux_density, 0, 2 * np.pi, limit=200)[0]
    assert flux / (2 * np.pi * lens.theta_e**2) == pytest.approx(1.0, rel=1e-9)


def test_sis_einstein_ring_maps_to_the_source_centre():
    lens = LensSystem(theta_e=1.25, q=1.0, x0=0.15, y0=-0.05)
    t = np.linspace(0, 2 * np.pi, 37)
    bx, by = lens.ray_trace(0.15 + 1.25 * np.cos(t), -0.05 + 1.25 * np.sin(t))
    np.testing.assert_allclose(bx, 0.15, atol=1e-14)
    np.testing.assert_allclose(by, -0.05, atol=1e-14)
    bx, by = lens.ray_trace(0.15 + 1.4 * np.cos(t), -0.05 + 1.4 * np.sin(t))
    np.testing.assert_allclose(np.hypot(bx - 0.15, by + 0.05), 0.15, rtol=1e-12)  # not on it


def test_deflection_broadcasts_any_shape():
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    ax, ay = LENSES[1].deflection(x, 0.3)
    assert ax.shape == ay.shape == (2, 3) and ax.dtype == np.float64
    assert LENSES[1].potential(x[..., None], np.ones(4)).shape == (2, 3, 4)


def test_random_lens_ranges_and_seed():
    lenses = [random_lens(np.random.default_rng(i)) for i in range(200)]
    assert all(0.8 <= g.theta_e <= 1.5 and 0.6 <= g.q <= 1 for g in lenses)
    assert all(math.hypot(g.gamma1, g.gamma2) <= 0.05 and abs(g.x0) <= 0.1 for g in lenses)
    assert random_lens(3) == random_lens(3) != random_lens(4)


# ---- the operator -----------------------------------------------------------------------


def reference_operator(lens, src_shape, src_ext, img_shape, img_ext, ss, fwhm):
    """Dense A from scipy's bilinear interpolator and an explicit 2-D PSF sum, pixel by pixel."""
    (ny, nx), (sy, sx) = img_shape, src_shape
    dx, dy = 2 * img_ext / nx, 2 * img_ext / ny
    sig = fwhm / (2 * math.sqrt(2 * math.log(2)))
    kernels = []
    for d in (dy, dx):  # Gaussian integrated over pixels, 4 sigma, normalized
        r = math.ceil(4 * sig / d)
        m = np.arange(-r, r + 1)
        k = stats.norm.cdf((m + 0.5) * d / sig) - stats.norm.cdf((m - 0.5) * d / sig)
        kernels.append(k / k.sum())
    ky, kx = kernels
    py, px = len(ky) // 2, len(kx) // 2
    xs = -src_ext + (np.arange(sx) + 0.5) * 2 * src_ext / sx
    ys = -src_ext + (np.arange(sy) + 0.5) * 2 * src_ext / sy

    def traced(i, j):  # source-pixel weights of padded image pixel (i, j), (D,)
        w = np.zeros(sy * sx)
        for a in range(ss):
            for b in range(ss):
                x = -img_ext + (j + (b + 0.5) / ss) * dx
                y = -img_ext + (i + (a + 0.5) / ss) * dy
                bx, by = lens.ray_trace(x, y)
                if abs(bx) > src_ext or abs(by) > src_ext:
                    continue
                pt = np.array([[np.clip(by, ys[0], ys[-1]), np.clip(bx, xs[0], xs[-1])]])
                for k in range(sy * sx):
                    basis = np.zeros(sy * sx)
                    basis[k] = 1.0
                    f = RegularGridInterpolator((ys, xs), basis.reshape(sy, sx))
                    w[k] += f(pt)[0] / ss**2
        return w

    padded = {(i, j): traced(i, j) for i in range(-py, ny + py) for j in range(-px, nx + px)}
    a = np.zeros((ny * nx, sy * sx))
    for i in range(ny):
        for j in range(nx):
            for u in range(-py, py + 1):
                for v in range(-px, px + 1):
                    a[i * nx + j] += ky[u + py] * kx[v + px] * padded[(i + u, j + v)]
    return a


def test_sparse_operator_equals_a_dense_reference_build():
    lens = LENSES[1]
    args = (lens, (4, 5), 1.0, (5, 6), 1.6, 2, 0.35)
    got = lensing_operator(*args[:6], psf_fwhm=args[6], layout="dense")
    ref = reference_operator(*args)
    assert np.abs(ref).sum(0).min() > 0  # every source pixel is in the test
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-13)
    sparse = lensing_operator(*args[:6], psf_fwhm=args[6])
    np.testing.assert_array_equal(sparse.to_dense().numpy(), got.numpy())


def test_operator_shapes_layouts_dtypes():
    a = lensing_operator(LENSES[0])
    assert a.shape == (48 * 48, 32 * 32) and a.layout == torch.sparse_coo and a.is_coalesced()
    assert a.dtype == torch.float64 and bool((a.values() > 0).all())
    with warnings.catch_warnings():  # torch notes once per process that CSR is in beta
        warnings.simplefilter("ignore", UserWarning)
        csr = lensing_operator(LENSES[0], layout="csr", dtype=torch.float32)
    assert csr.layout == torch.sparse_csr and csr.dtype == torch.float32
    coo = csr.to_sparse_coo().coalesce()
    assert torch.equal(coo.indices(), a.indices())
    torch.testing.assert_close(coo.values(), a.values().float())
    small = lensing_operator(LENSES[0], (16, 20), 0.8, (30, 24), 1.5, supersample=3)
    assert small.shape == (30 * 24, 16 * 20)


def test_operator_autograd_and_batches():
    a = lensing_operator(LENSES[0])
    z = torch.randn(3, a.shape[1], dtype=torch.float64, requires_grad=True)
    y = z @ a.t()  # (3, M)
    y.square().sum().backward()
    torch.testing.assert_close(z.grad, 2 * (a.t() @ (a @ z.detach().T)).T)


def test_uniform_source_gives_unit_surface_brightness():
    """Lensing only remaps: pixels whose rays all land on the source see exactly 1."""
    lens, ss = LENSES[0], 2
    r = ray_trace_operator(lens, supersample=ss)
    img = r @ np.ones(32 * 32)  # (M,)
    sub = (np.arange(48 * ss) + 0.5) * 4.0 / (48 * ss) - 2.0
    bx, by = lens.ray_trace(*np.meshgrid(sub, sub))
    inside = ((np.abs(bx) <= 1) & (np.abs(by) <= 1)).reshape(48, ss, 48, ss).mean(axis=(1, 3))
    np.testing.assert_allclose(img, inside.ravel(), atol=1e-12)
    assert (inside == 1).mean() > 0.4  # the test sees a good part of the image
    # with the PSF, far from pixels that straddle the source edge, still 1
    blurred = (lensing_operator(lens) @ torch.ones(32 * 32, dtype=torch.float64)).numpy()
    interior = ndimage.binary_erosion(inside == 1, np.ones((7, 7)), border_value=0)  # PSF: 3 px
    assert interior.mean() > 0.3
    np.testing.assert_allclose(blurred[interior.ravel()], 1.0, atol=1e-12)


def test_psf_rows_sum_to_one_and_width_matches_fwhm():
    fwhm, pixel = 0.3, 4.0 / 48
    p, (py, px) = psf_operator((48, 48), 2.0, fwhm)
    assert p.shape == (48 * 48, (48 + 2 * py) * (48 + 2 * px)) and py == px == 7
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-13)
    row = p.getrow(24 * 48 + 24).toarray().reshape(48 + 2 * py, 48 + 2 * px)
    m = (np.arange(48 + 2 * px) - (24 + px)) * pixel
    var_x = (row.sum(0) * m**2).sum()
    sigma = fwhm / 2.3548200450309493
    assert var_x == pytest.approx(sigma**2 + pixel**2 / 12, rel=2e-3)  # pixel-integrated
    assert row.max() == row[24 + py, 24 + px]  # centred
    ident, pad = psf_operator((5, 7), 1.0, 0.0)
    assert pad == (0, 0) and np.array_equal(ident.toarray(), np.eye(35))


def test_default_geometry_constrains_the_source_plane_and_builds_fast():
    fractions = []
    for seed in range(10):
        cov = source_coverage(lensing_operator(random_lens(seed)))
        fractions.append(float((cov > 0).double().mean()))
    assert min(fractions) >= 0.98
    best = min(_timed(lambda: lensing_operator(random_lens(0))) for _ in range(3))
    assert best < 1.0


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# ---- sources and observations -----------------------------------------------------------


def test_source_galaxies_shapes_positivity_seed():
    g = source_galaxies(300, (32, 32), np.random.default_rng(0))
    assert g.shape == (300, 32, 32) and g.dtype == np.float32
    assert g.min() >= 0 and np.all((g.max(axis=(1, 2)) >= 0.5) & (g.max(axis=(1, 2)) <= 1.5))
    np.testing.assert_array_equal(g, source_galaxies(300, (32, 32), np.random.default_rng(0)))
    assert not np.array_equal(g, source_galaxies(300, (32, 32), 1))
    # light is concentrated: the galaxy sits near the centre, the corners are dark
    assert g[:, 12:20, 12:20].mean() > 20 * g[:, :4, :4].mean()
    assert source_galaxies(0).shape == (0, 32, 32)
    assert source_galaxies(3, (8, 12), 0, extent=0.5).shape == (3, 8, 12)


def test_source_galaxies_chunked_rendering_and_speed():
    n = lensing._CHUNK + 7
    t = time.perf_counter()
    g = source_galaxies(n, (32, 32), 5)
    assert time.perf_counter() - t < 3.0  # about 0.3 s: 20,000 take ~3 s
    # rendering in chunks of galaxies does not change them
    params, peak = lensing._draw_components(n, np.random.default_rng(5))
    last = params["galaxy"] == n - 1
    x = -1 + (np.arange(32) + 0.5) / 16
    one = lensing._sersic({k: v[last] for k, v in params.items()}, x, x, (0.5 / 16) ** 2).sum(0)
    np.testing.assert_allclose(g[-1], one * peak[-1] / one.max(), rtol=1e-6)


@pytest.mark.parametrize("n", [0.5, 1.0, 4.0])
def test_sersic_half_light_radius(n):
    """Half the light of a round Sersic profile (no softening) lies within R_e."""
    p = {k: np.array([v]) for k, v in dict(x=0, y=0, r_e=0.3, n=n, q=1, phi=0, i_e=1).items()}

    def ring(r):
        return 2 * np.pi * r * lensing._sersic(p, np.array([r]), np.array([0.0]), 0.0)[0, 0, 0]

    inner = integrate.quad(ring, 0, 0.3, limit=200)[0]
    total = 2 * np.pi * n * 0.3**2 * math.exp(special.gammaincinv(2 * n, 0.5))
    total *= special.gamma(2 * n) / special.gammaincinv(2 * n, 0.5) ** (2 * n)
    assert inner / total == pytest.approx(0.5, rel=1e-6)


def test_observe_shapes_noise_and_seed():
    a = lensing_operator(LENSES[2])
    g = source_galaxies(4, (32, 32), 0)
    clean = observe(g, a, 0.0)
    assert clean.shape == (4, 2304) and clean.dtype == torch.float64
    torch.testing.assert_close(clean[1], a @ torch.as_tensor(g[1].ravel(), dtype=torch.float64))
    assert observe(g[0], a, 0.1, 0).shape == observe(g[0].ravel(), a, 0.1, 0).shape == (2304,)
    torch.testing.assert_close(observe(torch.as_tensor(g[0]), a, 0.1, 0), observe(g[0], a, 0.1, 0))
    noisy = observe(g, a, 0.1, np.random.default_rng(1))
    assert float((noisy - clean).std()) == pytest.approx(0.1, rel=0.03)  # 4 sigma
    assert not torch.equal(noisy, observe(g, a, 0.1, 2))
    per_pixel = observe(g[0], a, np.full(2304, 0.1), 1)
    assert per_pixel.shape == (2304,)


def test_make_problem_and_wrong_lens_negative_control():
    lens, a, source, y, sigma = problem = make_problem(np.random.default_rng(4))
    m = a.shape[0]
    assert source.shape == (32, 32) and y.shape == (m,) and problem.image.shape == (48, 48)
    chi2 = float(((y - a @ source.reshape(-1)) ** 2).sum()) / sigma**2
    assert abs(chi2 - m) < 5 * math.sqrt(2 * m)
    wrong = lensing_operator(dataclasses.replace(lens, theta_e=0.8 * lens.theta_e))
    chi2_wrong = float(((y - wrong @ source.reshape(-1)) ** 2).sum()) / sigma**2
    assert chi2_wrong > 2 * m
    again = make_problem(4)
    assert again.lens == lens and torch.equal(again.y, y)


# ---- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(q=0.0), r"q = 0.0 must be in \(0, 1\]"),
        (dict(q=1.2), r"use 1 / q and rotate phi"),
        (dict(theta_e=-0.5), r"theta_e = -0.5 is negative"),
        (dict(theta_e=float("nan")), r"theta_e must be a finite number"),
        (dict(gamma1="0.1"), r"gamma1 must be a finite number"),
    ],
)
def test_lens_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LensSystem(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image_shape=(48,)), r"image_shape must be two integers"),
        (dict(source_shape=(1, 32)), r"source_shape must be two integers \(n_y, n_x\) >= 2"),
        (dict(source_extent=0.0), r"source_extent must be a half-width > 0"),
        (dict(image_extent=-2.0), r"image_extent must be a half-width > 0"),
        (dict(supersample=0), r"supersample must be an integer >= 1"),
        (dict(psf_fwhm=-0.1), r"psf_fwhm must be >= 0"),
        (dict(layout="bsr"), r"layout must be 'coo', 'csr' or 'dense'"),
    ],
)
def test_operator_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lensing_operator(LENSES[0], **kwargs)


def test_building_block_errors():
    with pytest.raises(ValueError, match=r"ray_trace_operator: supersample must be"):
        ray_trace_operator(LENSES[0], supersample=1.5)
    with pytest.raises(ValueError, match=r"psf_operator: fwhm must be >= 0"):
        psf_operator(fwhm=float("nan"))
    with pytest.raises(ValueError, match=r"psf_operator: image_shape must be two integers"):
        psf_operator((48.0, 48))


def test_data_errors():
    a = lensing_operator(LENSES[0], image_shape=(10, 10))
    with pytest.raises(ValueError, match=r"source has shape \(16, 16\) but A is 100 x 1024"):
        observe(np.zeros((16, 16)), a, 0.1)
    with pytest.raises(ValueError, match=r"noise_std must be a number >= 0"):
        observe(np.zeros((32, 32)), a, -1.0)
    with pytest.raises(ValueError, match=r"noise_std must be .* a \(100,\) array"):
        observe(np.zeros((32, 32)), a, np.ones(7))
    with pytest.raises(ValueError, match=r"n must be an integer >= 0"):
        source_galaxies(-1)
    with pytest.raises(ValueError, match=r"shape must be two integers"):
        source_galaxies(2, (32, 32, 3))
    with pytest.raises(ValueError, match=r"noise_std must be a number > 0"):
        make_problem(0, noise_std=0.0)
    with pytest.raises(ValueError, match=r"x and y must have broadcastable shapes"):
        LENSES[0].deflection(np.zeros(3), np.zeros(4))


def test_docstring_examples():
    result = doctest.testmod(lensing, extraglobs={"np": np})
    assert result.attempted >= 4 and result.failed == 0
