"""NPE, sbiflow against sbi, trained on the same simulations in one process.

For each task and simulation budget: both tools fit a neural spline flow posterior on the
same (θ, x); each is sampled 10,000 times at sbibm observations 1..K and scored with the
SBI-benchmark C2ST against sbibm's reference samples. Fit wall times are measured in the
same process, one after the other, so the ratio is what counts on a noisy machine. To keep
a core free for other work, pin the run and give both tools one thread:

    taskset -c 0 python examples/benchmarks/npe_vs_sbi.py --threads 1 --observations 5 \
        --out docs/results/npe_vs_sbi.json

Targets (issue 2): sbiflow C2ST ≤ sbi C2ST + 0.01 and sbiflow fit time ≤ 0.5 × sbi's.
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


def fit_sbi(prior, theta, x, seed):
    from sbi.inference import NPE as SbiNPE

    torch.manual_seed(seed)
    inference = SbiNPE(prior=prior, density_estimator="nsf", show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(show_train_summary=False)
    return inference.build_posterior(estimator)


def fit_sbiflow(prior, theta, x, seed):
    return sbiflow.NPE(prior, estimator="nsf").fit(theta, x, seed=seed, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[1_000, 10_000])
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for both tools (0: torch default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"# npe_vs_sbi on {machine()}", flush=True)

    rows, results = [], []
    for task in args.tasks:
        sim = simulators.get(task)
        for budget in args.budgets:
            theta, x = sbiflow.simulate(sim, budget, seed=args.seed, progress=False)
            sbi_posterior, sbi_fit = timed(fit_sbi, sim.prior, theta, x, args.seed)
            ours, our_fit = timed(fit_sbiflow, sim.prior, theta, x, args.seed)
            scores: dict[str, list[float]] = {"sbi": [], "sbiflow": []}
            sample_time = {"sbi": 0.0, "sbiflow": 0.0}
            for obs in range(1, args.observations + 1):
                x_o = sim.observation(obs)
                reference = reference_samples(task, obs, args.num_samples)
                sbi_samples, seconds = timed(
                    sbi_posterior.sample, (args.num_samples,), x=x_o, show_progress_bars=False
                )
                sample_time["sbi"] += seconds
                our_samples, seconds = timed(ours.sample, args.num_samples, x=x_o, seed=obs)
                sample_time["sbiflow"] += seconds
                scores["sbi"].append(c2st(reference, sbi_samples))
                scores["sbiflow"].append(c2st(reference, our_samples))
            sbi_c2st, our_c2st = np.mean(scores["sbi"]), np.mean(scores["sbiflow"])
            ratio = our_fit / sbi_fit
            ok = our_c2st <= sbi_c2st + 0.01 and ratio <= 0.5
            result = {
                "task": task,
                "num_simulations": budget,
                "c2st": scores,
                "fit_seconds": {"sbi": sbi_fit, "sbiflow": our_fit},
                "sample_seconds": sample_time,
                "epochs": {"sbiflow": len(ours.history.val_loss)},
                "targets_met": bool(ok),
            }
            results.append(result)
            rows.append(
                [
                    task,
                    f"{budget:,}",
                    f"{sbi_c2st:.3f}",
                    f"{our_c2st:.3f}",
                    f"{sbi_fit:.1f}",
                    f"{our_fit:.1f}",
                    f"{ratio:.2f}",
                    "yes" if ok else "**no**",
                ]
            )
            print(result, flush=True)

    header = [
        "task",
        "simulations",
        "C2ST sbi",
        "C2ST sbiflow",
        "fit s sbi",
        "fit s sbiflow",
        "time ratio",
        "targets met",
    ]
    print()
    print(markdown_table(header, rows))
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
