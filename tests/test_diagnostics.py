"""Calibration diagnostics on an exact posterior, and on too-narrow and too-wide ones."""

import pytest
import torch

import simulators
from sbiflow.diagnostics import expected_coverage, sbc, sbc_and_coverage, tarp

NUM_TESTS, NUM_SAMPLES = 400, 500
LEVELS = (0.5, 0.68, 0.95)
# Binomial std of a coverage estimate from 400 tests is at most 0.025: 3 std is 0.075.
COVERAGE_TOL = 0.075


class ScaledGaussianPosterior:
    """The exact gaussian_linear posterior with its std multiplied by ``scale``."""

    def __init__(self, sim, scale: float) -> None:
        self.sim, self.scale = sim, scale

    def _dist(self, x):
        exact = self.sim.posterior(x)
        return torch.distributions.Independent(
            torch.distributions.Normal(exact.mean, self.scale * exact.base_dist.scale), 1
        )

    def sample(self, n, x, *, seed=None):
        gen = torch.Generator().manual_seed(seed or 0)
        d = self._dist(x)
        return d.mean + d.base_dist.scale * torch.randn(n, d.mean.shape[0], generator=gen)

    def log_prob(self, theta, x, *, normalize=True):
        return self._dist(x).log_prob(theta)


@pytest.fixture(scope="module")
def test_set():
    sim = simulators.get("gaussian_linear", dim=2)
    torch.manual_seed(0)
    theta = sim.prior.sample((NUM_TESTS,))
    return sim, theta, sim.simulate(theta, 0)


def test_exact_posterior_is_calibrated(test_set):
    sim, theta, x = test_set
    posterior = ScaledGaussianPosterior(sim, 1.0)
    result = expected_coverage(posterior, theta, x, LEVELS, NUM_SAMPLES, progress=False)
    assert torch.allclose(result.coverage, torch.tensor(LEVELS), atol=COVERAGE_TOL)
    ranks = sbc(posterior, theta, x, NUM_SAMPLES, progress=False)
    assert ranks.ranks.shape == (NUM_TESTS, 2)
    assert (ranks.ks_pvalues > 0.01).all()
    assert ranks.c2st_ranks is None  # sbi's classifier checks only when asked for
    checked = sbc(posterior, theta, x, NUM_SAMPLES, progress=False, c2st_checks=True)
    assert checked.c2st_ranks.shape == (2,) and (checked.c2st_ranks < 0.6).all()
    assert torch.equal(checked.ks_pvalues, ranks.ks_pvalues)  # same seed, same ranks
    # both from one set of draws: the same ranks, levels and coverage as the two calls
    both, covered = sbc_and_coverage(posterior, theta, x, LEVELS, NUM_SAMPLES, progress=False)
    assert torch.equal(both.ranks, ranks.ranks) and torch.equal(both.ks_pvalues, ranks.ks_pvalues)
    assert torch.equal(covered.hpd_levels, result.hpd_levels)
    assert torch.equal(covered.coverage, result.coverage)


def test_too_narrow_and_too_wide_posteriors_are_flagged(test_set):
    sim, theta, x = test_set
    narrow = expected_coverage(
        ScaledGaussianPosterior(sim, 0.6), theta, x, LEVELS, NUM_SAMPLES, progress=False
    )
    wide = expected_coverage(
        ScaledGaussianPosterior(sim, 1.6), theta, x, LEVELS, NUM_SAMPLES, progress=False
    )
    nominal = torch.tensor(LEVELS)
    assert (narrow.coverage < nominal - COVERAGE_TOL).all()  # overconfident
    assert (wide.coverage[:2] > nominal[:2] + COVERAGE_TOL).all()  # conservative
    ranks = sbc(ScaledGaussianPosterior(sim, 0.6), theta, x, NUM_SAMPLES, progress=False)
    assert (ranks.ks_pvalues < 0.01).all()


def test_tarp_agrees(test_set):
    sim, theta, x = test_set
    _, _, atc_exact, p_exact = tarp(
        ScaledGaussianPosterior(sim, 1.0), theta, x, NUM_SAMPLES, progress=False
    )
    _, _, atc_narrow, p_narrow = tarp(
        ScaledGaussianPosterior(sim, 0.6), theta, x, NUM_SAMPLES, progress=False
    )
    # The area to curve is TARP's telling number here (its K-S p-value has little power on
    # 400 tests): 0.008 exact, -0.055 at 0.6x the std, +0.064 at 1.6x (measured).
    assert abs(atc_exact) < 0.025
    assert atc_narrow < -0.04


class _NoisyEmulator:
    """Stands in for a trained NLE: x = θ + noise of a chosen std."""

    def __init__(self, std: float) -> None:
        self.std = std

    def simulate(self, theta, *, seed=None):
        gen = torch.Generator().manual_seed(seed or 0)
        return theta + self.std * torch.randn(theta.shape, generator=gen)


def test_posterior_predictive_check(test_set):
    from sbiflow.diagnostics import posterior_predictive

    sim, theta, x = test_set
    x_o = x[0]
    samples = sim.posterior(x_o).sample((2_000,))
    good = posterior_predictive(samples, sim, x_o, emulator=_NoisyEmulator(0.1**0.5))
    assert good.simulated.shape == (1_000, 2) and good.emulated.shape == (1_000, 2)
    assert good.p_value > 0.01 and good.emulator_p_value > 0.01
    assert ((good.percentiles > 0.005) & (good.percentiles < 0.995)).all()
    # negative controls: an observation the model cannot produce; an emulator too noisy
    far = posterior_predictive(samples, sim, x_o + 3.0, emulator=_NoisyEmulator(0.6))
    assert far.p_value < 0.01 and far.emulator_p_value < 0.01


