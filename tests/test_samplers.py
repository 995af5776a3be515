"""Tests of `sbiflow.samplers`: emcee and dynesty on analytic targets, prior transforms.

Statistical checks follow emcee's and dynesty's own test harnesses: sample mean, standard
deviation and a Kolmogorov-Smirnov statistic against the exact law, at tolerances derived
from the effective sample size, each paired with a negative control that must fail.
"""

from __future__ import annotations

import doctest
import math
import pickle
import sys

import numpy as np
import pytest
import sbi.utils
import torch
from scipy import stats
from torch.distributions import (
    Categorical,
    Distribution,
    Gamma,
    Independent,
    Laplace,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

import sbiflow
from sbiflow.samplers import (
    MCMCResult,
    NestedResult,
    UnsupportedPriorError,
    mcmc,
    nested,
    prior_transform,
)

# ---- helpers ---------------------------------------------------------------------------


def gaussian_log_likelihood(mean: torch.Tensor, cov: torch.Tensor):
    """Normalized Gaussian log-density in θ, ``(B, D) -> (B,)`` float64."""
    dist = MultivariateNormal(mean.double(), covariance_matrix=cov.double())
    return lambda theta: dist.log_prob(theta.double())


def effective_size(result: MCMCResult, n: int) -> float:
    """Effective sample size of ``n`` samples drawn from the thinned pool of an emcee run.

    The chain after burn-in holds W (steps - burn_in) / τ independent draws. emcee's τ is
    biased low on short chains (measured: ~0.55 τ at 10 τ, ~0.7 τ at 20 τ), so τ is
    inflated by 2.
    The n returned samples are drawn from that pool without replacement, which adds the
    variance of an n-sample average: 1 / n_eff = 1 / n + 1 / ess_chain.
    """
    steps, walkers, _ = result.chain.shape
    ess_chain = walkers * (steps - result.burn_in) / (2 * float(result.autocorr_time.max()))
    return 1.0 / (1.0 / n + 1.0 / ess_chain)


def marginal_failures(x: np.ndarray, law: stats.rv_continuous, n_eff: float) -> list[str]:
    """Which of mean, std and K-S checks of 1-D samples ``x`` against ``law`` fail.

    Tolerances at n_eff effective samples: 4.5 standard errors for the mean (σ / √n) and the
    standard deviation (σ / √(2n), Gaussian case), and the K-S statistic's 0.1% critical
    value 1.95 / √n. With ~4 checks per marginal, a correct sampler fails one of them with
    probability ~1e-4 per seed; the seeds are fixed, so the outcome is deterministic.
    """
    mean, std = law.mean(), law.std()
    failures = []
    if abs(x.mean() - mean) > 4.5 * std / math.sqrt(n_eff):
        failures.append(f"mean {x.mean():.4f} vs {mean:.4f}")
    if abs(x.std() - std) > 4.5 * std / math.sqrt(2 * n_eff):
        failures.append(f"std {x.std():.4f} vs {std:.4f}")
    ks = stats.kstest(x, law.cdf).statistic
    if ks > 1.95 / math.sqrt(n_eff):
        failures.append(f"K-S {ks:.4f} > {1.95 / math.sqrt(n_eff):.4f}")
    return failures


# ---- mcmc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normal_run() -> MCMCResult:
    """N(0, 1) target: a Gaussian likelihood under a flat prior 20 σ wide."""
    prior = sbiflow.BoxUniform(-torch.full((1,), 10.0), torch.full((1,), 10.0))
    return mcmc(gaussian_log_likelihood(torch.zeros(1), torch.eye(1)), prior, 10_000, seed=1)


def test_mcmc_result_fields(normal_run: MCMCResult) -> None:
    r = normal_run
    steps, walkers, dim = r.chain.shape
    assert r.samples.shape == (10_000, 1) and r.samples.dtype == torch.float32
    assert dim == 1 and walkers == 1000 and r.log_prob.shape == (steps, walkers)
    assert r.autocorr_time.shape == (1,) and r.converged
    # The run is as long as the rule asks: burn-in of 3 τ or more, then 10 τ and enough
    # thinned samples.
    tau = float(r.autocorr_time.max())
    assert r.burn_in >= 3 * tau and steps - r.burn_in >= 10 * tau
    assert r.thin == max(1, int(tau))
    assert walkers * ((steps - r.burn_in) // r.thin) >= 10_000
    assert 0.1 < r.acceptance_fraction < 0.9
    # One batched call per half-step, plus the calls that score the starting candidates
    # (32 per walker, in batches of 8,192, at most four rounds).
    assert 2 * steps < r.num_calls <= 2 * steps + 4 * math.ceil(32 * walkers / 8192)
    assert r.sampler.iteration == steps


def test_mcmc_standard_normal(normal_run: MCMCResult) -> None:
    n_eff = effective_size(normal_run, 10_000)
    assert n_eff > 3000  # the tolerances below are then a few percent of σ
    x = normal_run.samples[:, 0].numpy()
    assert marginal_failures(x, stats.norm(0, 1), n_eff) == []
    # Negative controls: a shift of 0.15 σ or a width 10% too large must be detected.
    assert len(marginal_failures(x, stats.norm(0.15, 1), n_eff)) >= 2
    assert "std" in " ".join(marginal_failures(x, stats.norm(0, 1.1), n_eff))


def test_mcmc_correlated_gaussian_with_gaussian_prior() -> None:
    # Gaussian prior N(0, S0) and likelihood N(θ; m, S): the posterior is Gaussian with
    # precision P = S0⁻¹ + S⁻¹ and mean P⁻¹ S⁻¹ m. Correlations 0.8^|i-j|, scales 0.1 to 1.
    rng = np.random.default_rng(3)
    dim = 4
    scales = torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    corr = (
        torch.full((dim, dim), 0.8, dtype=torch.float64)
        ** torch.arange(dim).sub(torch.arange(dim)[:, None]).abs()
    )
    cov_l = scales[:, None] * corr * scales[None, :]
    m = torch.as_tensor(rng.normal(size=dim))
    cov_0 = torch.eye(dim, dtype=torch.float64) * 4.0
    prior = MultivariateNormal(torch.zeros(dim), covariance_matrix=cov_0.float())
    precision = torch.linalg.inv(cov_0) + torch.linalg.inv(cov_l)
    post_cov = torch.linalg.inv(precision)
    post_mean = post_cov @ torch.linalg.inv(cov_l) @ m

    result = mcmc(gaussian_log_likelihood(m, cov_l), prior, 10_000, seed=0, progress=False)
    n_eff = effective_size(result, 10_000)
    samples = result.samples.double().numpy()
    for i in range(dim):
        law = stats.norm(float(post_mean[i]), math.sqrt(float(post_cov[i, i])))
        assert marginal_failures(samples[:, i], law, n_eff) == [], i
    # Correlation coefficients: standard error (1 - r²) / √n.
    exact_r = post_cov / post_cov.diag().sqrt()[:, None] / post_cov.diag().sqrt()[None, :]
    r = np.corrcoef(samples.T)
    tol = 4.5 * (1 - exact_r.numpy() ** 2) / math.sqrt(n_eff) + 1e-12
    assert np.all(np.abs(r - exact_r.numpy()) <= tol)
    # Negative control: the marginals of the likelihood alone (prior forgotten) must fail.
    wrong = stats.norm(float(m[0]), math.sqrt(float(cov_l[0, 0])))
    assert marginal_failures(samples[:, 0], wrong, n_eff) != []


def test_mcmc_stays_in_support_and_calls_inside_only() -> None:
    # Likelihood N(0.8, 0.3²) on the prior [-1, 1): a quarter of its mass lies past 1.
    prior = sbi.utils.BoxUniform(-torch.ones(1), torch.ones(1))  # sbi's box works too
    seen = []

    def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
        seen.append(theta.clone())
        return (-0.5 * ((theta[:, 0] - 0.8) / 0.3) ** 2).float()

    result = mcmc(log_likelihood, prior, 5000, seed=2, progress=False)
    evaluated = torch.cat(seen)
    assert bool(((evaluated >= -1) & (evaluated < 1)).all())
    assert bool(((result.samples >= -1) & (result.samples < 1)).all())
    a, b = (-1 - 0.8) / 0.3, (1 - 0.8) / 0.3
    law = stats.truncnorm(a, b, loc=0.8, scale=0.3)
    assert marginal_failures(result.samples[:, 0].numpy(), law, effective_size(result, 5000)) == []


def test_mcmc_is_reproducible() -> None:
    prior = sbiflow.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    ll = gaussian_log_likelihood(torch.zeros(2), torch.eye(2) * 0.25)
    torch.manual_seed(123)
    a = mcmc(ll, prior, 2000, seed=5, progress=False)
    state = torch.random.get_rng_state()
    b = mcmc(ll, prior, 2000, seed=5, progress=False)
    c = mcmc(ll, prior, 2000, seed=6, progress=False)
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone


def test_mcmc_warns_when_max_steps_is_too_small() -> None:
    prior = sbiflow.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    ll = gaussian_log_likelihood(torch.zeros(2), torch.eye(2) * 0.25)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        result = mcmc(ll, prior, 10_000, num_walkers=32, max_steps=60, progress=False)
    assert not result.converged
    assert result.chain.shape[0] == 60 and result.samples.shape == (10_000, 2)


def test_mcmc_init_and_errors() -> None:
    prior = sbiflow.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    ll = gaussian_log_likelihood(torch.zeros(2), torch.eye(2))
    init = 0.5 * torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    result = mcmc(ll, prior, 1000, init=init, progress=False)
    assert result.chain.shape[1] == 40
    with pytest.raises(ValueError, match="shape"):
        mcmc(ll, prior, 100, init=torch.zeros(40, 3), progress=False)
    with pytest.raises(ValueError, match="finite"):
        mcmc(ll, prior, 100, init=init + 10, progress=False)
    with pytest.raises(ValueError, match="shape"):
        mcmc(lambda t: t, prior, 100, progress=False)
    with pytest.raises(ValueError, match="finite likelihood"):
        mcmc(lambda t: torch.full((len(t),), -math.inf), prior, 100, progress=False)


@pytest.mark.slow
def test_mcmc_two_moons_against_exact_reference() -> None:
    # Bimodal, crescent-shaped posterior; the reference is exact (rejection sampling).
    # Exact against exact scores C2ST 0.491-0.503 with 10,000 samples each (measured).
    from sbi.utils.metrics import c2st
    from threadpoolctl import threadpool_limits

    import simulators

    sim = simulators.get("two_moons")
    x_o = sim.observation(1)
    result = mcmc(lambda t: sim.log_likelihood(t, x_o), sim.prior, 10_000, progress=False)
    reference = sim.reference_posterior(x_o, 10_000, seed=0)
    assert result.converged
    with threadpool_limits(1):
        assert float(c2st(result.samples, reference, classifier="mlp")) < 0.53
        # Negative control: the same samples moved by 0.02 (about a moon's width).
        moved = result.samples + torch.tensor([0.02, 0.0])
        assert float(c2st(moved, reference, classifier="mlp")) > 0.53


# ---- nested ----------------------------------------------------------------------------

# Likelihood N(θ; m, S) (normalized in θ) under the box [-5, 5)²: Z = P(box) / 100.
BOX_M = torch.tensor([0.5, -0.3])
BOX_S = torch.tensor([[0.36, 0.2], [0.2, 0.25]])


def _box_log_evidence(half_width: float) -> float:
    dist = stats.multivariate_normal(BOX_M.numpy(), BOX_S.numpy())
    lo, hi = np.full(2, -half_width), np.full(2, half_width)
    mass = dist.cdf(hi) - dist.cdf([lo[0], hi[1]]) - dist.cdf([hi[0], lo[1]]) + dist.cdf(lo)
    return math.log(mass) - 2 * math.log(2 * half_width)


@pytest.fixture(scope="module")
def box_run() -> NestedResult:
    prior = sbiflow.BoxUniform(-5 * torch.ones(2), 5 * torch.ones(2))
    return nested(gaussian_log_likelihood(BOX_M, BOX_S), prior, nlive=400, seed=0, progress=False)


def test_nested_log_evidence_on_gaussian(box_run: NestedResult) -> None:
    exact = _box_log_evidence(5.0)
    err = box_run.log_evidence_err
    # dynesty's error: ~sqrt(information / nlive) = 0.09 here (it reports 0.11).
    assert 0.03 < err < 0.2
    assert abs(box_run.log_evidence - exact) < 3 * err
    # Negative control: the evidence of the prior [-3.5, 3.5)², 0.71 nats higher (a prior
    # volume off by half), must fail.
    assert abs(box_run.log_evidence - _box_log_evidence(3.5)) > 3 * err
    # information = KL(posterior | prior) = log(100) - log(2πe √det S)
    kl = math.log(100) - math.log(2 * math.pi * math.e * math.sqrt(float(torch.det(BOX_S))))
    assert abs(box_run.information - kl) < 0.3


def test_nested_posterior_moments(box_run: NestedResult) -> None:
    # Kish's effective size of the importance weights sets the tolerances.
    n_eff = 1.0 / float(np.sum(box_run.weights**2))
    assert n_eff > 1000
    samples = box_run.samples.double().numpy()
    assert samples.shape[1] == 2 and len(samples) == len(box_run.weights)
    for i in range(2):
        law = stats.norm(float(BOX_M[i]), math.sqrt(float(BOX_S[i, i])))
        assert marginal_failures(samples[:, i], law, n_eff) == [], i
    shifted = stats.norm(float(BOX_M[0]) + 0.15, math.sqrt(float(BOX_S[0, 0])))
    assert marginal_failures(samples[:, 0], shifted, n_eff) != []


def test_nested_batches_calls_and_is_reproducible(box_run: NestedResult) -> None:
    # Proposals go in batches of nlive / 5 = 80 points; a batch shrinks as its proposals
    # find points above the likelihood threshold, so calls are ~1/20 of evaluations.
    evaluations = int(np.sum(box_run.result.ncall))
    assert box_run.num_calls < evaluations / 15
    # The batches are the same in every run (threads wait for each other), so the seed
    # fixes the result.
    prior = sbiflow.BoxUniform(-5 * torch.ones(2), 5 * torch.ones(2))
    ll = gaussian_log_likelihood(BOX_M, BOX_S)
    runs = [nested(ll, prior, nlive=50, dlogz=1.0, seed=s, progress=False) for s in (3, 3, 4)]
    assert runs[0].log_evidence == runs[1].log_evidence
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert runs[0].log_evidence != runs[2].log_evidence


# ~10 s of dynesty at 300 live points; the default run checks a Gaussian prior's evidence
# end to end (tests/test_cli.py, NLE run on gaussian_linear) and num_samples below
@pytest.mark.slow
def test_nested_gaussian_prior_evidence_and_num_samples() -> None:
    # Prior N(0, 4 I) and likelihood N(θ; m, S): Z = N(m; 0, 4 I + S), closed form.
    dim = 3
    m = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    cov_l = torch.diag(torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64) ** 2)
    prior = MultivariateNormal(torch.zeros(dim), covariance_matrix=4 * torch.eye(dim))
    exact = float(MultivariateNormal(torch.zeros(dim), 4 * torch.eye(dim) + cov_l).log_prob(m))
    result = nested(
        gaussian_log_likelihood(m, cov_l), prior, nlive=300, num_samples=3000, progress=False
    )
    assert abs(result.log_evidence - exact) < 3 * result.log_evidence_err
    # Negative control: a prior standard deviation of 1.5 instead of 2 (0.71 nats higher).
    wrong = float(MultivariateNormal(torch.zeros(dim), 2.25 * torch.eye(dim) + cov_l).log_prob(m))
    assert wrong - exact > 0.7
    assert abs(result.log_evidence - wrong) > 3 * result.log_evidence_err
    assert result.samples.shape == (3000, dim)


def test_nested_progress_into_a_log_file_is_one_line(capfd) -> None:
    """Not a terminal (pytest captures stderr): no per-iteration lines, one summary."""
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    result = nested(
        lambda t: -0.5 * (t**2).sum(-1) / 0.1, prior, nlive=50, num_samples=700, progress=True
    )
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dynesty: ") and "log Z = " in lines[0]
    # num_samples equal-weight draws, resampled from the weighted dead points
    assert result.samples.shape == (700, 2)
    assert torch.all(result.samples.abs() <= 1)


def test_nested_unbatched_and_errors_propagate() -> None:
    prior = sbiflow.BoxUniform(-torch.ones(1), torch.ones(1))
    ll = gaussian_log_likelihood(torch.zeros(1), torch.eye(1) * 0.04)
    result = nested(ll, prior, nlive=50, batch_size=1, dlogz=1.0, progress=False)
    assert result.num_calls == int(np.sum(result.result.ncall))  # one point per call

    calls = []

    def failing(theta: torch.Tensor) -> torch.Tensor:
        calls.append(len(theta))
        if len(calls) > 3:
            raise RuntimeError("likelihood broke")
        return ll(theta)

    with pytest.raises(RuntimeError, match="likelihood broke"):
        nested(failing, prior, nlive=50, batch_size=10, progress=False)


def test_nested_needs_a_transform_for_other_priors() -> None:
    prior = Independent(Gamma(torch.ones(2), torch.ones(2)), 1)
    with pytest.raises(UnsupportedPriorError, match="Gamma"):
        nested(lambda t: -(t**2).sum(-1), prior, progress=False)
    # With the user's own transform (Exp(1) marginals: θ = -log(1 - u)) it runs.
    result = nested(
        lambda t: -(t**2).sum(-1),
        prior,
        nlive=50,
        dlogz=1.0,
        progress=False,
        prior_transform=lambda u: -np.log1p(-u),
    )
    assert bool((result.samples > 0).all())


# ---- prior_transform -------------------------------------------------------------------

U = np.random.default_rng(0).random((20_000, 3))  # uniform draws on the unit cube


def _check_law(theta: np.ndarray, marginals: list) -> None:
    for i, law in enumerate(marginals):
        # i.i.d. draws: K-S test at the 1% level.
        assert stats.kstest(theta[:, i], law.cdf).pvalue > 0.01, i


@pytest.mark.parametrize("box", [sbiflow.BoxUniform, sbi.utils.BoxUniform])
def test_prior_transform_box(box) -> None:
    low, high = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 5.0, 2.5])
    transform = prior_transform(box(low, high))
    theta = transform(U)
    assert theta.shape == U.shape and theta.dtype == np.float64
    np.testing.assert_allclose(theta, low.numpy() + U * (high - low).numpy(), rtol=1e-6)
    np.testing.assert_allclose(transform(U[0]), theta[0])
    # u just below 1 stays below high, also after rounding to float32.
    top = transform(np.full(3, np.nextafter(1.0, 0.0))).astype(np.float32)
    assert np.all(top < high.numpy())


