"""Model comparison on linear-Gaussian models whose evidences are closed form."""

import math

import pytest
import torch
from matplotlib.figure import Figure

import sbiflow
from sbiflow.comparison import ModelComparison, nested_regressions, prior_widths
from sbiflow.comparison.misspecification import SummaryReference
from sbiflow.comparison.network import Whitener
from sbiflow.inference.base import NotFittedError

DIM = 10
N_TRAIN = 10_000  # per model
N_TEST = 2_000  # per model
N_BOOTSTRAP = 3_000  # per model, for the ensemble error-bar check
# Tolerances at this budget. The learned log K of the prior-width pair (exact log K spread
# 3.4 nats) is measured at RMSE 0.31 nats where |log K| <= 5 (0.28 without the quadratic
# skip); a classifier trained on the wrong pair (prior width 3 instead of 2) is off by
# 2.0 nats and must fail the same check.
RMSE_TOLERANCE = 0.5
# The l-POP exponential loss, measured at 0.32 nats where |log K| <= 3 (0.49 without the
# quadratic skip; the exact log K spread there is ~1.5 nats).
EXPONENTIAL_RMSE_TOLERANCE = 0.75
ECE_TOLERANCE = 0.03  # measured 0.019 on 2,000 datasets per model (0.007 without the skip)
LEVEL = 0.05  # false-positive rate of the misspecification flag


@pytest.fixture(scope="module")
def models():
    return prior_widths(DIM, (1.0, 2.0))


def draw(model, n, seed):
    return sbiflow.simulate(model, n, seed=seed, progress=False)[1]


@pytest.fixture(scope="module")
def test_sets(models):
    return {name: draw(m, N_TEST, 100 + i) for i, (name, m) in enumerate(models.items())}


@pytest.fixture(scope="module")
def exact(models, test_sets):
    x = torch.cat(list(test_sets.values()))
    return x, (models["width_2"].log_evidence(x) - models["width_1"].log_evidence(x)).float()


@pytest.fixture(scope="module")
def mc(models):
    return ModelComparison(models, ensemble=2).fit(N_TRAIN, seed=0, progress=False)


def rmse_where_moderate(log_k, exact_log_k, bound=5.0):
    keep = exact_log_k.abs() <= bound
    return float((log_k[keep] - exact_log_k[keep]).pow(2).mean().sqrt())


def test_log_bayes_factor_matches_exact_and_mismatched_prior_fails(models, mc, exact):
    x, exact_log_k = exact
    rmse = rmse_where_moderate(mc.log_bayes_factor(x, "width_2", "width_1"), exact_log_k)
    assert rmse < RMSE_TOLERANCE
    # negative control: trained on simulations of the wrong prior width
    wrong = {
        "width_1": draw(models["width_1"], N_TRAIN, 0),
        "width_2": draw(prior_widths(DIM, (3.0,))["width_3"], N_TRAIN, 1),
    }
    control = ModelComparison(models).fit(x=wrong, seed=0, progress=False)
    control_rmse = rmse_where_moderate(
        control.log_bayes_factor(x, "width_2", "width_1"), exact_log_k
    )
    assert control_rmse > 2 * RMSE_TOLERANCE


def test_calibration_and_swapped_labels_fail(mc, test_sets):
    result = mc.calibration(x=test_sets, plot=True)
    assert set(result.ece) == {"width_1", "width_2"}
    assert max(result.ece.values()) < ECE_TOLERANCE
    assert 0.8 < result.accuracy < 0.9  # the Bayes-optimal accuracy of this pair is ~0.84
    predicted, observed, weight = result.curves["width_2"]
    assert predicted.shape == observed.shape == weight.shape == (10,)
    assert math.isclose(float(weight.sum()), 1.0, rel_tol=1e-9)
    assert isinstance(result.figure, Figure)
    # negative control: the same datasets with the model labels swapped
    swapped = mc.calibration(
        x={"width_1": test_sets["width_2"], "width_2": test_sets["width_1"]}, plot=False
    )
    assert min(swapped.ece.values()) > 10 * ECE_TOLERANCE


