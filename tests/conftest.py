import pytest
import torch

import sbiflow


@pytest.fixture(scope="session")
def box_prior():
    return sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))


def noisy_identity(theta: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    """x = θ + N(0, scale²): a posterior that is a truncated Gaussian around x."""
    return theta + scale * torch.randn_like(theta)


@pytest.fixture(scope="session")
def toy_data(box_prior):
    torch.manual_seed(0)
    theta = box_prior.sample((1000,))
    return theta, noisy_identity(theta)


@pytest.fixture(scope="session")
def quick_npe(box_prior, toy_data):
    """A briefly trained NPE: enough for shape, support and file checks, not for accuracy."""
    theta, x = toy_data
    return sbiflow.NPE(box_prior).fit(theta, x, max_epochs=5, progress=False)


#: NPE's shipped rule: below this budget, ``calibration="auto"`` trains an ensemble of 5.
SHIPPED_SMALL_BUDGET = sbiflow.NPE.SMALL_BUDGET
#: NPE's shipped rule for sending a tempered flow to the ensemble after all.
SHIPPED_ENSEMBLE_RULE = {
    "MAX_TEMPERATURE": sbiflow.NPE.MAX_TEMPERATURE,
    "RETRAIN_SHORTFALL": sbiflow.NPE.RETRAIN_SHORTFALL,
}


def pytest_configure(config):
    """Under pytest-xdist every worker gets one thread: two workers on two cores, not four.

    Tests of other features train single flows on small budgets, often for a few epochs
    (where the shipped default trains a 5-member ensemble, 3-4x the time): the suite would
    take twice its 5 minutes. The post-fit calibration check and the choice of a
    temperature still run in every test, but no flow is sent on to the ensemble; tests
    marked ``calibration_defaults`` (tests/test_calibration.py) get the shipped rules back.
    """
    import os

    sbiflow.NPE.SMALL_BUDGET = 0
    for name in SHIPPED_ENSEMBLE_RULE:
        setattr(sbiflow.NPE, name, float("inf"))

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _shipped_small_budget_rule(request, monkeypatch):
    """Tests marked ``calibration_defaults`` run with NPE's shipped ensemble rules."""
    if request.node.get_closest_marker("calibration_defaults"):
        monkeypatch.setattr(sbiflow.NPE, "SMALL_BUDGET", SHIPPED_SMALL_BUDGET)
        for name, value in SHIPPED_ENSEMBLE_RULE.items():
            monkeypatch.setattr(sbiflow.NPE, name, value)
