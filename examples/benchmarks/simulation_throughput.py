"""Simulation throughput: 1 local worker, 2 local workers, a 2-worker Dask cluster (issue 15).

A simulator that burns ``--ms`` milliseconds of CPU per simulation (default 5 ms: spun on
``time.thread_time``, so it is CPU work, not a sleep that any number of workers could
overlap on one core) runs ``--n`` simulations in chunks of ``--chunk-size``:

- ``sbiflow.simulate(sim, n)``, in this process;
- ``sbiflow.simulate(sim, n, workers=2)``, two spawned processes (their start-up, ~2 s of
  importing torch, is in the time: a user pays it on every call);
- ``sbiflow.simulate(sim, n, client=Client(addr))`` on a real ``dask scheduler`` with two
  ``dask worker`` processes (``--nthreads 1``) on 127.0.0.1, already warm (a cluster is
  started once and used for many runs).

Every run gives the same arrays (checked). The start-up of the two local processes is
timed apart (the same call with no work) and the rate after it reported too. The overhead
per chunk is ``(wall × workers − CPU work) / chunks`` (scheduling, transfers, start-up and
any CPU taken by other processes); for Dask it is also measured directly, as the wall time
per chunk of a no-op simulator on the cluster (``× workers``).

Run (needs two free cores for about a minute):

    python examples/benchmarks/simulation_throughput.py \
        --out docs/results/simulation_throughput.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, markdown_table, write_json

import sbiflow


class BusySimulator:
    """x = theta + 0.1 * noise after ``ms`` milliseconds of CPU work per simulation."""

    name = "busy"

    def __init__(self, ms: float) -> None:
        self.prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
        self.ms = ms

    def simulate(self, theta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for _ in range(len(theta)):
            end = time.thread_time() + self.ms / 1000
            while time.thread_time() < end:
                pass
        noise = torch.as_tensor(rng.standard_normal(theta.shape), dtype=theta.dtype)
        return theta + 0.1 * noise


class LoopbackCluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1, stopped on exit."""

    def __init__(self, n_workers: int, directory: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        file = Path(directory) / "scheduler.json"
        dask = [sys.executable, "-m", "dask"]
        self.processes = [
            subprocess.Popen(
                [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
                + ["--scheduler-file", str(file)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        for i in range(n_workers):
            self.processes.append(
                subprocess.Popen(
                    [*dask, "worker", self.address, "--nthreads", "1", "--no-dashboard"]
                    + ["--host", "127.0.0.1", "--name", f"w{i}", "--memory-limit", "0"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def timed_run(sim: BusySimulator, args: argparse.Namespace, **kw: object) -> tuple:
    start = time.perf_counter()
    theta, x = sbiflow.simulate(
        sim, args.n, seed=args.seed, chunk_size=args.chunk_size, progress=False, **kw
    )
    return (theta, x), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="simulations per run")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--ms", type=float, default=5.0, help="CPU milliseconds per simulation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sim = BusySimulator(args.ms)
    n_chunks = -(-args.n // args.chunk_size)
    work = args.n * args.ms / 1000  # s of CPU the simulations need
    print(f"{machine()}; load average before: {os.getloadavg()}", flush=True)
    runs: dict[str, dict] = {}

    def record(label: str, workers: int, result: tuple, seconds: float) -> None:
        overhead = (seconds * workers - work) / n_chunks
        runs[label] = {
            "workers": workers,
            "seconds": round(seconds, 3),
            "simulations_per_s": round(args.n / seconds, 1),
            "overhead_per_chunk_ms": round(1000 * overhead, 2),
            # other processes' load shows here: 1-minute load average just after the run
            "load_average_after": round(os.getloadavg()[0], 2),
        }
        print(f"{label}: {seconds:.2f} s, {args.n / seconds:.0f} sim/s", flush=True)
        if not (torch.equal(result[0], reference[0]) and torch.equal(result[1], reference[1])):
            raise SystemExit(f"{label}: arrays differ from the one-worker run")

    reference, seconds = timed_run(sim, args)
    record("1 local worker", 1, reference, seconds)
    result, seconds = timed_run(sim, args, workers=2)
    record("2 local workers", 2, result, seconds)
    # The same call with no work: the two processes' start-up (spawn, import torch, sbiflow)
    noop = argparse.Namespace(**{**vars(args), "n": 2 * args.chunk_size})
    _, startup = timed_run(BusySimulator(0.0), noop, workers=2)
    runs["2 local workers"]["startup_seconds"] = round(startup, 3)

    from distributed import Client, get_task_stream

    with tempfile.TemporaryDirectory() as tmp, LoopbackCluster(2, tmp) as cluster:
        with Client(cluster.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            client.run(importlib.import_module, "sbiflow.simulate")  # warm: torch imported
            warm = argparse.Namespace(**{**vars(args), "n": 8 * args.chunk_size})
            timed_run(BusySimulator(0.0), warm, client=client)  # and first tasks run
            with get_task_stream(client) as stream:
                result, seconds = timed_run(sim, args, client=client)
            record("2-worker Dask cluster", 2, result, seconds)
            compute = [
                s["stop"] - s["start"]
                for task in stream.data
                if str(task["key"]).startswith("sbiflow-chunk")
                for s in task["startstops"]
                if s["action"] == "compute"
            ]
            noop, noop_seconds = timed_run(BusySimulator(0.0), args, client=client)
    runs["2-worker Dask cluster"]["startup_seconds"] = 0.0  # warm cluster
    for r in runs.values():
        r.setdefault("startup_seconds", 0.0)
        r["steady_simulations_per_s"] = round(args.n / (r["seconds"] - r["startup_seconds"]), 1)
    dask_run = runs["2-worker Dask cluster"]
    dask_run["chunk_compute_s_mean"] = round(float(np.mean(compute)), 4)
    dask_run["noop_seconds"] = round(noop_seconds, 3)
    dask_run["noop_overhead_per_chunk_ms"] = round(1000 * noop_seconds * 2 / n_chunks, 2)
    one, two = runs["1 local worker"]["seconds"], runs["2 local workers"]["seconds"]
    steady = {k: r["steady_simulations_per_s"] for k, r in runs.items()}
    ratios = {
        "2 local / 1 local (speed-up)": round(one / two, 3),
        "Dask / 2 local (speed)": round(two / dask_run["seconds"], 3),
        "2 local / 1 local, start-up excluded": round(
            steady["2 local workers"] / steady["1 local worker"], 3
        ),
        "Dask / 2 local, start-up excluded": round(
            steady["2-worker Dask cluster"] / steady["2 local workers"], 3
        ),
    }

    rows = [
        [
            label,
            f"{r['seconds']:.2f}",
            f"{r['simulations_per_s']:.0f}",
            f"{one / r['seconds']:.2f}x",
            f"{r['startup_seconds']:.2f}",
            f"{r['steady_simulations_per_s']:.0f}",
            f"{r['steady_simulations_per_s'] / steady['1 local worker']:.2f}x",
            f"{r['overhead_per_chunk_ms']:.1f}",
        ]
        for label, r in runs.items()
    ]
    print()
    print(
        f"{args.n} simulations of {args.ms:g} ms CPU each, chunks of {args.chunk_size} "
        f"({n_chunks} chunks), seed {args.seed}; all runs give identical arrays"
    )
    header = [
        "run",
        "wall (s)",
        "simulations/s",
        "vs 1 worker",
        "start-up (s)",
        "simulations/s after start-up",
        "vs 1 worker",
        "overhead/chunk (ms)",
    ]
    print(markdown_table(header, rows))
    print(
        f"2 local / 1 local: {ratios['2 local / 1 local (speed-up)']:.2f}x "
        f"({ratios['2 local / 1 local, start-up excluded']:.2f}x after start-up); "
        f"Dask / 2 local: {ratios['Dask / 2 local (speed)']:.2f} "
        f"({ratios['Dask / 2 local, start-up excluded']:.2f} after start-up); "
        f"Dask no-op chunk: {dask_run['noop_overhead_per_chunk_ms']:.1f} ms per chunk per "
        f"worker; mean chunk compute on Dask {1000 * dask_run['chunk_compute_s_mean']:.0f} ms "
        f"(ideal {args.chunk_size * args.ms:.0f} ms)"
    )
    write_json(
        args.out,
        {"machine": machine(), "args": vars(args), "results": runs, "ratios": ratios},
    )


if __name__ == "__main__":
    main()
