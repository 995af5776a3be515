"""Tests of the `simulators` package: registry, protocol, benchmark maths, reference posteriors."""

from __future__ import annotations

import doctest
import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import simulators
from simulators import Simulator, benchmarks

BENCHMARKS = ["two_moons", "gaussian_linear", "gaussian_mixture", "slcp"]
X_SHAPES = {"two_moons": (2,), "gaussian_linear": (10,), "gaussian_mixture": (2,), "slcp": (8,)}


def _sbibm_files(task: str, i: int) -> Path:
    spec = importlib.util.find_spec("sbibm")  # located, never imported (it needs pandas)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sbibm is not installed")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / task / "files"
    path = path / f"num_observation_{i}"
    if not path.is_dir():
        pytest.skip(f"sbibm files not found: {path}")
    return path


def _sbibm_reference(task: str, i: int, n: int) -> torch.Tensor:
    path = _sbibm_files(task, i) / "reference_posterior_samples.csv.bz2"
    return torch.as_tensor(np.loadtxt(path, delimiter=",", skiprows=1)[:n], dtype=torch.float32)


def _c2st(x: torch.Tensor, y: torch.Tensor) -> float:
    from sbi.utils.metrics import c2st
    from threadpoolctl import threadpool_limits

    # One BLAS thread: sklearn's small MLP gets far slower, not faster, on a busy machine.
    # Two folds: every sample is still scored once, by classifiers trained on half the data
    # instead of four fifths, in a fifth of the time. Measured on the two_moons checks below
    # (reference, other observation, one moon): 0.508 / 1.0 / 0.746 with five folds in 10.2 s,
    # 0.491 / 1.0 / 0.746 with two in 2.1 s.
    with threadpool_limits(1):
        return float(c2st(x, y, classifier="mlp", n_folds=2))


# ---- registry --------------------------------------------------------------------------


def test_names_lists_the_benchmarks() -> None:
    assert simulators.names() == sorted(simulators.names())
    assert set(BENCHMARKS) <= set(simulators.names())


@pytest.mark.parametrize("name", BENCHMARKS)
def test_get_builds_a_simulator(name: str) -> None:
    sim = simulators.get(name)
    assert isinstance(sim, Simulator)
    assert sim.name == name
    assert sim.prior.event_shape == (len(sim.names),)
    assert len(sim.labels) == len(sim.names)
    assert all(label.startswith("$") and label.endswith("$") for label in sim.labels)


def test_get_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError, match="two_moons") as info:
        simulators.get("three_moons")
    assert all(name in str(info.value) for name in simulators.names())


def test_get_normalizes_name_and_passes_options() -> None:
    assert simulators.get("Two-Moons").name == "two_moons"
    sim = simulators.get("gaussian_linear", dim=3)
    assert sim.simulate(torch.zeros(4, 3), np.random.default_rng(0)).shape == (4, 3)
    with pytest.raises(ValueError, match="dim=10"):
        sim.observation(1)
    with pytest.raises(TypeError):
        simulators.get("two_moons", dim=3)


# ---- simulate --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_simulate_shape_dtype_and_seed(name: str) -> None:
    sim = simulators.get(name)
    theta = sim.prior.sample((7,))
    x = sim.simulate(theta, np.random.default_rng(1))
    assert x.shape == (7, *X_SHAPES[name])
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sim.simulate(theta, np.random.default_rng(1)))
    assert not torch.equal(x, sim.simulate(theta, np.random.default_rng(2)))
    assert sim.simulate(theta[:0], np.random.default_rng(1)).shape == (0, *X_SHAPES[name])


@pytest.mark.parametrize("name", BENCHMARKS)
def test_simulate_ignores_global_random_state(name: str) -> None:
    sim = simulators.get(name)
    theta = sim.prior.sample((5,))
    torch.manual_seed(0)
    np.random.seed(0)
    x1 = sim.simulate(theta, np.random.default_rng(3))
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(x1, sim.simulate(theta, np.random.default_rng(3)))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_simulator_pickles(name: str) -> None:
    sim = simulators.get(name)
    clone = pickle.loads(pickle.dumps(sim))
    theta = sim.prior.sample((4,))
    assert torch.equal(
        sim.simulate(theta, np.random.default_rng(0)),
        clone.simulate(theta, np.random.default_rng(0)),
    )


@pytest.mark.parametrize("name", BENCHMARKS)
def test_simulate_rejects_bad_shapes(name: str) -> None:
    sim = simulators.get(name)
    d = len(sim.names)
    theta = sim.prior.sample((3,))
    for bad in (theta[0], theta[:, :-1], torch.zeros(3, d + 1), theta[None]):
        with pytest.raises(ValueError, match=rf"\(B, {d}\)"):
            sim.simulate(bad, np.random.default_rng(0))


