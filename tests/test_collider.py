"""Tests of the `collider` simulator: the chain against its integration, the likelihood, SBC."""

from __future__ import annotations

import dataclasses
import doctest
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import sbiflow
import simulators
from simulators import Simulator, collider
from simulators.collider import Collider, ColliderPhysics

PHYSICS = ColliderPhysics()
SIGNAL_THETAS = [
    (2.0, 1.0, 5.0, 1.0),  # reference observation 1
    (3.5, 2.0, 4.0, 0.5),  # prior corners: heavy, strong, flat, sharp
    (1.5, 0.5, 6.0, 1.5),  # light, weak, steep, smeared
]


# ---- an independent integration of the chain (scipy quad, masses in TeV) ---------------


def _window(ph: ColliderPhysics) -> tuple[float, float]:
    w = math.log(ph.m_max / ph.m_min) / ph.n_bins
    return ph.m_min * math.exp(-ph.margin_low * w), ph.m_max * math.exp(ph.margin_high * w)


def _parton_intensity(ph: ColliderPhysics, theta: tuple, m: np.ndarray) -> np.ndarray:
    """dN/dm at parton level (events per TeV), written from docs/collider.md."""
    m_x, mu, p2, _ = theta
    lo, hi = _window(ph)
    x, x0 = m / ph.sqrt_s, ph.m_ref / ph.sqrt_s
    background = ph.n_ref * ((1 - x) / (1 - x0)) ** ph.p1 * (m / ph.m_ref) ** -p2
    gamma = ph.width * m_x  # relativistic Breit-Wigner in s = m^2, truncated to the window
    norm = (
        math.atan((hi**2 - m_x**2) / (m_x * gamma)) - math.atan((lo**2 - m_x**2) / (m_x * gamma))
    ) / math.pi
    bw = 2 * m * m_x * gamma / math.pi / ((m**2 - m_x**2) ** 2 + (m_x * gamma) ** 2) / norm
    return background + mu * ph.signal_yield * bw


def _response(ph: ColliderPhysics, s_res: float, m: float, m_d: np.ndarray) -> np.ndarray:
    """Density of the reconstructed mass m_d given the parton mass m (per TeV)."""
    sigma = ph.resolution * s_res
    lag = np.log(m) - np.log(m_d)  # = kappa E - sigma Z: an exponentially modified Gaussian
    if ph.shower_loss == 0:
        return stats.norm.pdf(lag, scale=sigma) / m_d
    return stats.exponnorm.pdf(lag, ph.shower_loss / sigma, scale=sigma) / m_d


def _efficiency(ph: ColliderPhysics, m: np.ndarray) -> np.ndarray:
    return ph.trigger_plateau / (1 + np.exp(-(m - ph.trigger_mass) / ph.trigger_width))


def _quad_counts(ph: ColliderPhysics, theta: tuple, edges: np.ndarray) -> np.ndarray:
    """Expected events in the bins ``edges`` (TeV): 40-point Gauss-Legendre in each bin for
    the reconstructed mass, adaptive ``quad_vec`` over the parton mass (shower and
    resolution from scipy's exponentially modified Gaussian)."""
    lo, hi = _window(ph)
    nodes, weights = np.polynomial.legendre.leggauss(40)
    half = 0.5 * np.diff(edges)[:, None]  # (K, 1)
    m_d = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half * nodes  # (K, 40)
    w = half * weights * _efficiency(ph, m_d)

    def integrand(m: float) -> np.ndarray:
        return _parton_intensity(ph, theta, m) * _response(ph, theta[3], m, m_d)

    points = [theta[0]] if lo < theta[0] < hi else None
    inner, _ = integrate.quad_vec(integrand, lo, hi, epsrel=1e-10, points=points, limit=2000)
    return (w * inner).sum(axis=1)


