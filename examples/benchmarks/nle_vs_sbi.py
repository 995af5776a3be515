"""NLE, sbiflow (emcee) against sbi (its default MCMC), trained on the same simulations.

For each task: both tools fit a neural likelihood on the same 10⁴ (θ, x) with their
defaults (sbi: MAF; sbiflow: MAF after a θ-dependent
elementwise affine layer), then draw 10,000 posterior samples at sbibm observations
1..K, sbi with its default MCMC (vectorized slice sampling), sbiflow with emcee. Sampling
wall times are measured in this process, one after the other; C2ST against sbibm's
reference samples is computed afterwards. Pin the run and give both tools one thread:

    taskset -c 0 python examples/benchmarks/nle_vs_sbi.py --threads 1 \
        --out docs/results/nle_vs_sbi.json

Targets (issue 4): sbiflow C2ST ≤ sbi's + 0.02 and sampling time ≤ 0.25 × sbi's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    c2st_scores,
    machine,
    report,
    timed,
)

import sbiflow  # noqa: E402
import simulators  # noqa: E402


def fit_sbi(prior, theta, x, seed):
    from sbi.inference import NLE as SbiNLE

    torch.manual_seed(seed)
    inference = SbiNLE(prior=prior, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(show_train_summary=False)
    return inference.build_posterior(estimator)


def fit_sbiflow(prior, theta, x, seed):
    return sbiflow.NLE(prior).fit(theta, x, seed=seed, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--c2st-workers", type=int, default=2, help="processes scoring C2ST")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"# nle_vs_sbi on {machine()}", flush=True)

    runs, jobs = [], []
    for task in args.tasks:
        sim = simulators.get(task)
        theta, x = sbiflow.simulate(sim, args.num_simulations, seed=args.seed, progress=False)
        sbi_posterior, sbi_fit = timed(fit_sbi, sim.prior, theta, x, args.seed)
        ours, our_fit = timed(fit_sbiflow, sim.prior, theta, x, args.seed)
        sample_time = {"sbi": [], "sbiflow": []}
        for obs in range(1, args.observations + 1):
            x_o = sim.observation(obs)
            torch.manual_seed(obs)
            sbi_samples, seconds = timed(
                sbi_posterior.sample, (args.num_samples,), x=x_o, show_progress_bars=False
            )
            sample_time["sbi"].append(seconds)
            our_samples, seconds = timed(
                ours.sample, args.num_samples, x=x_o, seed=obs, progress=False
            )
            sample_time["sbiflow"].append(seconds)
            jobs.append(((task, "sbi"), task, obs, sbi_samples.numpy()))
            jobs.append(((task, "sbiflow"), task, obs, our_samples.numpy()))
            print(
                f"{task} obs {obs}: sampling sbi {sample_time['sbi'][-1]:.1f} s, "
                f"sbiflow {sample_time['sbiflow'][-1]:.1f} s",
                flush=True,
            )
        run = {
            "task": task,
            "num_simulations": args.num_simulations,
            "fit_seconds": {"sbi": sbi_fit, "sbiflow": our_fit},
            "sample_seconds": sample_time,
        }
        runs.append(run)
        print(run, flush=True)

    scores = c2st_scores(jobs, args.c2st_workers)

    rows = []
    for run in runs:
        task = run["task"]
        run["c2st"] = {tool: scores[(task, tool)] for tool in ("sbi", "sbiflow")}
        sbi_c2st, our_c2st = np.mean(run["c2st"]["sbi"]), np.mean(run["c2st"]["sbiflow"])
        sbi_time = float(np.sum(run["sample_seconds"]["sbi"]))
        our_time = float(np.sum(run["sample_seconds"]["sbiflow"]))
        ratio = our_time / sbi_time
        run["targets_met"] = bool(our_c2st <= sbi_c2st + 0.02 and ratio <= 0.25)
        rows.append(
            [
                task,
                f"{sbi_c2st:.3f}",
                f"{our_c2st:.3f}",
                f"{sbi_time:.1f}",
                f"{our_time:.1f}",
                f"{ratio:.3f}",
                f"{run['fit_seconds']['sbi']:.0f} / {run['fit_seconds']['sbiflow']:.0f}",
                "yes" if run["targets_met"] else "**no**",
            ]
        )
    header = [
        "task",
        "C2ST sbi",
        "C2ST sbiflow",
        f"sampling s sbi ({args.observations} obs)",
        "sampling s sbiflow",
        "time ratio",
        "fit s sbi / sbiflow",
        "targets met",
    ]
    report(header, rows, args.out, args, runs)


if __name__ == "__main__":
    main()