def test_posterior_predictive_p_value_is_uniform_when_x_has_more_elements_than_draws():
    """300 elements, 100 draws: the check must not call every observation atypical.

    (The sample covariance of 100 draws in 300 dimensions is singular; with it, every
    observation sat far outside the draws and the dwarf's report flagged p = 0.)
    """
    from sbiflow.diagnostics import posterior_predictive

    def simulator(theta):  # (n, 1) -> (n, 300): a level plus a smooth trend plus noise
        grid = torch.linspace(0.0, 1.0, 300)
        return theta + 0.5 * theta * grid + torch.randn(theta.shape[0], 300)

    p_values, shifted = [], []
    for seed in range(20):
        torch.manual_seed(seed)
        samples = 1.0 + 0.1 * torch.randn(1_000, 1)
        x_o = simulator(samples[:1])[0]  # an observation the model makes
        check = posterior_predictive(samples, simulator, x_o, num_draws=100, seed=seed)
        p_values.append(check.p_value)
        shifted.append(
            posterior_predictive(samples, simulator, x_o + 1.0, num_draws=100, seed=seed)
        )
    assert sum(p < 0.05 for p in p_values) <= 3  # 1 expected of 20; the old test gave 20
    assert 0.3 < sum(p_values) / len(p_values) < 0.7
    assert all(check.p_value < 0.05 for check in shifted)  # negative control


def test_posterior_predictive_refuses_fewer_than_four_draws(test_set):
    from sbiflow.diagnostics import posterior_predictive

    sim, _, x = test_set
    samples = sim.posterior(x[0]).sample((3,))
    with pytest.raises(ValueError, match="at least 4 draws, got 3"):
        posterior_predictive(samples, sim, x[0], num_draws=3)


def test_calibration_and_predictive_plots_are_written(test_set, tmp_path):
    from sbiflow.diagnostics import posterior_predictive
    from sbiflow.plots import coverage_plot, predictive_plot, rank_plot

    sim, theta, x = test_set
    posterior = ScaledGaussianPosterior(sim, 1.0)
    coverage = expected_coverage(posterior, theta[:100], x[:100], LEVELS, 100, progress=False)
    ranks = sbc(posterior, theta[:100], x[:100], 100, progress=False)
    check = posterior_predictive(posterior.sample(500, x[0]), sim, x[0])
    coverage_plot(coverage, path=tmp_path / "coverage.png")
    rank_plot(ranks, labels=sim.labels, path=tmp_path / "ranks.png")
    predictive_plot(check, path=tmp_path / "predictive.png")
    for name in ("coverage.png", "ranks.png", "predictive.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_corner_plot_legend_titles_and_ranges(tmp_path):
    from sbiflow.plots import corner_plot

    g = torch.Generator().manual_seed(0)
    samples = torch.randn(4000, 2, generator=g)
    samples[0, 0] = 1e3  # one stray draw must not set the axis range
    reference = 0.9 * torch.randn(4000, 2, generator=g)
    figure = corner_plot(
        samples,
        labels=["a", "b"],
        truths=[0.1, -0.2],
        reference=reference,
        path=tmp_path / "corner.png",
    )
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["posterior samples", "reference", "truth"]
    diagonal = [figure.axes[0], figure.axes[3]]
    assert all(axis.get_title().startswith(("a =", "b =")) for axis in diagonal)
    low, high = figure.axes[0].get_xlim()
    assert -5 < low < -2 and 2 < high < 5
    assert (tmp_path / "corner.png").stat().st_size > 20_000


def test_calibration_over_test_simulations_does_not_warn_about_the_training_range(quick_npe):
    import warnings

    theta = torch.zeros(4, 2)
    standardizer = quick_npe.estimator.b_standardizer
    x = (standardizer.high + 0.5 * standardizer.std).expand(4, -1)  # just past the training range
    # negative control: for the user's own observation the warning is given
    with pytest.warns(UserWarning, match="outside the range of the training simulations"):
        quick_npe.sample(10, x=x[0], seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected_coverage(quick_npe, theta, x, num_posterior_samples=20, progress=False)
        sbc(quick_npe, theta, x, num_posterior_samples=20, progress=False)
    assert not [w for w in caught if "training simulations" in str(w.message)]
    # and the filter is gone afterwards
    with pytest.warns(UserWarning, match="outside the range of the training simulations"):
        quick_npe.sample(10, x=x[0], seed=0)


@pytest.mark.parametrize("diagnostic", [sbc, expected_coverage, sbc_and_coverage])
def test_bad_test_pairs_and_levels_are_refused(test_set, diagnostic):
    sim, theta, x = test_set
    posterior = ScaledGaussianPosterior(sim, 1.0)
    for bad_theta, bad_x in [(theta[:5], x[:4]), (theta[:5, 0], x[:5]), (theta[:0], x[:0])]:
        with pytest.raises(ValueError, match="must be B > 0 test pairs"):
            diagnostic(posterior, bad_theta, bad_x, num_posterior_samples=10, progress=False)
    if diagnostic is not sbc:
        with pytest.raises(ValueError, match=r"levels must lie in \(0, 1\)"):
            diagnostic(posterior, theta[:5], x[:5], (0.5, 1.5), 10, progress=False)
