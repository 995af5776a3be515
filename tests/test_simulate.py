import json
import warnings

import numpy as np
import pytest
import torch
import zarr
from _toy_simulators import (
    DropsARow,
    Gaussian,
    Interrupt,
    InterruptedGaussian,
    NaNWhenPositive,
    NoPrior,
    RaiseWhenPositive,
    batched_square,
    box,
    row_summary,
)
from torch.distributions import Independent, Uniform

from sbiflow.simulate import simulate
from sbiflow.store import SimulationStore, load_store

N, CHUNK = 1000, 250  # 4 chunks


def run(simulator, n=N, **kw):
    kw.setdefault("chunk_size", CHUNK)
    kw.setdefault("progress", False)
    return simulate(simulator, n, **kw)


def assert_same(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.fixture(scope="module")
def reference():
    return run(Gaussian(), seed=3)


def test_shapes_dtypes_and_values(reference):
    theta, x = reference
    assert theta.shape == x.shape == (N, 2)
    assert theta.dtype == x.dtype == torch.float32
    assert theta.abs().max() <= 1
    assert 0.08 < (x - theta).std() < 0.12


def test_same_seed_same_data_across_workers(reference):
    assert_same(run(Gaussian(), seed=3), reference)
    assert_same(run(Gaussian(), seed=3, workers=2), reference)


def test_same_seed_same_data_on_dask(reference):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        assert_same(run(Gaussian(), seed=3, client=client), reference)


def test_different_seeds_differ(reference):
    theta, x = run(Gaussian(), seed=4)
    assert not torch.equal(theta, reference[0]) and not torch.equal(x, reference[1])


def test_global_rng_states_untouched():
    torch.manual_seed(1)
    np.random.seed(1)
    run(Gaussian(), n=10)
    run(row_summary, n=10, prior=box())
    a, b = torch.rand(1), np.random.rand()
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(a, torch.rand(1)) and b == np.random.rand()


@pytest.mark.parametrize("f", [batched_square, row_summary])
@pytest.mark.parametrize("batched", [None, "explicit"])
def test_plain_functions_reproducible(f, batched):
    batched = (f is batched_square) if batched == "explicit" else None
    a = run(f, n=100, chunk_size=40, prior=box(), batched=batched)
    b = run(f, n=100, chunk_size=40, prior=box(), batched=batched)
    assert a[1].shape == (100, 2)
    assert_same(a, b)
    if f is batched_square:
        assert torch.allclose(a[1], a[0] ** 2, atol=0.6)
        theta, x = run(f, n=100, chunk_size=40, prior=box(), batched=False)  # row by row
        assert torch.equal(theta, a[0]) and torch.allclose(x, theta**2, atol=0.6)


def test_prior_override():
    theta, _ = run(Gaussian(), n=50, prior=box(3))
    assert theta.shape == (50, 3)


@pytest.mark.parametrize("sim", [NaNWhenPositive(), RaiseWhenPositive()])
def test_invalid_dropped_warned_once_and_kept_in_store(sim, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theta, x = run(sim, seed=3, store=tmp_path / "s.zarr")
    dropped = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(dropped) == 1 and "were dropped" in str(dropped[0].message)
    assert (theta[:, 0] <= 0.5).all() and torch.isfinite(x).all()
    all_theta, all_x, valid = SimulationStore.open(tmp_path / "s.zarr").read()
    np.testing.assert_array_equal(valid, all_theta[:, 0] <= 0.5)
    assert f"{(~valid).sum()} of {N}" in str(dropped[0].message)
    assert np.isnan(all_x[~valid]).all()
    assert 100 < (~valid).sum() < 400
    # valid rows are the same simulations as in a run where nothing fails
    ref_theta, ref_x = run(Gaussian(), seed=3)
    assert torch.equal(theta, ref_theta[ref_theta[:, 0] <= 0.5])
    if isinstance(sim, NaNWhenPositive):
        assert torch.equal(x, ref_x[ref_theta[:, 0] <= 0.5])
    assert_same(load_store(tmp_path / "s.zarr"), (theta, x))


def test_all_invalid_raises():
    prior = Independent(Uniform(torch.ones(2), 2 * torch.ones(2)), 1)  # always raises
    with pytest.raises(RuntimeError, match="All 20 simulations.*unphysical"):
        run(RaiseWhenPositive(), n=20, prior=prior)


def test_interrupted_run_resumes(tmp_path, reference):
    path = tmp_path / "run.zarr"
    with pytest.raises(Interrupt):
        run(InterruptedGaussian(at=2), seed=3, store=path)
    store = SimulationStore.open(path)
    assert store.done.tolist() == [True, True, False, False]
    with pytest.raises(RuntimeError, match="2 of 4 chunks done"):
        load_store(path)
    sim = Gaussian()
    assert_same(run(sim, seed=3, store=path), reference)
    assert sim.calls == 2  # only the missing chunks
    resumed = Gaussian()
    assert_same(run(resumed, seed=3, store=path), reference)  # finished: nothing to simulate
    assert resumed.calls == 0
    assert_same(load_store(path), reference)
    attrs = store.provenance
    assert attrs["seed"] == 3 and attrs["x_shape"] == [2] and attrs["simulator"] == "gauss"
    assert {"sbiflow_version", "created"} <= set(attrs)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": 4}, "seed"),
        ({"n": 900}, "n"),
        ({"chunk_size": 200}, "chunk_size"),
        ({"prior": box(3)}, "dim_theta"),
        ({"simulator": row_summary, "prior": box()}, "simulator"),
    ],
)
def test_provenance_mismatch(tmp_path, change, field):
    path = tmp_path / "s.zarr"
    run(Gaussian(), n=500, seed=3, store=path)
    kw = {"simulator": Gaussian(), "n": 500, "seed": 3, "store": path} | change
    with pytest.raises(ValueError, match=f"with {field}=.*new store path"):
        run(kw.pop("simulator"), **kw)


