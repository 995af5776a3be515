"""Are the classifier's log K error bars honest? Ways to build the ensemble, on exact log K.

On cases of the analytic suite (``model_comparison_analytic.CASES``, closed-form
evidences), five ways of making K members, all from the same training simulations:

- ``bootstrap``: the default ``ModelComparison(ensemble=K)``: K heads trained in one
  pass, each on its own Bayesian-bootstrap weights, stopped together;
- ``seeds``: K separate fits on all simulations, differing in initialization, validation
  split and batch order (each its own early stopping);
- ``resampled``: K separate fits, each on its own bootstrap resample (drawn with
  replacement) of the simulations;
- ``disjoint``: K separate fits on disjoint K-ths of the simulations;
- ``jackknife``: K separate fits, each leaving out another K-th of the simulations (the
  delete-a-group jackknife); its error bar is sqrt(K - 1) times the members' standard
  deviation, the jackknife's estimate of the error of a fit on all simulations.

For each: RMSE of the members' mean where the exact abs(log K) <= 5, the error bar (the
members' standard deviation, what ``log_bayes_factor(return_std=True)`` returns; for
``jackknife`` the bar above) and how often abs(mean - exact) <= 1 and 2 error bars
(0.683 / 0.954 if honest and Gaussian).

    flock /tmp/core0.lock env OMP_NUM_THREADS=1 taskset -c 0 python -u \\
        examples/benchmarks/model_comparison_error_bars.py --cases width2_d10 nested2_d100 \\
        --out docs/results/model_comparison_error_bars.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, report  # noqa: E402
from model_comparison_analytic import CASES, MODERATE  # noqa: E402

import sbiflow  # noqa: E402
from sbiflow.comparison import ModelComparison  # noqa: E402

WAYS = ("bootstrap", "seeds", "resampled", "disjoint", "jackknife")


def member_log_k(mc: ModelComparison, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Every member's log K for every model pair, concatenated: ``(K, pairs * N)``."""
    log_z = mc._log_evidences(x)  # (K, N, M)
    pairs = itertools.combinations(range(len(names)), 2)
    return torch.cat([log_z[..., a] - log_z[..., b] for a, b in pairs], dim=1)


def fit_members(way: str, names: list[str], train: dict, members: int, seed: int, **opts):
    """The ``members`` fitted ``ModelComparison`` objects of one way (one object for bootstrap)."""
    if way == "bootstrap":
        return [ModelComparison(names, ensemble=members).fit(x=train, seed=seed, **opts)]
    fits = []
    for k in range(members):
        generator = torch.Generator().manual_seed(1000 * seed + k)
        if way == "seeds":
            data = train
        elif way == "resampled":
            data = {
                m: x[torch.randint(len(x), (len(x),), generator=generator)]
                for m, x in train.items()
            }
        elif way == "disjoint":
            data = {m: x[k::members] for m, x in train.items()}
        else:  # jackknife
            data = {m: x[torch.arange(len(x)) % members != k] for m, x in train.items()}
        fits.append(ModelComparison(names).fit(x=data, seed=1000 * seed + k, **opts))
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["width2_d10", "nested2_d100"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument("--n-per-model", type=int, default=20_000)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"# model_comparison_error_bars on {machine()}\n# {vars(args)}", flush=True)
    rows, results = [], []
    for case in args.cases:
        models = CASES[case]()
        names = list(models)
        train = {
            name: sbiflow.simulate(m, args.n_per_model, seed=args.seed * 100 + i, progress=False)[1]
            for i, (name, m) in enumerate(models.items())
        }
        per_model = args.n_test // len(models)
        test = torch.cat(
            [
                sbiflow.simulate(m, per_model, seed=20_000 + args.seed * 100 + i, progress=False)[1]
                for i, m in enumerate(models.values())
            ]
        )
        log_z = torch.stack([m.log_evidence(test) for m in models.values()], dim=1)
        pairs = itertools.combinations(range(len(names)), 2)
        exact = torch.cat([log_z[:, a] - log_z[:, b] for a, b in pairs])
        moderate = exact.abs() <= MODERATE
        for way in args.ways:
            started = time.perf_counter()
            fits = fit_members(way, names, train, args.members, args.seed, progress=False)
            seconds = time.perf_counter() - started
            k = torch.cat([member_log_k(mc, test, names) for mc in fits]).double()  # (K, P)
            mean, std = k.mean(dim=0), k.std(dim=0)
            if way == "jackknife":
                std = std * (args.members - 1) ** 0.5
            error = (mean - exact)[moderate]
            z = error.abs() / std[moderate].clamp_min(1e-12)
            result = {
                "case": case,
                "way": way,
                "n_per_model": args.n_per_model,
                "members": args.members,
                "fit_seconds": round(seconds, 1),
                "rmse_moderate": float(error.pow(2).mean().sqrt()),
                "member_rmse_moderate": float((k - exact)[:, moderate].pow(2).mean().sqrt()),
                "median_error_bar": float(std[moderate].median()),
                "rms_z": float(z.pow(2).mean().sqrt()),
                "share_z_le_1": float((z <= 1).double().mean()),
                "share_z_le_2": float((z <= 2).double().mean()),
                "n_moderate": int(moderate.sum()),
            }
            results.append(result)
            print(
                f"{case:13s} {way:10s} {seconds:6.0f}s RMSE {result['rmse_moderate']:.3f} "
                f"(member {result['member_rmse_moderate']:.3f}) bar "
                f"{result['median_error_bar']:.3f} rms z {result['rms_z']:.2f} "
                f"z<=1 {result['share_z_le_1']:.3f} z<=2 {result['share_z_le_2']:.3f}",
                flush=True,
            )
            rows.append(
                [
                    case,
                    way,
                    f"{seconds:.0f}",
                    f"{result['rmse_moderate']:.3f}",
                    f"{result['member_rmse_moderate']:.3f}",
                    f"{result['median_error_bar']:.3f}",
                    f"{result['rms_z']:.2f}",
                    f"{result['share_z_le_1']:.3f}",
                    f"{result['share_z_le_2']:.3f}",
                ]
            )
    header = [
        "case",
        "members from",
        "fit s",
        "RMSE of mean",
        "RMSE of a member",
        "median error bar",
        "RMS z",
        "z ≤ 1 (0.683)",
        "z ≤ 2 (0.954)",
    ]
    report(header, rows, args.out, args, results)


if __name__ == "__main__":
    main()
