"""Shared pieces of the benchmark scripts: sbibm reference files, tables, result files."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch


def sbibm_files(task: str, observation: int) -> Path:
    """Folder of sbibm's files for one task and observation (sbibm installed with --no-deps)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("The benchmarks need sbibm's files: pip install --no-deps sbibm")
    root = Path(spec.submodule_search_locations[0])
    return root / "tasks" / task / "files" / f"num_observation_{observation}"


def reference_samples(task: str, observation: int, n: int = 10_000) -> torch.Tensor:
    """sbibm's reference posterior samples, shape ``(n, D)``."""
    path = sbibm_files(task, observation) / "reference_posterior_samples.csv.bz2"
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    return torch.from_numpy(data[:n])


def timed(fn, *args, **kwargs):
    """Call ``fn`` and return ``(result, seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def machine() -> str:
    """One line describing where the numbers were measured."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}"
    )


def free_affinity() -> None:
    """Let a worker process use every core, even when the timed parent was pinned to one."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    """Write results as JSON if a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


def _c2st_job(job: tuple[tuple, str, int, np.ndarray]) -> tuple[tuple, int, float]:
    from sbiflow.diagnostics import c2st

    key, task, obs, samples = job
    reference = reference_samples(task, obs, samples.shape[0])
    return key, obs, c2st(reference, torch.from_numpy(samples))


def c2st_scores(
    jobs: list[tuple[tuple, str, int, np.ndarray]], workers: int
) -> dict[tuple, list[float]]:
    """C2ST of sample sets against sbibm's reference samples, in worker processes, untimed.

    Args:
        jobs: ``(key, task, observation, samples (n, D))``; scores are grouped by ``key``.
        workers: Processes (each free to use every core, even if the caller is pinned).

    Returns:
        ``key -> [score per job, in job order]``; each score is printed as it arrives.
    """
    scores: dict[tuple, list[float]] = {}
    with ProcessPoolExecutor(workers, initializer=free_affinity) as pool:
        for key, obs, score in pool.map(_c2st_job, jobs):
            scores.setdefault(key, []).append(score)
            print(f"c2st {' '.join(map(str, key))} obs {obs}: {score:.4f}", flush=True)
    return scores


Table = tuple[list[str], list[list[str]]]


def report(
    header: list[str],
    rows: list[list[str]],
    out: str | None,
    args,
    runs: list,
    more: list[Table] = (),
) -> None:
    """Print the markdown table (and any ``more`` tables, header and rows each, that have
    rows) and write the JSON results (if ``out``)."""
    for head, body in [(header, rows), *more]:
        if body:
            print()
            print(markdown_table(head, body))
    write_json(out, {"machine": machine(), "args": vars(args), "results": runs})
