import json
import warnings
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
import zarr
from _toy_simulators import (
    DropsARow,
    FlakyBox,
    Gaussian,
    Interrupt,
    NaNWhenPositive,
    NoPrior,
    RaiseWhenPositive,
    batched_square,
    box,
    row_summary,
)
from torch.distributions import Independent, Uniform

import sbiflow
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


def test_dask_retries_a_chunk_that_raised_and_does_not_retry_a_wrong_shape(reference):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        FlakyBox.failed = False
        assert_same(run(Gaussian(), seed=3, client=client, prior=FlakyBox()), reference)
        assert FlakyBox.failed  # it did raise once, and the retry gave the same rows
        with pytest.raises(ValueError, match=r"Chunk \d: .*shape \(249, 2\)"):
            run(DropsARow(), client=client)


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


def interrupt_after(monkeypatch, writes: int) -> None:
    """Make the store raise Interrupt (a stand-in for Ctrl-C) on its ``writes + 1``-th chunk."""
    write, count = SimulationStore.write_chunk, [0]

    def interrupting(self, *args):
        if count[0] == writes:
            raise Interrupt
        count[0] += 1
        write(self, *args)

    monkeypatch.setattr(SimulationStore, "write_chunk", interrupting)


def test_interrupted_run_resumes(tmp_path, reference, monkeypatch):
    path = tmp_path / "run.zarr"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupt):
            run(Gaussian(), seed=3, store=path)
    store = SimulationStore.open(path)
    assert store.done.tolist() == [True, True, False, False]
    assert store.provenance["finished"] is None and store.provenance["n_failed"] is None
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


def test_provenance_recorded(tmp_path):
    path = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run(RaiseWhenPositive(), n=N, seed=3, store=path)
    attrs = SimulationStore.open(path).provenance
    assert attrs["simulator"] == "gauss"
    assert attrs["simulator_class"] == "_toy_simulators.RaiseWhenPositive"
    assert attrs["simulator_options"] == {"noise": 0.1}  # not the prior, not the call counter
    assert attrs["prior"]["type"] == "box_uniform"
    assert attrs["prior"]["low"]["values"] == [-1.0, -1.0]
    assert attrs["prior"]["high"]["values"] == [1.0, 1.0]
    assert attrs["prior_repr"].startswith("Independent(Uniform(")
    assert (attrs["seed"], attrs["n"], attrs["chunk_size"]) == (3, N, CHUNK)
    assert attrs["sbiflow_version"] == sbiflow.__version__
    created = datetime.fromisoformat(attrs["created"])
    finished = datetime.fromisoformat(attrs["finished"])
    assert created.tzinfo is not None and created <= finished <= datetime.now(UTC)
    _, _, valid = SimulationStore.open(path).read()
    assert attrs["n_failed"] == int((~valid).sum()) > 0
    assert "ValueError: theta[0] > 0.5 is unphysical" in attrs["first_error"]


def test_provenance_of_plain_functions_and_large_priors(tmp_path):
    path = tmp_path / "f.zarr"
    prior = torch.distributions.MultivariateNormal(torch.zeros(10), torch.eye(10))
    run(batched_square, n=20, chunk_size=10, prior=prior, store=path)
    attrs = SimulationStore.open(path).provenance
    assert attrs["simulator_class"] == "_toy_simulators.batched_square"
    assert attrs["simulator_options"] == {}
    assert (
        attrs["prior"]["type"] == "mvn" and len(attrs["prior"]["covariance_matrix"]["sha256"]) == 64
    )
    other = torch.distributions.MultivariateNormal(torch.zeros(10), 2 * torch.eye(10))
    with pytest.raises(ValueError, match=r"another prior \(prior.covariance_matrix: 'sha256:"):
        run(batched_square, n=20, chunk_size=10, prior=other, store=path)


def test_same_prior_in_another_class_resumes(tmp_path, reference):
    """sbiflow.BoxUniform and Independent(Uniform(...), 1) are the same prior."""
    path = tmp_path / "s.zarr"
    run(Gaussian(), seed=3, store=path)
    assert_same(
        run(
            Gaussian(), seed=3, store=path, prior=sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
        ),
        reference,
    )


def test_a_store_is_complete_or_absent(tmp_path, reference, monkeypatch):
    """Killed while the store is being created: nothing at the path; the rerun creates it."""
    path = tmp_path / "s.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(zarr.Group, "create_array", lambda *a, **k: (_ for _ in ()).throw(Interrupt))
        with pytest.raises(Interrupt):
            run(Gaussian(), seed=3, store=path)
    assert not path.exists()
    assert_same(run(Gaussian(), seed=3, store=path), reference)
    assert [p.name for p in tmp_path.iterdir() if p.name != "s.zarr"][0].startswith(
        ".s.zarr.creating-"
    )  # the leftover of the killed creation, harmless
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert_same(run(Gaussian(), seed=3, store=empty), reference)  # an empty folder is fine


def test_killed_between_creating_x_and_recording_its_shape(tmp_path, reference, monkeypatch):
    path = tmp_path / "s.zarr"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 0)
        with pytest.raises(Interrupt):
            run(Gaussian(), seed=3, store=path)
    group = zarr.open_group(path, mode="r+")
    group.create_array("x", shape=(N, 2), chunks=(CHUNK, 2), dtype="float32")  # then killed
    assert_same(run(Gaussian(), seed=3, store=path), reference)


def test_stores_without_the_new_fields_still_resume(tmp_path, reference, monkeypatch):
    path = tmp_path / "old.zarr"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(Interrupt):
            run(Gaussian(), seed=3, store=path)
    group = zarr.open_group(path, mode="r+")
    for key in ("simulator_class", "simulator_options", "prior", "prior_repr", "finished"):
        del group.attrs[key]  # as written by sbiflow before these fields
    assert_same(run(Gaussian(), seed=3, store=path), reference)
    assert SimulationStore.open(path).provenance["finished"] is not None


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


@pytest.mark.parametrize(
    "change, says",
    [
        ({"simulator": Gaussian(noise=0.2)},
         r"another simulator options \(simulator_options.noise: 0.1 in the store, 0.2 in this"),
        ({"simulator": NaNWhenPositive()}, r"another simulator class \(simulator_class: "
         r"'_toy_simulators.Gaussian' in the store, '_toy_simulators.NaNWhenPositive'"),
        ({"prior": Independent(Uniform(-torch.ones(2), 2 * torch.ones(2)), 1)},
         r"another prior \(prior.high: \[1.0, 1.0\] in the store, \[2.0, 2.0\] in this call\); "
         r"the store's prior is "
         r"box_uniform\(low=\[-1.0, -1.0\], high=\[1.0, 1.0\]\)"),
    ],
)  # fmt: skip
def test_resume_refuses_another_simulator_or_prior(tmp_path, change, says):
    path = tmp_path / "s.zarr"
    run(Gaussian(), n=500, seed=3, store=path)
    kw = {"simulator": Gaussian(), "n": 500, "seed": 3, "store": path} | change
    with pytest.raises(ValueError, match=says + ".*call simulate with the simulator, prior, seed"):
        run(kw.pop("simulator"), **kw)
    assert SimulationStore.open(path).done.all()  # the store is untouched


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
