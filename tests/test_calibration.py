"""Calibrated defaults: balanced training, the vectorized ensemble, the post-fit check."""

import copy

import pytest
import torch

import sbiflow
from sbiflow.diagnostics import expected_coverage
from sbiflow.estimators import ConditionalEstimator, build_estimator
from sbiflow.estimators.ensemble import EnsembleEstimator
from sbiflow.inference.balanced import BalancedLoss
from sbiflow.inference.calibration import CalibrationCheck, CalibrationWarning
from sbiflow.training import TrainingConfig, train

PRIOR = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))


def linear_gaussian(n: int, seed: int, noise: float = 0.3, dim_x: int = 2):
    """θ ~ U(-1, 1)², x = (θ, 0, ...) + noise: a posterior of known width."""
    g = torch.Generator().manual_seed(seed)
    theta = 2.0 * torch.rand(n, 2, generator=g) - 1.0
    x = torch.zeros(n, dim_x)
    x[:, :2] = theta
    return theta, x + noise * torch.randn(n, dim_x, generator=g)


# -- balanced training ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nsf", "ensemble"])
def test_balance_off_is_the_plain_loss(kind):
    torch.manual_seed(0)
    q = build_estimator(kind, (2,), (2,), hidden_features=8, num_transforms=2)
    theta, x = linear_gaussian(64, 0)
    q.standardize_from(theta, x)
    plain = q.loss(theta, x)
    assert torch.allclose(BalancedLoss(q, PRIOR, 0.0).loss(theta, x), plain, atol=1e-6)
    balanced = BalancedLoss(q, PRIOR, 100.0).loss(theta, x)
    # the penalty is one number per batch, added to every row, and it is not zero here
    shift = balanced - plain
    assert torch.allclose(shift, shift[0].expand_as(shift), atol=1e-5)
    assert float(shift[0].detach()) > 0


def test_balance_penalty_by_hand():
    """The penalty is (mean σ(d(θ, x)) + mean σ(d(θ', x)) - 1)², d = log q - log p."""
    torch.manual_seed(1)
    q = build_estimator("nsf", (2,), (2,), hidden_features=8, num_transforms=2)
    theta, x = linear_gaussian(32, 1)
    q.standardize_from(theta, x)
    log_prior = PRIOR.log_prob(theta)
    d_joint = q.log_prob(theta, x) - log_prior
    d_marginal = q.log_prob(theta.roll(1, 0), x) - log_prior.roll(1, 0)
    penalty = (torch.sigmoid(d_joint).mean() + torch.sigmoid(d_marginal).mean() - 1) ** 2
    got = BalancedLoss(q, PRIOR, 7.0).loss(theta, x) - q.loss(theta, x)
    assert torch.allclose(got, 7.0 * penalty.expand(32), atol=1e-5)


def test_balance_options_and_errors():
    assert sbiflow.NPE(PRIOR).balance == sbiflow.NPE.DEFAULT_BALANCE
    assert sbiflow.NPE(PRIOR, estimator="ensemble", balance=100).balance == 100.0
    with pytest.raises(ValueError, match="balance must be"):
        sbiflow.NPE(PRIOR, balance=-1.0)
    with pytest.raises(ValueError, match="exact log density"):
        sbiflow.NPE(PRIOR, estimator="score", balance=10.0)
    with pytest.raises(ValueError, match="calibration must be one of"):
        sbiflow.NPE(PRIOR, calibration="always")


def test_balanced_training_fits_and_saves(tmp_path):
    theta, x = linear_gaussian(400, 9)
    npe = sbiflow.NPE(PRIOR, balance=100.0, calibration="off", hidden_features=8)
    npe.fit(theta, x, max_epochs=3, progress=False)
    path = tmp_path / "bnpe.pt"
    sbiflow.save(npe, path)
    assert sbiflow.load(path, prior=PRIOR).balance == 100.0


