"""NPE on the physics simulators, against their exact-likelihood reference posteriors.

For each simulator (the variant with an exact likelihood): simulate a budget, train
``sbiflow.NPE`` with the embedding it picks from the shape of x (DeepSet for the dwarf's
star sets, CNN for galaxy maps, none for the collider's histogram), then

- C2ST of 10,000 posterior samples against 10,000 reference samples (emcee on the exact
  likelihood) at observations 1..K;
- expected coverage of HPD regions at the 50/68/95% levels over fresh test simulations.

    taskset -c 0 python examples/benchmarks/physics_npe.py --out docs/results/physics_npe.json

Targets (issue 3): C2ST ≤ 0.60 (collider, galaxy field) and ≤ 0.65 (dwarf); coverage
within ±0.05 of nominal.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, markdown_table, write_json  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import c2st, expected_coverage  # noqa: E402

C2ST_TARGET = {"collider": 0.60, "galaxy_field": 0.60, "dwarf": 0.65}
LEVELS = (0.5, 0.68, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["collider", "dwarf", "galaxy_field"])
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--num-tests", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"# physics_npe on {machine()}", flush=True)

    runs, rows = [], []
    for task in args.tasks:
        sim = simulators.get(task, exact=True)
        start = time.perf_counter()
        theta, x = sbiflow.simulate(
            sim, args.num_simulations, seed=args.seed, workers=args.workers, progress=False
        )
        sim_seconds = time.perf_counter() - start
        start = time.perf_counter()
        npe = sbiflow.NPE(sim.prior).fit(theta, x, seed=args.seed, progress=False)
        fit_seconds = time.perf_counter() - start
        embedding = type(npe.embedding_net).__name__ if npe.embedding_net else "none"
        print(
            f"{task}: {args.num_simulations} simulations in {sim_seconds:.1f} s, fit "
            f"{fit_seconds:.1f} s ({len(npe.history.val_loss)} epochs, embedding {embedding})",
            flush=True,
        )
        scores = []
        for obs in range(1, args.observations + 1):
            x_o = sim.observation(obs)
            reference = sim.reference_posterior(x_o, args.num_samples, seed=obs)
            samples = npe.sample(args.num_samples, x=x_o, seed=obs)
            scores.append(c2st(reference, samples))
            print(f"{task} obs {obs}: C2ST {scores[-1]:.3f}", flush=True)
        test_theta, test_x = sbiflow.simulate(
            sim, args.num_tests, seed=args.seed + 1000, progress=False
        )
        coverage = expected_coverage(npe, test_theta, test_x, LEVELS, progress=False)
        print(f"{task} coverage {coverage.as_dict()}", flush=True)
        deviation = float((coverage.coverage - torch.tensor(LEVELS)).abs().max())
        met = bool(np.mean(scores) <= C2ST_TARGET[task] and deviation <= 0.05)
        runs.append(
            {
                "task": task,
                "num_simulations": args.num_simulations,
                "simulations_per_second": args.num_simulations / sim_seconds,
                "fit_seconds": fit_seconds,
                "epochs": len(npe.history.val_loss),
                "embedding": embedding,
                "c2st": scores,
                "coverage": coverage.as_dict(),
                "targets_met": met,
            }
        )
        rows.append(
            [
                task,
                f"{args.num_simulations:,}",
                f"{args.num_simulations / sim_seconds:,.0f}",
                embedding,
                f"{fit_seconds:.0f}",
                f"{np.mean(scores):.3f}",
                " / ".join(f"{c:.2f}" for c in coverage.coverage.tolist()),
                "yes" if met else "**no**",
            ]
        )
    header = [
        "simulator",
        "simulations",
        "sims/s",
        "embedding",
        "fit s",
        f"C2ST (obs 1-{args.observations})",
        "coverage 50/68/95%",
        "targets met",
    ]
    print()
    print(markdown_table(header, rows))
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": runs})


if __name__ == "__main__":
    main()
