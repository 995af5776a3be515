"""Tests of the dwarf-spheroidal simulator: Jeans physics, data format, likelihood, SBC."""

from __future__ import annotations

import doctest
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import sbiflow
import simulators
from simulators import dwarf
from simulators.dwarf import Dwarf, G, JeansSolver, gnfw_mass, plummer_mass
from simulators.reference import emcee_posterior

A = 0.25  # kpc, the default Plummer scale radius


def _nu(r: float) -> float:
    return (1.0 + r**2 / A**2) ** -2.5


def _sigma_r2_quad(r: float, mass, beta: float) -> float:
    """sigma_r^2 from the Jeans integral by adaptive quadrature."""

    def f(s: float) -> float:
        return s ** (2 * beta) * _nu(s) * G * mass(s) / s**2

    value = integrate.quad(f, r, 10 * r + 10 * A, epsrel=1e-11, limit=200)[0]
    value += integrate.quad(f, 10 * r + 10 * A, np.inf, epsrel=1e-11, limit=200)[0]
    return value / (r ** (2 * beta) * _nu(r))


def _sigma_los2_quad(R: float, mass, beta: float) -> float:
    """Projection by quadrature: the 1/sqrt(r - R) end point is quad's algebraic weight."""

    def f(r: float) -> float:
        return (
            (1 - beta * R**2 / r**2) * _nu(r) * _sigma_r2_quad(r, mass, beta) * r / (r + R) ** 0.5
        )

    near = integrate.quad(f, R, 2 * R + A, weight="alg", wvar=(-0.5, 0.0), epsrel=1e-9)[0]
    far = integrate.quad(lambda r: f(r) / (r - R) ** 0.5, 2 * R + A, np.inf, epsrel=1e-9)[0]
    surface = (2 * A / 3) * (1 + R**2 / A**2) ** -2  # int nu dz over the line of sight
    return (near + far) / surface


def _plummer_radius_cdf(R: np.ndarray, a: float = A, field: float = 10.0) -> np.ndarray:
    return (R**2 / (R**2 + a**2)) / (field**2 / (1 + field**2))


def _stars(x: np.ndarray) -> np.ndarray:
    return x[x[:, 3] == 1.0]


def _velocity_loglik(sim: Dwarf, grid: np.ndarray, x: np.ndarray, scale: float = 1.0):
    """Per-star Gaussian log-likelihood from sigma_los^2 on the solver's R grid (B, K)."""
    stars = _stars(x)
    idx, frac = sim.solver.interpolation(stars[:, 0])
    s2 = (1 - frac) * grid[:, idx] + frac * grid[:, idx + 1]  # (B, N)
    var = scale**2 * s2 + stars[:, 2] ** 2
    return -0.5 * (np.log(var) + stars[:, 1] ** 2 / var).sum(axis=1)


# ---- physics, checked against closed forms and quadrature ------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 2.7])
def test_gnfw_mass_matches_quadrature(gamma: float) -> None:
    rho_s, r_s = 3e7, 0.8
    for r in (1e-4, 0.01, 0.3, 0.8, 5.0, 200.0):
        # 4 pi r^2 rho = 4 pi rho_s r_s^gamma (1 + r/r_s)^(gamma - 3) * r^(2 - gamma)
        expected = integrate.quad(
            lambda s: 4 * math.pi * rho_s * r_s**gamma * (1 + s / r_s) ** (gamma - 3),
            0.0,
            r,
            weight="alg",
            wvar=(2.0 - gamma, 0.0),
            epsrel=1e-12,
        )[0]
        assert gnfw_mass(r, rho_s, r_s, gamma) == pytest.approx(expected, rel=1e-9)
    solver = JeansSolver(A)
    on_grid = solver.enclosed_mass(np.array([rho_s]), np.array([r_s]), np.array([gamma]))[0]
    np.testing.assert_allclose(on_grid, gnfw_mass(solver.r, rho_s, r_s, gamma), rtol=1e-6)