# -- the vectorized ensemble -----------------------------------------------------------------
def test_vectorized_ensemble_equals_members_trained_one_by_one():
    """Same initial weights, seed and batches: the ensemble's members are the lone members."""
    theta, x = linear_gaussian(600, 2)
    torch.manual_seed(0)
    ensemble = EnsembleEstimator((2,), (2,), num_members=3, hidden_features=16, num_transforms=2)
    ensemble.standardize_from(theta, x)
    alone = [copy.deepcopy(m) for m in ensemble.members]
    config = TrainingConfig(
        max_epochs=3, stop_after_epochs=100, progress=False, seed=0, clip_max_norm=0.5
    )
    train(ensemble, theta, x, config)
    for member in alone:
        train(member, theta, x, config)
    a, b = linear_gaussian(100, 3)
    with torch.no_grad():
        got = ensemble.member_log_probs(a, b)
        want = torch.stack([m.log_prob(a, b) for m in alone])
        start = EnsembleEstimator((2,), (2,), num_members=3, hidden_features=16, num_transforms=2)
    assert torch.allclose(got, want, atol=1e-3), float((got - want).abs().max())
    # negative control: the trained members moved away from any untrained one
    assert not torch.allclose(start.member_log_probs(a, b), want, atol=1e-1)


def test_vectorized_and_member_by_member_evaluation_agree():
    torch.manual_seed(0)
    vec = EnsembleEstimator((3,), (2,), num_members=4, hidden_features=8, num_transforms=2)
    loop = EnsembleEstimator(
        (3,), (2,), num_members=4, hidden_features=8, num_transforms=2, vectorized=False
    )
    loop.load_state_dict(vec.state_dict())
    a, b = torch.randn(20, 3), torch.randn(20, 2)
    assert torch.allclose(vec.log_prob(a, b), loop.log_prob(a, b), atol=1e-5)
    assert torch.allclose(vec.loss(a, b), loop.loss(a, b), atol=1e-5)
    assert vec.sample(33, b[0]).shape == (33, 3)


# -- the calibration check -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_npe():
    theta, x = linear_gaussian(2000, 4)
    return sbiflow.NPE(PRIOR, calibration="check", hidden_features=32).fit(theta, x, progress=False)


def test_fit_stores_a_calibration_check(trained_npe, tmp_path):
    check = trained_npe.calibration
    assert isinstance(check, CalibrationCheck)
    assert check.num_simulations == 200 and check.source == "validation simulations"
    assert check.calibrated, check.summary()
    path = tmp_path / "npe.pt"
    sbiflow.save(trained_npe, path)
    loaded = sbiflow.load(path, prior=PRIOR)
    assert loaded.calibration.coverage == check.coverage and loaded.balance == 0.0


def test_fast_check_matches_sbi_run_sbc(trained_npe):
    """The batched HPD levels are sbi's SBC ranks with the log density (up to draws)."""
    theta, x = linear_gaussian(60, 5)
    fast = trained_npe.check_calibration(theta, x, num_samples=1000, warn=False)
    slow = expected_coverage(trained_npe, theta, x, num_posterior_samples=1000, progress=False)
    assert fast.hpd_levels is not None
    assert float((fast.hpd_levels - slow.hpd_levels).abs().mean()) < 0.03
    # negative control: the levels are not interchangeable between pairs
    assert float((fast.hpd_levels - slow.hpd_levels.roll(1)).abs().mean()) > 0.1


def test_overconfident_estimator_is_flagged():
    """Negative control: 100 simulations with 20 nuisance dimensions, no early stopping."""
    theta, x = linear_gaussian(100, 6, dim_x=20)
    overfit = sbiflow.NPE(PRIOR, calibration="off").fit(
        theta, x, progress=False, max_epochs=300, stop_after_epochs=10**4, lr_decays=0
    )
    theta_test, x_test = linear_gaussian(300, 7, dim_x=20)
    with pytest.warns(CalibrationWarning, match="ensemble"):
        check = overfit.check_calibration(theta_test, x_test)
    assert not check.calibrated and check.overconfident_levels


