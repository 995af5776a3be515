"""A loopback Dask cluster of real processes, and a slow simulator, for tests/test_dask_faults.py.

Importable by ``dask worker`` processes and by the driver script ``tests/_fault_driver.py``
(both get this directory on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Independent, Uniform

TESTS = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 30.0  # s, for a scheduler or worker process to come up on a loaded machine


class SleepyGaussian:
    """x = theta + 0.1 * noise, after sleeping ``per_row`` s per row and ``per_call`` s per call.

    The sleeps stand for an expensive simulator; they do not change x, so a reference run
    can use ``SleepyGaussian()`` (no sleep) and be compared with a slow one.
    """

    name = "sleepy_gauss"

    def __init__(self, per_row: float = 0.0, per_call: float = 0.0) -> None:
        self.prior = Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)
        self.per_row, self.per_call = per_row, per_call

    def simulate(self, theta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        time.sleep(self.per_call + self.per_row * len(theta))
        noise = torch.as_tensor(rng.standard_normal(theta.shape), dtype=theta.dtype)
        return theta + 0.1 * noise


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


class LoopbackCluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (random free ports).

    Workers run without a nanny (``--no-nanny``) so that killing a worker's process kills the
    worker, as when a batch system pre-empts a node; :meth:`add_worker` starts a replacement.

    Args:
        directory: Where the scheduler file and the processes' logs go.
        n_workers: Workers started at once (one thread each).
    """

    def __init__(self, directory: Path, n_workers: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.scheduler_file = self.directory / "scheduler.json"
        self.workers: list[subprocess.Popen] = []
        self.scheduler = _spawn(
            _dask(
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.scheduler_file),
            ),
            self.directory / "scheduler.log",
        )
        try:
            self.address = self._wait_for_address()
            for _ in range(n_workers):
                self.add_worker()
        except BaseException:
            self.close()
            raise

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {self.log('scheduler')}")
            try:
                return json.loads(self.scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.05)
        raise TimeoutError(f"dask scheduler did not start: {self.log('scheduler')}")

    def add_worker(self) -> subprocess.Popen:
        """Start one more worker process (returns at once; it joins within a few seconds)."""
        i = len(self.workers)
        worker = _spawn(
            _dask(
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--name",
                f"w{i}",
                "--memory-limit",
                "0",
            ),
            self.directory / f"worker{i}.log",
        )
        self.workers.append(worker)
        return worker

    def kill(self, pid: int) -> None:
        """SIGKILL the worker process ``pid`` (no goodbye to the scheduler)."""
        os.kill(pid, signal.SIGKILL)

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _stop(process)


def run_driver(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``tests/_fault_driver.py`` with ``args`` in its own process."""
    return _spawn([sys.executable, str(TESTS / "_fault_driver.py"), *args], log)


class KillsItsProcess(SleepyGaussian):
    """SIGKILLs the process it runs in: a simulator that segfaults or runs out of memory."""

    def simulate(self, theta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
