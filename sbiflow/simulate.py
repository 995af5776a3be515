"""(θ, x) generation: chunks, seeds, workers, local or Dask, store."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbiflow.priors import prior_to_spec
from sbiflow.store import SimulationStore, class_path, describe, simulator_options, valid_rows

__all__ = ["simulate"]

# The prior draws from torch's global RNG, which threads (Dask's threaded workers) share.
_GLOBAL_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Task:
    """What every chunk needs; pickled to process and Dask workers."""

    simulator: Any  # an object with .simulate(theta, rng), or a plain callable f(theta)
    prior: Distribution
    protocol: bool  # True: simulator.simulate(theta, rng); False: simulator(theta)
    batched: bool  # False: one call per row


@dataclass
class _Chunk:
    """One chunk's results, in NumPy to cross process boundaries cheaply."""

    index: int
    theta: np.ndarray  # (B, D)
    x: np.ndarray | None  # (B, *x_shape); None when every row raised
    valid: np.ndarray  # (B,)
    error: str | None = None  # the first exception the simulator raised, if any


class _ShapeError(ValueError):
    """A simulator output of the wrong shape (a bug, not an invalid simulation)."""


def simulate(
    simulator: Any,
    n: int,
    *,
    prior: Distribution | None = None,
    seed: int = 0,
    workers: int = 1,
    chunk_size: int = 1000,
    store: str | os.PathLike | None = None,
    client: Any = None,
    batched: bool | None = None,
    progress: bool = True,
    in_memory: bool = True,
) -> tuple[Tensor, Tensor] | None:
    r"""Draw :math:`\theta \sim p(\theta)` and simulate :math:`x \sim p(x \mid \theta)`.

    The ``n`` simulations are cut into chunks of ``chunk_size``; chunk ``i`` draws its
    parameters and its randomness from ``numpy.random.SeedSequence(seed).spawn(n_chunks)[i]``,
    so a seed gives the same (θ, x) whatever ``workers`` or ``client``.

    Simulations that return NaN/inf, or raise, are dropped from the result (with one
    ``RuntimeWarning`` saying how many) and kept, marked invalid, in the store.

    Args:
        simulator: Either an object with a ``prior`` and a batched
            ``simulate(theta (B, D), rng: numpy.random.Generator) -> x (B, *x_shape)``
            (optionally a ``name``), or a plain callable ``f(theta) -> x`` together with
            ``prior=``. Plain callables get no ``rng``: they are reproducible if they draw
            from torch's or NumPy's global RNG (seeded per chunk here), otherwise their
            randomness is theirs to seed.
        n: Number of simulations.
        prior: Prior with event shape (D,); overrides ``simulator.prior``.
        seed: Non-negative integer seed.
        workers: Local processes ("spawn" start method: a script must guard its entry point
            with ``if __name__ == "__main__":`` and the simulator must be picklable, i.e.
            defined in an importable module).
        chunk_size: Simulations per chunk: the unit of work, seeding, progress and resume.
        store: A Zarr directory to write chunk by chunk, with the run's provenance. If it
            already holds part of this run (same seed, n, chunk_size, simulator name, class
            and options, and prior), only the missing chunks are simulated; a store made by
            another run is refused. See :mod:`sbiflow.store`.
        client: A ``dask.distributed.Client``; chunks run on its cluster instead of
            ``workers`` (results come back here, where the store is written).
        batched: For plain callables: True if ``f`` maps (B, D) to (B, *x_shape), False to
            call it on each row (D,). None guesses from the shapes of one probe call on
            three prior draws. For simulator objects, False calls ``simulate`` row by row.
        progress: Show a progress bar.
        in_memory: With a ``store``: ``False`` writes each chunk and lets it go, so memory
            does not grow with ``n`` (10⁶ maps of 32 x 32 are 4 GB); the function returns
            ``None`` and training streams the store, ``NPE(...).fit(store=path)``.

    Returns:
        theta (n_valid, D) and x (n_valid, *x_shape), float32, in chunk order; ``None``
        when ``in_memory=False``.

    Raises:
        TypeError: No prior, or ``simulator`` is neither a simulator nor a callable.
        ValueError: Bad ``n``/``chunk_size``/``workers``, a simulator output of the wrong
            shape, or a store written by another run.
        RuntimeError: Every simulation failed, or a chunk failed (the message names it).

    Example:
        >>> prior = torch.distributions.Independent(
        ...     torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1
        ... )
        >>> theta, x = simulate(lambda t: t**2, 10, prior=prior, progress=False)
        >>> theta.shape, x.shape
        (torch.Size([10, 2]), torch.Size([10, 2]))
    """
    for name, value in (("n", n), ("chunk_size", chunk_size), ("workers", workers)):
        _check_positive_int(name, value)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not in_memory and store is None:
        raise ValueError("in_memory=False needs a store= to write the simulations to.")
    if client is not None and workers != 1:
        raise ValueError("Pass either workers= (local processes) or client= (Dask), not both.")
    task, name = _make_task(simulator, prior, batched)
    n, seed, chunk_size = int(n), int(seed), int(chunk_size)
    n_chunks = math.ceil(n / chunk_size)
    seeds = np.random.SeedSequence(seed).spawn(n_chunks)
    sizes = [min(chunk_size, n - i * chunk_size) for i in range(n_chunks)]

    db = None
    if store is not None:
        db = SimulationStore.resume(store, **_provenance(task, name, seed, n, chunk_size))
    done = np.flatnonzero(db.done) if db is not None else []
    # chunks kept for the return value (none when in_memory=False: they live in the store)
    chunks = {int(i): _Chunk(int(i), *db.read_chunk(int(i))) for i in done} if in_memory else {}
    errors: list[str] = []
    x_shape = db.x_shape if db is not None else None
    pending: list[_Chunk] = []  # chunks where every row raised, written once x_shape is known
    jobs = [(i, sizes[i], seeds[i]) for i in range(n_chunks) if i not in chunks]
    results = _execute(task, jobs, workers, client)
    bar = tqdm(total=n, initial=n - sum(s for _, s, _ in jobs), unit="sim", disable=not progress)
    with contextlib.closing(results), bar:
        for chunk in results:
            if chunk.x is not None and x_shape is None:
                x_shape = chunk.x.shape[1:]
            if chunk.x is not None and chunk.x.shape[1:] != x_shape:
                raise ValueError(
                    f"Simulator output shape {chunk.x.shape[1:]} in chunk {chunk.index} differs "
                    f"from {x_shape} in other chunks."
                )
            if in_memory:
                chunks[chunk.index] = chunk
            if chunk.error:
                errors.append(chunk.error)
            pending.append(chunk)
            if x_shape is not None:
                for c in pending:
                    if c.x is None:
                        c.x = np.full((len(c.theta), *x_shape), np.nan, np.float32)
                    if db is not None:
                        db.write_chunk(c.index, c.theta, c.x, c.valid)
                pending.clear()
            bar.update(len(chunk.theta))
    if not in_memory:
        assert db is not None
        if not pending:
            db.finish(first_error=db.provenance.get("first_error") or next(iter(errors), None))
        _report_invalid(n - valid_rows(store), n, next(iter(errors), None), stacklevel=3)
        return None
    ordered = [chunks[i] for i in range(n_chunks)]
    if db is not None and not pending:
        db.finish(first_error=next((c.error for c in ordered if c.error), None))
    return _assemble(ordered, n)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _make_task(simulator: Any, prior: Distribution | None, batched: bool | None) -> tuple:
    """Check the simulator and prior; return the task and the simulator's name."""
    protocol = callable(getattr(simulator, "simulate", None))
    if not protocol and not callable(simulator):
        raise TypeError(
            f"simulator must be an object with prior and simulate(theta, rng), or a callable "
            f"f(theta) -> x; got {type(simulator).__name__}."
        )
    prior = prior if prior is not None else getattr(simulator, "prior", None)
    if not isinstance(prior, Distribution):
        what = "simulator has no prior" if protocol else "a plain callable needs a prior"
        raise TypeError(
            f"{what}: pass prior=, a torch.distributions.Distribution with event shape (D,), "
            "e.g. Independent(Uniform(low, high), 1)."
        )
    if len(prior.event_shape) != 1:
        raise ValueError(
            f"The prior must have event shape (D,), got {tuple(prior.event_shape)} (batch shape "
            f"{tuple(prior.batch_shape)}); wrap it with torch.distributions.Independent(prior, 1)."
        )
    if protocol:
        name = getattr(simulator, "name", None) or type(simulator).__qualname__
    else:
        name = getattr(simulator, "__qualname__", None) or type(simulator).__qualname__
        if batched is None:
            batched = _probe_batched(simulator, prior)
    return _Task(simulator, prior, protocol, batched is not False), str(name)