@pytest.mark.parametrize("name", ["two_moons", "gaussian_mixture", "slcp"])
def test_simulate_rejects_theta_outside_prior(name: str) -> None:
    sim = simulators.get(name)
    theta = sim.prior.sample((6,))
    theta[4, 1] = sim.prior.base_dist.high[1] + 0.5
    with pytest.raises(ValueError, match=f"{sim.names[1]}.*outside the prior"):
        sim.simulate(theta, np.random.default_rng(0))


def test_simulate_rejects_nan() -> None:
    sim = simulators.get("gaussian_linear")
    theta = sim.prior.sample((3,))
    theta[2, 5] = float("nan")
    with pytest.raises(ValueError, match="theta_6"):
        sim.simulate(theta, np.random.default_rng(0))


# ---- official observations -------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_observations_match_sbibm(name: str) -> None:
    sim = simulators.get(name)
    for i in range(1, 11):
        x_o, theta_o = sim.observation(i), sim.true_parameters(i)
        assert x_o.shape == X_SHAPES[name] and x_o.dtype == torch.float32
        assert theta_o.shape == (len(sim.names),)
        assert torch.isfinite(sim.prior.log_prob(theta_o))
    files = _sbibm_files(name, 3)
    expected = np.loadtxt(files / "observation.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(sim.observation(3).numpy(), expected, rtol=1e-6)
    expected = np.loadtxt(files / "true_parameters.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(sim.true_parameters(3).numpy(), expected, rtol=1e-6)


def test_bad_observation_number() -> None:
    sim = simulators.get("two_moons")
    for i in (0, 11, -1):
        with pytest.raises(ValueError, match="1..10"):
            sim.observation(i)
    with pytest.raises(TypeError):
        sim.true_parameters("1")


# ---- log-likelihoods -------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_log_likelihood_shapes_and_iid_trials(name: str) -> None:
    sim = simulators.get(name)
    theta = sim.prior.sample((5,))
    x1, x2 = sim.observation(1), sim.observation(2)
    ll1 = sim.log_likelihood(theta, x1)
    assert ll1.shape == (5,) and ll1.dtype == torch.float32
    torch.testing.assert_close(sim.log_likelihood(theta, x1[None]), ll1)
    both = sim.log_likelihood(theta.double(), torch.stack([x1, x2]))
    assert both.dtype == torch.float64
    expected = sim.log_likelihood(theta.double(), x1) + sim.log_likelihood(theta.double(), x2)
    torch.testing.assert_close(both, expected)
    with pytest.raises(ValueError, match="x must have shape"):
        sim.log_likelihood(theta, torch.zeros(3))


def test_gaussian_linear_log_likelihood_matches_scipy() -> None:
    sim = simulators.get("gaussian_linear")
    theta, x = sim.prior.sample((4,)).double(), sim.observation(1).double()
    expected = [stats.multivariate_normal(t.numpy(), 0.1 * np.eye(10)).logpdf(x) for t in theta]
    np.testing.assert_allclose(sim.log_likelihood(theta, x).numpy(), expected, rtol=1e-10)


def test_gaussian_mixture_log_likelihood_matches_scipy() -> None:
    sim = simulators.get("gaussian_mixture")
    theta, x = sim.prior.sample((6,)).double(), sim.observation(1).double()
    theta[0] = x + 0.05  # near the narrow component too
    expected = [
        np.log(
            0.5 * stats.multivariate_normal(t.numpy(), np.eye(2)).pdf(x)
            + 0.5 * stats.multivariate_normal(t.numpy(), 0.01 * np.eye(2)).pdf(x)
        )
        for t in theta
    ]
    np.testing.assert_allclose(sim.log_likelihood(theta, x).numpy(), expected, rtol=1e-10)


def test_slcp_log_likelihood_matches_scipy() -> None:
    sim = simulators.get("slcp")
    theta, x = sim.prior.sample((4,)).double(), sim.observation(1).double()
    expected = []
    for t in theta.numpy():
        s1, s2, rho = t[2] ** 2, t[3] ** 2, np.tanh(t[4])
        cov = np.array([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]]) + 1e-6 * np.eye(2)
        expected.append(stats.multivariate_normal(t[:2], cov).logpdf(x.numpy().reshape(4, 2)).sum())
    np.testing.assert_allclose(sim.log_likelihood(theta, x).numpy(), expected, rtol=1e-8)


def test_slcp_simulator_covariance() -> None:
    sim = simulators.get("slcp")
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]])
    x = sim.simulate(theta.expand(20_000, 5), np.random.default_rng(0)).double().reshape(-1, 2)
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), theta[0, :2].double(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.03, rtol=0.03)