def _chi2_pvalue(total: np.ndarray, expected: np.ndarray) -> float:
    """Pearson chi-square p-value of Poisson counts ``total`` against their means."""
    use = expected >= 5  # where the Poisson counts are close to Gaussian
    chi2 = (((total - expected) ** 2) / expected)[use].sum()
    return float(stats.chi2.sf(chi2, int(use.sum())))


# ---- registry, variants, shapes, errors ------------------------------------------------


def test_registry_and_variants() -> None:
    sim = simulators.get("collider")
    assert isinstance(sim, Simulator) and "collider" in simulators.names()
    assert sim.name == "collider" and sim.model == "signal"
    assert sim.names == ["m_X", "mu", "p2", "s_res"]
    assert sim.prior.event_shape == (4,) and len(sim.labels) == 4
    assert all(label.startswith("$") and label.endswith("$") for label in sim.labels)
    assert "TeV" in sim.labels[0]
    background = simulators.get("collider", model="background", exact=True)
    assert background.names == ["p2", "s_res"] and background.prior.event_shape == (2,)
    assert callable(background.log_likelihood) and callable(background.reference_posterior)
    np.testing.assert_allclose(sim.prior.base_dist.low, [1.5, 0.0, 4.0, 0.5])
    np.testing.assert_allclose(sim.prior.base_dist.high, [3.5, 2.0, 6.0, 1.5])
    edges = sim.bin_edges
    assert edges.shape == (31,) and edges[0] == pytest.approx(1.0) and edges[-1] == pytest.approx(4)
    np.testing.assert_allclose(np.diff(np.log(edges)), math.log(4) / 30)
    with pytest.raises(ValueError, match="model must be one of"):
        simulators.get("collider", model="higgs")


@pytest.mark.parametrize("model", ["signal", "background"])
def test_simulate_shape_dtype_and_seed(model: str) -> None:
    sim = Collider(model=model)
    theta = sim.prior.sample((6,))
    x = sim.simulate(theta, np.random.default_rng(1))
    assert x.shape == (6, 30) and x.dtype == torch.float32
    assert torch.equal(x, x.round()) and (x >= 0).all() and x.sum() > 0
    assert torch.equal(x, sim.simulate(theta, np.random.default_rng(1)))
    assert not torch.equal(x, sim.simulate(theta, np.random.default_rng(2)))
    assert sim.simulate(theta[:0], np.random.default_rng(1)).shape == (0, 30)


