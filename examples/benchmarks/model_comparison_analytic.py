"""Model comparison on the analytic suite: learned against exact Bayes factors.

Linear-Gaussian models with closed-form evidences (``sbiflow.comparison.analytic``): pairs
and quartets of prior widths (x = θ + noise, θ ~ N(0, s²)) and nested polynomial
regressions, at data dimension 10 and 100. For each case one ModelComparison is trained on
``--n-per-model`` simulations per model and evaluated on ``--n-test`` held-out datasets
(split equally over the models):

- per-model ECE (10 bins) against the true model labels;
- log K RMSE over all model pairs where the exact |log K| <= 5 (target 0.1 nats);
- RMS relative error where 5 < |log K| <= 30 (target 10%);
- agreement of the decision at |log K| = 3 (favour a / favour b / inconclusive) with the
  exact one (target 99.5%).

Next to the learned ECE the table gives that of the exact model probabilities on the same
datasets: the ECE of 10 bins estimated from 10^4 datasets is not zero even for a perfect
classifier, and this is its floor.

    taskset -c 1 python examples/benchmarks/model_comparison_analytic.py \
        --out docs/results/model_comparison_analytic.json
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

import sbiflow  # noqa: E402
from sbiflow.comparison import ModelComparison, nested_regressions, prior_widths  # noqa: E402
from sbiflow.comparison.calibration import reliability  # noqa: E402

# name -> models. Widths grow by a factor that keeps |log K| in the tens at each dimension.
CASES = {
    "width2_d10": lambda: prior_widths(10, (1.0, 2.0)),
    "width2_d100": lambda: prior_widths(100, (1.0, 1.25)),
    "width4_d10": lambda: prior_widths(10, (1.0, 2.0, 4.0, 8.0)),
    "width4_d100": lambda: prior_widths(100, (1.0, 1.25, 1.25**2, 1.25**3)),
    "nested2_d10": lambda: nested_regressions(10, (2, 3)),
    "nested2_d100": lambda: nested_regressions(100, (2, 3)),
    "nested4_d10": lambda: nested_regressions(10, (1, 2, 3, 4)),
    "nested4_d100": lambda: nested_regressions(100, (1, 2, 3, 4)),
}
DECISION = 3.0  # |log K| threshold of a decision
MODERATE = 5.0  # RMSE region
LARGE = 30.0  # relative-error region upper bound


def decision(log_k: torch.Tensor) -> torch.Tensor:
    """+1 favour a, -1 favour b, 0 inconclusive."""
    return torch.where(log_k.abs() > DECISION, torch.sign(log_k), torch.zeros_like(log_k))


def test_datasets(models: dict, n_test: int, seed: int) -> dict[str, torch.Tensor]:
    """The held-out datasets of a case: ``{name: (n_test // len(models), d)}``."""
    per_model = n_test // len(models)
    return {
        name: sbiflow.simulate(m, per_model, seed=10_000 + seed * 100 + i, progress=False)[1]
        for i, (name, m) in enumerate(models.items())
    }


def evaluate(mc: ModelComparison, models: dict, test: dict, predictions: str | None = None) -> dict:
    x = torch.cat(list(test.values()))
    log_z = {name: m.log_evidence(x) for name, m in models.items()}
    learned, exact = [], []
    spread = []
    for a, b in itertools.combinations(models, 2):
        if mc.ensemble >= 2:
            mean, std = mc.log_bayes_factor(x, a, b, return_std=True)
            spread.append(std.double())
        else:
            mean = mc.log_bayes_factor(x, a, b)
        learned.append(mean.double())
        exact.append(log_z[a] - log_z[b])
    learned, exact = torch.cat(learned), torch.cat(exact)
    if predictions:  # every pair's learned and exact log K, (pairs * n_test,), for diagnosis
        torch.save(
            {"learned": learned, "exact": exact, "std": spread and torch.cat(spread)}, predictions
        )
    error = learned - exact
    moderate = exact.abs() <= MODERATE
    large = (exact.abs() > MODERATE) & (exact.abs() <= LARGE)
    relative = error[large] / exact[large].abs()
    calibration = mc.calibration(x=test, plot=False)
    labels = torch.cat([torch.full((len(v),), m) for m, v in enumerate(test.values())])
    exact_p = torch.softmax(torch.stack(list(log_z.values()), dim=1), dim=1)  # equal priors
    floor = reliability(exact_p, labels, torch.ones(len(labels)), list(models))
    return {
        "ece": calibration.ece,
        "ece_max": max(calibration.ece.values()),
        "ece_exact_max": max(floor.ece.values()),
        "accuracy": calibration.accuracy,
        "rmse_moderate": float(error[moderate].pow(2).mean().sqrt()),
        "n_moderate": int(moderate.sum()),
        "relative_rms_large": float(relative.pow(2).mean().sqrt()) if large.any() else None,
        # signed: < 0 where the learned |log K| falls short of the exact one (shrinkage)
        "relative_mean_large": float((relative * exact[large].sign()).mean())
        if large.any()
        else None,
        "relative_p90_large": float(relative.abs().quantile(0.9)) if large.any() else None,
        "n_large": int(large.sum()),
        "decision_agreement": float((decision(learned) == decision(exact)).double().mean()),
        "n_pairs_datasets": int(exact.shape[0]),
    } | (error_bar_coverage(error[moderate], torch.cat(spread)[moderate]) if spread else {})


def error_bar_coverage(error: torch.Tensor, std: torch.Tensor) -> dict:
    """How often the ensemble's error bar covers the exact log K (0.683 / 0.954 if calibrated)."""
    z = (error / std.clamp_min(1e-12)).abs()
    return {
        "error_bar_cover_1sigma": float((z <= 1).double().mean()),
        "error_bar_cover_2sigma": float((z <= 2).double().mean()),
        "error_bar_median_std": float(std.median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--n-per-model", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "exponential"])
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument(
        "--no-bootstrap", action="store_true", help="members differ by initialization only"
    )
    parser.add_argument(
        "--resampling",
        default=None,
        choices=["bootstrap", "jackknife", "none"],
        help="how members differ (overrides --no-bootstrap)",
    )
    parser.add_argument("--penalty", type=float, default=0.0, help="ModelComparison penalty")
    parser.add_argument(
        "--quadratic",
        default="auto",
        choices=["auto", "diagonal", "chi2"],
        help="ModelComparison quadratic (auto: the default, the diagonal form for vectors)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: fit's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: fit's")
    parser.add_argument("--lr-decays", type=int, default=None, help="default: fit's")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--predictions", default=None, help="torch.save every learned and exact log K here"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"# model_comparison_analytic on {machine()}", flush=True)
    runs, rows = [], []
    for case in args.cases:
        models = CASES[case]()
        if args.loss == "exponential" and len(models) != 2:
            continue
        resampling = args.resampling or ("none" if args.no_bootstrap else "bootstrap")
        mc = ModelComparison(
            models,
            loss=args.loss,
            ensemble=args.ensemble,
            resampling=resampling,
            penalty=args.penalty,
            quadratic=args.quadratic,
        )
        start = time.perf_counter()
        options = {
            k: v
            for k, v in (
                ("learning_rate", args.learning_rate),
                ("batch_size", args.batch_size),
                ("lr_decays", args.lr_decays),
            )
            if v is not None
        }
        mc.fit(args.n_per_model, seed=args.seed, progress=False, **options)
        fit_seconds = time.perf_counter() - start
        test = test_datasets(models, args.n_test, args.seed)
        result = {
            "case": case,
            "fit_seconds": fit_seconds,
            "epochs": len(mc.history.val_loss),
            "best_epoch": mc.history.best_epoch,
        }
        predictions = args.predictions and f"{Path(args.predictions).with_suffix('')}_{case}.pt"
        result |= evaluate(mc, models, test, predictions)
        runs.append(result)
        print(result, flush=True)
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        rows.append(
            [
                case,
                f"{fit_seconds:.0f}",
                f"{result['ece_max']:.4f} ({result['ece_exact_max']:.4f})",
                f"{result['rmse_moderate']:.3f} ({result['n_moderate']})",
                f"{fmt(result['relative_rms_large'], '.3f')} ({result['n_large']})",
                f"{result['decision_agreement']:.4f}",
                f"{result['error_bar_cover_1sigma']:.3f} / {result['error_bar_cover_2sigma']:.3f}"
                if "error_bar_cover_1sigma" in result
                else "-",
            ]
        )
    header = [
        "case",
        "fit s",
        "max ECE (≤0.01) (exact p)",
        "log K RMSE, abs(log K) ≤ 5 (≤0.1)",
        "rel. RMS error, 5 < abs(log K) ≤ 30 (≤0.1)",
        "decision agreement at 3 (≥0.995)",
        "error bar covers exact, 1σ / 2σ (0.683 / 0.954)",
    ]
    print(
        f"\nloss {args.loss}, ensemble {args.ensemble} ({args.resampling or 'bootstrap'}), "
        f"penalty {args.penalty}, quadratic {args.quadratic}, "
        f"{args.n_per_model} simulations per model"
    )
    report(header, rows, args.out, args, runs)


if __name__ == "__main__":
    main()
