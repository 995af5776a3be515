"""A flow widened by the temperature of its base normal, and the choice of that temperature."""

import math
import warnings

import pytest
import torch
from torch.distributions import Normal

import sbiflow
from sbiflow.estimators.flows import FlowEstimator
from sbiflow.inference.calibration import coverage_at, hpd_levels, sampled_hpd_levels
from sbiflow.inference.temperature import (
    GRID,
    TemperedDraws,
    capped_grid,
    choose_temperature,
    tempered_hpd_levels,
)

#: So wide that no draw of the flows below falls outside it: coverage is the flow's own.
WIDE_PRIOR = sbiflow.BoxUniform(-40.0 * torch.ones(2), 40.0 * torch.ones(2))


def random_flow(seed: int = 0) -> FlowEstimator:
    """An untrained NSF q(a | b), a (2,), b (3,): some smooth, skewed conditional density."""
    torch.manual_seed(seed)
    q = FlowEstimator("nsf", (2,), (3,), hidden_features=16, num_transforms=2)
    q.standardize_from(torch.randn(500, 2) * 2.0 + 1.0, torch.randn(500, 3))
    return q.eval()


def draws_at(q: FlowEstimator, temperature: float, n: int, seed: int):
    """(θ, x) pairs with x ~ N(0, I) and θ ~ q_T(· | x): the flow at T is the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    q.set_temperature(temperature)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        theta = q.sample_each(x)
    q.set_temperature(1.0)
    return theta, x


def test_tempered_density_is_the_base_normal_scaled():
    q = random_flow()
    a, b = torch.randn(64, 2), torch.randn(64, 3)
    with torch.no_grad():
        u, log_det = q.to_noise(a, q.context(b))
        assert torch.allclose(
            q.log_prob(a, b), Normal(0, 1).log_prob(u).sum(1) + log_det, atol=1e-4
        )
        back, log_det_back = q.from_noise(u, q.context(b))
        assert torch.allclose(back, a, atol=1e-4) and torch.allclose(
            log_det_back, log_det, atol=1e-3
        )
        q.set_temperature(1.7)
        expected = Normal(0, 1.7).log_prob(u).sum(1) + log_det
        assert torch.allclose(q.log_prob(a, b), expected, atol=1e-4)
        # sampling follows: the base points of the draws have std T
        draws = q.sample(20_000, b[0])
        u_draws, _ = q.to_noise(draws, q.context(b[:1]).expand(20_000, -1))
    assert torch.allclose(u_draws.std(0), torch.full((2,), 1.7), atol=0.03)
    assert q.config()["temperature"] == 1.7
    q.set_temperature(1.0)
    assert "temperature" not in q.config()  # a plain flow's config is as before the option


@pytest.mark.parametrize("bad", [0.9, 0.0, float("nan"), float("inf")])
def test_temperature_below_one_or_not_finite_is_refused(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 1"):
        random_flow().set_temperature(bad)


def test_tempered_levels_agree_with_the_general_check():
    """The batched tempered HPD levels are the general check's statistic (other draws, same
    law): draws by sampling and densities by log_prob, as for any estimator."""
    q = random_flow(1)
    theta, x = draws_at(q, 1.3, 1_000, seed=3)
    q.set_temperature(1.3)
    torch.manual_seed(0)
    general = sampled_hpd_levels(q, WIDE_PRIOR, theta, x, num_samples=256)
    q.set_temperature(1.0)
    torch.manual_seed(1)
    batched = tempered_hpd_levels(q, WIDE_PRIOR, theta, x, [1.3], num_samples=256)[0]
    for level in (0.2, 0.5, 0.68, 0.95):
        assert (
            abs(float((general < level).float().mean()) - float((batched < level).float().mean()))
            < 0.04
        )
    # and the exact posterior (the flow at the temperature that drew θ) is calibrated
    for level in (0.5, 0.68, 0.95):
        assert abs(float((batched < level).float().mean()) - level) < 0.045


def test_a_flows_check_takes_the_tempered_route_at_its_own_temperature():
    q = random_flow(1)
    theta, x = draws_at(q, 1.3, 200, seed=3)
    q.set_temperature(1.3)
    torch.manual_seed(0)
    routed = hpd_levels(q, WIDE_PRIOR, theta, x, num_samples=64)
    q.set_temperature(1.0)
    torch.manual_seed(0)
    direct = TemperedDraws(q, WIDE_PRIOR, theta, x, num_samples=64).hpd_levels(1.3)
    assert torch.equal(routed, direct)


CUTTING_PRIOR = sbiflow.BoxUniform(-4.0 * torch.ones(2), 6.0 * torch.ones(2))


@pytest.mark.parametrize("prior", [WIDE_PRIOR, CUTTING_PRIOR])
def test_levels_read_by_importance_weights_agree_with_draws_at_the_temperature(prior):
    """Draws at 1.25 read at 1.1 (weights, no pass) against draws made at 1.1; reading at
    1.25 itself is the plain statistic; a box prior that cuts many draws (the second case)
    is honoured by both."""
    q = random_flow(4)
    theta, x = draws_at(q, 1.1, 1_000, seed=7)
    theta = theta.clamp(-3.99, 5.99)
    torch.manual_seed(0)
    prepared = TemperedDraws(q, prior, theta, x, num_samples=128)
    direct = prepared.hpd_levels(1.1)
    read = prepared.hpd_levels(1.1, drawn_at=1.25)
    assert torch.equal(prepared.hpd_levels(1.25, drawn_at=1.25), prepared.hpd_levels(1.25))
    if prior is CUTTING_PRIOR:  # the box does cut: a share of the draws falls outside it
        _, _, inside = prepared._draw(1.25)[0]
        assert 0.05 < 1.0 - float(inside.float().mean()) < 0.5
    assert float((direct - read).abs().mean()) < 0.03  # per simulation, from 128 draws
    levels = (0.2, 0.5, 0.68, 0.8, 0.95)
    pairs = zip(coverage_at(direct, levels), coverage_at(read, levels), strict=True)
    for c_direct, c_read in pairs:
        assert abs(c_direct - c_read) < 0.025
    # negative control: the same draws read at a much lower temperature are not the
    # levels at 1.1
    assert float((prepared.hpd_levels(0.8, drawn_at=1.25) - direct).abs().mean()) > 0.05


def test_effective_share_is_the_gaussian_one():
    q = random_flow()
    theta, x = draws_at(q, 1.0, 10, seed=0)
    prepared = TemperedDraws(q, WIDE_PRIOR, theta, x, num_samples=8)
    assert prepared.effective_share(1.3, 1.3) == 1.0
    assert prepared.effective_share(1.0, 0.7) == 0.0  # r² ≤ 1/2: infinite variance
    # against the empirical effective sample size of the weights, D = 2
    z = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    u = 1.3 * z
    log_w = -0.5 * u.square().sum(1) / 1.0**2 + 0.5 * z.square().sum(1)
    w = torch.exp(log_w - log_w.max())
    empirical = float(w.sum() ** 2 / (w.square().sum() * w.numel()))
    assert abs(prepared.effective_share(1.0, 1.3) - empirical) < 0.02


def test_choose_temperature_recovers_the_temperature_that_drew_the_data():
    q = random_flow(2)
    theta, x = draws_at(q, 1.6, 1_000, seed=4)
    choice = choose_temperature(q, WIDE_PRIOR, theta, x)
    assert choice.reached and abs(choice.temperature - 1.6) < 0.15, choice
    assert choice.num_simulations == 1_000 and choice.shortfall <= 0.0
    assert q.temperature == 1.0  # choosing does not change the flow


def test_a_capped_search_stops_at_the_cap():
    """NPE caps the search where its ensemble can take over: data that need T = 1.6 get
    the cap, short of the levels; data that need 1.2 get the smallest T within 0.03 of
    every level if asked; data that need 1.07 get about that, below the cap."""
    assert capped_grid(1.15) == (1.0, 1.1, 1.15) and capped_grid(None) == GRID
    assert capped_grid(float("inf")) == GRID and capped_grid(1.0) == (1.0,)
    with pytest.raises(ValueError, match="at least 1"):
        capped_grid(0.9)
    q = random_flow(2)
    theta, x = draws_at(q, 1.6, 1_000, seed=4)
    capped = choose_temperature(q, WIDE_PRIOR, theta, x, grid=capped_grid(1.15))
    assert capped.temperature == 1.15 and not capped.reached and capped.shortfall > 0.05
    # far short at the cap: settling for 0.03 changes nothing
    settle = {"grid": capped_grid(1.15), "within": 0.03}
    assert choose_temperature(q, WIDE_PRIOR, theta, x, **settle) == capped
    # just short at the cap: the smallest T within 0.03 of every level, below the cap
    theta, x = draws_at(q, 1.2, 1_000, seed=9)
    at_cap = choose_temperature(q, WIDE_PRIOR, theta, x, grid=capped_grid(1.15))
    assert at_cap.temperature == 1.15 and 0.0 < at_cap.shortfall <= 0.03, at_cap
    settled = choose_temperature(q, WIDE_PRIOR, theta, x, **settle)
    assert not settled.reached and settled.shortfall <= 0.03
    assert 1.0 < settled.temperature < 1.15, settled
    theta, x = draws_at(q, 1.07, 1_000, seed=8)
    below = choose_temperature(q, WIDE_PRIOR, theta, x, grid=capped_grid(1.15))
    assert below.reached and 1.0 < below.temperature < 1.15, below


def test_choose_temperature_negative_controls():
    """Data from the flow itself need no widening; data narrower than the flow get none."""
    q = random_flow(3)
    theta, x = draws_at(q, 1.0, 1_000, seed=5)
    assert choose_temperature(q, WIDE_PRIOR, theta, x).temperature <= 1.1
    # θ drawn from the flow narrowed to 0.7 (set on the base directly: set_temperature
    # refuses T < 1): the flow is too wide for them, and T stays 1
    q.flow._distribution.temperature = 0.7
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(6)
        narrow = q.sample_each(x)
    q.flow._distribution.temperature = 1.0
    wide = choose_temperature(q, WIDE_PRIOR, narrow, x)
    assert wide.temperature == 1.0
    assert all(c > lv + 0.02 for c, lv in zip(wide.coverage, wide.levels, strict=True))


def test_choose_temperature_rejects_a_bad_grid():
    q = random_flow()
    theta, x = draws_at(q, 1.0, 10, seed=0)
    for grid in [(), (1.2, 1.5), (1.0, 1.5, 1.2)]:
        with pytest.raises(ValueError, match="grid must increase from 1"):
            choose_temperature(q, WIDE_PRIOR, theta, x, grid=grid)


def test_bad_pairs_and_temperatures_are_refused():
    q = random_flow()
    theta, x = draws_at(q, 1.0, 10, seed=0)
    with pytest.raises(ValueError, match="must be B pairs"):
        tempered_hpd_levels(q, WIDE_PRIOR, theta[:9], x, [1.0])
    with pytest.raises(ValueError, match="must be B pairs"):
        tempered_hpd_levels(q, WIDE_PRIOR, theta[:, :1], x, [1.0])
    with pytest.raises(ValueError, match=r"x must be shaped \(B, \*\(3,\)\)"):
        choose_temperature(q, WIDE_PRIOR, theta, x[:, :2])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            tempered_hpd_levels(q, WIDE_PRIOR, theta, x, [bad])
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            TemperedDraws(q, WIDE_PRIOR, theta, x, num_samples=4).hpd_levels(1.0, drawn_at=bad)
    for bad in (-0.01, float("nan")):
        with pytest.raises(ValueError, match="within must be a shortfall >= 0"):
            choose_temperature(q, WIDE_PRIOR, theta, x, within=bad)


def test_a_tempered_npe_saves_and_loads(tmp_path):
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((300,))
    x = theta + 0.1 * torch.randn(300, 2)
    npe = sbiflow.NPE(prior, calibration="check", hidden_features=8)
    npe.fit(theta, x, max_epochs=3, progress=False)
    npe.estimator.set_temperature(1.4)
    sbiflow.save(npe, tmp_path / "tempered.sbiflow")
    loaded = sbiflow.load(tmp_path / "tempered.sbiflow")
    assert loaded.temperature == 1.4
    probe = theta[:20]
    assert torch.allclose(
        loaded.log_prob(probe, x[0], normalize=False), npe.log_prob(probe, x[0], normalize=False)
    )
    assert math.isclose(npe.temperature, 1.4)


def test_too_few_validation_simulations_keep_the_flow_as_trained(monkeypatch):
    """Under 20 validation rows there is nothing to split: the check runs, T stays 1."""
    monkeypatch.setattr(sbiflow.NPE, "SMALL_BUDGET", 0)
    torch.manual_seed(0)
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((150,))
    x = theta + 0.1 * torch.randn(150, 2)
    npe = sbiflow.NPE(prior, hidden_features=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whatever 2 epochs give, checked on 15 simulations
        npe.fit(theta, x, max_epochs=2, progress=False)
    assert npe.temperature == 1.0 and npe.temperature_choice is None
    assert npe.calibration.num_simulations == 15


@pytest.mark.calibration_defaults
def test_a_flow_with_your_own_embedding_module_gets_a_temperature_but_no_ensemble(
    monkeypatch,
):
    """An embedding module of the user's cannot be drawn afresh for ensemble members."""
    from torch import nn

    monkeypatch.setattr(sbiflow.NPE, "MAX_TEMPERATURE", 1.0)  # any T > 1 would ask for one
    torch.manual_seed(1)
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((400,))
    x = theta + 0.1 * torch.randn(400, 2)
    npe = sbiflow.NPE(prior, embedding_net=nn.Linear(2, 4), hidden_features=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        npe.fit(theta, x, max_epochs=3, progress=False)
    assert npe.estimator_kind == "nsf"  # below SMALL_BUDGET, and whatever T was chosen
    assert npe.temperature_choice is not None
    assert npe.temperature == npe.temperature_choice.temperature
