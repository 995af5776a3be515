"""NPE with the conditional VAE (estimator="cvae"): C2ST, log-density error and fit time.

For each task: 10⁴ simulations, ``sbiflow.NPE(prior, estimator="cvae")`` with its defaults,
10,000 posterior samples at sbibm observations 1..K scored with the SBI-benchmark C2ST
(``sbiflow.diagnostics.c2st``) against sbibm's reference posterior samples. On
gaussian_linear the IWAE log-density estimate (``npe.log_prob``, normalized) is also
compared with the analytic posterior's log density on 1,000 exact posterior draws per
observation. Pin the run to one core and one thread, e.g.

    taskset -c 1 python examples/benchmarks/cvae_accuracy.py --threads 1 \
        --out docs/results/cvae_accuracy.json

Targets (issue 5): C2ST ≤ 0.65 on two_moons and ≤ 0.60 on gaussian_linear; mean absolute
log-density error on gaussian_linear ≤ 0.3 nats. Other scripts add cVAE rows with
:func:`run_cvae`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, markdown_table, reference_samples, timed, write_json  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import c2st  # noqa: E402

C2ST_TARGETS = {"two_moons": 0.65, "gaussian_linear": 0.60}
LOG_PROB_TARGET = 0.3


def log_prob_error(npe: sbiflow.NPE, sim, x_o: torch.Tensor, n: int = 1_000) -> float:
    """Mean |log q(θ | x_o) - log p(θ | x_o)| over exact posterior draws (analytic tasks)."""
    theta = sim.reference_posterior(x_o, n, seed=1)
    exact = sim.posterior(x_o).log_prob(theta)
    return float((npe.log_prob(theta, x=x_o) - exact).abs().mean())


def run_cvae(
    task: str,
    num_simulations: int,
    *,
    seed: int,
    threads: int,
    observations: int = 3,
    num_samples: int = 10_000,
    verbose: bool = True,
) -> dict:
    """Fit ``NPE(prior, estimator="cvae")`` with its defaults on one sbibm task and score it.

    Args:
        task: A benchmark task of ``simulators`` (e.g. ``"two_moons"``).
        num_simulations: Training simulations.
        seed: Seed of the simulations and of the training.
        threads: Torch threads during the run (restored afterwards).
        observations: Scored at sbibm observations ``1..observations``.
        num_samples: Posterior samples per observation (and reference samples for C2ST).
        verbose: Print one line per observation.

    Returns:
        ``task``, ``simulations``, ``fit_seconds``, ``epochs``, ``sample_seconds`` (all
        observations), ``c2st`` (one per observation), ``c2st_mean``, ``log_prob_error``
        (nats, one per observation; empty without an analytic posterior),
        ``log_prob_error_mean`` (or ``None``) and ``targets_met``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sim = simulators.get(task)
        theta, x = sbiflow.simulate(sim, num_simulations, seed=seed, progress=False)
        npe, fit_seconds = timed(
            sbiflow.NPE(sim.prior, estimator="cvae").fit, theta, x, seed=seed, progress=False
        )
        run: dict = {
            "task": task,
            "simulations": num_simulations,
            "seed": seed,
            "fit_seconds": fit_seconds,
            "epochs": len(npe.history.val_loss),
            "sample_seconds": 0.0,
            "c2st": [],
            "log_prob_error": [],
        }
        for obs in range(1, observations + 1):
            x_o = sim.observation(obs)
            samples, seconds = timed(npe.sample, num_samples, x=x_o, seed=obs)
            run["sample_seconds"] += seconds
            run["c2st"].append(c2st(reference_samples(task, obs, num_samples), samples))
            line = f"{task} obs {obs}: c2st {run['c2st'][-1]:.4f}"
            if hasattr(sim, "posterior"):
                run["log_prob_error"].append(log_prob_error(npe, sim, x_o))
                line += f", mean |log q - log p| {run['log_prob_error'][-1]:.3f} nats"
            if verbose:
                print(line, flush=True)
    finally:
        torch.set_num_threads(before)
    run["c2st_mean"] = float(np.mean(run["c2st"]))
    errors = run["log_prob_error"]
    run["log_prob_error_mean"] = float(np.mean(errors)) if errors else None
    met = run["c2st_mean"] <= C2ST_TARGETS.get(task, 1.0)
    if run["log_prob_error_mean"] is not None:
        met = met and run["log_prob_error_mean"] <= LOG_PROB_TARGET
    run["targets_met"] = bool(met)
    return run


def table(runs: list[dict]) -> str:
    """Markdown table of :func:`run_cvae` results."""
    header = [
        "task",
        "simulations",
        "C2ST per observation",
        "C2ST mean (target)",
        "mean abs Δ log p, nats (target)",
        "fit s",
        "epochs",
        "sample s",
        "targets met",
    ]
    rows = []
    for run in runs:
        error = run["log_prob_error_mean"]
        target = C2ST_TARGETS.get(run["task"])
        rows.append(
            [
                run["task"],
                f"{run['simulations']:,}",
                " ".join(f"{s:.3f}" for s in run["c2st"]),
                f"{run['c2st_mean']:.3f}" + (f" (≤ {target})" if target else ""),
                "-" if error is None else f"{error:.3f} (≤ {LOG_PROB_TARGET})",
                f"{run['fit_seconds']:.1f}",
                str(run["epochs"]),
                f"{run['sample_seconds']:.1f}",
                "yes" if run["targets_met"] else "**no**",
            ]
        )
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(C2ST_TARGETS))
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"# cvae_accuracy on {machine()}", flush=True)
    runs = [
        run_cvae(
            task,
            args.simulations,
            seed=args.seed,
            threads=args.threads,
            observations=args.observations,
            num_samples=args.num_samples,
        )
        for task in args.tasks
    ]
    print()
    print(table(runs))
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": runs})


if __name__ == "__main__":
    main()