class _ExactGaussianPosterior(ConditionalEstimator):
    """θ ~ N(0, I), x = θ + σ n: q(θ | x) = N(x / (1 + σ²), s² I), s² = σ² / (1 + σ²) × width²."""

    def __init__(self, sigma: float, width: float = 1.0) -> None:
        super().__init__((2,), (2,))
        self.sigma, self.width = sigma, width
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the check reads the device from it

    def _posterior(self, b):
        scale = self.width * self.sigma / (1 + self.sigma**2) ** 0.5
        return torch.distributions.Normal(b / (1 + self.sigma**2), scale)

    def log_prob(self, a, b):
        return self._posterior(b).log_prob(a).sum(-1)

    def sample_each(self, b):
        return self._posterior(b).sample()


def test_check_passes_the_exact_posterior_and_flags_a_narrow_one():
    """The check itself: exact posterior calibrated; 0.7x its width flagged (control)."""
    from sbiflow.inference.calibration import check_calibration

    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1
    )
    g = torch.Generator().manual_seed(8)
    theta = torch.randn(1000, 2, generator=g)
    x = theta + 0.5 * torch.randn(1000, 2, generator=g)
    torch.manual_seed(0)
    exact = check_calibration(_ExactGaussianPosterior(0.5), prior, theta, x, num_samples=400)
    assert exact.calibrated, exact.summary()
    for level, cov in zip(exact.levels, exact.coverage, strict=True):
        assert abs(cov - level) < 0.045, exact.summary()
    narrow = check_calibration(
        _ExactGaussianPosterior(0.5, width=0.7), prior, theta, x, num_samples=400
    )
    assert narrow.overconfident_levels == [0.5, 0.68, 0.95], narrow.summary()
    wide = check_calibration(
        _ExactGaussianPosterior(0.5, width=1.4), prior, theta, x, num_samples=400
    )
    assert wide.calibrated and all(c > lv for c, lv in zip(wide.coverage, wide.levels, strict=True))


def test_check_calibration_rejects_bad_input(trained_npe):
    with pytest.raises(ValueError, match="must be B pairs"):
        trained_npe.check_calibration(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="must be B pairs"):
        trained_npe.check_calibration(torch.zeros(5, 2), torch.zeros(5, 3))


# -- calibration="auto" ------------------------------------------------------------------------
@pytest.mark.calibration_defaults
def test_auto_trains_an_ensemble_on_a_small_budget():
    from conftest import SHIPPED_SMALL_BUDGET

    assert sbiflow.NPE.SMALL_BUDGET == SHIPPED_SMALL_BUDGET == 5_000
    theta, x = linear_gaussian(300, 10)
    npe = sbiflow.NPE(PRIOR, hidden_features=8).fit(theta, x, max_epochs=2, progress=False)
    assert npe.estimator_kind == "ensemble" and isinstance(npe.estimator, EnsembleEstimator)
    assert npe.estimator.num_members == sbiflow.NPE.ENSEMBLE_MEMBERS
    assert npe.estimator.member == "nsf" and npe.calibration is not None
    assert npe.balance == sbiflow.NPE.ENSEMBLE_BALANCE  # BNPE members unless told otherwise
    # widened by the first listed temperature that reaches every level on the 30 validation
    # rows (or the best of them), which give the check stored
    choice = npe.temperature_choice
    assert choice is not None and npe.temperature == choice.temperature
    assert choice.temperature in sbiflow.NPE.ENSEMBLE_TEMPERATURES
    assert choice.coverage == npe.calibration.coverage and choice.num_simulations == 30
    assert "chose the ensemble's temperature" in npe.calibration.source
    rows = npe.history.validation_index
    draws = sbiflow.NPE.CALIBRATION_DRAWS
    chosen = npe.check_calibration(theta[rows], x[rows], num_samples=draws, warn=False)
    assert chosen.coverage == choice.coverage  # the check is reproducible from its rows
    if choice.reached:  # no smaller temperature of the list reached every level
        for temperature in [t for t in sbiflow.NPE.ENSEMBLE_TEMPERATURES if t < choice.temperature]:
            npe.estimator.set_temperature(temperature)
            npe._cache.clear()
            check = npe.check_calibration(theta[rows], x[rows], num_samples=draws, warn=False)
            assert check.shortfall > 0, temperature
    told = sbiflow.NPE(PRIOR, balance=0.0, hidden_features=8)
    assert told.fit(theta, x, max_epochs=1, progress=False).balance == 0.0
    # "check" keeps the requested estimator whatever the budget
    single = sbiflow.NPE(PRIOR, calibration="check", hidden_features=8)
    single.fit(theta, x, max_epochs=2, progress=False)
    assert single.estimator_kind == "nsf" and single.calibration is not None
    assert single.balance == 0.0
    off = sbiflow.NPE(PRIOR, calibration="off", hidden_features=8)
    assert off.fit(theta, x, max_epochs=2, progress=False).calibration is None


