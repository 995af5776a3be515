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


def pytest_configure(config):
    """Under pytest-xdist every worker gets one thread: two workers on two cores, not four.

    Tests of other features train single flows on small budgets (where the shipped default
    trains a 5-member ensemble, 3-4x the time): the suite would take twice its 5 minutes.
    The post-fit calibration check and the retraining of a flow it flags still run in every
    test; tests marked ``calibration_defaults`` (tests/test_calibration.py) get the shipped
    small-budget rule back.
    """
    import os

    sbiflow.NPE.SMALL_BUDGET = 0

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _shipped_small_budget_rule(request, monkeypatch):
    """Tests marked ``calibration_defaults`` run with NPE's shipped small-budget rule."""
    if request.node.get_closest_marker("calibration_defaults"):
        monkeypatch.setattr(sbiflow.NPE, "SMALL_BUDGET", SHIPPED_SMALL_BUDGET)