def _provenance(task: _Task, name: str, seed: int, n: int, chunk_size: int) -> dict[str, Any]:
    """What a store records about the run, and checks on resume (see :mod:`sbiflow.store`)."""
    spec = prior_to_spec(task.prior)  # a BoxUniform and sbi's box are the same prior
    return {
        "seed": seed,
        "n": n,
        "chunk_size": chunk_size,
        "dim_theta": int(task.prior.event_shape[0]),
        "simulator": name,
        "simulator_class": class_path(task.simulator),
        "simulator_options": simulator_options(task.simulator),
        "prior": describe(spec if spec is not None else task.prior),
        "prior_repr": repr(task.prior),
    }


def _probe_batched(f: Callable, prior: Distribution) -> bool:
    """Guess whether ``f`` maps (B, D) to (B, *x_shape) from one call on 3 rows and one on 1."""
    with _global_rngs(0, 0):
        theta = prior.sample((3,)).to(torch.float32)  # (3, D)
        try:
            batch = _to_numpy(f(theta))
        except Exception:
            return False
        if batch.ndim == 0 or batch.shape[0] != 3:
            return False
        try:
            row = _to_numpy(f(theta[0]))
        except Exception:  # a batched f that needs the batch dim
            return True
        return batch.shape[1:] == row.shape


