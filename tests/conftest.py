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


def pytest_configure(config):
    """Under pytest-xdist every worker gets one thread: two workers on two cores, not four."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
