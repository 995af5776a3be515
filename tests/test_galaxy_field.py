"""galaxy_field: the physics checked against formulas typed here, not the code under test.

Every statistical check has a fixed seed, a stated threshold and a negative control that
must fail it.
"""

import doctest
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import sbiflow
import simulators
from simulators import cosmology, galaxy_field
from simulators.base import Simulator
from simulators.galaxy_field import GalaxyField

MODELS = ["lcdm", "wdm", "mnu"]
THETA = torch.tensor([[0.3, 0.8], [0.12, 0.62], [0.48, 0.97]], dtype=torch.float64)


# ---- formulas typed independently of simulators.cosmology -------------------------------


def eh98_nowiggle(k, om, h, ob, t_cmb):
    """Eisenstein & Hu 1998 eqs. (26), (28)-(31); k in h/Mpc."""
    omh2, fb = om * h * h, ob / om
    s = 44.5 * np.log(9.83 / omh2) / np.sqrt(1 + 10 * (ob * h * h) ** 0.75)  # Mpc
    a = 1 - 0.328 * np.log(431 * omh2) * fb + 0.38 * np.log(22.3 * omh2) * fb**2
    gamma = om * h * (a + (1 - a) / (1 + (0.43 * k * h * s) ** 4))
    q = k * (t_cmb / 2.7) ** 2 / gamma
    lo = np.log(2 * np.e + 1.8 * q)
    return lo / (lo + (14.2 + 731 / (1 + 62.5 * q)) * q**2)


def bbks(k, om, h, ob):
    """Bardeen et al. 1986 with the shape parameter of Sugiyama 1995; k in h/Mpc."""
    q = k / (om * h * np.exp(-ob - np.sqrt(2 * h) * ob / om))
    poly = 1 + 3.89 * q + (16.1 * q) ** 2 + (5.46 * q) ** 3 + (6.71 * q) ** 4
    return np.log(1 + 2.34 * q) / (2.34 * q) * poly**-0.25


def sigma8_by_quad(sim, theta, radius=8.0):
    """sigma_R of sim.power_spectrum (R in Mpc/h), integrated with scipy.integrate.quad."""

    def integrand(ln_k):
        k = math.exp(ln_k)
        x = radius * k
        w = 3 * (math.sin(x) - x * math.cos(x)) / x**3 if x > 1e-2 else 1 - x * x / 10
        p = float(sim.power_spectrum(theta[None], np.array([k]))[0, 0])
        return k**3 * p / (2 * math.pi**2) * w * w

    # smooth below k = 1 h/Mpc; above, intervals of two periods pi / 4 of the squared window,
    # up to k = 60 (beyond, the integrand holds ~1e-9 of sigma_8^2)
    k_edges = [1e-6, 1e-3, 0.05, 0.3, *np.arange(1.0, 60.0, np.pi / 4)]
    edges = np.log(k_edges)
    total = sum(
        integrate.quad(integrand, a, b, epsabs=1e-13, epsrel=1e-10, limit=100)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )
    return math.sqrt(total)


def full_grid_k(sim):
    """|k| (h/Mpc) of every mode of the N x N DFT, shape (N, N)."""
    n = np.fft.fftfreq(sim.n_grid, 1.0 / sim.n_grid)
    return 2 * np.pi / sim.box_size * np.hypot(n[:, None], n[None, :])


def cell_spectrum(sim, theta):
    """Variance spectrum of one cell, P(|k|) / (depth * cell^2), zero mean mode; (N, N)."""
    k = full_grid_k(sim)
    p = np.zeros_like(k)
    p[k > 0] = sim.power_spectrum(theta[None], k[k > 0])[0].numpy()
    return p / (sim.depth * sim.cell_size**2)


def binned_power_chi2(maps, expected, sim, n_bins=11):
    """chi^2 of the mean per-mode power |F(map)_k|^2 / N^2 in |k| shells against expected.

    Args:
        maps: (R, N, N) realizations.
        expected: (N, N) expected per-mode power.
    """
    n2 = sim.n_grid**2
    power = np.abs(np.fft.fft2(maps)) ** 2 / n2  # (R, N, N)
    kf = 2 * np.pi / sim.box_size
    shell = np.digitize(full_grid_k(sim) / kf, np.linspace(0.5, 0.5 + 2 * n_bins, n_bins + 1))
    chi2 = 0.0
    for b in range(1, n_bins + 1):
        sel = shell == b
        per_map = power[:, sel].mean(axis=1)  # (R,)
        err = per_map.std(ddof=1) / math.sqrt(len(maps))
        chi2 += ((per_map.mean() - expected[sel].mean()) / err) ** 2
    return chi2


