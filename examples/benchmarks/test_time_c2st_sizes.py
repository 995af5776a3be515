"""C2ST values and times of the NLE and NPE accuracy tests at 2,000 and 1,000 draws per set.

Session 13 (docs/results/test_time_session13.md): the NPE test's C2ST moved to 1,000 draws;
the NLE test's stayed at 2,000 (1,000 was not faster there).

    OMP_NUM_THREADS=1 taskset -c 0 python examples/benchmarks/test_time_c2st_sizes.py
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

import sbiflow
import simulators
from sbiflow.diagnostics import c2st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_nle  # noqa: E402  (the NLE test's dimensions and trial count)


def timed_c2st(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-fold C2ST of ``a`` against ``b`` (as the tests run it) and its seconds."""
    start = time.perf_counter()
    return c2st(a, b, n_folds=2), time.perf_counter() - start


def nle_case() -> None:
    """The NLE test: 10 iid trials, MCMC samples against the analytic posterior."""
    sim = simulators.get("gaussian_linear", dim=test_nle.DIM)
    theta, x = sbiflow.simulate(sim, 10_000, seed=3, progress=False)
    nle = sbiflow.NLE(sim.prior).fit(theta, x, seed=0, progress=False)
    theta_o = torch.full((1, test_nle.DIM), 0.2).repeat(test_nle.NUM_TRIALS, 1)
    trials = sim.simulate(theta_o, 7)
    samples = nle.sample(2_000, x=trials, seed=0, progress=False)
    reference = sim.posterior(trials).sample((2_000,))
    one_trial = sim.posterior(trials[:1]).sample((2_000,))
    for n in (2_000, 1_000):
        score, seconds = timed_c2st(reference[:n], samples[:n])
        control, _ = timed_c2st(reference[:n], one_trial[:n])
        print(f"nle {n}: C2ST {score:.3f} ({seconds:.1f} s), one-trial control {control:.3f}")


def npe_case() -> None:
    """The NPE test: one NSF on 5,000 gaussian_linear simulations, observation 1."""
    sim = simulators.get("gaussian_linear")
    theta, x = sbiflow.simulate(sim, 5_000, seed=1, progress=False)
    npe = sbiflow.NPE(sim.prior, calibration="check").fit(theta, x, seed=0, progress=False)
    x_o = sim.observation(1)
    reference = sim.reference_posterior(x_o, 4_000, seed=0)
    samples = npe.sample(4_000, x=x_o, seed=0)
    for n in (2_000, 1_000):
        score, seconds = timed_c2st(reference[:n], samples[:n])
        print(f"npe {n}: C2ST {score:.3f} ({seconds:.1f} s)")
    for first in (1_000, 2_000, 3_000):
        score, _ = timed_c2st(reference[first : first + 1_000], samples[first : first + 1_000])
        print(f"npe draws {first}-{first + 999}: C2ST {score:.3f}")


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    nle_case()
    npe_case()