def shortfall(coverage, levels=(0.5, 0.68, 0.95)) -> float:
    return max(lv - c for lv, c in zip(levels, coverage, strict=True))


def test_auto_widens_an_overconfident_flow_by_a_temperature(monkeypatch):
    """Above the small budget, an overconfident flow is widened, not retrained.

    The flow that ``calibration="check"`` flags (same seed, same training) gets the
    temperature chosen on one half of the validation rows; on 1,000 fresh simulations it is
    then calibrated where the plain flow is not. At T = 1 it is the flow "check" trained.
    """
    monkeypatch.setattr(sbiflow.NPE, "SMALL_BUDGET", 50)
    monkeypatch.setattr(sbiflow.NPE, "MAX_TEMPERATURE", 4.0)  # keep the flow whatever its T
    theta, x = linear_gaussian(1_000, 11, dim_x=10)
    options = {"max_epochs": 100, "stop_after_epochs": 10**4, "lr_decays": 0}
    options["validation_fraction"] = 0.5  # 500 validation simulations: 250 choose T, 250 check
    first = sbiflow.NPE(PRIOR, calibration="check", hidden_features=16)
    with pytest.warns(CalibrationWarning):
        first.fit(theta, x, progress=False, **options)
    auto = sbiflow.NPE(PRIOR, hidden_features=16).fit(theta, x, progress=False, **options)
    choice = auto.temperature_choice
    assert auto.estimator_kind == "nsf" and auto.balance == 0.0
    assert choice.reached and auto.temperature == choice.temperature > 1.2
    assert choice.num_simulations == auto.calibration.num_simulations == 250
    assert "not used to choose the temperature" in auto.calibration.source
    assert auto.calibration.calibrated
    test_theta, test_x = linear_gaussian(1_000, 99, dim_x=10)
    plain = first.check_calibration(test_theta, test_x, warn=False)
    tempered = auto.check_calibration(test_theta, test_x, warn=False)
    # T is chosen on 250 simulations: its coverage is known to two binomial errors (0.063)
    tuning_error = 2 * (0.25 / choice.num_simulations) ** 0.5
    assert shortfall(plain.coverage) > 0.1 and shortfall(tempered.coverage) < tuning_error
    auto.estimator.set_temperature(1.0)
    assert torch.allclose(
        auto.estimator.log_prob(theta[:50], x[:50]),
        first.estimator.log_prob(theta[:50], x[:50]),
        atol=1e-5,
    )