def test_jeans_isotropic_plummer_in_its_own_potential() -> None:
    solver, m = JeansSolver(A), 1e7
    s2 = solver.sigma_r2(plummer_mass(solver.r, m, A)[None], np.zeros(1))[0]
    inside = solver.r < 100 * A  # the last nodes lean on the power-law tail
    exact = G * m / (6 * np.sqrt(solver.r**2 + A**2))
    np.testing.assert_allclose(s2[inside], exact[inside], rtol=1e-5)
    np.testing.assert_allclose(s2, exact, rtol=3e-3)
    los = solver.sigma_los2(s2[None], np.zeros(1))[0]
    exact_los = 3 * math.pi * G * m / (64 * np.sqrt(solver.R**2 + A**2))  # Dejonghe 1987
    np.testing.assert_allclose(los, exact_los, rtol=1e-3)


@pytest.mark.parametrize("beta", [-0.45, 0.4])
def test_jeans_anisotropic_plummer_against_quadrature(beta: float) -> None:
    solver, m = JeansSolver(A), 1e7

    def mass(r: float) -> float:
        return plummer_mass(r, m, A)

    s2 = solver.sigma_r2(plummer_mass(solver.r, m, A)[None], np.array([beta]))[0]
    for i in (0, 60, 120, 150, 200):
        assert s2[i] == pytest.approx(_sigma_r2_quad(solver.r[i], mass, beta), rel=1e-5)
    los = solver.sigma_los2(s2[None], np.array([beta]))[0]
    for i in (0, 40, 60, 80):
        assert los[i] == pytest.approx(_sigma_los2_quad(solver.R[i], mass, beta), rel=1e-3)


@pytest.mark.parametrize(
    "theta", [(8.0, -0.3, 0.0, 0.3), (7.3, 0.0, 1.0, -0.4), (6.8, 0.4, 1.8, 0.45)]
)
def test_sigma_los_of_gnfw_halo_against_quadrature(theta: tuple) -> None:
    # What the simulator draws from, at radii between grid nodes, against quadrature
    # of the Jeans and projection integrals with the closed-form gNFW mass.
    sim = Dwarf()
    rho_s, r_s, gamma, beta = 10 ** theta[0], 10 ** theta[1], theta[2], theta[3]

    def mass(r: float) -> float:
        return gnfw_mass(r, rho_s, r_s, gamma)

    R = np.array([0.003, 0.07, 0.31, 1.13, 2.4])
    got = sim.sigma_los(torch.tensor([theta]), R)[0]
    expected = np.sqrt([_sigma_los2_quad(r, mass, beta) for r in R])
    np.testing.assert_allclose(got, expected, rtol=1e-3)


@pytest.mark.parametrize("i", [1, 2, 3])
def test_wolf_mass_estimator(i: int) -> None:
    # Wolf et al. 2010: M(r_1/2) = 3 <sigma_los^2> r_1/2 / G, r_1/2 = 1.305 a for a Plummer
    # sphere, to within ~20% when the dispersion profile is nearly flat (these three are).
    sim = Dwarf()
    theta = sim.true_parameters(i)[None].double()
    R = np.linspace(1e-4, 10 * A, 4000)
    weight = R * (1 + R**2 / A**2) ** -2  # Plummer surface density times 2 pi R
    mean_s2 = np.trapezoid(weight * sim.sigma_los(theta, R)[0] ** 2, R) / np.trapezoid(weight, R)
    t = theta[0].numpy()
    mass = gnfw_mass(1.305 * A, 10 ** t[0], 10 ** t[1], t[2])
    assert 3 * mean_s2 * 1.305 * A / G == pytest.approx(mass, rel=0.2)


# ---- simulator: format, distributions, seeds, errors ------------------------------------


def test_x_format() -> None:
    sim = simulators.get("dwarf")
    theta = sim.prior.sample((300,))
    x = sim.simulate(theta, np.random.default_rng(0))
    assert x.shape == (300, 150, 4) and x.dtype == torch.float32
    assert sim.x_shape == (150, 4)
    mask = x[..., 3]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    count = mask.sum(1).long()
    # stars first, then padding: the mask is 1 on the first N rows
    assert torch.equal(mask, (torch.arange(150) < count[:, None]).float())
    padding = x[mask == 0]
    assert torch.equal(padding, torch.zeros_like(padding)) and not torch.signbit(padding).any()
    stars = x[mask == 1]
    assert (stars[:, 0] > 0).all() and (stars[:, 0] <= 10 * A).all()
    assert (stars[:, 2] >= 1.0).all() and (stars[:, 2] <= 3.0).all()
    assert (stars[:, 1] != 0).all() and torch.isfinite(x).all()
    assert x.shape[0] == len(theta) and sim.simulate(theta[:0], 0).shape == (0, 150, 4)


