"""Cost of two diagnostics the test suite and ``sbiflow run`` call (session 11).

1. C2ST (sbi's MLP classifier, as ``sbiflow.diagnostics.c2st``) with five and two folds on
   2 x 2,000 samples in 10-d (the size of tests/test_npe.py), for two identical laws and
   for a shift of 0.4: the score and the seconds.
2. ``sbc`` with and without sbi's C2ST rank checks, and ``sbc_and_coverage`` against
   ``sbc`` + ``expected_coverage``, for an NPE of the tests' small run (two_moons, 600
   simulations, 3 epochs, 100 test simulations, 1,000 posterior draws each).

    flock /tmp/core1.lock env OMP_NUM_THREADS=1 taskset -c 1 python -u \\
        examples/benchmarks/diagnostics_cost.py | tee docs/results/diagnostics_cost.log
"""

import time
import warnings

import torch

import sbiflow
import simulators
from sbiflow.diagnostics import c2st, expected_coverage, sbc, sbc_and_coverage

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def timed(f):
    """(result, seconds) of ``f()``."""
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


g = torch.Generator().manual_seed(0)
a, b = torch.randn(2000, 10, generator=g), torch.randn(2000, 10, generator=g)
shifted = torch.randn(2000, 10, generator=g) + 0.4
for name, other in (("same law", b), ("shift 0.4", shifted)):
    for folds in (5, 2):
        score, seconds = timed(lambda o=other, k=folds: c2st(a, o, n_folds=k))
        print(f"c2st {name}, {folds} folds: {score:.3f} in {seconds:.1f} s", flush=True)

sim = simulators.get("two_moons")
theta, x = sbiflow.simulate(sim, 600, seed=0, progress=False)
npe = sbiflow.NPE(sim.prior, hidden_features=16).fit(theta, x, max_epochs=3, progress=False)
test_theta, test_x = sbiflow.simulate(sim, 100, seed=1, progress=False)
kw = {"progress": False}
_, with_checks = timed(lambda: sbc(npe, test_theta, test_x, c2st_checks=True, **kw))
_, without = timed(lambda: sbc(npe, test_theta, test_x, **kw))
print(f"sbc with sbi's C2ST rank checks {with_checks:.1f} s, without {without:.1f} s")
_, coverage_alone = timed(lambda: expected_coverage(npe, test_theta, test_x, **kw))
_, both = timed(lambda: sbc_and_coverage(npe, test_theta, test_x, **kw))
print(
    f"sbc {without:.1f} s + expected_coverage {coverage_alone:.1f} s = "
    f"{without + coverage_alone:.1f} s; sbc_and_coverage {both:.1f} s"
)
