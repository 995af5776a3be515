"""Cored or cusped? Bayesian model comparison for one mock dwarf spheroidal (issue 12).

Two models of ``simulators/dwarf.py`` share the stars' Plummer profile and differ in the
dark-matter halo's inner slope: ``cored`` (gamma = 0) and ``cusped`` (NFW, gamma = 1), each
with log10_rho_s, log10_r_s and a constant anisotropy beta free. The mock dwarf is
reference galaxy 1 of the cored model (a cored halo, ~100 stars).

1. ``sbiflow.ModelComparison`` learns the posterior model probabilities from simulated star
   sets (the kinematic-set embedding, an ensemble whose spread is the error of log K);
2. its log Bayes factor for the mock dwarf is checked against dynesty on the exact per-star
   likelihood of each model (``evidence_crosscheck``; no emulator: a flow cannot model
   padded star sets);
3. calibration on fresh simulations, and the misspecification check on the mock dwarf and
   on a galaxy from neither model (the free-slope model's reference galaxy 3: gamma = 1.5,
   radially biased orbits).

One figure (the stars; log K of fresh simulations of each model, with the mock dwarf's;
the reliability diagram; classifier vs nested-sampling log K) goes to ``--out``, and a
short report is printed.

    taskset -c 1 python examples/model_selection_dwarf.py --out dwarf_models.png
    python examples/model_selection_dwarf.py --quick --out /tmp/quick.png   # < 60 s, tiny
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from matplotlib.figure import Figure

import sbiflow
import simulators

# full: ~10,000 training sets (~1.2 ms per set, epoch and member on one core): a few minutes
FULL = {"n_per_model": 5000, "ensemble": 3, "max_epochs": 25, "calibration": 1000, "nlive": 300}
QUICK = {"n_per_model": 1000, "ensemble": 2, "max_epochs": 4, "calibration": 300, "nlive": 50}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison, draw the figure, print and return the headline numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (< 60 s)")
    parser.add_argument("--out", default="model_selection_dwarf.png", help="figure path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    torch.set_num_threads(1)

    models = {m: simulators.get("dwarf", model=m) for m in ("cored", "cusped")}
    x_o = models["cored"].observation(1)  # (150, 4): R, v, dv, mask per star
    outsider = simulators.get("dwarf").observation(3)  # gamma = 1.5, beta = 0.25

    started = time.perf_counter()
    mc = sbiflow.ModelComparison(models, embedding_net="kinematic_set", ensemble=budget["ensemble"])
    mc.fit(budget["n_per_model"], seed=args.seed, max_epochs=budget["max_epochs"], progress=False)
    trained = time.perf_counter()

    log_k, err = mc.log_bayes_factor(x_o, "cusped", "cored", return_std=True)
    probabilities = mc.probabilities(x_o)
    calibration = mc.calibration(budget["calibration"], seed=args.seed + 1)
    fresh = {}  # log K of fresh simulations of each model: where the mock dwarf falls
    for i, (name, sim) in enumerate(models.items()):
        x = sbiflow.simulate(sim, budget["calibration"], seed=args.seed + 10 + i, progress=False)[1]
        fresh[name] = mc.log_bayes_factor(x, "cusped", "cored")
    check = mc.evidence_crosscheck(
        x_o, emulator=False, nested_options={"nlive": budget["nlive"]}, seed=args.seed
    )
    (pair,) = check.pairs
    nested_log_k = pair.nested["exact"]
    miss_o, miss_out = mc.misspecification(x_o), mc.misspecification(outsider)
    done = time.perf_counter()

    figure = Figure(figsize=(13, 3.4), layout="constrained")
    axes = figure.subplots(1, 4)
    stars = x_o[x_o[:, 3] > 0]
    axes[0].errorbar(stars[:, 0], stars[:, 1], yerr=stars[:, 2], fmt=".", ms=3, lw=0.5)
    axes[0].set(xscale="log", xlabel="R [kpc]", ylabel="v [km/s]", title="mock dwarf (cored)")
    bins = np.linspace(-6, 6, 41)
    for name, values in fresh.items():
        axes[1].hist(values.clamp(-6, 6).numpy(), bins, alpha=0.5, label=f"simulated {name}")
    axes[1].axvline(log_k, color="k", label="mock dwarf")
    axes[1].set(xlabel="log K(cusped / cored)", ylabel="datasets", title="classifier")
    axes[1].legend(fontsize=7)
    for name, (predicted, observed, _) in calibration.curves.items():
        keep = ~torch.isnan(predicted)
        axes[2].plot(predicted[keep], observed[keep], "o-", ms=3, label=name)
    axes[2].plot([0, 1], [0, 1], "--", color="0.6")
    axes[2].set(
        xlabel="predicted probability",
        ylabel="observed frequency",
        title=f"reliability (ECE {max(calibration.ece.values()):.3f})",
    )
    axes[2].legend(fontsize=7)
    axes[3].errorbar([0], [log_k], yerr=[err], fmt="o", capsize=4, label="classifier")
    axes[3].errorbar(
        [1], [nested_log_k.log_z], yerr=[nested_log_k.err], fmt="s", capsize=4, label="dynesty"
    )
    axes[3].set(xticks=[0, 1], xticklabels=["classifier", "dynesty (exact)"], xlim=(-0.5, 1.5))
    axes[3].set(ylabel="log K(cusped / cored)", title="cross-check")
    figure.savefig(args.out, dpi=120)

    report = {
        "log_k": float(log_k),
        "log_k_err": float(err),
        "p_cored": float(probabilities["cored"]),
        "nested_log_k": nested_log_k.log_z,
        "nested_log_k_err": nested_log_k.err,
        "tension_sigma": pair.tension("exact"),
        "max_ece": max(calibration.ece.values()),
        "accuracy": calibration.accuracy,
        "p_value_mock": float(miss_o.p_value),
        "p_value_outsider": float(miss_out.p_value),
        "seconds_train": trained - started,
        "seconds_total": done - started,
    }
    print(f"mock dwarf: p(cored) = {report['p_cored']:.3f}")
    print(f"log K(cusped / cored): classifier {log_k:.2f} ± {err:.2f}, dynesty on the exact")
    print(f"  likelihood {nested_log_k.log_z:.2f} ± {nested_log_k.err:.2f}", end="")
    print(f" (tension {report['tension_sigma']:.1f} sigma)")
    print(f"calibration: accuracy {calibration.accuracy:.3f}, ECE {calibration.ece}")
    print(
        f"misspecification p-value: mock dwarf {report['p_value_mock']:.3f}, galaxy from "
        f"neither model {report['p_value_outsider']:.3f}"
    )
    print(f"time: train {report['seconds_train']:.0f} s, total {report['seconds_total']:.0f} s")
    print(f"figure: {args.out}")
    return report


if __name__ == "__main__":
    main()
