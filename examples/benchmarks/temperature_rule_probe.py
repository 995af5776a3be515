"""Probe (issue 14, item 2): how far the temperature rule should trust its tuning rows.

One flow per task and budget (calibration off, seed 0). On 500 validation pairs, the HPD
coverage at temperatures 1 to 1.2 is read from one set of draws. Rules compared: the
smallest T whose coverage reaches every level on those rows (as NPE ships), and the
smallest T whose coverage falls short of no level by more than ``z`` binomial standard
errors of those rows, sqrt(a (1 - a) / 500). Each T is then measured on 300 fresh
simulations (HPD coverage from direct draws) and by C2ST at observations 1-2.

    flock /tmp/core0.lock env OMP_NUM_THREADS=1 taskset -c 0 python -u \
        examples/benchmarks/temperature_rule_probe.py two_moons:10000 \
        | tee docs/results/temperature_rule_probe.log
"""

import math
import sys
import warnings

import numpy as np
import torch

import sbiflow
import simulators
from sbiflow.diagnostics import c2st
from sbiflow.inference.calibration import LEVELS, coverage_at
from sbiflow.inference.temperature import TemperedDraws

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
TEMPERATURES = tuple(np.round(np.arange(1.0, 1.2001, 0.0125), 4))
SLACKS = (0.0, 0.5, 1.0)

for spec in sys.argv[1:] or ["two_moons:10000"]:
    task, budget = spec.split(":")
    sim = simulators.get(task)
    theta, x = sbiflow.simulate(sim, int(budget), seed=0, progress=False)
    npe = sbiflow.NPE(sim.prior, calibration="off").fit(theta, x, seed=0, progress=False)
    q = npe.estimator
    idx = npe.history.validation_index
    tune = idx[len(idx) // 2 :][:500]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        prepared = TemperedDraws(q, sim.prior, theta[tune], x[tune], num_samples=128)
    n = len(tune)
    shortfalls = {}
    for t in TEMPERATURES:
        cov = coverage_at(prepared.hpd_levels(t, drawn_at=1.1), LEVELS)
        # shortfall in binomial standard errors, per level; the rule's worst level
        shortfalls[t] = max(
            (lv - c) / math.sqrt(lv * (1 - lv) / n) for lv, c in zip(LEVELS, cov, strict=True)
        )
    chosen = {}
    for z in SLACKS:
        chosen[z] = next((t for t in TEMPERATURES if shortfalls[t] <= z), TEMPERATURES[-1])
    tt, xt = sbiflow.simulate(sim, 300, seed=1000, progress=False)
    measured = {}
    for t in sorted(set(chosen.values()) | {1.0}):
        q.set_temperature(t)
        npe._cache.clear()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            hpd = TemperedDraws(q, sim.prior, tt, xt, num_samples=256).hpd_levels(t)
        cov = coverage_at(hpd, LEVELS)
        scores = []
        if hasattr(sim, "reference_posterior"):
            for obs in (1, 2):
                x_o = sim.observation(obs)
                ref = sim.reference_posterior(x_o, 10_000, seed=0)
                scores.append(c2st(ref, npe.sample(10_000, x_o, seed=0)))
        measured[t] = (cov, scores)
        q.set_temperature(1.0)
    for t, (cov, scores) in measured.items():
        rules = ", ".join(f"z={z}" for z, c in chosen.items() if c == t) or "plain"
        print(
            f"{task} {budget} T {t:.4f} ({rules}) | tuning shortfall {shortfalls[t]:+.2f} sd | "
            "test coverage "
            + " / ".join(f"{v:.3f}" for v in cov)
            + " | C2ST "
            + " / ".join(f"{s:.3f}" for s in scores),
            flush=True,
        )