def test_two_moons_likelihood_is_normalized_and_matches_simulator() -> None:
    # p(x | theta) is the density f of the noise p at x - s(theta), and s(0) = 0, so
    # simulate(0) draws from f. f(y) = p(x_o | theta') for the theta' with s(theta') = x_o - y.
    sim = simulators.get("two_moons")
    h = 5e-4
    y = torch.cartesian_prod(
        torch.arange(0.2, 0.4, h), torch.arange(-0.16, 0.16, h)
    ).double()  # (G, 2)
    x_o = sim.observation(1).double()
    z0, z1 = y[:, 0] - x_o[0], x_o[1] - y[:, 1]  # s(theta') = (-|z0|, z1), z0 >= 0 here
    theta = torch.stack([z0 - z1, z0 + z1], dim=1) / math.sqrt(2)
    f = torch.exp(sim.log_likelihood(theta, x_o))  # (G,)
    assert abs(float(f.sum()) * h * h - 1.0) < 2e-3
    p = sim.simulate(torch.zeros(200_000, 2), np.random.default_rng(0)).double()
    for region in (lambda q: q[:, 1] > 0.05, lambda q: q[:, 0] > 0.33):
        expected = float(region(p).double().mean())
        assert abs(float(f[region(y)].sum()) * h * h - expected) < 5e-3


def test_two_moons_reference_posterior_matches_likelihood_on_a_grid() -> None:
    sim = simulators.get("two_moons")
    x_o = sim.observation(1)
    h = 2.5e-3
    g = torch.arange(-1 + h / 2, 1, h, dtype=torch.float64)
    theta = torch.cartesian_prod(g, g)  # (G, 2)
    w = torch.softmax(sim.log_likelihood(theta, x_o), 0)  # flat prior
    samples = sim.reference_posterior(x_o, 20_000).double()
    torch.testing.assert_close(samples.mean(0), w @ theta, atol=0.01, rtol=0)
    torch.testing.assert_close(
        samples.std(0), (w @ theta**2 - (w @ theta) ** 2).sqrt(), atol=0.01, rtol=0
    )
    upper = float(w[theta.sum(1) > 0].sum())  # one moon: the branch theta_1 + theta_2 > 0
    assert 0.2 < upper < 0.8
    assert abs(float((samples.sum(1) > 0).double().mean()) - upper) < 0.015


# ---- gaussian_linear: exact posterior and evidence -------------------------------------


def test_gaussian_linear_posterior_with_iid_trials() -> None:
    sim = simulators.get("gaussian_linear")
    xs = torch.stack([sim.observation(i) for i in (1, 2, 3)]).double()  # (3, 10)
    posterior = sim.posterior(xs)
    torch.testing.assert_close(posterior.mean.double(), xs.sum(0) / 4, atol=1e-6, rtol=0)
    torch.testing.assert_close(posterior.variance, torch.full((10,), 0.1 / 4))
    samples = sim.reference_posterior(xs, 20_000).double()
    torch.testing.assert_close(samples.mean(0), xs.sum(0) / 4, atol=0.01, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((10,), 0.025).double(), atol=0, rtol=0.05)
    one = sim.reference_posterior(xs[0], 20_000).double()
    torch.testing.assert_close(one.mean(0), xs[0] / 2, atol=0.01, rtol=0)


def test_gaussian_linear_log_evidence() -> None:
    sim = simulators.get("gaussian_linear")
    x_o = sim.observation(1).double()
    expected = stats.multivariate_normal(np.zeros(10), 0.2 * np.eye(10)).logpdf(x_o.numpy())
    assert sim.log_evidence(x_o) == pytest.approx(expected, abs=1e-9)
    torch.manual_seed(0)
    theta = sim.prior.sample((200_000,)).double()
    ll = sim.log_likelihood(theta, x_o)
    monte_carlo = float(torch.logsumexp(ll, 0) - math.log(len(theta)))
    assert sim.log_evidence(x_o) == pytest.approx(monte_carlo, abs=0.02)
    # iid trials: per dimension, the N trials are jointly N(0, 0.1 I + 0.1 11^T)
    xs = torch.stack([sim.observation(i) for i in (1, 2, 3)]).double()  # (3, 10)
    joint = stats.multivariate_normal(np.zeros(3), 0.1 * np.eye(3) + 0.1)
    expected = sum(joint.logpdf(xs[:, j].numpy()) for j in range(10))
    assert sim.log_evidence(xs) == pytest.approx(expected, abs=1e-9)


# ---- reference posteriors --------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reference_posterior_shape_support_and_seed(name: str) -> None:
    sim = simulators.get(name)
    x_o = sim.observation(2)
    samples = sim.reference_posterior(x_o, 300, seed=1)
    assert samples.shape == (300, len(sim.names)) and samples.dtype == torch.float32
    assert torch.isfinite(sim.prior.log_prob(samples)).all()
    assert torch.equal(samples, sim.reference_posterior(x_o, 300, seed=1))
    assert not torch.equal(samples, sim.reference_posterior(x_o, 300, seed=2))


