"""Training streamed from a large simulation store: peak memory and loss against in-memory.

Issue 15's target: training from a store of >= 4 GB (10^6 galaxy-field maps, 32 x 32
float32 = 4.1 GB of x) runs with peak RSS <= 1.5 GB and reaches the same validation loss
(within noise) as in-memory training on a subset that fits.

Steps, each in its own process so that its peak resident memory is its own:

1. ``simulate``: fill the store (skipped when it is already complete; resumes otherwise).
2. ``stream``: ``NPE(prior, simulator=sim).fit(store=...)`` on the whole store.
3. ``memory``: the same NPE on the first ``--subset`` rows, loaded into memory.
4. ``stream-subset``: streamed from a store of those same first rows (same data as 3).

Each reports its peak RSS (``getrusage``), seconds per epoch, epochs, best validation loss
and the mean negative log posterior density on ``--test`` fresh simulations (the same for
all: the common yardstick, as validation splits differ).

    taskset -c 0 python examples/benchmarks/streaming_training.py --threads 1 \\
        --store /tmp/galaxy_1e6.zarr --n 1000000 --out docs/results/streaming_training.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, report  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.store import SimulationStore, load_store  # noqa: E402


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def store_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def step_simulate(args) -> dict:
    sim = simulators.get("galaxy_field")
    start = time.perf_counter()
    sbiflow.simulate(
        sim,
        args.n,
        seed=0,
        chunk_size=args.chunk_size,
        store=args.store,
        workers=args.workers,
        in_memory=False,  # written chunk by chunk, memory bounded
    )
    x_shape = SimulationStore.open(args.store).x_shape
    return {
        "step": "simulate",
        "n": args.n,
        "seconds": time.perf_counter() - start,
        "x_gb": args.n * int(np.prod(x_shape)) * 4 / 1e9,
        "disk_gb": store_bytes(args.store) / 1e9,
        "peak_rss_gb": peak_rss_gb(),
    }


def subset_store(args) -> str:
    """A store holding the first ``--subset`` rows of the big one (same simulations)."""
    path = str(Path(args.store).with_name(Path(args.store).stem + f"_first{args.subset}.zarr"))
    if not Path(path).exists():
        sim = simulators.get("galaxy_field")
        sbiflow.simulate(
            sim, args.subset, seed=0, chunk_size=args.chunk_size, store=path, in_memory=False
        )
    return path


def step_train(args, step: str) -> dict:
    sim = simulators.get("galaxy_field")
    theta_test, x_test = sbiflow.simulate(sim, args.test, seed=999, progress=False)
    npe = sbiflow.NPE(sim.prior, simulator=sim, calibration="check")
    options = {"max_epochs": args.max_epochs, "progress": not args.quiet}
    if step == "memory":
        theta, x = load_store(subset_store(args))
        npe.fit(theta, x, **options)
        del theta, x
    else:
        store = args.store if step == "stream" else subset_store(args)
        npe.fit(store=store, **options)
    with torch.no_grad():
        logq = [
            npe.estimator.log_prob(theta_test[i : i + 2048], x_test[i : i + 2048])
            for i in range(0, args.test, 2048)
        ]
    nll = -float(torch.cat(logq).mean())
    epochs = len(npe.history.val_loss)
    return {
        "step": step,
        "simulations": npe.num_simulations,
        "epochs": epochs,
        "seconds_per_epoch": npe.history.wall_time / epochs,
        "best_val_loss": min(npe.history.val_loss),
        "test_nll": nll,
        "calibration": npe.calibration.as_dict() if npe.calibration else None,
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/galaxy_1e6.zarr")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--max-epochs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", nargs="+", default=["simulate", "stream", "memory"])
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = step_simulate(args) if args.child == "simulate" else step_train(args, args.child)
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"# streaming_training on {machine()}", flush=True)
    rows = []
    for step in args.steps:
        command = [sys.executable, "-u", __file__, *sys.argv[1:], "--child", step]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[7:]))
                print(rows[-1], flush=True)
    header = [
        "step",
        "simulations",
        "epochs",
        "s/epoch",
        "best val loss",
        "test NLL",
        "peak RSS GB",
    ]
    table = [
        [
            r["step"],
            f"{r.get('simulations', r.get('n')):,}",
            str(r.get("epochs", "")),
            f"{r['seconds_per_epoch']:.1f}"
            if "seconds_per_epoch" in r
            else f"{r['seconds']:.0f} s",
            f"{r['best_val_loss']:.4f}" if "best_val_loss" in r else f"x {r['x_gb']:.2f} GB",
            f"{r['test_nll']:.4f}" if "test_nll" in r else f"disk {r['disk_gb']:.2f} GB",
            f"{r['peak_rss_gb']:.2f}",
        ]
        for r in rows
    ]
    report(header, table, args.out, args, rows)


if __name__ == "__main__":
    main()
