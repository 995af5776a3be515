"""Probe (issue 14, item 2): recalibrate a flow's base radially instead of by a temperature.

One NSF on two_moons at 10^4 (calibration off). The radii |u*| of 1,000 validation pairs'
base points are mapped onto the chi_D law by their empirical quantiles (h = F_r*^-1 o
F_chi); drawing u = z h(|z|) / |z| then gives each radius its held-out frequency. Printed:
the ratio r*/chi at four quantiles; coverage of base-space balls on 500 fresh simulations
(a proxy of HPD coverage: equal when the flow's log-determinant is constant) at T = 1,
T = 1.125 and radially mapped; C2ST against the reference at observations 1-2. A probe,
not a method: the map is not smoothed and its density (which needs h') is not computed.

    flock /tmp/core0.lock env OMP_NUM_THREADS=1 taskset -c 0 python -u \
        examples/benchmarks/radial_recalibration_probe.py \
        | tee docs/results/radial_recalibration_probe.log
"""

import warnings

import numpy as np
import torch
from scipy import stats

import sbiflow
import simulators
from sbiflow.diagnostics import c2st
from sbiflow.priors import in_support

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
sim = simulators.get("two_moons")
theta, x = sbiflow.simulate(sim, 10_000, seed=0, progress=False)
npe = sbiflow.NPE(sim.prior, calibration="off").fit(theta, x, seed=0, progress=False)
q = npe.estimator
idx = npe.history.validation_index[:1000]
tv, xv = theta[idx], x[idx]
with torch.no_grad():
    u, _ = q.to_noise(tv, q.context(xv))
r = u.norm(dim=1).numpy()
D = u.shape[1]
# quantile map: chi_D quantiles of the ranks -> sorted r*
rs = np.sort(r)
p = (np.arange(len(rs)) + 0.5) / len(rs)
chi = stats.chi(D).ppf(p)
print(
    "radius quantiles r*/chi at 25/50/75/95%:",
    [
        round(float(np.interp(stats.chi(D).ppf(a), chi, rs) / stats.chi(D).ppf(a)), 3)
        for a in (0.25, 0.5, 0.75, 0.95)
    ],
)


def h(rho):
    """chi_D radius -> held-out radius (beyond the last knot: scaled linearly)."""
    return np.interp(rho, chi, rs) * np.where(rho > chi[-1], rho / chi[-1], 1.0)


def draw(x_o, n, mode, T=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    while sum(len(o) for o in out) < n:
        z = torch.randn(4 * n, D, generator=g)
        if mode == "radial":
            rho = z.norm(dim=1).numpy()
            scale = torch.as_tensor(h(rho) / rho, dtype=torch.float32)
            uu = z * scale[:, None]
        else:
            uu = z * T
        with torch.no_grad():
            ctx = q.context(x_o[None]).expand(len(uu), -1)
            th, _ = q.from_noise(uu, ctx)
        out.append(th[in_support(sim.prior, th)])
    return torch.cat(out)[:n]


# base-radius coverage on fresh sims (proxy): P(r* < chi_D quantile) after mapping
tt, xt = sbiflow.simulate(sim, 500, seed=1000, progress=False)
with torch.no_grad():
    ut, _ = q.to_noise(tt, q.context(xt))
rt = ut.norm(dim=1).numpy()
for a in (0.5, 0.68, 0.95):
    ball = stats.chi(D).ppf(a)
    plain, tempered = np.mean(rt < ball), np.mean(rt < 1.125 * ball)
    radial = np.mean(rt < h(np.array([ball]))[0])
    print(
        f"level {a}: base-ball coverage T=1 {plain:.3f}, T=1.125 {tempered:.3f}, "
        f"radial {radial:.3f}"
    )
for obs in (1, 2):
    x_o = sim.observation(obs)
    ref = sim.reference_posterior(x_o, 10_000, seed=0)
    for mode, T in (("temp", 1.0), ("temp", 1.125), ("radial", 1.0)):
        s = draw(x_o, 10_000, mode, T)
        print(obs, mode, T, round(c2st(ref, s), 4), flush=True)
