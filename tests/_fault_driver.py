"""A driver process for tests/test_dask_faults.py: ``sbiflow.simulate`` into a store.

Usage: ``python _fault_driver.py STORE N CHUNK_SIZE SEED PER_CALL [--scheduler ADDR]
[--workers K] [--die-in-write I]``. With ``--die-in-write I`` the process writes part of
its I-th chunk (0-based, in write order) to the store, poisoned, and SIGKILLs itself
before the chunk is marked done: a driver killed inside a write.
"""

from __future__ import annotations

import argparse
import os
import signal

import numpy as np
from _fault_helpers import SleepyGaussian

import sbiflow
from sbiflow.store import SimulationStore

POISON = 1000.0  # added to the half-written rows: reading them as data would show


def _die_in_write(at: int) -> None:
    write = SimulationStore.write_chunk
    count = [0]

    def torn_write(self, index, theta, x, valid):  # noqa: ANN001, ANN202
        if count[0] == at:
            rows = self.chunk_rows(index)
            half = len(theta) // 2
            self.group["theta"][rows] = theta + POISON
            self.group["x"][rows.start : rows.start + half] = x[:half] + POISON
            self.group["valid"][rows] = np.ones_like(valid)
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        return write(self, index, theta, x, valid)

    SimulationStore.write_chunk = torn_write


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("n", type=int)
    parser.add_argument("chunk_size", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("per_call", type=float)
    parser.add_argument("--scheduler")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--die-in-write", type=int)
    args = parser.parse_args()
    if args.die_in_write is not None:
        _die_in_write(args.die_in_write)
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler, timeout=30)
    sbiflow.simulate(
        SleepyGaussian(per_call=args.per_call),
        args.n,
        seed=args.seed,
        chunk_size=args.chunk_size,
        store=args.store,
        client=client,
        workers=args.workers,
        progress=False,
    )
    print("finished", flush=True)


if __name__ == "__main__":
    main()