def test_probabilities_sum_to_one_and_batch_matches_single(mc, test_sets):
    x = test_sets["width_1"][:50]
    batch = mc.probabilities(x)
    assert all(p.shape == (50,) for p in batch.values())
    assert torch.allclose(batch["width_1"] + batch["width_2"], torch.ones(50))
    single = mc.probabilities(x[7])
    assert isinstance(single["width_1"], float)
    assert math.isclose(sum(single.values()), 1.0, rel_tol=1e-6)
    assert math.isclose(single["width_2"], float(batch["width_2"][7]), rel_tol=1e-5)
    log_k = mc.log_bayes_factor(x, "width_2", "width_1")
    assert math.isclose(
        mc.log_bayes_factor(x[7], "width_2", "width_1"), float(log_k[7]), abs_tol=1e-5
    )
    assert torch.allclose(mc.log_bayes_factor(x, "width_1", "width_2"), -log_k)
    # with equal prior probabilities, p = sigmoid(log K)
    assert torch.allclose(batch["width_2"], torch.sigmoid(log_k), atol=1e-5)


def test_prior_probs_change_probabilities_not_bayes_factors(mc, test_sets):
    x = test_sets["width_2"][:100]
    tilted = ModelComparison.from_state({**mc.state(), "prior_probs": torch.tensor([0.9, 0.1])})
    log_k = mc.log_bayes_factor(x, "width_2", "width_1")
    assert torch.equal(tilted.log_bayes_factor(x, "width_2", "width_1"), log_k)
    p = tilted.probabilities(x)["width_2"]
    assert torch.allclose(p, torch.sigmoid(log_k + math.log(0.1 / 0.9)), atol=1e-5)


def test_unbalanced_training_mix_is_corrected(models, exact):
    x, exact_log_k = exact
    mix = {
        "width_1": draw(models["width_1"], 12_000, 2),
        "width_2": draw(models["width_2"], 4_000, 3),
    }
    mc = ModelComparison(models).fit(x=mix, seed=0, progress=False)
    error = mc.log_bayes_factor(x, "width_2", "width_1") - exact_log_k
    keep = exact_log_k.abs() <= 5
    # measured bias 0.10 nats; uncorrected, the mix's log prior odds log(3) = 1.1 nats
    assert abs(float(error[keep].mean())) < 0.25


def test_ensemble_gives_a_spread(mc, test_sets):
    x = test_sets["width_1"][:20]
    mean, std = mc.log_bayes_factor(x, "width_2", "width_1", return_std=True)
    assert mean.shape == std.shape == (20,)
    assert bool((std > 0).all())
    assert torch.equal(mean, mc.log_bayes_factor(x, "width_2", "width_1"))
    single_mean, single_std = mc.log_bayes_factor(x[0], "width_2", "width_1", return_std=True)
    assert isinstance(single_std, float) and single_std > 0


# ~12 s (two ensembles of five): the default run checks the ensemble's spread exists
# (test_ensemble_gives_a_spread) and the single classifier's log K against the exact one
@pytest.mark.slow
def test_bootstrap_error_bars_cover_the_exact_log_bayes_factor(models, exact):
    """Bootstrapped members: the spread is the classifier's error, not its seed noise.

    Negative control: members that differ only in initialization (``bootstrap=False``),
    whose spread covers the exact log K far less often than nominal.
    """
    x, exact_log_k = exact
    keep = exact_log_k.abs() <= 5.0
    cover = {}
    for bootstrap in (True, False):
        mc = ModelComparison(models, ensemble=5, bootstrap=bootstrap)
        mc.fit(N_BOOTSTRAP, seed=3, progress=False)
        mean, std = mc.log_bayes_factor(x[keep], "width_2", "width_1", return_std=True)
        cover[bootstrap] = float(((mean - exact_log_k[keep]).abs() <= 2 * std).float().mean())
    # Nominal 0.95 for a Gaussian error; measured 0.874 (0.871 at seed 4). The spread misses
    # the classifier's bias, hence below nominal.
    assert cover[True] >= 0.8
    assert cover[False] <= 0.5  # measured 0.28 (0.26 at seed 4)


