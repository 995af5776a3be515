"""``device=``: training, sampling, likelihood calls and streaming on the chosen device.

The same checks run on the CPU everywhere and on CUDA where a GPU is present (skipped
otherwise: CI has none). Whatever the device, results come back as CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from _toy_simulators import Gaussian

import sbiflow

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]


@pytest.fixture(scope="module")
def data():
    sim = Gaussian(dim=2, noise=0.2)
    theta, x = sbiflow.simulate(sim, 2_000, seed=0, progress=False)
    return sim, theta, x


def _weights_on(model, device: str) -> bool:
    return all(p.device.type == device for p in model.estimator.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_npe_trains_samples_and_checks_on_the_device(device, data, tmp_path):
    sim, theta, x = data
    npe = sbiflow.NPE(sim.prior, device=device, hidden_features=16, num_transforms=1)
    npe.fit(theta, x, max_epochs=3, progress=False)
    assert _weights_on(npe, device)
    x_o = x[0]
    samples = npe.sample(500, x=x_o, seed=0)
    logp = npe.log_prob(samples[:10], x=x_o)
    assert samples.device.type == "cpu" and samples.shape == (500, 2)
    assert logp.device.type == "cpu" and torch.isfinite(logp).all()
    assert npe.calibration is not None and len(npe.calibration.coverage) == 3
    # saved on the device, loaded on the CPU: the same density
    sbiflow.save(npe, tmp_path / "npe.pt")
    cpu = sbiflow.load(tmp_path / "npe.pt", device="cpu")
    assert torch.allclose(cpu.log_prob(samples[:10], x=x_o), logp, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_nle_likelihood_calls_mcmc_and_nested_on_the_device(device, data):
    sim, theta, x = data
    nle = sbiflow.NLE(sim.prior, device=device, hidden_features=16, num_transforms=1)
    nle.fit(theta, x, max_epochs=3, progress=False)
    assert _weights_on(nle, device)
    trials = x[:3]
    loglik = nle.log_likelihood(theta[:7], trials)
    assert loglik.device.type == "cpu" and loglik.shape == (7,)
    samples = nle.sample(200, x=trials, seed=0, progress=False)
    assert samples.device.type == "cpu" and samples.shape == (200, 2)
    result = nle.nested(x=trials, seed=0, progress=False, nlive=50)
    assert torch.isfinite(torch.as_tensor(result.log_evidence))


@pytest.mark.parametrize("device", DEVICES)
def test_streamed_training_on_the_device(device, tmp_path):
    sim = Gaussian(dim=2, noise=0.2)
    store = tmp_path / "gauss.zarr"
    sbiflow.simulate(sim, 1_000, seed=0, chunk_size=100, store=store, progress=False)
    npe = sbiflow.NPE(sim.prior, device=device, hidden_features=16, num_transforms=1)
    npe.fit(store=store, max_epochs=2, progress=False)
    assert _weights_on(npe, device) and len(npe.history.val_loss) == 2