def test_prior_transform_independent_marginals() -> None:
    loc, scale = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 0.5, 3.0])
    normal = prior_transform(Independent(Normal(loc, scale), 1))(U)
    _check_law(
        normal, [stats.norm(m, s) for m, s in zip(loc.tolist(), scale.tolist(), strict=True)]
    )
    laplace = prior_transform(Independent(Laplace(loc, scale), 1))(U)
    _check_law(
        laplace, [stats.laplace(m, s) for m, s in zip(loc.tolist(), scale.tolist(), strict=True)]
    )
    np.testing.assert_allclose(
        laplace, Laplace(loc.double(), scale.double()).icdf(torch.as_tensor(U)).numpy()
    )
    # Negative control: the normal draws are not Laplace-distributed.
    with pytest.raises(AssertionError):
        _check_law(
            normal, [stats.laplace(m, s) for m, s in zip(loc.tolist(), scale.tolist(), strict=True)]
        )
    # u = 0 and u -> 1 give finite values.
    assert np.isfinite(prior_transform(Independent(Normal(loc, scale), 1))(np.zeros(3))).all()


def test_prior_transform_multivariate_normal() -> None:
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 2.0, -0.5], [0.0, -0.5, 0.5]])
    mean = torch.tensor([1.0, -1.0, 0.0])
    theta = prior_transform(MultivariateNormal(mean, covariance_matrix=cov))(U)
    # Sample covariance of n i.i.d. Gaussian draws: entry (i, j) has standard error
    # sqrt((Σii Σjj + Σij²) / n); the mean, sqrt(Σii / n). Tolerance 4.5 standard errors.
    c, n = cov.double().numpy(), len(theta)
    se_cov = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)
    assert np.all(np.abs(np.cov(theta.T) - c) < 4.5 * se_cov)
    assert np.all(np.abs(theta.mean(0) - mean.numpy()) < 4.5 * np.sqrt(np.diag(c) / n))
    # Negative control: the identity covariance (correlations forgotten) must fail.
    assert not np.all(np.abs(np.cov(theta.T) - np.eye(3)) < 4.5 * se_cov)
    _check_law(theta, [stats.norm(float(mean[i]), math.sqrt(float(cov[i, i]))) for i in range(3)])


def test_prior_transform_univariate_and_pickle() -> None:
    transform = prior_transform(Normal(torch.tensor(1.0), torch.tensor(2.0)))
    theta = transform(U[:, :1])
    assert theta.shape == (len(U), 1)
    _check_law(theta, [stats.norm(1.0, 2.0)])
    restored = pickle.loads(pickle.dumps(transform))
    np.testing.assert_array_equal(restored(U[:5, :1]), theta[:5])


class _Custom(Distribution):
    pass


@pytest.mark.parametrize(
    "prior",
    [
        MixtureSameFamily(
            Categorical(torch.ones(2)), Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
        ),
        Independent(Gamma(torch.ones(3), torch.ones(3)), 1),
        _Custom(event_shape=torch.Size([3]), validate_args=False),
    ],
)
def test_prior_transform_unsupported(prior: Distribution) -> None:
    with pytest.raises(TypeError, match="mcmc") as info:
        prior_transform(prior)
    assert isinstance(info.value, UnsupportedPriorError)
    assert type(prior).__name__ in str(info.value) and "prior_transform=" in str(info.value)


# ---- docs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mcmc", "nested", "prior_transform"])
def test_doctests(name: str) -> None:
    module = sys.modules[f"sbiflow.samplers.{name}"]
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