def test_star_count_is_poisson_then_capped() -> None:
    def pmf(mean: float, low: int, high: int) -> np.ndarray:
        p = stats.poisson.pmf(np.arange(low, high + 1), mean)
        p[0], p[-1] = stats.poisson.cdf(low, mean), stats.poisson.sf(high - 1, mean)
        return p

    sim = Dwarf(n_mean=5.0, n_min=3, n_max=8)  # clipping at both ends matters here
    x = sim.simulate(sim.prior.sample((4000,)), np.random.default_rng(0))
    count = x[..., 3].sum(1).long().numpy()
    observed = np.bincount(count - 3, minlength=6)
    assert stats.chisquare(observed, 4000 * pmf(5.0, 3, 8)).pvalue > 0.01
    # negative control: a Poisson truncated to [3, 8] (instead of clipped) is told apart
    truncated = stats.poisson.pmf(np.arange(3, 9), 5.0)
    assert stats.chisquare(observed, 4000 * truncated / truncated.sum()).pvalue < 1e-6

    sim = Dwarf()
    count = sim.simulate(sim.prior.sample((2000,)), np.random.default_rng(1))[..., 3].sum(1)
    edges = np.array([0, 85, 90, 95, 100, 105, 110, 115, 151])
    observed = np.histogram(count.numpy(), edges)[0]
    expected = 2000 * np.diff(stats.poisson.cdf(edges - 1, 100.0))
    assert stats.chisquare(observed, expected * 2000 / expected.sum()).pvalue > 0.01


def test_radii_follow_the_truncated_plummer_profile() -> None:
    sim = simulators.get("dwarf")
    x = sim.simulate(sim.prior.sample((200,)), np.random.default_rng(2)).double().numpy()
    R = x[..., 0][x[..., 3] == 1]
    assert len(R) > 15_000
    assert stats.kstest(R, _plummer_radius_cdf).pvalue > 0.01
    # negative control: a 10% larger scale radius is detected
    assert stats.kstest(R, lambda r: _plummer_radius_cdf(r, a=1.1 * A)).pvalue < 1e-6


def test_velocities_are_gaussian_with_the_model_dispersion() -> None:
    sim = simulators.get("dwarf")
    theta = torch.tensor([[7.3, 0.0, 1.0, 0.2]]).expand(100, 4)
    x = sim.simulate(theta, np.random.default_rng(3)).double().numpy()
    stars = x[x[..., 3] == 1]
    sigma = sim.sigma_los(theta[:1], stars[:, 0])[0]
    z = stars[:, 1] / np.sqrt(sigma**2 + stars[:, 2] ** 2)
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert stats.kstest(z / 1.1, "norm").pvalue < 1e-6  # a 10% wrong dispersion is seen


def test_same_rng_same_x_and_global_state_ignored() -> None:
    sim = simulators.get("dwarf")
    theta = sim.prior.sample((5,))
    torch.manual_seed(0)
    np.random.seed(0)
    x1 = sim.simulate(theta, np.random.default_rng(7))
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(x1, sim.simulate(theta, np.random.default_rng(7)))
    assert torch.equal(x1, sim.simulate(theta, 7))
    assert not torch.equal(x1, sim.simulate(theta, np.random.default_rng(8)))


def test_bad_theta_raises() -> None:
    sim = simulators.get("dwarf")
    theta = sim.prior.sample((3,))
    for bad in (theta[0], theta[:, :3], torch.zeros(3, 5), theta[None]):
        with pytest.raises(ValueError, match=r"\(B, 4\)"):
            sim.simulate(bad, np.random.default_rng(0))
    for col, value in ((2, 2.5), (3, -0.7), (0, float("nan"))):
        out = theta.clone()
        out[1, col] = value
        with pytest.raises(ValueError, match=f"{sim.names[col]}.*outside the prior"):
            sim.simulate(out, np.random.default_rng(0))
    with pytest.raises(ValueError, match="gamma < 3"):
        sim.log_likelihood(torch.tensor([[7.0, 0.0, 3.2, 0.0]]), sim.observation(1))
    with pytest.raises(ValueError, match="model"):
        Dwarf(model="nfw")