def test_misspecification_flags_a_third_model_only(models, mc, test_sets):
    candidates = mc.misspecification(torch.cat(list(test_sets.values())))
    false_positive = float(candidates.flagged(LEVEL).float().mean())
    assert false_positive <= LEVEL + 0.015  # 3 binomial sigmas over 4,000; measured 0.029
    third = draw(prior_widths(DIM, (5.0,))["width_5"], 1000, 7)
    result = mc.misspecification(third)
    assert float(result.flagged(LEVEL).float().mean()) >= 0.9  # measured 0.96
    assert set(result.p_values) == {"width_1", "width_2"}
    one = mc.misspecification(third[0])
    assert isinstance(one.p_value, float) and 0 < one.p_value <= 1
    # Width-1 data with every coordinate shifted by 3: measured 0.82. The exact test in x
    # space (chi-square law of |x|^2, maximum over the models) flags about 0.7: both
    # candidates' densities depend on |x| only, so a shift is seen through |x| alone.
    shifted = draw(models["width_1"], 1000, 9) + 3.0
    assert float(mc.misspecification(shifted).flagged(LEVEL).float().mean()) >= 0.7


def test_save_and_load_round_trip(mc, test_sets, tmp_path):
    path = tmp_path / "mc.pt"
    sbiflow.save(mc, path)
    payload = torch.load(path, weights_only=True)
    assert payload["class"] == "ModelComparison"
    loaded = sbiflow.load(path)
    x = test_sets["width_2"][:30]
    assert torch.equal(
        loaded.log_bayes_factor(x, "width_2", "width_1"),
        mc.log_bayes_factor(x, "width_2", "width_1"),
    )
    assert torch.equal(loaded.misspecification(x).p_value, mc.misspecification(x).p_value)
    assert loaded.history.val_loss == mc.history.val_loss
    with pytest.raises(ValueError, match="no simulators"):
        loaded.calibration(100)


# ~12 s of training: the default cross-entropy loss keeps its accuracy check in the default
# run (test_log_bayes_factor_matches_exact_and_mismatched_prior_fails)
@pytest.mark.slow
def test_exponential_loss_learns_the_bayes_factor(models, exact):
    x, exact_log_k = exact
    mc = ModelComparison(models, loss="exponential").fit(N_TRAIN, seed=0, progress=False)
    log_k = mc.log_bayes_factor(x, "width_2", "width_1")
    assert rmse_where_moderate(log_k, exact_log_k, bound=3.0) < EXPONENTIAL_RMSE_TOLERANCE


def test_exponential_loss_trains_and_is_for_two_models(models, exact):
    """A few epochs of the l-POP loss lower its validation loss and give finite log K."""
    x, _ = exact
    mc = ModelComparison(models, loss="exponential").fit(
        2_000, seed=0, progress=False, max_epochs=4
    )
    assert mc.history.val_loss[-1] < mc.history.val_loss[0]
    assert torch.isfinite(mc.log_bayes_factor(x, "width_2", "width_1")).all()
    with pytest.raises(ValueError, match="two models"):
        ModelComparison(nested_regressions(DIM, (1, 2, 3)), loss="exponential")


def test_three_models_with_different_parameter_dimensions():
    models = nested_regressions(DIM, (1, 2, 3))
    mc = ModelComparison(models).fit(4000, seed=0, progress=False)
    x = torch.cat([draw(m, 500, 50 + i) for i, m in enumerate(models.values())])
    p = mc.probabilities(x)
    assert torch.allclose(sum(p.values()), torch.ones(x.shape[0]), atol=1e-5)
    exact = models["poly_3"].log_evidence(x) - models["poly_1"].log_evidence(x)
    learned = mc.log_bayes_factor(x, "poly_3", "poly_1")
    assert float(torch.corrcoef(torch.stack([learned, exact.float()]))[0, 1]) > 0.95


