"""The nested-sampling cross-check of model comparison, on models with closed-form evidences."""

import json
import math

import pytest
import torch

import sbiflow
from sbiflow.comparison import ModelComparison, nested_regressions, prior_widths

# Small budgets (the whole file runs in ~30 s on one core with -m slow): 2-d data, 100 live
# points give log Z to ~0.1-0.2 nats per model.
NESTED = {"nlive": 100}
NLE_TRAINING = {"max_epochs": 15}
X_O = torch.tensor([2.5, 2.0])  # exact log K(width_3 / width_1) = 0.44


@pytest.fixture(scope="module")
def models():
    return prior_widths(2, (1.0, 3.0))


@pytest.fixture(scope="module")
def mc(models):
    # Members differ by initialization only: this file checks the cross-check, and two
    # bootstrapped members at this budget add variance to the mean (log K errors at X_O over
    # seeds 0-3: RMS 0.28 bootstrapped, 0.18 not); the bootstrap has its own test.
    return ModelComparison(models, ensemble=2, bootstrap=False).fit(2000, seed=0, progress=False)


@pytest.fixture(scope="module")
def check(mc):
    return mc.evidence_crosscheck(
        X_O, n_simulations=1500, training_options=NLE_TRAINING, nested_options=NESTED
    )


# The two checks below run four dynesty runs (~25 s on one core): slow. The default run keeps
# the same cross-check end to end in tests/test_compare_cli.py (exact and emulator nested
# sampling from a config, each log K within 3 errors of the closed form) and the negative
# control below.
@pytest.mark.slow
def test_nested_evidences_match_the_closed_form(models, check):
    assert set(check.evidences) == {"closed_form", "exact", "emulator"}
    for name, model in models.items():
        closed = float(model.log_evidence(X_O))
        assert check.evidences["closed_form"][name].log_z == pytest.approx(closed)
        for source in ("exact", "emulator"):
            estimate = check.evidences[source][name]
            assert 0 < estimate.err < 0.5
            assert abs(estimate.log_z - closed) < 3 * estimate.err + 0.05, (source, name)


@pytest.mark.slow
def test_pair_log_bayes_factors_agree_with_each_other_and_the_classifier(models, mc, check):
    (pair,) = check.pairs
    assert (pair.a, pair.b) == ("width_3", "width_1")
    closed = float(models["width_3"].log_evidence(X_O) - models["width_1"].log_evidence(X_O))
    assert pair.reference == "closed_form" and pair.nested["closed_form"].err == 0
    for source in ("exact", "emulator"):
        log_k = pair.nested[source]
        assert abs(log_k.log_z - closed) < 3 * log_k.err, source  # errors in quadrature
    assert pair.classifier == pytest.approx(mc.log_bayes_factor(X_O, "width_3", "width_1"))
    assert pair.classifier_err > 0
    assert abs(pair.classifier - closed) < 0.3  # measured 0.11 at 2,000 simulations per model
    assert pair.tension("exact") < 3
    summary = json.loads(json.dumps(check.as_dict()))
    assert summary["log_bayes_factors"][0]["exact"]["log_k"] == pytest.approx(
        pair.nested["exact"].log_z
    )
    assert set(check.seconds) == {"simulate", "train", "nested"}
    assert "log K(width_3 / width_1)" in str(check)


def test_a_classifier_of_the_wrong_models_is_in_tension(models):
    # negative control: trained with prior width 8 in place of 3, checked on the true models
    sources = {"width_1": models["width_1"], "width_3": prior_widths(2, (8.0,))["width_8"]}
    wrong = {
        name: sbiflow.simulate(model, 2000, seed=i + 1, progress=False)[1]
        for i, (name, model) in enumerate(sources.items())
    }
    control = ModelComparison(models).fit(x=wrong, seed=0, progress=False)
    check = control.evidence_crosscheck(X_O, emulator=False, exact=False)
    (pair,) = check.pairs
    assert set(pair.nested) == {"closed_form"} and math.isnan(pair.classifier_err)
    assert abs(pair.classifier - pair.nested["closed_form"].log_z) > 1.0
    assert pair.tension() == math.inf  # a closed form and one member: no error bar at all
    assert check.as_dict()["log_bayes_factors"][0]["classifier_err"] is None


def test_three_models_give_every_pair_and_bad_inputs_fail(mc):
    models = nested_regressions(4, (1, 2, 3))
    three = ModelComparison(models).fit(600, seed=0, max_epochs=2, progress=False)
    check = three.evidence_crosscheck(torch.zeros(4), emulator=False, exact=False)
    assert [(p.a, p.b) for p in check.pairs] == [
        ("poly_2", "poly_1"),
        ("poly_3", "poly_1"),
        ("poly_3", "poly_2"),
    ]
    with pytest.raises(ValueError, match="one observation"):
        mc.evidence_crosscheck(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="no simulators"):
        ModelComparison.from_state(mc.state()).evidence_crosscheck(X_O)
