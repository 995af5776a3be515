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


#: Seconds each of the longest test files takes in the default run (session 13,
#: ``pytest -n 2 --durations=0``, summed per file). Only their order matters.
LONG_FILES = {
    "test_comparison.py": 48,
    "test_score.py": 43,
    "test_worked_examples.py": 40,
    "test_npe.py": 40,
    "test_collider.py": 36,
    "test_calibration.py": 35,
    "test_nle.py": 34,
    "test_samplers.py": 33,
    "test_dask_faults.py": 29,
    "test_cli.py": 29,
    "test_simulators.py": 24,
    "test_streaming.py": 23,
    "test_diagnostics.py": 20,
    "test_diffusion.py": 19,
    "test_compare_cli.py": 19,
    "test_docs_site.py": 18,
    "test_cluster_cli.py": 18,
}


def pytest_collection_modifyitems(config, items):
    """Run the longest files first, each file's tests together and in order.

    Two pytest-xdist workers then end the run on short tests, instead of one of them
    finishing a 20-second example alone while the other waits (longest first is the
    classic greedy rule for two machines). A file stays contiguous, so its module
    fixtures are built once per worker.
    """
    items.sort(key=lambda item: -LONG_FILES.get(item.path.name, 0))