def test_sets_get_a_deepset_and_save(tmp_path):
    def sets(n, scale, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.zeros(n, 12, 3)
        sizes = torch.randint(4, 12, (n,), generator=g)
        present = torch.arange(12) < sizes[:, None]
        x[..., :2] = scale * torch.randn(n, 12, 2, generator=g) * present[..., None]
        x[..., 2] = present.float()
        return x

    data = {"narrow": sets(600, 1.0, 0), "wide": sets(600, 2.0, 1)}
    mc = ModelComparison(list(data), ensemble=2).fit(x=data, max_epochs=2, progress=False)
    assert type(mc.network.embeddings[0]).__name__ == "DeepSetEmbedding"
    sbiflow.save(mc, tmp_path / "sets.pt")
    loaded = sbiflow.load(tmp_path / "sets.pt")
    x = sets(5, 1.5, 2)
    assert torch.equal(
        loaded.log_bayes_factor(x, "wide", "narrow"), mc.log_bayes_factor(x, "wide", "narrow")
    )


def test_clear_errors(models, mc, test_sets):
    with pytest.raises(ValueError, match="at least two models"):
        ModelComparison({"only": models["width_1"]})
    with pytest.raises(NotFittedError):
        ModelComparison(models).probabilities(torch.zeros(DIM))
    with pytest.raises(ValueError, match="differ in shape"):
        ModelComparison(["a", "b"]).fit(x={"a": torch.zeros(50, 3), "b": torch.zeros(50, 4)})
    with pytest.raises(ValueError, match="Unknown model 'cusped'"):
        mc.log_bayes_factor(torch.zeros(DIM), "cusped", "width_1")
    bad = test_sets["width_1"][:3].clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(observations \[1\]\)"):
        mc.probabilities(bad)
    with pytest.raises(ValueError, match="shaped like one simulation"):
        mc.probabilities(torch.zeros(DIM + 1))
    with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
        ModelComparison(models, prior_probs={"nope": 0.5, "width_1": 0.5})
    with pytest.raises(ValueError, match="either n_per_model"):
        ModelComparison(models).fit()
    xb = torch.randn(200, 3)
    xb[5, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="1 of 200 simulations of model 'b'"):
        small = ModelComparison(["a", "b"]).fit(
            x={"a": torch.randn(200, 3), "b": xb}, max_epochs=1, progress=False
        )
    with pytest.raises(ValueError, match="return_std needs an ensemble"):
        small.log_bayes_factor(torch.zeros(3), "a", "b", return_std=True)
    with pytest.raises(ValueError, match="trained on"):
        small.calibration(x={"a": torch.zeros(10, 4), "b": torch.zeros(10, 4)})


def test_whitener_whitens_and_floors_a_constant_direction():
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.5, 0.0], [-1.0, 1.0, 0.6]])
    data = torch.randn(20_000, 3, generator=g) @ mixing + torch.tensor([1.0, -2.0, 0.5])
    whitener = Whitener(3)
    whitener.fit(data)
    w = whitener(data)
    assert torch.allclose(w.mean(dim=0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(torch.cov(w.T), torch.eye(3), atol=1e-3)
    # a feature that never varies is not divided by zero
    constant = torch.cat([data, torch.full((20_000, 1), 4.0)], dim=1)
    whitener = Whitener(4)
    whitener.fit(constant)
    assert bool(torch.isfinite(whitener.matrix).all())
    assert bool(torch.isfinite(whitener(constant)).all())


def test_quadratic_skip_represents_the_exact_gaussian_evidences(models, exact):
    """log p(x | width s) = -|x|^2 / 2v - d/2 log(2 pi v), v = s^2 + 1: a quadratic in x."""
    x, exact_log_k = exact
    mc = ModelComparison(models, whiten=False, quadratic=True)
    mc.fit(x={n: x[:200] for n in mc.names}, max_epochs=1, progress=False)
    net = mc.network
    mean, std = net.standardizer.mean.double(), net.standardizer.std.double()
    with torch.no_grad():  # the MLP says nothing; the skip holds the exact log evidences
        net.output.weight.zero_()
        net.output.bias.zero_()
        weight = torch.zeros_like(net.quadratic.linear.weight, dtype=torch.float64)
        bias = torch.zeros_like(net.quadratic.linear.bias, dtype=torch.float64)
        for m, model in enumerate(models.values()):
            v = model.prior_std**2 + model.noise_std**2
            # x = mean + std z, so |x|^2 = sum(std^2 z^2 + 2 std mean z + mean^2)
            weight[0, :DIM, m] = -std * mean / v
            weight[0, DIM : 2 * DIM, m] = -0.5 * std**2 / v
            bias[0, 0, m] = (
                -0.5 * float(mean.pow(2).sum()) / v
                - 0.5 * DIM * math.log(2 * math.pi * v)
                + float(net.log_train_prior[m])
            )
        net.quadratic.linear.weight.copy_(weight)
        net.quadratic.linear.bias.copy_(bias)
    log_k = mc.log_bayes_factor(x, "width_2", "width_1")
    assert float((log_k - exact_log_k).abs().max()) < 1e-3


def test_misspecification_tests_the_pooled_statistics_of_an_embedding(tmp_path):
    # With a set embedding the flag works in the DeepSet's pooled element features (the
    # input of its rho network), which the layers after it, trained to separate the
    # candidates, compress: an outsider of scale 4 is flagged at 0.88 there and at 0.77 in
    # the hidden layer, with references from the same held-out sets (measured).
    def sets(n, scale, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.zeros(n, 12, 3)
        sizes = torch.randint(4, 12, (n,), generator=g)
        present = torch.arange(12) < sizes[:, None]
        x[..., :2] = scale * torch.randn(n, 12, 2, generator=g) * present[..., None]
        x[..., 2] = present.float()
        return x

    data = {"narrow": sets(3000, 1.0, 0), "wide": sets(3000, 2.0, 1)}
    # measured with the batched bootstrap ensemble (the numbers below); the summary space,
    # not the ensemble, is what this test is about
    mc = ModelComparison(list(data), ensemble=2, resampling="bootstrap")
    mc.fit(x=data, max_epochs=2, progress=False)
    assert mc.summary_space == "statistics"
    assert mc.reference.summaries["narrow"].shape == (600, 65)  # 64 pooled features + count
    candidates = torch.cat([sets(2000, 1.0, 5), sets(2000, 2.0, 6)])
    p = mc.misspecification(candidates).p_value
    for level in (0.01, 0.05, 0.1):  # super-uniform: 3 binomial sigmas over 4,000
        # (measured 0.001, 0.020, 0.065: the maximum over two models is conservative)
        assert float((p <= level).float().mean()) <= level + 3 * math.sqrt(level / 4000)
    outsider = sets(1000, 4.0, 8)
    power = float(mc.misspecification(outsider).flagged(LEVEL).float().mean())
    assert power >= 0.85  # measured 0.91

    sbiflow.save(mc, tmp_path / "sets.pt")
    payload = torch.load(tmp_path / "sets.pt", weights_only=True)
    loaded = sbiflow.load(tmp_path / "sets.pt")
    assert loaded.summary_space == "statistics"
    assert torch.equal(
        loaded.misspecification(outsider).p_value, mc.misspecification(outsider).p_value
    )

    # The hidden layer as the space (as before, and for models saved without the key):
    # with references from the same held-out sets, less power than the pooled statistics.
    held_out = {"narrow": sets(600, 1.0, 20), "wide": sets(600, 2.0, 21)}
    flagged = {}
    for space in ("statistics", "hidden"):
        mc.summary_space = space
        mc.reference = SummaryReference({n: mc._summaries(x) for n, x in held_out.items()})
        flagged[space] = float(mc.misspecification(outsider).flagged(LEVEL).float().mean())
    assert mc.reference.summaries["narrow"].shape == (600, mc.hidden_features)
    assert flagged["hidden"] <= flagged["statistics"] - 0.05  # measured 0.77 vs 0.88
    state = dict(payload["model"])
    del state["summary_space"]
    state["reference"] = dict(mc.reference.summaries)
    old = ModelComparison.from_state(state)
    assert old.summary_space == "hidden"
    torch.testing.assert_close(
        old.misspecification(outsider).p_value, mc.misspecification(outsider).p_value
    )