def test_model_variants_share_the_x_format() -> None:
    cored, cusped = simulators.get("dwarf", model="cored"), simulators.get("dwarf", model="cusped")
    full = simulators.get("dwarf")
    assert cored.names == cusped.names == ["log10_rho_s", "log10_r_s", "beta"]
    assert full.names == ["log10_rho_s", "log10_r_s", "gamma", "beta"]
    for sim in (cored, cusped):
        x = sim.simulate(sim.prior.sample((4,)), np.random.default_rng(0))
        assert x.shape == (4, *full.x_shape)
    # the same galaxy in the free model with gamma = 0 / 1: identical data, same likelihood
    assert torch.equal(cored.observation(1), full.observation(1))
    assert torch.equal(cusped.observation(2), full.observation(2))
    theta = cored.prior.sample((6,))
    with_gamma = torch.cat([theta[:, :2], torch.zeros(6, 1), theta[:, 2:]], 1)
    torch.testing.assert_close(
        cored.log_likelihood(theta, full.observation(3)),
        full.log_likelihood(with_gamma, full.observation(3)),
    )
    # a cusp gives a larger central dispersion than a core of the same rho_s, r_s, beta
    R = np.array([0.02])
    t = torch.tensor([[7.5, 0.0, 0.0]])
    assert cusped.sigma_los(t, R)[0, 0] > 1.5 * cored.sigma_los(t, R)[0, 0]


def test_registry_pickle_and_parallel_simulate() -> None:
    sim = simulators.get("dwarf", exact=True)
    assert isinstance(sim, simulators.Simulator) and callable(sim.log_likelihood)
    assert all(label.startswith("$") and label.endswith("$") for label in sim.labels)
    clone = pickle.loads(pickle.dumps(sim))
    theta = sim.prior.sample((4,))
    assert torch.equal(sim.simulate(theta, 0), clone.simulate(theta, 0))
    theta1, x1 = sbiflow.simulate(sim, 600, seed=0, chunk_size=300, progress=False)
    assert theta1.shape == (600, 4) and x1.shape == (600, 150, 4)
    # the same seed gives the same (theta, x)
    theta2, x2 = sbiflow.simulate(sim, 600, seed=0, chunk_size=300, progress=False)
    assert torch.equal(x1, x2) and torch.equal(theta1, theta2)


@pytest.mark.slow
def test_parallel_simulate_matches_serial() -> None:
    # slow only because two fresh processes import torch
    sim = simulators.get("dwarf")
    theta1, x1 = sbiflow.simulate(sim, 600, seed=0, chunk_size=300, progress=False)
    theta2, x2 = sbiflow.simulate(sim, 600, seed=0, chunk_size=300, workers=2, progress=False)
    assert torch.equal(x1, x2) and torch.equal(theta1, theta2)


# ---- likelihood, reference observations and posterior -----------------------------------


