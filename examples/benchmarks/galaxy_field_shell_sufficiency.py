"""How much of the Bayes factor do power-spectrum shells keep? (issue 12, item 3, galaxy_field)

The Gaussian galaxy field (``GalaxyField(exact=True)``) has independent Fourier modes with
variances ``c_k(theta)`` that depend on |k| alone, so the power summed over each distinct
|k|^2 is a sufficient statistic, and its likelihood is exact. The model-comparison
classifier sees the power in shells of integer |k| (``PowerSpectrumEmbedding``'s default,
23 shells for 32 x 32 maps) instead. On the 30 test datasets of
``model_comparison_physics.py`` (LCDM vs WDM, seed 0) this script computes log K(wdm / lcdm)
on a grid over the uniform prior box (``--grid`` points per axis):

- ``exact``: from the exact likelihood of the map;
- ``integer``: from the integer shells' powers, each a sum of independent scaled chi-square
  modes, approximated by the gamma law of the same mean and variance;
- ``distinct``: the same gamma approximation on the distinct shells (a control: there the
  law is exact up to the few real modes, so it must reproduce ``exact``).

The RMS of integer - exact is the error that summarizing by integer shells alone puts into
log K; set against the classifier's error, it says how much of that is the summary and
how much the learning. With ``--dynesty-from`` (the JSON of ``model_comparison_physics.py``)
the grid's exact log K is compared with dynesty's too.

    python examples/benchmarks/galaxy_field_shell_sufficiency.py \\
        --dynesty-from docs/results/model_comparison_physics.json \\
        --out docs/results/galaxy_field_shell_sufficiency.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, write_json  # noqa: E402
from model_comparison_physics import test_datasets  # noqa: E402

import simulators  # noqa: E402


def gamma_log_likelihood(power: np.ndarray, c: np.ndarray, groups: np.ndarray, sim) -> np.ndarray:
    """Log-likelihood of the power summed per group of distinct shells, gamma-approximated.

    Args:
        power: Power per distinct shell over the full grid, divided by N^2, ``(U,)``.
        c: Mode variances per distinct shell on the grid of parameters, ``(G, U)``.
        groups: Group (shell) of each distinct shell, ``(U,)``.
        sim: The simulator (its multiplicities of the real-FFT half plane).

    Returns:
        ``(G,)``.
    """
    mult, inverse = sim._mult.ravel(), sim._inverse.ravel()
    # a complex mode pair counts twice (|Y_k|^2 = |Y_-k|^2): mean 2c, variance 4c^2 per pair;
    # a real mode (columns 0 and N/2): mean c, variance 2c^2
    pairs = np.bincount(inverse, weights=(mult == 2).astype(float), minlength=c.shape[1])
    real = np.bincount(inverse, weights=(mult == 1).astype(float), minlength=c.shape[1])
    size = groups.max() + 1
    onehot = np.zeros((c.shape[1], size))
    onehot[np.arange(c.shape[1]), groups] = 1.0
    mean = (c * (2 * pairs + real)) @ onehot  # (G, S)
    var = (c**2 * (4 * pairs + 2 * real)) @ onehot
    total = power @ onehot  # (S,)
    keep = mean[0] > 0  # the k = 0 shell carries no theta (its variance is shot noise)
    shape, scale = mean[:, keep] ** 2 / var[:, keep], var[:, keep] / mean[:, keep]
    return stats.gamma.logpdf(total[None, keep], a=shape, scale=scale).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=int, default=100, help="points per parameter axis")
    parser.add_argument("--dynesty-from", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sims = {m: simulators.get("galaxy_field", model=m, exact=True) for m in ("lcdm", "wdm")}
    sim = sims["lcdm"]
    axes = [
        np.linspace(lo, hi, args.grid + 1)[:-1] + (hi - lo) / (2 * args.grid)
        for lo, hi in zip(sim.low, sim.high, strict=True)
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    n2 = sim.n_grid**2
    variances = {m: s.mode_variances(grid) for m, s in sims.items()}  # (G, U) each
    k2 = np.round((sim._k_unique * sim.box_size / (2 * math.pi)) ** 2)
    groups = {
        "integer": np.round(np.sqrt(k2)).astype(int),
        "distinct": np.arange(len(k2)),
    }
    rows = []
    for j, (truth, _, x) in enumerate(test_datasets(sims, args.datasets, args.seed)):
        power = sim._binned_power(x.numpy()[None].astype(np.float64))  # (U,)
        log_z = {}
        for m, c in variances.items():
            lls = {"exact": sim._log_likelihood_of_variances(c, power, 1)}
            for name, g in groups.items():
                lls[name] = gamma_log_likelihood(power / n2, c, g, sim)
            log_z[m] = {k: float(logsumexp(v) - math.log(len(v))) for k, v in lls.items()}
        row = {"dataset": j, "model": truth}
        row.update({k: log_z["wdm"][k] - log_z["lcdm"][k] for k in log_z["wdm"]})
        rows.append(row)
        print(row, flush=True)
    exact = np.array([r["exact"] for r in rows])
    summary = {
        name: float(np.sqrt(np.mean((np.array([r[name] for r in rows]) - exact) ** 2)))
        for name in groups
    }
    if args.dynesty_from:
        results = json.loads(Path(args.dynesty_from).read_text())["results"]
        (pair,) = [r for r in results if r["pair"] == "galaxy_field"]
        n = len(pair["datasets"])
        dyn = np.array([d["log_k_exact"] for d in pair["datasets"]])
        clf = np.array([d["log_k_classifier"] for d in pair["datasets"]])
        summary["dynesty"] = float(np.sqrt(np.mean((dyn - exact[:n]) ** 2)))
        summary["classifier (that run)"] = float(np.sqrt(np.mean((clf - exact[:n]) ** 2)))
    table = markdown_table(
        ["log K from", "RMS against the exact grid log K (nats)"],
        [[k, f"{v:.3f}"] for k, v in summary.items()],
    )
    print(
        f"\nabs(exact log K): median {np.median(np.abs(exact)):.2f}, max {np.abs(exact).max():.2f}"
    )
    print(table)
    write_json(args.out, {"command": " ".join(sys.argv), "rows": rows, "rms": summary})


if __name__ == "__main__":
    main()
