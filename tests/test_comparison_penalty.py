"""The L2 penalty of the model classifier's head: what it touches, saving, bad values."""

import pytest
import torch

import sbiflow
from sbiflow.comparison import ModelComparison, prior_widths
from sbiflow.comparison.network import ComparisonNetwork

DIM = 10


@pytest.fixture(scope="module")
def models():
    return prior_widths(DIM, (1.0, 2.0))


def test_penalty_spares_the_quadratic_skips_output_weights():
    network = ComparisonNetwork((4,), 2, members=2, hidden_features=8, quadratic=True)
    with torch.no_grad():
        network.quadratic.linear.weight.fill_(100.0)  # large quadratic log K: not penalized
    expected = sum(
        p.pow(2).sum()
        for layer in [*network.hidden, network.output, network.quadratic.project]
        for p in [layer.weight]
    )
    torch.testing.assert_close(network.penalized_norm(), expected)
    labels, x = torch.tensor([0, 1, 1]), torch.randn(3, 4)
    plain = network.loss(labels, x)
    network.penalty = 0.01
    torch.testing.assert_close(network.loss(labels, x), plain + 0.01 * expected)


def test_penalty_shrinks_the_head_and_is_saved(tmp_path, models):
    norms = {}
    for penalty in (0.0, 3e-3):
        mc = ModelComparison(models, penalty=penalty)
        mc.fit(1000, seed=0, progress=False, max_epochs=20)
        norms[penalty] = float(mc.network.penalized_norm().detach())
    assert norms[3e-3] < 0.5 * norms[0.0]
    path = tmp_path / "mc.pt"
    sbiflow.save(mc, path)
    loaded = sbiflow.load(path)
    assert loaded.penalty == 3e-3 and loaded.network.penalty == 3e-3
    x = torch.randn(4, DIM)
    torch.testing.assert_close(
        loaded.log_bayes_factor(x, "width_2", "width_1"),
        mc.log_bayes_factor(x, "width_2", "width_1"),
    )


@pytest.mark.parametrize("bad", [-1e-3, True, "0.1"])
def test_bad_penalty_is_an_error(models, bad):
    with pytest.raises(ValueError, match="penalty must be a number >= 0"):
        ModelComparison(models, penalty=bad)
