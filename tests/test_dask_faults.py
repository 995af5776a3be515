"""Fault tolerance of sbiflow.simulate on a real Dask cluster and on local processes.

A real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1; workers and drivers
are killed with SIGKILL, as a batch system does at a time limit or on pre-emption. Every
run must end with exactly the arrays of an undisturbed local run with the same seed: no
simulation lost, none duplicated, none read from a half-written chunk.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _fault_helpers import KillsItsProcess, LoopbackCluster, SleepyGaussian, run_driver

from sbiflow.simulate import simulate
from sbiflow.store import SimulationStore, load_store

distributed = pytest.importorskip("distributed")

TIMEOUT = 55.0  # s: every test here must finish within a minute


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Fail a test that runs over a minute instead of hanging the suite (SIGALRM)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("test ran over 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LoopbackCluster]:
    cluster = LoopbackCluster(tmp_path, n_workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def client(cluster: LoopbackCluster) -> Iterator[distributed.Client]:
    with distributed.Client(cluster.address, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        yield client


def reference(n: int, chunk_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The undisturbed local run (no sleeps: they do not change the data)."""
    return simulate(SleepyGaussian(), n, seed=seed, chunk_size=chunk_size, progress=False)


def assert_exact(result: tuple, expected: tuple, n: int) -> None:
    """Same arrays, row for row: none lost, none duplicated, none out of place."""
    theta, x = result
    assert theta.shape == (n, 2) and x.shape == (n, 2)
    assert len(np.unique(theta.numpy(), axis=0)) == n  # no simulation twice
    assert torch.equal(theta, expected[0]) and torch.equal(x, expected[1])


def wait_until(condition, what: str, deadline: float, poll: float = 0.01) -> None:  # noqa: ANN001
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def chunk_states(client: distributed.Client) -> dict[str, tuple[str, list[str]]]:
    """Key -> (state, addresses of the workers holding it) for sbiflow's tasks."""

    def states(dask_scheduler) -> dict:  # noqa: ANN001
        return {
            str(key): (ts.state, [ws.address for ws in ts.who_has or ()])
            for key, ts in dask_scheduler.tasks.items()
            if str(key).startswith("sbiflow-")
        }

    return client.run_on_scheduler(states)


@pytest.mark.slow  # ~10-15 s; the tests below and tests/test_cluster_cli.py check it too
def test_undisturbed_cluster_run_equals_local_run(client: distributed.Client) -> None:
    n, chunk, seed = 2000, 100, 7
    theta, x = simulate(
        SleepyGaussian(per_row=0.002), n, seed=seed, chunk_size=chunk, client=client, progress=False
    )
    assert_exact((theta, x), reference(n, chunk, seed), n)
    assert not chunk_states(client)  # nothing of ours left on the cluster