def test_bad_theta_gives_clear_errors() -> None:
    sim = Collider()
    theta = sim.prior.sample((3,))
    for bad in (theta[0], theta[:, :2], torch.zeros(3, 5)):
        with pytest.raises(ValueError, match=r"\(B, 4\)"):
            sim.simulate(bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        Collider(model="background").simulate(theta, np.random.default_rng(0))
    for col, value in ((0, 3.6), (1, -0.1), (3, float("nan"))):
        bad = theta.clone()
        bad[1, col] = value
        with pytest.raises(ValueError, match=f"{sim.names[col]}.*outside the prior"):
            sim.simulate(bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x must have shape"):
        sim.log_likelihood(theta, torch.zeros(29))
    with pytest.raises(ValueError, match="grid must be even"):
        Collider(physics=ColliderPhysics(grid=7))


def test_pickles_and_runs_in_worker_processes() -> None:
    sim = Collider()
    clone = pickle.loads(pickle.dumps(sim))
    theta = sim.prior.sample((4,))
    rng = np.random.default_rng
    assert torch.equal(sim.simulate(theta, rng(0)), clone.simulate(theta, rng(0)))
    one = sbiflow.simulate(sim, 60, seed=0, chunk_size=20, progress=False)
    two = sbiflow.simulate(sim, 60, seed=0, chunk_size=20, workers=2, progress=False)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert one[1].shape == (60, 30)


def test_observations_are_fixed_and_documented() -> None:
    for model, d in (("signal", 4), ("background", 2)):
        sim = Collider(model=model)
        xs = [sim.observation(i) for i in (1, 2, 3, 4)]
        for i, x in enumerate(xs, 1):
            assert x.shape == (30,) and x.dtype == torch.float32
            assert torch.equal(x, Collider(model=model).observation(i))
            assert sim.true_parameters(i).shape == (d,)
            assert torch.isfinite(sim.prior.log_prob(sim.true_parameters(i)))
        assert not torch.equal(xs[0], xs[1])
    torch.testing.assert_close(Collider().true_parameters(1), torch.tensor([2.0, 1.0, 5.0, 1.0]))
    for i in (0, 5):
        with pytest.raises(ValueError, match="1..4"):
            Collider().observation(i)
    with pytest.raises(TypeError):
        Collider().true_parameters("1")


# ---- physics: staged Monte Carlo against the integrated chain --------------------------


@pytest.mark.parametrize(
    "model, theta", [("signal", t) for t in SIGNAL_THETAS] + [("background", (5.0, 1.0))]
)
def test_mean_histogram_matches_expected_counts(model: str, theta: tuple) -> None:
    # The sum over n simulations of each bin is Poisson(n nu_k): a chi-square test, p > 1e-3.
    sim, n = Collider(model=model), 3000
    th = torch.tensor([theta], dtype=torch.float64)
    total = sim.simulate(th.expand(n, -1), np.random.default_rng(7)).double().sum(0).numpy()
    nu = sim.expected_counts(th)[0].numpy()
    assert _chi2_pvalue(total, n * nu) > 1e-3
    # negative controls: the same counts without the shower, or with 10% worse resolution
    no_shower = Collider(model=model, physics=dataclasses.replace(PHYSICS, shower_loss=0.0))
    assert _chi2_pvalue(total, n * no_shower.expected_counts(th)[0].numpy()) < 1e-6
    if model == "signal":
        wider = th.clone()
        wider[0, 3] *= 1.1
        assert _chi2_pvalue(total, n * sim.expected_counts(wider)[0].numpy()) < 1e-6


@pytest.mark.parametrize("theta", SIGNAL_THETAS)
def test_expected_counts_match_independent_quadrature(theta: tuple) -> None:
    sim = Collider()
    nu = sim.expected_counts(torch.tensor([theta], dtype=torch.float64))[0].numpy()
    np.testing.assert_allclose(nu, _quad_counts(PHYSICS, theta, sim.bin_edges), rtol=1e-5)
    # total yield in the histogram: one Gauss-Legendre rule over [m_min, m_max] in 30 pieces
    # is the same sum, so compare with the 60-piece rule instead
    fine = np.exp(np.linspace(0, math.log(4), 61))
    assert nu.sum() == pytest.approx(_quad_counts(PHYSICS, theta, fine).sum(), rel=1e-7)


def test_signal_yield_is_the_breit_wigner_fraction() -> None:
    # No shower and a trigger that is fully efficient on the histogram: the signal yield is
    # S_0 times the Breit-Wigner's probability to end in [m_min, m_max] after smearing
    # (1-D quad), within 2e-4 of the truncated Breit-Wigner's mass there (arctan).
    ph = dataclasses.replace(
        PHYSICS, shower_loss=0.0, trigger_plateau=1.0, trigger_mass=0.0, trigger_width=0.01
    )
    m_x, sigma = 2.5, ph.resolution
    th = torch.tensor([[m_x, 1.0, 5.0, 1.0], [m_x, 0.0, 5.0, 1.0]], dtype=torch.float64)
    nu = Collider(physics=ph).expected_counts(th).numpy()
    signal = (nu[0] - nu[1]).sum()
    lo, hi = _window(ph)

    def inside(m: float) -> float:
        up = stats.norm.cdf(math.log(ph.m_max / m) / sigma)
        return up - stats.norm.cdf(math.log(ph.m_min / m) / sigma)

    def bw(m: float) -> float:
        return _parton_intensity(ph, (m_x, 1.0, 5.0, 1.0), m) - _parton_intensity(
            ph, (m_x, 0.0, 5.0, 1.0), m
        )

    smeared, _ = integrate.quad(lambda m: bw(m) * inside(m), lo, hi, points=[m_x], epsrel=1e-11)
    assert signal == pytest.approx(smeared, rel=1e-7)
    scale = ph.width * m_x**2
    cdf = [math.atan((m**2 - m_x**2) / scale) for m in (lo, ph.m_min, ph.m_max, hi)]
    fraction = (cdf[2] - cdf[1]) / (cdf[3] - cdf[0])
    assert signal == pytest.approx(ph.signal_yield * fraction, rel=2e-4)


def test_quadrature_converges_with_the_grid() -> None:
    theta = torch.tensor(SIGNAL_THETAS, dtype=torch.float64)
    coarse = Collider().expected_counts(theta)
    fine = Collider(physics=ColliderPhysics(grid=48)).expected_counts(theta)
    torch.testing.assert_close(coarse, fine, rtol=5e-6, atol=1e-8)


# ---- likelihood ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["signal", "background"])
def test_log_likelihood_is_the_poisson_likelihood(model: str) -> None:
    sim = Collider(model=model)
    theta = sim.prior.sample((5,)).double()
    x1, x2 = sim.observation(1), sim.observation(2)
    ll = sim.log_likelihood(theta, x1)
    assert ll.shape == (5,) and ll.dtype == torch.float64
    nu = sim.expected_counts(theta).numpy()
    expected = stats.poisson.logpmf(x1.numpy()[None], nu).sum(1)
    np.testing.assert_allclose(ll.numpy(), expected, rtol=1e-10)
    assert sim.log_likelihood(theta.float(), x1).dtype == torch.float32
    both = sim.log_likelihood(theta, torch.stack([x1, x2]))
    torch.testing.assert_close(both, ll + sim.log_likelihood(theta, x2))


def test_anscombe_transform_keeps_the_likelihood() -> None:
    raw, stable = Collider(), Collider(transform="anscombe")
    theta = raw.prior.sample((4,))
    x_raw = raw.simulate(theta, np.random.default_rng(3))
    x = stable.simulate(theta, np.random.default_rng(3))
    torch.testing.assert_close(x, 2.0 * torch.sqrt(x_raw + 0.375))
    np.testing.assert_array_equal(stable.counts(x), x_raw.numpy())
    torch.testing.assert_close(stable.observation(2), 2.0 * torch.sqrt(raw.observation(2) + 0.375))
    # the same counts, so the same likelihood (a function of theta)
    grid = raw.prior.sample((6,)).double()
    torch.testing.assert_close(
        stable.log_likelihood(grid, stable.observation(1)),
        raw.log_likelihood(grid, raw.observation(1)),
    )
    # the noise is stabilized: unit variance in a low- and a high-count bin (Poisson means
    # about 6 and 170), where the raw counts' variances differ 30-fold
    sims = stable.simulate(stable.true_parameters(1)[None].expand(2000, 4), 4).numpy()
    nu = raw.expected_counts(raw.true_parameters(1)[None])[0].numpy()
    for k in (int(np.argmax(nu)), int(np.argmin(np.abs(nu - 5.0)))):
        assert sims[:, k].var() == pytest.approx(1.0, abs=0.15), (k, nu[k])
    # negative control: raw counts are not stabilized
    assert raw.simulate(raw.true_parameters(1)[None].expand(2000, 4), 4)[:, 0].var() > 10
    with pytest.raises(ValueError, match="transform must be one of"):
        Collider(transform="log")
    with pytest.raises(ValueError, match="non-negative integers"):
        stable.log_likelihood(grid, x_raw[0])  # counts given where sqrt-counts are expected


def test_log_likelihood_peaks_near_the_truth() -> None:
    sim = Collider()
    x, truth = sim.observation(1), sim.true_parameters(1).double()
    masses = torch.linspace(1.5, 3.5, 201, dtype=torch.float64)
    theta = truth.repeat(201, 1)
    theta[:, 0] = masses
    best = masses[sim.log_likelihood(theta, x).argmax()]
    assert abs(float(best) - 2.0) < 0.1


def test_reference_posterior_shape_support_and_seed() -> None:
    sim = Collider(num_walkers=16, burn_in=100, thin=5)
    x = sim.observation(2)
    samples = sim.reference_posterior(x, 64, seed=1)
    assert samples.shape == (64, 4) and samples.dtype == torch.float32
    assert torch.isfinite(sim.prior.log_prob(samples)).all()
    assert torch.equal(samples, sim.reference_posterior(x, 64, seed=1))
    assert not torch.equal(samples, sim.reference_posterior(x, 64, seed=2))
    background = Collider(model="background", num_walkers=8, burn_in=100, thin=5)
    assert background.reference_posterior(background.observation(1), 16).shape == (16, 2)


# ---- simulation-based calibration with the exact likelihood ----------------------------


def _sbc_pvalues(fit: Collider, n_datasets: int, seed: int) -> np.ndarray:
    """K-S p-values, per parameter, of the ranks of the true θ among posterior samples.

    Data come from the default simulator, θ from the prior. The posterior samples are the
    final states of ``fit.num_walkers`` emcee walkers after ``fit.burn_in`` steps on
    ``fit``'s likelihood: at stationarity the walkers are independent draws, so the rank is
    uniform on 0..W when ``fit`` is the true likelihood.
    """
    truth = Collider(model=fit.model)
    rng = np.random.default_rng(seed)
    theta = rng.uniform(truth.low, truth.high, size=(n_datasets, truth.dim))
    x = truth.simulate(theta, rng)
    walkers = fit.num_walkers
    ranks = np.stack(
        [
            (fit.reference_posterior(x[i], walkers, seed=seed + i).numpy() < theta[i]).sum(0)
            for i in range(n_datasets)
        ]
    )  # (n_datasets, D), in 0..W
    pit = (ranks + rng.random(ranks.shape)) / (walkers + 1)  # randomized PIT, U(0, 1) if calibrated
    return np.array([stats.kstest(pit[:, d], "uniform").pvalue for d in range(truth.dim)])


def test_sbc_quick() -> None:
    # 24 datasets: each parameter's ranks pass K-S at 0.01 / 4; ignoring the shower in the
    # likelihood (negative control, 12 datasets) fails it at 1e-4. From the prior's best
    # candidates the walkers reach the typical set within ~100 steps: with 150 steps of
    # burn-in, seeds 0-3 gave smallest p-values 0.25-0.48, and the control 1e-10 or less.
    fit = Collider(num_walkers=16, burn_in=150)
    assert _sbc_pvalues(fit, 24, seed=0).min() > 0.0025
    wrong = dataclasses.replace(PHYSICS, shower_loss=0.0)
    assert _sbc_pvalues(Collider(physics=wrong, num_walkers=16, burn_in=150), 12, 0).min() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, wrong",
    [("signal", {"resolution": 2 * PHYSICS.resolution}), ("background", {"shower_loss": 0.0})],
)
def test_sbc(model: str, wrong: dict) -> None:
    # 200 datasets: each parameter's ranks pass K-S at 0.01 / D. Negative control, 100
    # datasets: a wrong likelihood (resolution doubled; shower ignored) fails it at 1e-4.
    fit = Collider(model=model, num_walkers=32, burn_in=500)
    pvalues = _sbc_pvalues(fit, 200, seed=100)
    assert pvalues.min() > 0.01 / len(pvalues), pvalues
    physics = dataclasses.replace(PHYSICS, **wrong)
    bad = _sbc_pvalues(Collider(model=model, physics=physics, num_walkers=32, burn_in=500), 100, 1)
    assert bad.min() < 1e-4, bad


def test_docstring_examples_run() -> None:
    result = doctest.testmod(collider, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