# ---- protocol, shapes, errors ----------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"exact": True}, {"model": "wdm"}, {"model": "mnu"}])
def test_get_shapes_dtype_and_seed(options):
    sim = simulators.get("galaxy_field", **options)
    assert isinstance(sim, Simulator) and sim.name == "galaxy_field"
    assert sim.names == ["Omega_m", "sigma_8"] and sim.labels == [r"$\Omega_m$", r"$\sigma_8$"]
    theta = sim.prior.sample((5,))
    x = sim.simulate(theta, np.random.default_rng(1))
    assert x.shape == (5, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, sim.simulate(theta, np.random.default_rng(1)))
    assert not torch.equal(x, sim.simulate(theta, np.random.default_rng(2)))
    assert sim.simulate(theta[:0], np.random.default_rng(1)).shape == (0, 32, 32)
    clone = pickle.loads(pickle.dumps(sim))
    assert torch.equal(x, clone.simulate(theta, np.random.default_rng(1)))


def test_counts_are_counts_and_n_grid_option():
    sim = GalaxyField(n_grid=12)
    x = sim.simulate(sim.prior.sample((4,)), np.random.default_rng(0))
    assert x.shape == (4, 12, 12)
    assert (x >= 0).all() and torch.equal(x, x.round())
    assert sim.cell_size == pytest.approx(500 / 12)
    assert sim.mean_count == pytest.approx(2.5e-4 * (500 / 12) ** 2 * 500)


