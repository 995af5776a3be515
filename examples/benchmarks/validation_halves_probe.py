"""Probe (issue 14, item 2): the coverage a temperature gives on each half of the validation split.

One flow (calibration off, seed 0). HPD coverage at 50 / 68 / 95% for T from 1 to 1.15 on
the half NPE checks with, the half that chooses T, and both together, read from one set of
draws per row set by importance weights.

    flock /tmp/core0.lock env OMP_NUM_THREADS=1 taskset -c 0 python -u \
        examples/benchmarks/validation_halves_probe.py two_moons 10000 \
        | tee docs/results/validation_halves_probe.log
"""

import sys
import warnings

import torch

import sbiflow
import simulators
from sbiflow.inference.calibration import LEVELS, coverage_at
from sbiflow.inference.temperature import TemperedDraws

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
task, budget = sys.argv[1], int(sys.argv[2])
sim = simulators.get(task)
theta, x = sbiflow.simulate(sim, budget, seed=0, progress=False)
npe = sbiflow.NPE(sim.prior, calibration="off").fit(theta, x, seed=0, progress=False)
q = npe.estimator
idx = npe.history.validation_index
print(task, budget, "validation rows", len(idx))
T = (1.0, 1.025, 1.05, 1.075, 1.1, 1.125, 1.15)
for name, rows in (
    ("check half", idx[: len(idx) // 2][:500]),
    ("tuning half", idx[len(idx) // 2 :][:500]),
    ("all", idx[:1000]),
):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        prep = TemperedDraws(q, sim.prior, theta[rows], x[rows], num_samples=128)
    for t in T:
        cov = coverage_at(prep.hpd_levels(t, drawn_at=1.1), LEVELS)
        print(
            f"{name:12s} n={len(rows)} T {t:.3f} " + " / ".join(f"{c:.3f}" for c in cov), flush=True
        )
