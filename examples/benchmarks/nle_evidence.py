"""Evidence and iid trials on gaussian_linear (10-d), where both are known exactly.

1. dynesty on the exact likelihood: log Z against the analytic value, in units of
   dynesty's own error estimate (target: within 3).
2. dynesty on an NLE emulator trained on 10⁴ simulations (target: within 0.5 nats).
3. NLE posterior (emcee) for 10 iid trials against the analytic posterior (target: C2ST ≤ 0.6).

    taskset -c 0 python examples/benchmarks/nle_evidence.py --out docs/results/nle_evidence.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write_json  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import c2st  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"# nle_evidence on {machine()}", flush=True)
    sim = simulators.get("gaussian_linear")
    theta, x = sbiflow.simulate(sim, args.num_simulations, seed=0, progress=False)
    nle = sbiflow.NLE(sim.prior).fit(theta, x, seed=0, progress=False)
    rows = []
    for obs in range(1, args.observations + 1):
        x_o = sim.observation(obs)
        exact_log_z = sim.log_evidence(x_o)
        start = time.perf_counter()
        exact = sbiflow.samplers.nested(
            lambda t, x_o=x_o: sim.log_likelihood(t, x_o), sim.prior, seed=obs, progress=False
        )
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        emulated = nle.nested(x=x_o, seed=obs, progress=False)
        emulated_seconds = time.perf_counter() - start
        # iid trials at this observation's true parameters
        trials = sim.simulate(sim.true_parameters(obs).repeat(args.trials, 1), 100 + obs)
        samples = nle.sample(10_000, x=trials, seed=obs, progress=False)
        reference = sim.posterior(trials).sample((10_000,))
        score = c2st(reference, samples)
        row = {
            "observation": obs,
            "log_z_analytic": exact_log_z,
            "log_z_exact_likelihood": exact.log_evidence,
            "log_z_exact_err": exact.log_evidence_err,
            "exact_pulls": (exact.log_evidence - exact_log_z) / exact.log_evidence_err,
            "log_z_emulator": emulated.log_evidence,
            "emulator_error_nats": emulated.log_evidence - exact_log_z,
            "seconds": {"nested_exact": exact_seconds, "nested_emulator": emulated_seconds},
            "iid_c2st": score,
        }
        rows.append(row)
        print(row, flush=True)
    print()
    print("| obs | log Z analytic | dynesty exact (pull) | dynesty emulator (error) | iid C2ST |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['observation']} | {r['log_z_analytic']:.3f} | "
            f"{r['log_z_exact_likelihood']:.3f} ± {r['log_z_exact_err']:.3f} "
            f"({r['exact_pulls']:+.2f}) | {r['log_z_emulator']:.3f} "
            f"({r['emulator_error_nats']:+.3f}) | {r['iid_c2st']:.3f} |"
        )
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