def test_gaussian_mixture_reference_posterior_is_the_exact_truncated_mixture() -> None:
    """Moments and the narrow component's weight, against closed-form truncated normals.

    Under the box prior the posterior is 0.5 N(x, I) + 0.5 N(x, 0.01 I), each component cut
    to the box and weighted by its mass inside it. Observation 1 sits 0.53 from the edge, so
    the cut matters there: the broad component keeps 41% of the posterior, not half, and the
    mean moves 56 standard errors of 20,000 draws from x.
    """
    sim = simulators.get("gaussian_mixture")
    low, high = sim.prior.base_dist.low.double().numpy(), sim.prior.base_dist.high.double().numpy()
    x_o = sim.observation(1).double()
    n = 20_000
    samples = sim.reference_posterior(x_o, n, seed=0).double()
    mass, means, second = [], [], []
    for std in (1.0, 0.1):  # the broad and the narrow component
        a, b = (low - x_o.numpy()) / std, (high - x_o.numpy()) / std  # (2,) each
        cut = stats.truncnorm(a, b, x_o.numpy(), std)
        mass.append(np.prod(stats.norm.cdf(b) - stats.norm.cdf(a)))  # inside the box
        means.append(cut.mean())
        second.append(cut.var() + cut.mean() ** 2)
    weights = np.array(mass) / np.sum(mass)  # (2,): posterior weights of the components
    mean = weights @ np.array(means)  # (2,)
    var = weights @ np.array(second) - mean**2
    std_error = np.sqrt(var / n)
    assert np.all(np.abs(samples.mean(0).numpy() - mean) < 4 * std_error)
    np.testing.assert_allclose(samples.var(0).numpy(), var, rtol=0.05)
    # the narrow component's share: draws within 0.3 of x (3 of its std; 0.3 of the broad's)
    inside = float(((samples - x_o).norm(dim=1) < 0.3).double().mean())
    expected = weights[1] * (1 - math.exp(-(0.3**2) / (2 * 0.01))) + weights[0] * (
        1 - math.exp(-(0.3**2) / 2)
    )
    assert abs(inside - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    # negative control: the mixture not cut to the box (mean x) fails the mean check by far
    assert abs(float(x_o[0]) - mean[0]) > 10 * 4 * std_error[0]


@pytest.mark.parametrize("name", ["two_moons", "gaussian_mixture"])
def test_closed_form_reference_posterior_takes_one_observation(name: str) -> None:
    sim = simulators.get(name)
    with pytest.raises(ValueError, match="one observation"):
        sim.reference_posterior(torch.stack([sim.observation(1), sim.observation(2)]), 10)


def test_slcp_reference_posterior_fills_the_four_modes() -> None:
    sim = simulators.get("slcp")
    samples = sim.reference_posterior(sim.observation(3), 4000)
    signs = (samples[:, 2] > 0).long() * 2 + (samples[:, 3] > 0).long()
    fractions = torch.bincount(signs, minlength=4) / len(samples)
    torch.testing.assert_close(fractions, torch.full((4,), 0.25), atol=0.03, rtol=0)


# slcp's and gaussian_linear's 8- and 10-d C2STs take ~10 s each, gaussian_mixture's (an
# analytic mixture, checked exactly by its own test) ~9 s: slow. The default run keeps
# two_moons (the one found by MCMC), the four-mode slcp check and the analytic ones.
SLOW_SBIBM_CHECKS = ("slcp", "gaussian_linear", "gaussian_mixture")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_SBIBM_CHECKS else name
        for name in BENCHMARKS
    ],
)
def test_reference_posterior_against_sbibm(name: str) -> None:
    n = 2000
    reference = _sbibm_reference(name, 1, n)
    sim = simulators.get(name)
    assert _c2st(reference, sim.reference_posterior(sim.observation(1), n, seed=0)) < 0.55
    # negative control: the posterior of another observation is told apart
    assert _c2st(reference, sim.reference_posterior(sim.observation(2), n, seed=0)) > 0.7


def test_c2st_catches_a_two_moons_sampler_that_drops_a_branch() -> None:
    reference = _sbibm_reference("two_moons", 1, 2000)
    sim = simulators.get("two_moons")
    samples = sim.reference_posterior(sim.observation(1), 4000, seed=0)
    one_moon = samples[samples.sum(1) > 0][:2000]  # the branches: sign of theta_1 + theta_2
    assert _c2st(reference, one_moon) > 0.7


def test_docstring_examples_run() -> None:
    for module in (simulators, benchmarks):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