def test_workers_killed_early_and_mid_run(
    cluster: LoopbackCluster, client: distributed.Client
) -> None:
    """Kill the worker holding the simulator before any chunk finishes, then another mid-run.

    The first kill is the case that crashed with "lost dependencies" when the simulator was
    scattered to the workers: its holder died before any chunk finished.
    """
    n, chunk, seed = 4000, 100, 11  # 40 chunks of 0.2 s
    n_chunks = n // chunk
    start = time.monotonic()
    deadline = start + TIMEOUT - 5
    pids = client.run(os.getpid)  # worker address -> process id
    killed: list[tuple[str, int]] = []  # (moment, chunks finished by then)
    errors: list[BaseException] = []

    def finished() -> int:
        states = chunk_states(client)
        return n_chunks - sum(k.startswith("sbiflow-chunk") for k in states)

    def killer() -> None:
        try:
            # 1. As soon as a worker holds the simulator, and before any chunk is done: kill it.
            def holder() -> str | None:
                states = chunk_states(client)
                task = [v for k, v in states.items() if k.startswith("sbiflow-task")]
                return task[0][1][0] if task and task[0][1] else None

            wait_until(lambda: holder() is not None, "the simulator on a worker", deadline)
            first = holder()
            done = finished()
            cluster.kill(pids[first])
            killed.append(("early", done))
            cluster.add_worker()  # the batch system gives us another node
            # 2. Half-way: kill the other original worker, busy with a chunk.
            wait_until(lambda: finished() >= n_chunks // 2, "half the chunks", deadline)
            (second,) = [a for a in pids if a != first]
            killed.append(("mid-run", finished()))
            cluster.kill(pids[second])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = simulate(
        SleepyGaussian(per_row=0.002), n, seed=seed, chunk_size=chunk, client=client, progress=False
    )
    thread.join(timeout=10)
    assert not errors, errors
    assert [k for k, _ in killed] == ["early", "mid-run"]
    assert killed[0][1] == 0, f"the early kill came after {killed[0][1]} chunks finished"
    assert killed[1][1] < n_chunks, "the mid-run kill came after the run"
    assert_exact(result, reference(n, chunk, seed), n)
    assert time.monotonic() - start < TIMEOUT


@pytest.mark.slow  # ~30 s: two clusters start
def test_scheduler_killed_then_resumed_on_a_new_cluster(tmp_path: Path) -> None:
    """The scheduler dies mid-run: a clear error; a new cluster resumes from the store."""
    n, chunk, seed = 4000, 100, 17
    path = tmp_path / "run.zarr"
    deadline = time.monotonic() + TIMEOUT - 5
    first = LoopbackCluster(tmp_path / "first")
    try:
        with distributed.Client(first.address, timeout=30) as client:
            client.wait_for_workers(2, timeout=30)

            def killer() -> None:
                def done() -> int:
                    try:
                        return int(SimulationStore.open(path).done.sum())
                    except (FileNotFoundError, ValueError):
                        return 0

                wait_until(lambda: done() >= 5, "5 chunks", deadline, poll=0.02)
                first.scheduler.kill()

            threading.Thread(target=killer, daemon=True).start()
            with pytest.raises(RuntimeError, match="scheduler was lost.*rerun the same call"):
                simulate(
                    SleepyGaussian(per_row=0.002), n, seed=seed, chunk_size=chunk,
                    client=client, store=path, progress=False,
                )  # fmt: skip
    finally:
        first.close()
    assert 5 <= SimulationStore.open(path).done.sum() < n // chunk
    second = LoopbackCluster(tmp_path / "second")
    try:
        with distributed.Client(second.address, timeout=30) as client:
            result = simulate(
                SleepyGaussian(per_row=0.002), n, seed=seed, chunk_size=chunk,
                client=client, store=path, progress=False,
            )  # fmt: skip
    finally:
        second.close()
    assert_exact(result, reference(n, chunk, seed), n)


def _kill_driver_then_resume(
    tmp_path: Path, driver_args: list[str], resume_kw: dict, n: int, chunk: int, seed: int
) -> None:
    """Start the driver, SIGKILL it with 20-60% of the chunks done, resume here, compare."""
    path = tmp_path / "run.zarr"
    n_chunks = n // chunk
    deadline = time.monotonic() + TIMEOUT - 5
    args = [str(path), str(n), str(chunk), str(seed), "0.05", *driver_args]
    driver = run_driver(args, tmp_path / "driver.log")
    try:

        def done() -> int:
            try:
                return int(SimulationStore.open(path).done.sum())
            except (FileNotFoundError, ValueError):
                return 0  # not created yet

        wait_until(lambda: done() >= n_chunks // 5, "20% of the chunks", deadline, poll=0.02)
        driver.kill()
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
    store = SimulationStore.open(path)
    was_done = store.done.copy()
    assert 0 < was_done.sum() < 0.6 * n_chunks, (was_done.sum(), (tmp_path / "driver.log"))
    theta_files = {i: path / "theta" / "c" / str(i) / "0" for i in np.flatnonzero(was_done)}
    mtimes = {i: f.stat().st_mtime_ns for i, f in theta_files.items()}

    result = simulate(
        SleepyGaussian(per_call=0.05), n, seed=seed, chunk_size=chunk, store=path,
        progress=False, **resume_kw,
    )  # fmt: skip
    expected = reference(n, chunk, seed)
    assert_exact(result, expected, n)
    assert_exact(load_store(path), expected, n)
    assert {i: f.stat().st_mtime_ns for i, f in theta_files.items()} == mtimes  # not redone
    assert SimulationStore.open(path).done.all()


# ~20 s: slow; tests/test_simulate.py checks resuming an interrupted run by default
@pytest.mark.slow
def test_driver_killed_then_resumed_on_cluster(tmp_path: Path, client: distributed.Client) -> None:
    """10^5 simulations; the driver dies with a fifth of them in the store; the rerun resumes."""
    address = client.scheduler.address
    _kill_driver_then_resume(
        tmp_path, ["--scheduler", address], {"client": client}, 100_000, 1000, 5
    )


@pytest.mark.slow  # ~25 s on one core: two spawned worker pools import torch
def test_driver_killed_then_resumed_with_local_workers(tmp_path: Path) -> None:
    """The same with local process workers (``workers=2``)."""
    _kill_driver_then_resume(tmp_path, ["--workers", "2"], {"workers": 2}, 100_000, 1000, 6)


def spawned_children() -> list[int]:
    """Process ids of this process's multiprocessing workers (spawned), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow  # ~35 s on one loaded core: two pools of two spawned processes import torch
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find workers")
def test_local_worker_killed_mid_run(tmp_path: Path) -> None:
    """A local process worker SIGKILLed half-way: the pool restarts, the arrays are identical."""
    n, chunk, seed = 4000, 100, 13  # 40 chunks of 0.2 s
    path = tmp_path / "run.zarr"
    deadline = time.monotonic() + TIMEOUT - 5
    killed: list[int] = []
    errors: list[BaseException] = []

    def killer() -> None:
        try:

            def done() -> int:
                try:
                    return int(SimulationStore.open(path).done.sum())
                except (FileNotFoundError, ValueError):
                    return 0

            wait_until(lambda: done() >= 10, "10 chunks", deadline, poll=0.02)
            victim = spawned_children()[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(done())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.warns(RuntimeWarning, match="worker process died.*restarting the pool"):
        result = simulate(
            SleepyGaussian(per_row=0.002), n, seed=seed, chunk_size=chunk, workers=2,
            store=path, progress=False,
        )  # fmt: skip
    thread.join(timeout=10)
    assert not errors, errors
    assert len(killed) == 1 and killed[0] < n // chunk, killed
    assert_exact(result, reference(n, chunk, seed), n)
    assert_exact(load_store(path), reference(n, chunk, seed), n)


@pytest.mark.slow  # ~20 s: two pools start
def test_a_simulator_that_kills_its_process_stops_the_run(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(sys.modules["sbiflow.simulate"], "LOCAL_RESTARTS", 1)
    with (
        pytest.warns(RuntimeWarning, match=r"restarting the pool for the 4 unfinished chunks"),
        pytest.raises(RuntimeError, match="died 2 times.*run it with workers=1 to see the error"),
    ):
        simulate(KillsItsProcess(), 400, chunk_size=100, workers=2, progress=False)


def test_half_written_chunk_is_redone(tmp_path: Path) -> None:
    """A driver killed inside a chunk's write leaves poisoned rows, not marked done: redone."""
    n, chunk, seed = 3000, 100, 9
    path = tmp_path / "run.zarr"
    driver = run_driver(
        [str(path), str(n), str(chunk), str(seed), "0", "--die-in-write", "3"],
        tmp_path / "driver.log",
    )
    assert driver.wait(timeout=TIMEOUT - 10) == -9, (tmp_path / "driver.log").read_text()
    store = SimulationStore.open(path)
    assert store.done.tolist()[:4] == [True, True, True, False] and store.done.sum() == 3
    theta, x, valid = store.read_chunk(3)
    expected = reference(n, chunk, seed)
    assert valid.all() and not np.array_equal(theta, expected[0][300:400].numpy())  # torn
    result = simulate(SleepyGaussian(), n, seed=seed, chunk_size=chunk, store=path, progress=False)
    assert_exact(result, expected, n)
    assert_exact(load_store(path), expected, n)