def test_not_a_store(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable Zarr store"):
        run(Gaussian(), store=tmp_path / "junk")
    zarr.open_group(tmp_path / "other", mode="w")  # a Zarr group, but not ours
    with pytest.raises(ValueError, match="not an sbiflow simulation store"):
        run(Gaussian(), store=tmp_path / "other")
    path = tmp_path / "s.zarr"
    run(Gaussian(), n=10, store=path)
    (path / "zarr.json").write_text("{corrupted")
    with pytest.raises(ValueError, match="not a readable Zarr store"):
        run(Gaussian(), n=10, store=path)
    with pytest.raises(FileNotFoundError):
        load_store(tmp_path / "missing")
    assert json.loads((path / "theta" / "zarr.json").read_text())  # untouched


@pytest.mark.parametrize("n", [0, -5, 2.5, "10", True, None])
def test_bad_n(n):
    with pytest.raises((TypeError, ValueError), match="n must be a positive int"):
        simulate(Gaussian(), n)


def test_bad_simulators():
    with pytest.raises(TypeError, match="neither|callable"):
        simulate(object(), 10)
    with pytest.raises(TypeError, match="simulator has no prior"):
        simulate(NoPrior(), 10)
    with pytest.raises(TypeError, match="needs a prior"):
        simulate(batched_square, 10)
    with pytest.raises(ValueError, match="event shape"):
        simulate(batched_square, 10, prior=torch.distributions.Normal(torch.zeros(2), 1))
    with pytest.raises(ValueError, match=r"Chunk 0: .*shape \(249, 2\)"):
        run(DropsARow())
    with pytest.raises(ValueError, match="Chunk 0: .*shape"):
        run(lambda t: t.sum(0), prior=box(), batched=True)
    with pytest.raises(TypeError, match="picklable"):
        run(lambda t: t, prior=box(), workers=2)
    with pytest.raises(ValueError, match="either workers"):
        run(Gaussian(), workers=2, client=object())
