"""Time of NPE's temperature search and calibration check after one plain NSF fit at 10^4.

The fit runs with ``calibration="off"``; then ``choose_temperature`` on 500 validation
simulations and the check (``npe.check_calibration``, ``NPE.CALIBRATION_DRAWS`` draws
each) on the 500 others, timed apart, as ``calibration="auto"`` runs them after a fit of
5,000 simulations or more.

    taskset -c 0 python examples/benchmarks/temperature_search_time.py \\
        | tee docs/results/temperature_search_time.log
"""

import time
import warnings

import torch

import sbiflow
import simulators
from sbiflow.inference.temperature import choose_temperature

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
for task in ("gaussian_linear", "two_moons"):
    sim = simulators.get(task)
    theta, x = sbiflow.simulate(sim, 10_000, seed=0, progress=False)
    t = time.perf_counter()
    npe = sbiflow.NPE(sim.prior, calibration="off").fit(theta, x, seed=0, progress=False)
    fit = time.perf_counter() - t
    idx = npe.history.validation_index[:1_000]
    tt, xx = theta[idx][500:], x[idx][500:]
    t = time.perf_counter()
    choice = choose_temperature(npe.estimator, sim.prior, tt, xx)
    search = time.perf_counter() - t
    npe.estimator.set_temperature(choice.temperature)
    t = time.perf_counter()
    check = npe.check_calibration(
        theta[idx][:500], x[idx][:500], num_samples=npe.CALIBRATION_DRAWS, warn=False
    )
    checked = time.perf_counter() - t
    print(
        f"{task}: plain fit {fit:.1f} s; choose_temperature on {choice.num_simulations} "
        f"validation simulations {search:.1f} s -> T = {choice.temperature:.3f}; check on "
        f"500 others {checked:.1f} s -> {check.summary()}",
        flush=True,
    )