def test_log_likelihood_matches_scipy_normal() -> None:
    sim = simulators.get("dwarf")
    theta = sim.prior.sample((5,)).double()
    x1, x2 = sim.observation(1), sim.observation(2)
    ll = sim.log_likelihood(theta, x1)
    assert ll.shape == (5,) and ll.dtype == torch.float64
    stars = _stars(x1.double().numpy())
    sigma = sim.sigma_los(theta, stars[:, 0])  # (5, N)
    scale = np.sqrt(sigma**2 + stars[:, 2] ** 2)
    expected = stats.norm.logpdf(stars[:, 1], 0.0, scale).sum(1)
    np.testing.assert_allclose(ll.numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(sim.log_likelihood(theta, x1[None]), ll)
    both = sim.log_likelihood(theta, torch.stack([x1, x2]))
    torch.testing.assert_close(both, ll + sim.log_likelihood(theta, x2))
    assert sim.log_likelihood(theta.float(), x1).dtype == torch.float32
    with pytest.raises(ValueError, match="x must have shape"):
        sim.log_likelihood(theta, x1[:, :3])
    bad = x1.clone()
    bad[0, 3] = 0.5
    with pytest.raises(ValueError, match="mask"):
        sim.log_likelihood(theta, bad)


def test_reference_observations() -> None:
    sim = simulators.get("dwarf")
    for i in (1, 2, 3):
        x_o, theta_o = sim.observation(i), sim.true_parameters(i)
        assert x_o.shape == (150, 4) and theta_o.shape == (4,)
        assert torch.isfinite(sim.prior.log_prob(theta_o))
        assert torch.equal(x_o, Dwarf().observation(i))
    assert sim.true_parameters(1)[2] == 0 and sim.true_parameters(2)[2] == 1
    assert not torch.equal(sim.observation(1), sim.observation(2))
    for i in (0, 4):
        with pytest.raises(ValueError, match="1..3"):
            sim.observation(i)
    with pytest.raises(TypeError):
        sim.true_parameters("1")


def test_reference_posterior_shape_support_and_seed() -> None:
    sim = Dwarf(num_walkers=16, burn_in=20, thin=2)
    x_o = sim.observation(3)
    samples = sim.reference_posterior(x_o, 64, seed=1)
    assert samples.shape == (64, 4) and samples.dtype == torch.float32
    assert torch.isfinite(sim.prior.log_prob(samples)).all()
    assert torch.equal(samples, sim.reference_posterior(x_o, 64, seed=1))
    assert not torch.equal(samples, sim.reference_posterior(x_o, 64, seed=2))


# ---- simulation-based calibration --------------------------------------------------------


@pytest.fixture(scope="module")
def prior_pool() -> tuple[Dwarf, np.ndarray, np.ndarray]:
    """10,000 prior draws and their sigma_los^2 grids, for importance sampling."""
    sim = Dwarf()
    pool = np.random.default_rng(11).uniform(sim.low, sim.high, (10_000, sim.dim))
    return sim, pool, sim.sigma_los2_grid(pool)


def _importance_pit(sim, pool, grid, theta, xs, scale=1.0):
    """Posterior CDF at the true theta per parameter, by prior importance sampling."""
    u, ess = np.zeros(theta.shape), np.zeros(len(theta))
    for d, x in enumerate(xs):
        ll = _velocity_loglik(sim, grid, x, scale)
        w = np.exp(ll - ll.max())
        w /= w.sum()
        ess[d] = 1 / (w**2).sum()
        u[d] = w @ (pool < theta[d])
    return u, ess


def test_importance_posterior_agrees_with_emcee(prior_pool) -> None:
    sim, pool, grid = prior_pool
    x_o = sim.observation(2).double().numpy()
    ll = _velocity_loglik(sim, grid, x_o)
    w = np.exp(ll - ll.max())
    w /= w.sum()
    mean = w @ pool
    sd = np.sqrt(w @ (pool - mean) ** 2)
    mcmc = Dwarf(num_walkers=32, burn_in=600, thin=20).reference_posterior(sim.observation(2), 640)
    mcmc = mcmc.double().numpy()
    assert np.all(np.abs(mcmc.mean(0) - mean) < 0.3 * sd), (mcmc.mean(0), mean, sd)
    assert np.all(np.abs(mcmc.std(0) / sd - 1) < 0.25), (mcmc.std(0), sd)


def test_sbc_importance_sampling_with_negative_control(prior_pool) -> None:
    sim, pool, grid = prior_pool
    # the IS likelihood below is the simulator's own log_likelihood up to a constant
    x = sim.observation(3).double().numpy()
    ll = _velocity_loglik(sim, grid[:20], x)
    expected = sim.log_likelihood(torch.from_numpy(pool[:20]), x).numpy()
    n_stars = int(x[:, 3].sum())
    np.testing.assert_allclose(ll - 0.5 * n_stars * math.log(2 * math.pi), expected, rtol=1e-10)

    rng = np.random.default_rng(12)
    theta = rng.uniform(sim.low, sim.high, (200, sim.dim))
    xs = sim.simulate(theta, rng).double().numpy()
    u, ess = _importance_pit(sim, pool, grid, theta, xs)
    assert ess.min() > 10 and np.median(ess) > 200
    pvalues = [stats.kstest(u[:, k], "uniform").pvalue for k in range(sim.dim)]
    assert min(pvalues) > 0.01, pvalues
    # negative control: a likelihood with sigma_los doubled is miscalibrated
    u, _ = _importance_pit(sim, pool, grid, theta[:100], xs[:100], scale=2.0)
    pvalues = [stats.kstest(u[:, k], "uniform").pvalue for k in range(sim.dim)]
    assert min(pvalues) < 1e-6, pvalues


class _WrongTarget:
    """Log posterior with sigma_los doubled (picklable): the SBC negative control."""

    def __init__(self, sim: Dwarf, x: np.ndarray) -> None:
        self.sim, self.x = sim, x

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        inside = np.all((theta >= self.sim.low) & (theta < self.sim.high), axis=1)
        out = np.full(len(theta), -np.inf)
        if inside.any():
            grid = self.sim.sigma_los2_grid(theta[inside])
            out[inside] = _velocity_loglik(self.sim, grid, self.x, scale=2.0)
        return out


def _rank_pvalues(ranks: np.ndarray, n_samples: int, bins: int = 5) -> list[float]:
    edges = np.linspace(0, n_samples + 1, bins + 1)
    return [
        stats.chisquare(np.histogram(ranks[:, k], edges)[0]).pvalue for k in range(ranks.shape[1])
    ]


@pytest.mark.slow
def test_sbc_emcee_with_negative_control() -> None:
    # 100 datasets from the prior; ranks of the true theta among 64 emcee samples (one
    # from each of 32 walkers, 100 steps apart, after 600 steps of burn-in).
    sim = Dwarf(num_walkers=32, burn_in=600, thin=100)
    n_samples, n_sets = 64, 100
    rng = np.random.default_rng(21)
    theta = rng.uniform(sim.low, sim.high, (n_sets, sim.dim))
    xs = sim.simulate(theta, rng)
    ranks = np.zeros((n_sets, sim.dim), dtype=int)
    wrong = np.zeros_like(ranks)
    for d in range(n_sets):
        samples = sim.reference_posterior(xs[d], n_samples, seed=d).double().numpy()
        ranks[d] = (samples < theta[d]).sum(0)
        pool = rng.uniform(sim.low, sim.high, (50 * 32, sim.dim))
        target = _WrongTarget(sim, xs[d].double().numpy())
        bad = emcee_posterior(target, pool, n_samples, rng, 32, 600, 100)
        wrong[d] = (bad < theta[d]).sum(0)
    pvalues = _rank_pvalues(ranks, n_samples)
    assert min(pvalues) > 0.01, pvalues
    pvalues = _rank_pvalues(wrong, n_samples)
    assert min(pvalues) < 1e-4, pvalues


def test_docstring_examples_run() -> None:
    result = doctest.testmod(dwarf, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---- Osipkov-Merritt anisotropy --------------------------------------------------------


def _sigma_los2_om_quad(R: float, mass, r_a: float) -> float:
    """Osipkov-Merritt sigma_los^2 by brute-force quadrature of both Jeans integrals."""

    def f(r: float) -> float:  # the integrating factor exp(2 int beta / r dr)
        return (r**2 + r_a**2) / r_a**2

    def nu_sigma_r2(r: float) -> float:
        def g(s: float) -> float:
            return f(s) * _nu(s) * G * mass(s) / s**2

        inner = integrate.quad(g, r, 10 * r + 10 * A, epsrel=1e-10, limit=200)[0]
        return (inner + integrate.quad(g, 10 * r + 10 * A, np.inf, epsrel=1e-10)[0]) / f(r)

    def h(r: float) -> float:
        return (1 - R**2 / (r**2 + r_a**2)) * nu_sigma_r2(r) * r / (r + R) ** 0.5

    near = integrate.quad(h, R, 2 * R + A, weight="alg", wvar=(-0.5, 0.0), epsrel=1e-9)[0]
    far = integrate.quad(lambda r: h(r) / (r - R) ** 0.5, 2 * R + A, np.inf, epsrel=1e-9)[0]
    return (near + far) / ((2 * A / 3) * (1 + R**2 / A**2) ** -2)


@pytest.mark.parametrize("theta", [(8.0, -0.3, 0.0, -0.9), (7.3, 0.0, 1.0, -0.3)])
def test_osipkov_merritt_sigma_los_against_quadrature(theta: tuple) -> None:
    sim = Dwarf(anisotropy="osipkov_merritt")
    assert sim.names == ["log10_rho_s", "log10_r_s", "gamma", "log10_r_a"]
    rho_s, r_s, gamma, r_a = 10 ** theta[0], 10 ** theta[1], theta[2], 10 ** theta[3]

    def mass(r: float) -> float:
        return gnfw_mass(r, rho_s, r_s, gamma)

    R = np.array([0.003, 0.07, 0.31, 1.13, 2.4])
    expected = np.array([_sigma_los2_om_quad(r, mass, r_a) for r in R])
    got = sim.sigma_los(torch.tensor([theta]), R)[0]
    np.testing.assert_allclose(got**2, expected, rtol=1e-3)
    # Negative control: the same sigma_r^2 projected as if beta were constant (its value
    # at r = a) is off by far more than the tolerance.
    solver = sim.solver
    m = solver.enclosed_mass(np.array([rho_s]), np.array([r_s]), np.array([gamma]))
    s2 = solver.sigma_r2_osipkov_merritt(m, np.array([r_a]))
    wrong = solver.sigma_los2(s2, np.array([A**2 / (A**2 + r_a**2)]))[0]
    idx, frac = solver.interpolation(R)
    wrong = (1 - frac) * wrong[idx] + frac * wrong[idx + 1]
    assert np.max(np.abs(wrong / expected - 1)) > 0.02


def test_osipkov_merritt_isotropic_limit_and_cored_cusped_variants() -> None:
    # r_a -> infinity is beta = 0; the cored/cusped variants fix gamma as before.
    for model, gamma in (("gnfw", 1.4), ("cored", None), ("cusped", None)):
        om = Dwarf(model=model, anisotropy="osipkov_merritt")
        iso = Dwarf(model=model)
        core = [7.6, -0.1] + ([gamma] if gamma is not None else [])
        got = om.sigma_los2_grid(np.array([core + [5.0]]))
        np.testing.assert_allclose(got, iso.sigma_los2_grid(np.array([core + [0.0]])), rtol=1e-5)
        assert om.names[-1] == "log10_r_a" and "beta" not in om.names
        np.testing.assert_array_equal(om.low[-1:], [-1.0])
        np.testing.assert_array_equal(om.high[-1:], [0.5])
    # radially biased orbits at small r_a lower the outer line-of-sight dispersion
    om = Dwarf(model="cored", anisotropy="osipkov_merritt")
    grid = om.sigma_los2_grid(np.array([[7.6, -0.1, -1.0], [7.6, -0.1, 0.5]]))
    assert grid[0, -1] < 0.7 * grid[1, -1]


def test_osipkov_merritt_simulates_and_has_the_exact_likelihood() -> None:
    sim = simulators.get("dwarf", model="cusped", anisotropy="osipkov_merritt")
    theta = sim.prior.sample((4,)).double()
    x = sim.simulate(theta, np.random.default_rng(0))
    assert tuple(x.shape) == (4, 150, 4) and torch.isfinite(x).all()
    ll = sim.log_likelihood(theta, x[0])
    stars = _stars(x[0].double().numpy())
    sigma = sim.sigma_los(theta, stars[:, 0])
    expected = stats.norm.logpdf(stars[:, 1], 0.0, np.sqrt(sigma**2 + stars[:, 2] ** 2)).sum(1)
    np.testing.assert_allclose(ll.numpy(), expected, rtol=1e-10)
    assert sim.true_parameters(3).tolist() == pytest.approx([6.8, 0.2, -0.5])
    assert tuple(sim.observation(1).shape) == (150, 4)
    assert Dwarf(anisotropy="constant").names == Dwarf().names
    with pytest.raises(ValueError, match="anisotropy must be one of"):
        Dwarf(anisotropy="radial")