@pytest.mark.calibration_defaults
def test_the_rule_that_sends_a_flow_to_the_ensemble():
    """Kept: a flow that a small temperature calibrates, or brings within 0.03 of every level
    at ``MAX_TEMPERATURE``, where the search stops. Ensemble: one short even at its best
    temperature, or one that needs more than ``MAX_TEMPERATURE`` (its shape is off)."""
    from sbiflow.inference.temperature import TemperatureChoice

    def choice(temperature, coverage):
        return TemperatureChoice(temperature, coverage, (0.5, 0.68, 0.95), 500)

    npe = sbiflow.NPE(PRIOR)
    assert sbiflow.NPE.MAX_TEMPERATURE == 1.15 and sbiflow.NPE.RETRAIN_SHORTFALL == 0.03
    assert not npe._needs_ensemble(choice(1.0, (0.5, 0.7, 0.95)))
    assert not npe._needs_ensemble(choice(1.12, (0.5, 0.7, 0.95)))
    assert not npe._needs_ensemble(choice(1.12, (0.48, 0.7, 0.95)))  # within 0.03
    assert npe._needs_ensemble(choice(1.3, (0.5, 0.7, 0.95)))
    # the search stops at the cap: a flow at the cap within 0.03 of every level is kept
    assert not npe._needs_ensemble(choice(1.15, (0.48, 0.67, 0.95)))
    assert npe._needs_ensemble(choice(1.15, (0.46, 0.67, 0.95)))
    assert npe._needs_ensemble(choice(1.1, (0.45, 0.7, 0.95)))


# ~20 s, six trainings: slow; test_the_rule_that_sends_a_flow_to_the_ensemble checks the rule
@pytest.mark.slow
@pytest.mark.calibration_defaults
def test_auto_retrains_a_flow_no_temperature_fixes_as_an_ensemble(monkeypatch):
    """A flow wrong in more than its width (here overfitted) is trained again as an ensemble."""
    monkeypatch.setattr(sbiflow.NPE, "SMALL_BUDGET", 50)
    theta, x = linear_gaussian(600, 11, dim_x=20)
    options = {"max_epochs": 150, "stop_after_epochs": 10**4, "lr_decays": 0}
    options["validation_fraction"] = 0.5
    first = sbiflow.NPE(PRIOR, calibration="check", hidden_features=16)
    with pytest.warns(CalibrationWarning):
        first.fit(theta, x, progress=False, **options)
    auto = sbiflow.NPE(PRIOR, hidden_features=16).fit(theta, x, progress=False, **options)
    assert not auto.temperature_choice.reached
    assert auto.temperature_choice.shortfall > sbiflow.NPE.RETRAIN_SHORTFALL
    assert auto.estimator_kind == "ensemble"
    assert auto.balance == sbiflow.NPE.ENSEMBLE_BALANCE
    assert auto.calibration.shortfall < first.calibration.shortfall


def test_bootstrap_weights_are_exponential_fixed_and_independent():
    from scipy import stats

    torch.manual_seed(0)
    ensemble = EnsembleEstimator((2,), (3,), num_members=4, bootstrap=True, hidden_features=8)
    a, b = torch.randn(20_000, 2), torch.randn(20_000, 3)
    weights = ensemble.bootstrap_weights(a, b)  # (K, B)
    assert weights.shape == (4, 20_000) and bool((weights > 0).all())
    for k in range(4):
        assert stats.kstest(weights[k].numpy(), "expon").pvalue > 1e-3
    correlation = torch.corrcoef(weights)
    assert float((correlation - torch.eye(4)).abs().max()) < 0.05  # members independent
    assert torch.equal(weights, ensemble.bootstrap_weights(a, b))  # the same every epoch
    # the loss is the members' weighted mean; off, it is the plain mean
    ensemble.standardize_from(a, b)
    rows_a, rows_b = a[:16], b[:16]
    with torch.no_grad():
        losses = ensemble.member_losses(rows_a, rows_b)
        expected = (losses * ensemble.bootstrap_weights(rows_a, rows_b)).mean(0)
        assert torch.allclose(ensemble.loss(rows_a, rows_b), expected, atol=1e-5)
        ensemble.bootstrap = False
        assert torch.allclose(ensemble.loss(rows_a, rows_b), losses.mean(0), atol=1e-6)
