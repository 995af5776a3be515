"""Training streamed from a simulation store (sbiflow.streaming) against in-memory training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _toy_simulators import Gaussian, NaNWhenPositive

import sbiflow
from sbiflow.store import SimulationStore, load_store
from sbiflow.streaming import StoreData
from sbiflow.training import seeded_generator


def _identity(theta, x):
    return theta, x


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("streaming") / "gauss.zarr"
    sbiflow.simulate(
        Gaussian(dim=2, noise=0.3), 4_000, seed=0, chunk_size=200, store=path, progress=False
    )
    return path


def test_an_epoch_visits_every_training_row_once_and_no_validation_row(store):
    data = StoreData(store, _identity, 0.1, seeded_generator(0), buffer_chunks=3)
    assert len(data.validation_chunks) == 2 and len(data.train_chunks) == 18
    assert not set(data.validation_chunks) & set(data.train_chunks)
    theta_all, _ = load_store(store)
    expected = torch.cat([theta_all[i * 200 : (i + 1) * 200] for i in data.train_chunks])
    generator = seeded_generator(1)
    first = list(data.batches(64, generator))
    sizes = [a.shape[0] for a, _ in first]
    assert all(size == 64 for size in sizes[:-1]) and sum(sizes) == data.num_train == 3_600
    seen = torch.cat([a for a, _ in first])
    assert torch.equal(seen[torch.argsort(seen[:, 0])], expected[torch.argsort(expected[:, 0])])
    # pairs stay pairs: x = theta + noise, so each row's x is near its theta
    assert all(float((b - a).abs().max()) < 2.0 for a, b in first)
    second = torch.cat([a for a, _ in data.batches(64, generator)])
    assert not torch.equal(seen, second)  # a fresh order each epoch
    again = torch.cat(
        [
            a
            for a, _ in StoreData(
                store, _identity, 0.1, seeded_generator(0), buffer_chunks=3
            ).batches(64, seeded_generator(1))
        ]
    )
    assert torch.equal(seen, again)  # and the same one for the same seed
    data.close()


def test_validation_is_capped_in_whole_chunks(store):
    data = StoreData(store, _identity, 0.5, seeded_generator(0), max_validation_rows=600)
    assert len(data.validation_chunks) == 3
    assert data.num_train == 17 * 200
    data.close()


def test_streamed_fit_matches_in_memory_fit(store):
    """Same simulations, same network: the held-out loss agrees within training noise."""
    sim = Gaussian(dim=2, noise=0.3)
    theta_test, x_test = sbiflow.simulate(sim, 2_000, seed=99, progress=False)
    theta, x = load_store(store)
    # a MAF: streaming is the estimator's business only through its batches, and a MAF
    # step costs a third of an NSF's (25 epochs in memory: 2.5 s against 6.6 s). 15 epochs:
    # streamed - in-memory test NLL 0.009 / 0.006 nats (seeds 0 / 1; 0.014 / 0.017 at 25)
    options = dict(
        calibration="off", estimator="maf", hidden_features=16, num_transforms=2, max_epochs=15
    )
    epochs = options.pop("max_epochs")
    streamed = sbiflow.NPE(sim.prior, **options).fit(store=store, progress=False, max_epochs=epochs)
    in_memory = sbiflow.NPE(sim.prior, **options).fit(theta, x, progress=False, max_epochs=epochs)
    with torch.no_grad():
        nll = {
            name: -float(model.estimator.log_prob(theta_test, x_test).mean())
            for name, model in (("streamed", streamed), ("memory", in_memory))
        }
    assert streamed.num_simulations == 4_000 and streamed.x_shape == (2,)
    assert len(streamed.history.val_loss) > 5
    # exact posterior: N(x, 0.3^2) clipped to the box; its entropy is about -0.5 nats here
    assert abs(nll["streamed"] - nll["memory"]) < 0.05, nll
    # negative control: an untrained network is far away
    untrained = sbiflow.NPE(sim.prior, **options).fit(
        store=store, progress=False, max_epochs=1, learning_rate=1e-6
    )
    with torch.no_grad():
        untrained_nll = -float(untrained.estimator.log_prob(theta_test, x_test).mean())
    assert untrained_nll > nll["memory"] + 0.5


def test_nle_streams_too(store):
    sim = Gaussian(dim=2, noise=0.3)
    nle = sbiflow.NLE(sim.prior, hidden_features=16, num_transforms=1).fit(
        store=store, progress=False, max_epochs=3
    )
    assert len(nle.history.val_loss) == 3 and np.isfinite(nle.history.val_loss).all()


def test_invalid_and_nonfinite_rows_are_left_out(tmp_path):
    path = tmp_path / "nan.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sbiflow.simulate(
            NaNWhenPositive(), 2_000, seed=0, chunk_size=250, store=path, progress=False
        )
    data = StoreData(path, _identity, 0.2, seeded_generator(0))
    rows = torch.cat([torch.cat([a, b], 1) for a, b in data.batches(100, seeded_generator(0))])
    assert torch.isfinite(rows).all()
    assert float(rows[:, 0].max()) <= 0.5  # every row with theta[0] > 0.5 was NaN
    data.close()


def test_streaming_an_unfinished_store_says_how_to_resume(tmp_path):
    path = tmp_path / "half.zarr"
    store = SimulationStore.create(
        path, seed=0, n=1_000, chunk_size=100, simulator="gauss", dim_theta=2
    )
    store.write_chunk(
        0, np.zeros((100, 2), np.float32), np.zeros((100, 2), np.float32), np.ones(100, bool)
    )
    with pytest.raises(RuntimeError, match=r"incomplete: 1 of 10 chunks done.*Resume"):
        sbiflow.NPE(Gaussian().prior).fit(store=path, progress=False)


def test_one_chunk_store_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "one.zarr"
    sbiflow.simulate(Gaussian(), 100, seed=0, chunk_size=100, store=path, progress=False)
    with pytest.raises(ValueError, match="one chunk.*load_store"):
        sbiflow.NPE(Gaussian().prior).fit(store=path, progress=False)


def test_fit_takes_one_source(store):
    npe = sbiflow.NPE(Gaussian().prior)
    theta, x = load_store(store)
    with pytest.raises(ValueError, match="not both"):
        npe.fit(theta, x, store=store)
    with pytest.raises(ValueError, match="needs simulations"):
        npe.fit()
    with pytest.raises(FileNotFoundError):
        npe.fit(store=store.parent / "absent.zarr")


def test_simulating_into_a_store_without_keeping_it_in_memory(tmp_path):
    sim = Gaussian(dim=2, noise=0.3)
    path = tmp_path / "lean.zarr"
    assert (
        sbiflow.simulate(
            sim, 1_000, seed=0, chunk_size=100, store=path, in_memory=False, progress=False
        )
        is None
    )
    theta, x = load_store(path)
    expected = sbiflow.simulate(sim, 1_000, seed=0, chunk_size=100, progress=False)
    assert torch.equal(theta, expected[0]) and torch.equal(x, expected[1])
    with pytest.raises(ValueError, match="needs a store"):
        sbiflow.simulate(sim, 10, in_memory=False)
    nan_path = tmp_path / "nan.zarr"
    with pytest.warns(RuntimeWarning, match="marked invalid"):
        sbiflow.simulate(
            NaNWhenPositive(),
            400,
            seed=0,
            chunk_size=100,
            store=nan_path,
            in_memory=False,
            progress=False,
        )
