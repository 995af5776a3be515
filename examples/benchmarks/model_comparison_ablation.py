"""Why the model classifier misses the analytic targets: one change at a time.

Runs named variants of ``ModelComparison`` (architecture and training options) on cases of
the analytic suite (``model_comparison_analytic.CASES``) and reports the suite's metrics
for each. Variant ``regress_*`` is a diagnostic, not a classifier: the same network
trained by least squares on the *exact* log evidence differences of the training
simulations, which tells whether the architecture can represent the log Bayes factor at
all at this budget.

    taskset -c 1 python examples/benchmarks/model_comparison_ablation.py \
        --cases width2_d100 nested4_d100 --variants baseline regress_baseline whiten \
        --out /tmp/mc2/ablation.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from model_comparison_analytic import CASES, evaluate  # noqa: E402

import sbiflow  # noqa: E402
from sbiflow.comparison import ModelComparison, network  # noqa: E402
from sbiflow.comparison.data import simulate_models  # noqa: E402
from sbiflow.training import TrainingConfig, train  # noqa: E402

OLD = {"whiten": False, "quadratic": False}
# name -> (ModelComparison options, fit/training options)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "baseline": (OLD, {}),
    "regress_baseline": (OLD, {}),
    "whiten": ({"whiten": True, "quadratic": False}, {}),
    "quadratic": ({"whiten": False, "quadratic": True}, {}),
    "whiten_quadratic": ({"whiten": True, "quadratic": True}, {}),
    "regress_whiten_quadratic": ({"whiten": True, "quadratic": True}, {}),
    "regress_quadratic": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_ensemble5": ({"whiten": False, "quadratic": True, "ensemble": 5}, {}),
    "quadratic_rank16": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_rank1": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_l2_1e-5": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_l2_1e-4": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_l2_1e-3": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_l2_3e-3": ({"whiten": False, "quadratic": True}, {}),
    "quadratic_l2_1e-2": ({"whiten": False, "quadratic": True}, {}),
    **{
        f"{scope}_l2_{weight}": ({"whiten": False, "quadratic": True}, {})
        for scope in ("mlp", "mlpu")
        for weight in ("3e-4", "1e-3", "3e-3", "1e-2", "3e-2")
    },
    "wide": ({**OLD, "hidden_features": 256, "num_layers": 4}, {}),
    "patient": (OLD, {"stop_after_epochs": 50, "min_patience": None, "lr_decays": 2}),
    "small_lr": (OLD, {"learning_rate": 5e-4}),
    "big_batch": (OLD, {"batch_size": 2048}),
    "wq_patient": (
        {"whiten": True, "quadratic": True},
        {"stop_after_epochs": 50, "min_patience": None, "lr_decays": 2},
    ),
    "wq_small_lr": ({"whiten": True, "quadratic": True}, {"learning_rate": 5e-4}),
    "wq_big_batch": ({"whiten": True, "quadratic": True}, {"batch_size": 2048}),
}


class Regression(nn.Module):
    """Least squares of the network's log evidence differences on the exact ones."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def loss(self, target: Tensor, x: Tensor) -> Tensor:
        scores = self.network(x)  # (K, B, M)
        learned = scores - scores[..., :1]
        exact = target - target[:, :1]  # (B, M)
        return (learned - exact).pow(2).sum(dim=-1).sum(dim=0)


_CROSS_ENTROPY_LOSS = network.ComparisonNetwork.loss


#: Which weight matrices an ``<scope>_l2_<weight>`` variant penalizes (name prefixes;
#: ``quadratic`` alone is every weight, the skip's included).
L2_SCOPES = {
    "quadratic": ("",),
    "mlp": ("hidden.", "output."),
    "mlpu": network.PENALIZED,  # what ModelComparison(penalty=...) penalizes
}


def l2_penalized(weight: float, scope: str = "quadratic"):
    """``ComparisonNetwork.loss`` plus ``weight`` times the sum of squared weight matrices.

    Args:
        weight: Penalty per sample.
        scope: Key of ``L2_SCOPES``: the weights penalized.
    """
    prefixes = L2_SCOPES[scope]

    def loss(self: nn.Module, labels: Tensor, x: Tensor) -> Tensor:
        penalty = sum(
            p.pow(2).sum()
            for n, p in self.named_parameters()
            if n.endswith("weight") and n.startswith(prefixes)
        )
        return _CROSS_ENTROPY_LOSS(self, labels, x) + weight * penalty

    return loss


def fit_regression(mc: ModelComparison, models: dict, n: int, seed: int, training: dict) -> None:
    """Train ``mc``'s network by regression on the exact log evidences of fit's simulations."""
    xs = simulate_models(models, n, seed, 0, 1, False)  # the simulations fit would draw
    data = torch.cat(list(xs.values()))
    target = torch.stack([m.log_evidence(data).float() for m in models.values()], dim=1)
    mc.x_shape = tuple(data.shape[1:])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = mc._network(data, torch.ones(len(models)))
        config = TrainingConfig(seed=seed, progress=False, **training)
        mc.history = train(Regression(network), target, data, config)
    mc.network = network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["width2_d100", "nested4_d100"])
    parser.add_argument("--variants", nargs="+", default=["baseline"], choices=list(VARIANTS))
    parser.add_argument("--n-per-model", nargs="+", type=int, default=[20_000])
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append one JSON line per run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for case in args.cases:
        models = CASES[case]()
        per_model = args.n_test // len(models)
        test = {
            name: sbiflow.simulate(m, per_model, seed=10_000 + args.seed * 100 + i, progress=False)[
                1
            ]
            for i, (name, m) in enumerate(models.items())
        }
        for n in args.n_per_model:
            for variant in args.variants:
                options, training = VARIANTS[variant]
                network.QUADRATIC_RANK = int(variant[14:]) if "_rank" in variant else None
                network.ComparisonNetwork.loss = (
                    l2_penalized(float(variant.split("_l2_")[1]), variant.split("_l2_")[0])
                    if "_l2_" in variant
                    else _CROSS_ENTROPY_LOSS
                )
                mc = ModelComparison(models, **options)
                start = time.perf_counter()
                if variant.startswith("regress_"):
                    fit_regression(mc, models, n, args.seed, training)
                else:
                    mc.fit(n, seed=args.seed, progress=False, **training)
                seconds = time.perf_counter() - start
                result = {"case": case, "variant": variant, "n_per_model": n}
                result |= {"fit_seconds": round(seconds, 1), "epochs": len(mc.history.val_loss)}
                result |= {"best_epoch": mc.history.best_epoch}
                result |= evaluate(mc, models, test)
                print(
                    f"{case:13s} {variant:26s} n={n:6d} {seconds:5.0f}s ep={result['epochs']:3d} "
                    f"ECE={result['ece_max']:.4f} RMSE={result['rmse_moderate']:.3f} "
                    f"rel={result['relative_rms_large'] or float('nan'):.3f} "
                    f"agree={result['decision_agreement']:.4f}",
                    flush=True,
                )
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