def test_bad_parameters_give_clear_errors():
    sim = simulators.get("galaxy_field")
    theta = sim.prior.sample((3,))
    for bad in (theta[0], theta[:, :1], torch.zeros(3, 3), theta[None]):
        with pytest.raises(ValueError, match=r"\(B, 2\)"):
            sim.simulate(bad, np.random.default_rng(0))
    theta[1, 1] = 1.2
    with pytest.raises(ValueError, match="sigma_8.*outside the prior"):
        sim.simulate(theta, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unphysical"):
        sim.power_spectrum(torch.tensor([[0.03, 0.8]]), np.array([0.1]))
    with pytest.raises(ValueError, match="lcdm"):
        simulators.get("galaxy_field", model="fuzzy")
    with pytest.raises(ValueError, match="n_grid"):
        simulators.get("galaxy_field", n_grid=1)


def test_likelihood_only_on_the_gaussian_variant():
    lognormal, gaussian = GalaxyField(), GalaxyField(exact=True)
    assert not hasattr(lognormal, "log_likelihood")
    assert not hasattr(lognormal, "reference_posterior")
    with pytest.raises(AttributeError, match="exact=True"):
        lognormal.log_likelihood(THETA, lognormal.observation(1))
    assert callable(gaussian.log_likelihood) and callable(gaussian.reference_posterior)


@pytest.mark.slow  # spawning two workers costs ~15 s
def test_sbiflow_simulate_with_two_workers():
    sim = simulators.get("galaxy_field", n_grid=8)
    theta, x = sbiflow.simulate(sim, 40, seed=0, workers=2, chunk_size=10, progress=False)
    theta1, x1 = sbiflow.simulate(sim, 40, seed=0, workers=1, chunk_size=10, progress=False)
    assert x.shape == (40, 8, 8) and torch.equal(x, x1) and torch.equal(theta, theta1)


@pytest.mark.parametrize("exact", [False, True])
def test_reference_observations(exact):
    sim = GalaxyField(exact=exact)
    for i in range(1, 6):
        x_o, theta_o = sim.observation(i), sim.true_parameters(i)
        assert x_o.shape == (32, 32) and x_o.dtype == torch.float32
        assert theta_o.shape == (2,) and torch.isfinite(sim.prior.log_prob(theta_o))
    assert torch.equal(sim.observation(2), GalaxyField(exact=exact).observation(2))
    expected = sim.simulate(sim.true_parameters(3)[None], np.random.default_rng(1003))[0]
    assert torch.equal(sim.observation(3), expected)
    assert not torch.equal(sim.observation(1), sim.observation(2))
    for i in (0, 6):
        with pytest.raises(ValueError, match="1..5"):
            sim.observation(i)
    with pytest.raises(TypeError):
        sim.true_parameters("1")


# ---- transfer functions and sigma_8 -----------------------------------------------------


def test_eh98_matches_the_formula_typed_here_and_tends_to_one():
    c = cosmology.Cosmology()
    k = np.logspace(-4, 1.5, 40)
    for om in (0.1, 0.3, 0.5):
        mine = cosmology.eh98_nowiggle(k, om, c.h, c.omega_b, c.t_cmb)
        np.testing.assert_allclose(mine, eh98_nowiggle(k, om, c.h, c.omega_b, c.t_cmb), rtol=1e-12)
        assert np.all(np.diff(mine) < 0)
        t0 = cosmology.eh98_nowiggle(np.array([1e-6]), om, c.h, c.omega_b, c.t_cmb)
        assert abs(t0[0] - 1) < 1e-4


def test_eh98_agrees_with_bbks_where_baryons_are_few():
    # Two independent published fits; at low baryon fraction they agree to a few percent.
    c = cosmology.Cosmology()
    k = np.logspace(-3, 0, 30)
    for om in (0.3, 0.5):
        ratio = cosmology.eh98_nowiggle(k, om, c.h, c.omega_b, c.t_cmb) / bbks(
            k, om, c.h, c.omega_b
        )
        assert np.all(np.abs(ratio - 1) < 0.05), ratio
    # negative control: BBKS without the baryon correction to its shape is off by more
    ratio = cosmology.eh98_nowiggle(k, 0.3, c.h, c.omega_b, c.t_cmb) / bbks(k, 0.3, c.h, 0.0)
    assert np.max(np.abs(ratio - 1)) > 0.1


def test_wdm_cutoff_half_power_scale():
    alpha = 1.6
    k_half = (2 ** (1.12 / 10) - 1) ** (1 / 2.24) / alpha  # T^2 = [1 + (alpha k)^2.24]^(-10/1.12)
    assert cosmology.wdm_cutoff(np.array([k_half]), alpha)[0] ** 2 == pytest.approx(0.5, rel=1e-12)
    assert cosmology.wdm_cutoff(np.array([1e-4]), alpha)[0] == pytest.approx(1.0, abs=1e-6)


def test_neutrino_suppression_limits():
    c = cosmology.Cosmology(m_nu=0.3)
    om = 0.3
    f_nu = c.omega_nu / om
    assert c.omega_nu == pytest.approx(0.3 / 93.14 / c.h**2)

    def factor(k, omega_nu):
        return cosmology.eh99_neutrino_factor(k, om, c.h, c.omega_b, c.t_cmb, omega_nu, 3)

    assert factor(np.array([1e-6]), c.omega_nu)[0] == pytest.approx(1.0, abs=1e-3)
    # Small-scale suppression of the power, Delta P / P ~ -8 f_nu (Hu, Eisenstein & Tegmark 1998)
    suppression = 1 - factor(np.array([1.0, 3.0]), c.omega_nu) ** 2
    assert np.all(np.abs(suppression / (8 * f_nu) - 1) < 0.1), suppression / (8 * f_nu)
    # a nearly massless neutrino changes nothing
    tiny = factor(np.logspace(-3, 1, 20), c.omega_nu * 1e-4)
    assert np.max(np.abs(tiny - 1)) < 2e-3


@pytest.mark.parametrize("model", MODELS)
def test_sigma8_recomputed_with_quad(model):
    sim = GalaxyField(model=model)
    for theta in THETA:
        assert sigma8_by_quad(sim, theta) == pytest.approx(float(theta[1]), rel=1e-6)


def test_sigma8_check_tells_mpc_from_mpc_over_h():
    # negative control: a top-hat of 8 Mpc (not 8 Mpc/h) gives another sigma by far
    sim = GalaxyField()
    sigma = sigma8_by_quad(sim, THETA[0], radius=8.0 / sim.cosmology.h)
    assert abs(sigma / 0.8 - 1) > 0.1


def test_power_spectrum_shapes_and_models_differ_where_expected():
    sims = {m: GalaxyField(model=m) for m in MODELS}
    k = np.array([0.02, 0.5])
    p = {m: s.power_spectrum(THETA[:2], k) for m, s in sims.items()}
    assert p["lcdm"].shape == (2, 2) and p["lcdm"].dtype == torch.float64
    ratio = p["wdm"] / p["lcdm"]  # same sigma_8: more large-scale, far less small-scale power
    assert (ratio[:, 0] > 1).all() and (ratio[:, 1] < 0.05).all()
    ratio = p["mnu"] / p["lcdm"]
    assert (ratio[:, 0] > 1).all() and (ratio[:, 1] < 1).all()


# ---- the field: power spectrum, lognormal, Poisson --------------------------------------


def test_gaussian_field_power_matches_input_spectrum():
    sim = GalaxyField()
    theta = THETA[0]
    maps = sim.gaussian_field(theta.expand(300, 2), np.random.default_rng(0)).numpy()
    threshold = stats.chi2.ppf(0.999, 11)
    assert binned_power_chi2(maps, cell_spectrum(sim, theta), sim) < threshold
    # negative control: the spectrum of sigma_8 3% higher is rejected
    wrong = cell_spectrum(sim, torch.tensor([0.3, 0.8 * 1.03], dtype=torch.float64))
    assert binned_power_chi2(maps, wrong, sim) > threshold


@pytest.mark.parametrize("model", ["lcdm", "wdm"])
def test_gaussian_variant_power_is_signal_plus_white_noise(model):
    sim = GalaxyField(model=model, exact=True)
    theta = THETA[1]
    x = sim.simulate(theta.expand(300, 2), np.random.default_rng(0)).double().numpy()
    nbar, b = sim.mean_count, sim.bias
    expected = nbar**2 * b**2 * cell_spectrum(sim, theta) + nbar
    threshold = stats.chi2.ppf(0.999, 11)
    assert binned_power_chi2(x - nbar, expected, sim) < threshold
    # negative control: forgetting the white noise is rejected
    assert binned_power_chi2(x - nbar, expected - nbar, sim) > threshold


def test_lognormal_keeps_the_mean_and_poisson_counts_have_the_lognormal_variance():
    sim = GalaxyField()
    theta = THETA[0]
    nbar, b = sim.mean_count, sim.bias
    var_g = cell_spectrum(sim, theta).sum() / sim.n_grid**2  # sigma_G^2
    assert float(sim.cell_variance(theta[None])[0]) == pytest.approx(var_g, rel=1e-12)
    # the lognormal field exp(b delta_G - b^2 sigma_G^2 / 2) - 1 has mean zero
    delta = sim.gaussian_field(theta.expand(400, 2), np.random.default_rng(1)).numpy()
    delta_g = np.exp(b * delta - b**2 * var_g / 2) - 1
    per_map = delta_g.mean(axis=(1, 2))
    assert abs(per_map.mean()) < 4 * per_map.std(ddof=1) / math.sqrt(len(per_map))
    # counts: mean n-bar, variance n-bar (Poisson) + n-bar^2 (exp(b^2 sigma_G^2) - 1)
    x = sim.simulate(theta.expand(400, 2), np.random.default_rng(2)).double().numpy()
    means = x.mean(axis=(1, 2))
    assert abs(means.mean() - nbar) < 4 * means.std(ddof=1) / math.sqrt(len(x))
    second = ((x - nbar) ** 2).mean(axis=(1, 2))  # (R,)
    err = second.std(ddof=1) / math.sqrt(len(x))
    lognormal = nbar + nbar**2 * math.expm1(b**2 * var_g)
    assert abs(second.mean() - lognormal) < 4 * err
    # negative controls: without shot noise, or with the Gaussian field's variance, it fails
    assert abs(second.mean() - (lognormal - nbar)) > 10 * err
    assert abs(second.mean() - (nbar + nbar**2 * b**2 * var_g)) > 4 * err


# ---- exact likelihood -------------------------------------------------------------------


def real_space_covariance(sim, theta):
    """Covariance of the Gaussian-variant map, built cell by cell: (N^2, N^2)."""
    n = sim.n_grid
    p = cell_spectrum(sim, theta)  # (N, N) over modes (kx, ky) in index units
    idx = np.arange(n)
    cells = np.stack(np.meshgrid(idx, idx, indexing="ij"), -1).reshape(-1, 2)  # (N^2, 2)
    modes = cells  # the same index set, as wave vectors 2 pi m / N
    d = cells[:, None, :] - cells[None, :, :]  # (N^2, N^2, 2)
    phase = 2 * np.pi / n * (d @ modes.T)  # (N^2, N^2, N^2)
    xi = np.cos(phase) @ p.ravel() / n**2
    return sim.mean_count**2 * sim.bias**2 * xi + sim.mean_count * np.eye(n * n)


@pytest.mark.parametrize("n_grid", [4, 5, 6])
@pytest.mark.parametrize("model", ["lcdm", "wdm"])
def test_log_likelihood_equals_scipy_with_real_space_covariance(n_grid, model):
    sim = GalaxyField(model=model, exact=True, n_grid=n_grid)
    xs = sim.simulate(THETA[[0, 1]].float(), np.random.default_rng(0)).double()
    ll = sim.log_likelihood(THETA, xs[0])
    assert ll.shape == (3,) and ll.dtype == torch.float64
    for theta, value in zip(THETA, ll, strict=True):
        mvn = stats.multivariate_normal(
            np.full(n_grid**2, sim.mean_count), real_space_covariance(sim, theta)
        )
        assert float(value) == pytest.approx(mvn.logpdf(xs[0].numpy().ravel()), rel=1e-10)
    both = sim.log_likelihood(THETA, xs)  # iid maps: the sum
    torch.testing.assert_close(both, ll + sim.log_likelihood(THETA, xs[1]))
    assert sim.log_likelihood(THETA.float(), xs[0]).dtype == torch.float32
    with pytest.raises(ValueError, match="x must have shape"):
        sim.log_likelihood(THETA, torch.zeros(n_grid + 1, n_grid))


def test_reference_posterior_shape_seed_and_location():
    sim = GalaxyField(exact=True)
    x_o = sim.observation(1)
    samples = sim.reference_posterior(x_o, 256, seed=1)
    assert samples.shape == (256, 2) and samples.dtype == torch.float32
    assert torch.isfinite(sim.prior.log_prob(samples)).all()
    assert torch.equal(samples, sim.reference_posterior(x_o, 256, seed=1))
    assert not torch.equal(samples, sim.reference_posterior(x_o, 256, seed=2))
    z = (samples.mean(0) - sim.true_parameters(1)) / samples.std(0)
    assert (z.abs() < 3).all()


# ---- simulation-based calibration -------------------------------------------------------


class WrongBias(GalaxyField):
    """A wrong likelihood: the galaxy bias is 1.2 instead of 1.5."""

    bias = 1.2


def sbc_pvalues(n_grid, n_data, posterior_cls, num_samples=96, **mcmc):
    """K-S p-values of the normalized SBC ranks of each parameter.

    Data come from the prior and the correct Gaussian variant; posteriors from emcee on the
    likelihood of ``posterior_cls``. Ranks are jittered within their integer so that they are
    exactly uniform on (0, 1) for a correct posterior.
    """
    sim = GalaxyField(exact=True, n_grid=n_grid)
    post = posterior_cls(exact=True, n_grid=n_grid, **mcmc)
    rng = np.random.default_rng(0)
    theta = torch.as_tensor(rng.uniform(sim.low, sim.high, (n_data, 2)), dtype=torch.float32)
    x = sim.simulate(theta, rng)
    ranks = np.stack(
        [
            (post.reference_posterior(x[i], num_samples, seed=i) < theta[i]).sum(0).numpy()
            for i in range(n_data)
        ]
    )  # (n_data, 2)
    u = (ranks + rng.random(ranks.shape)) / (num_samples + 1)
    return [stats.kstest(u[:, j], "uniform").pvalue for j in range(2)]


@pytest.mark.slow  # 20 s; the collider's exact-likelihood SBC stays in the default run
def test_sbc_small_grid():
    mcmc = {"num_walkers": 32, "burn_in": 150, "thin": 10}
    assert min(sbc_pvalues(8, 100, GalaxyField, **mcmc)) > 0.01
    # negative control: the posterior of a wrong bias is detected (60 datasets suffice)
    assert min(sbc_pvalues(8, 60, WrongBias, **mcmc)) < 1e-3


@pytest.mark.slow
def test_sbc_full_grid():
    assert min(sbc_pvalues(32, 200, GalaxyField)) > 0.01
    assert min(sbc_pvalues(32, 100, WrongBias)) < 1e-3


def test_docstring_examples_run():
    for module in (galaxy_field, cosmology):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