@contextlib.contextmanager
def _global_rngs(torch_seed: int, numpy_seed: Any = None) -> Iterator[None]:
    """Seed torch's (and NumPy's, if given) global RNG; restore their states on exit."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            if numpy_seed is not None:
                np.random.seed(numpy_seed)
            yield
    finally:
        np.random.set_state(state)


def _to_numpy(out: Any) -> np.ndarray:
    return torch.as_tensor(out).detach().to("cpu", torch.float32).numpy()


def _run_chunk(task: _Task, index: int, size: int, seq: np.random.SeedSequence) -> _Chunk:
    """Simulate one chunk; errors that are not invalid simulations name the chunk."""
    try:
        return _simulate_chunk(task, index, size, seq)
    except _ShapeError:
        raise
    except Exception as e:
        raise RuntimeError(f"Simulation chunk {index} failed: {type(e).__name__}: {e}") from e


def _simulate_chunk(task: _Task, index: int, size: int, seq: np.random.SeedSequence) -> _Chunk:
    # spawn() counts its children in ``seq``: a chunk run twice on one object (a Dask retry
    # on the same worker, a threaded worker) must start from a fresh copy to draw the same.
    fresh = np.random.SeedSequence(seq.entropy, spawn_key=seq.spawn_key, pool_size=seq.pool_size)
    theta_seq, rng_seq, torch_seq, numpy_seq = fresh.spawn(4)
    with _GLOBAL_RNG_LOCK, _global_rngs(_int_seed(theta_seq)):
        theta = task.prior.sample((size,)).to(torch.float32)  # (B, D)
    rng = np.random.default_rng(rng_seq)
    # Plain callables draw from the global RNGs: threads must take turns to stay reproducible.
    lock = contextlib.nullcontext() if task.protocol else _GLOBAL_RNG_LOCK
    with lock, _global_rngs(_int_seed(torch_seq), numpy_seq.generate_state(4)):
        x, error = _simulate_rows(task, theta, rng, index)
    if x is None:
        return _Chunk(index, theta.numpy(), None, np.zeros(size, bool), error)
    valid = np.isfinite(x.reshape(size, -1)).all(axis=1)
    return _Chunk(index, theta.numpy(), x, valid, error)


def _int_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, np.uint64)[0])


def _simulate_rows(
    task: _Task, theta: Tensor, rng: np.random.Generator, index: int
) -> tuple[np.ndarray | None, str | None]:
    """Simulate theta (B, D) -> x (B, *x_shape), NaN where the simulator raised; first error."""
    batch_of_rows = task.protocol or task.batched  # rows go in as (1, D), not (D,)

    def call(t: Tensor) -> np.ndarray:
        out = task.simulator.simulate(t, rng) if task.protocol else task.simulator(t)
        x = _to_numpy(out)
        if batch_of_rows and (x.ndim == 0 or x.shape[0] != len(t)):
            raise _ShapeError(
                f"Chunk {index}: the simulator returned shape {tuple(x.shape)} for {len(t)} "
                f"parameter sets; expected ({len(t)}, *x_shape)."
            )
        return x

    if task.batched:
        try:
            return call(theta), None
        except _ShapeError:
            raise
        except Exception:
            pass  # some rows fail: simulate row by row so that only those are lost
    outs: list[np.ndarray | None] = []
    error = None
    for i in range(len(theta)):
        try:
            outs.append(call(theta[i : i + 1])[0] if batch_of_rows else call(theta[i]))
        except _ShapeError:
            raise
        except Exception as e:
            error = error or f"{type(e).__name__}: {e}"
            outs.append(None)
    shapes = {out.shape for out in outs if out is not None}
    if len(shapes) > 1:
        raise _ShapeError(f"Chunk {index}: the simulator returned outputs of shapes {shapes}.")
    if not shapes:
        return None, error
    x = np.full((len(theta), *shapes.pop()), np.nan, np.float32)
    for i, out in enumerate(outs):
        if out is not None:
            x[i] = out
    return x, error


def _execute(task: _Task, jobs: Sequence[tuple], workers: int, client: Any) -> Iterator[_Chunk]:
    """Run the chunk jobs here, in local processes, or on Dask; yield chunks as they finish."""
    if not jobs:
        return
    if client is not None:
        yield from _execute_dask(task, jobs, client)
    elif workers == 1:
        for job in jobs:
            yield _run_chunk(task, *job)
    else:
        yield from _execute_local(task, jobs, workers)


#: Times a local process pool is restarted after one of its processes died (killed, out of
#: memory, or a crash inside the simulator) before the run gives up: enough for an
#: occasional kill, few enough that a simulator that crashes its process stops the run soon.
LOCAL_RESTARTS = 3


def _execute_local(task: _Task, jobs: Sequence[tuple], workers: int) -> Iterator[_Chunk]:
    """Run the chunk jobs in ``workers`` spawned processes; survive a process that dies.

    When a process of the pool dies, Python marks the whole pool broken and fails every
    pending chunk; the chunks that finished are kept and the others run in a new pool (at
    most :data:`LOCAL_RESTARTS` times). Seeds are per chunk, so the rows are the same.
    """
    try:
        pickle.dumps(task)
    except Exception as e:
        raise TypeError(
            "workers > 1 sends the simulator to other processes, so it must be picklable: "
            f"define it at module level in an importable file, not inline ({e})."
        ) from e
    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch threads
    remaining = {job[0]: job for job in jobs}
    for attempt in range(LOCAL_RESTARTS + 1):
        pool = ProcessPoolExecutor(
            min(workers, len(remaining)),
            mp_context=context,
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        try:
            futures = {pool.submit(_run_chunk, task, *job): i for i, job in remaining.items()}
            try:
                for future in as_completed(futures):
                    chunk = future.result()
                    del remaining[futures[future]]
                    yield chunk
                return
            except BrokenProcessPool as e:
                broken = e
            for future, i in futures.items():  # finished before the break: keep
                if i in remaining and future.done() and future.exception() is None:
                    del remaining[i]
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if not remaining:
            return
        if attempt < LOCAL_RESTARTS:
            warnings.warn(
                f"A simulation worker process died ({broken}); restarting the pool for the "
                f"{len(remaining)} unfinished chunks ({attempt + 1} of {LOCAL_RESTARTS} restarts).",
                RuntimeWarning,
                stacklevel=2,
            )
    raise RuntimeError(
        f"Simulation worker processes died {LOCAL_RESTARTS + 1} times ({broken}); "
        f"{len(remaining)} chunks are unfinished. If the simulator crashes its process "
        "(a segfault, running out of memory), run it with workers=1 to see the error; "
        "finished chunks are in the store, if any, and a rerun resumes from it."
    ) from broken


#: Retries of a chunk that raised on a Dask worker (a node without the simulator's module, a
#: full scratch disk): the seeds are fixed, so a retried chunk gives the same rows. Workers
#: that die are handled by Dask itself (the chunk is resubmitted elsewhere; after
#: ``distributed.scheduler.allowed-failures`` deaths of the same chunk it is given up).
DASK_RETRIES = 2


def _execute_dask(task: _Task, jobs: Sequence[tuple], client: Any) -> Iterator[_Chunk]:
    """Run the chunk jobs on a Dask cluster; yield chunks as they finish.

    The task (simulator and prior) goes to the cluster once, as the result of a small
    ``_load_task`` computation on pickled bytes, and every chunk depends on it. Dask holds
    that computation's recipe, so when every worker holding the task dies, Dask recomputes
    it on a live worker. (Data put there with ``client.scatter`` has no recipe: losing its
    last holder cancelled every chunk with "lost dependencies".) The bytes are held once by
    the scheduler, not copied into every chunk, which matters for simulators of ~1 MB.
    """
    try:
        from distributed import as_completed as dask_as_completed
    except ImportError as e:
        raise ImportError('simulate(..., client=) needs Dask: pip install "sbiflow[dask]"') from e
    import cloudpickle  # a dependency of distributed

    try:
        payload = cloudpickle.dumps(task)
    except Exception as e:
        raise TypeError(
            f"client= sends the simulator and prior to Dask workers, so they must be picklable "
            f"({type(e).__name__}: {e})."
        ) from e
    token = uuid.uuid4().hex[:8]
    shared = client.submit(
        _load_task, payload, key=f"sbiflow-task-{token}", retries=DASK_RETRIES, pure=False
    )
    futures = {
        client.submit(
            _run_chunk_remote,
            shared,
            *job,
            key=f"sbiflow-chunk-{job[0]}-{token}",
            retries=DASK_RETRIES,
            pure=False,
        )
        for job in jobs
    }
    try:
        for future in dask_as_completed(futures):
            try:
                result = future.result()
            except CancelledError as e:  # FutureCancelledError: not a simulation error
                raise RuntimeError(
                    f"Dask cancelled the simulation ({e}): the scheduler was lost, or the "
                    "client closed. Chunks finished so far are in the store, if one was "
                    "given: start the cluster again and rerun the same call to resume."
                ) from e
            futures.discard(future)
            future.release()  # finished: no recompute if its worker dies later
            if isinstance(result, _ShapeError):
                raise result
            yield result
    finally:
        client.cancel([*futures, shared])


def _load_task(payload: bytes) -> _Task:
    """Unpickle the task on a Dask worker (a recomputable task, unlike scattered data)."""
    return pickle.loads(payload)


def _run_chunk_remote(
    task: _Task, index: int, size: int, seq: np.random.SeedSequence
) -> _Chunk | _ShapeError:
    """:func:`_run_chunk` for Dask, where a wrong output shape is returned, not raised.

    Dask retries a task that raised; a bug in the simulator's output would only fail again.
    """
    try:
        return _run_chunk(task, index, size, seq)
    except _ShapeError as e:
        return e


def _report_invalid(n_invalid: int, n: int, error: str | None, stacklevel: int = 3) -> None:
    """Raise when every simulation failed; warn once, with the first error, when some did.

    ``stacklevel`` is ``warnings.warn``'s, counted from here: 3 points at whoever called
    ``simulate`` when ``simulate`` calls this directly, 4 through ``_assemble``.
    """
    cause = f" First error: {error}" if error else ""
    if n_invalid == n:
        raise RuntimeError(f"All {n} simulations returned NaN/inf or raised.{cause}")
    if n_invalid:
        warnings.warn(
            f"{n_invalid} of {n} simulations returned NaN/inf or raised and were dropped "
            f"(kept, marked invalid, in the store).{cause}",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def _assemble(chunks: list[_Chunk], n: int) -> tuple[Tensor, Tensor]:
    """Concatenate chunks in order, drop invalid rows, warn once about them."""
    valid = np.concatenate([c.valid for c in chunks])
    error = next((c.error for c in chunks if c.error), None)
    _report_invalid(int((~valid).sum()), n, error, stacklevel=4)
    theta = np.concatenate([c.theta for c in chunks])[valid]
    x = np.concatenate([c.x for c in chunks])[valid]
    return torch.from_numpy(theta), torch.from_numpy(x)
