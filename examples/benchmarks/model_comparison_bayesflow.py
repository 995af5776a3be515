"""Model comparison side by side with BayesFlow 2, on the same simulations, in one process.

Two cases of the analytic suite (``model_comparison_analytic.CASES``; default ``width2_d10``
and ``nested2_d100``): linear-Gaussian models whose evidences are closed form. Each case is
simulated once, ``--n-per-model`` per model (the seeds ``ModelComparison.fit(n, seed=...)``
uses), and the same arrays train, one after the other:

- ``sbiflow``: ``ModelComparison(models)`` with its defaults, ``.fit(x=...)``;
- ``bayesflow``: ``bayesflow.approximators.ModelComparisonApproximator`` (torch backend)
  with an MLP classifier of the same size as ours (3 x 128; BayesFlow's MLP defaults
  otherwise: mish, residual blocks, dropout 0.05, he_normal), ``standardize=
  "inference_conditions"``, the recipe of BayesFlow's ``BasicWorkflow`` for offline data
  (AdamW, weight decay 5e-3, clipnorm 1.5, cosine decay from 5e-4 with 5% warm-up, 100
  epochs), but batch size 512 (the one sbiflow picks for these data; BasicWorkflow's 32 is
  10x slower per epoch here) and 10% of the simulations held out as validation data
  (monitored only: BayesFlow keeps the last weights of its cosine schedule);
- ``bayesflow_es``: the same, plus Keras early stopping on the validation loss with the
  patience of sbiflow's (20 epochs), restoring the best weights (the 100-epoch schedule is
  kept, so the learning rate is still high where it stops);
- ``bayesflow_matched``: the same as ``bayesflow``, with as many epochs as sbiflow's early
  stopping ran on that case (a comparable epoch budget; the cosine schedule spans them).

Fit time (``time.perf_counter`` around construction, compilation and fit; simulations
excluded) and, on the same ``--n-test`` held-out datasets as ``model_comparison_analytic``,
the same metrics (its ``evaluate``): per-model ECE, log K RMSE where the exact |log K| <= 5,
RMS relative error where 5 < |log K| <= 30, agreement of the decision at |log K| = 3.

BayesFlow's log K is the difference of its logits (``predict(..., probs=False)``), which is
exactly log p_a - log p_b of its softmax. As a check the JSON also has the metrics from its
float32 probabilities (``predict(...)``), clamped below at the smallest normal float32
(1.2e-38, i.e. |log p| <= 87.3) before the log; ``n_clamped`` counts the clamped entries.

BayesFlow is a benchmark dependency only (the ``bench`` extra; install it next to the CPU
torch with ``pip install "bayesflow==2.0.12" "keras>=3.12" torch==2.13.0``). Importing it
with the torch backend turns autograd off process-wide, so sbiflow's fit runs under
``torch.enable_grad()`` here. ``--quick`` is a smoke run (10^3 simulations, 3 epochs).

    OMP_NUM_THREADS=1 taskset -c 1 python examples/benchmarks/model_comparison_bayesflow.py \
        --out docs/results/model_comparison_bayesflow.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # before keras/bayesflow are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, report  # noqa: E402
from model_comparison_analytic import CASES, evaluate  # noqa: E402

import sbiflow  # noqa: E402
from sbiflow.comparison import ModelComparison  # noqa: E402
from sbiflow.comparison.calibration import reliability  # noqa: E402
from sbiflow.comparison.data import simulate_models  # noqa: E402

TINY = float(np.finfo(np.float32).tiny)  # clamp of BayesFlow's probabilities before the log


class BayesFlowComparison:
    """A trained ModelComparisonApproximator behind the two methods ``evaluate`` calls."""

    ensemble = 1  # one network: no spread of log K

    def __init__(self, approximator, names: list[str], from_probabilities: bool = False):
        self.approximator, self.names = approximator, names
        self.from_probabilities = from_probabilities
        self.n_clamped = 0

    def _predict(self, x: torch.Tensor, probs: bool) -> np.ndarray:
        out = [
            self.approximator.predict(conditions={"x": x[s : s + 4096].numpy()}, probs=probs)
            for s in range(0, x.shape[0], 4096)
        ]
        return np.concatenate(out).astype(np.float64)

    def log_bayes_factor(self, x: torch.Tensor, a: str, b: str) -> torch.Tensor:
        ia, ib = self.names.index(a), self.names.index(b)
        if self.from_probabilities:
            p = self._predict(x, probs=True)
            self.n_clamped += int((p[:, [ia, ib]] < TINY).sum())
            log_p = np.log(np.maximum(p, TINY))
        else:
            log_p = self._predict(x, probs=False)  # logits: log p up to one constant per x
        return torch.from_numpy(log_p[:, ia] - log_p[:, ib])

    def calibration(self, x: dict[str, torch.Tensor], plot: bool = False):
        labels = torch.cat([torch.full((len(v),), m) for m, v in enumerate(x.values())])
        p = torch.from_numpy(self._predict(torch.cat(list(x.values())), probs=True))
        return reliability(p, labels, torch.ones(len(labels)), self.names)


def fit_sbiflow(models: dict, train: dict, seed: int):
    start = time.perf_counter()
    with torch.enable_grad():  # BayesFlow's torch backend disables autograd globally
        mc = ModelComparison(models).fit(x=train, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    epochs = len(mc.history.val_loss)
    return mc, seconds, {"epochs": epochs, "best_epoch": mc.history.best_epoch}


def fit_bayesflow(
    names: list[str], train: dict, seed: int, epochs: int, batch_size: int, patience=None
):
    import bayesflow as bf
    import keras

    keras.utils.set_random_seed(seed)
    x = torch.cat([train[n] for n in names]).numpy()
    labels = np.concatenate([np.full(len(train[n]), m) for m, n in enumerate(names)])
    onehot = np.eye(len(names), dtype=np.float32)[labels]
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(0.1 * len(x)))
    val, fit = order[:n_val], order[n_val:]
    start = time.perf_counter()
    adapter = bf.approximators.ModelComparisonApproximator.build_adapter(
        inference_variables="model_indices", inference_conditions="x"
    )
    dataset = bf.OfflineDataset(
        data={"x": x[fit], "model_indices": onehot[fit]}, batch_size=batch_size, adapter=adapter
    )
    validation = bf.OfflineDataset(
        data={"x": x[val], "model_indices": onehot[val]}, batch_size=batch_size, adapter=adapter
    )
    approximator = bf.approximators.ModelComparisonApproximator(
        num_models=len(names),
        classifier_network=bf.networks.MLP(widths=[128] * 3),
        adapter=adapter,
        standardize="inference_conditions",
    )
    # BasicWorkflow.build_optimizer for offline training, initial learning rate 5e-4.
    steps = epochs * dataset.num_batches
    warmup = int(0.05 * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.1 * 5e-4,
        warmup_target=5e-4,
        warmup_steps=warmup,
        decay_steps=steps - warmup,
        alpha=0,
    )
    approximator.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=5e-3, clipnorm=1.5)
    )
    callbacks = []
    if patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience, restore_best_weights=True
            )
        )
    history = approximator.fit(
        dataset=dataset, validation_data=validation, epochs=epochs, callbacks=callbacks, verbose=0
    )
    seconds = time.perf_counter() - start
    val_loss = history.history["val_loss"]
    info = {
        "epochs": len(val_loss),
        "best_epoch": int(np.argmin(val_loss)),
        "val_loss_last": float(val_loss[-1]),
        "val_loss_best": float(min(val_loss)),
        "batch_size": batch_size,
    }
    return approximator, seconds, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=["width2_d10", "nested2_d100"], choices=list(CASES)
    )
    parser.add_argument("--n-per-model", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf-epochs", type=int, default=100)
    parser.add_argument("--bf-batch-size", type=int, default=512)
    parser.add_argument(
        "--bf-variants",
        nargs="+",
        default=["bayesflow", "bayesflow_es", "bayesflow_matched"],
        choices=["bayesflow", "bayesflow_es", "bayesflow_matched"],
    )
    parser.add_argument("--bf-patience", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.n_per_model, args.n_test, args.bf_epochs = 1000, 1000, 3
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import bayesflow
    import keras

    print(f"# model_comparison_bayesflow on {machine()}", flush=True)
    print(
        f"# bayesflow {bayesflow.__version__}, keras {keras.__version__} "
        f"({keras.backend.backend()})",
        flush=True,
    )
    torch.set_num_threads(1)
    runs, rows = [], []
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for case in args.cases:
        models = CASES[case]()
        names = list(models)
        train = simulate_models(models, args.n_per_model, args.seed, 0, 1, False)
        per_model = args.n_test // len(models)
        test = {
            name: sbiflow.simulate(m, per_model, seed=10_000 + args.seed * 100 + i, progress=False)[
                1
            ]
            for i, (name, m) in enumerate(models.items())
        }
        mc, seconds, info = fit_sbiflow(models, train, args.seed)
        tools = [("sbiflow", mc, seconds, info)]
        for variant in args.bf_variants:
            epochs = tools[0][3]["epochs"] if variant == "bayesflow_matched" else args.bf_epochs
            patience = args.bf_patience if variant == "bayesflow_es" else None
            fitted = fit_bayesflow(names, train, args.seed, epochs, args.bf_batch_size, patience)
            tools.append((variant, *fitted))
        sbiflow_seconds = tools[0][2]
        for tool, fitted, seconds, info in tools:
            result = {"case": case, "tool": tool, "seed": args.seed, "fit_seconds": seconds}
            result |= info
            if tool == "sbiflow":
                result |= evaluate(fitted, models, test)
            else:
                result |= evaluate(BayesFlowComparison(fitted, names), models, test)
                check = BayesFlowComparison(fitted, names, from_probabilities=True)
                metrics = evaluate(check, models, test)
                result["from_probabilities"] = {
                    k: metrics[k]
                    for k in ("rmse_moderate", "relative_rms_large", "decision_agreement")
                } | {"n_clamped": check.n_clamped}
            runs.append(result)
            print(result, flush=True)
            rows.append(
                [
                    case,
                    tool,
                    f"{seconds:.1f}",
                    f"{sbiflow_seconds / seconds:.2f}",
                    f"{result['epochs']}",
                    f"{result['ece_max']:.4f} ({result['ece_exact_max']:.4f})",
                    f"{result['rmse_moderate']:.3f} ({result['n_moderate']})",
                    f"{fmt(result['relative_rms_large'], '.3f')} ({result['n_large']})",
                    f"{result['decision_agreement']:.4f}",
                ]
            )
    header = [
        "case",
        "tool",
        "fit s",
        "sbiflow / tool fit time",
        "epochs",
        "max ECE (exact p)",
        "log K RMSE, abs(log K) ≤ 5",
        "rel. RMS error, 5 < abs(log K) ≤ 30",
        "decision agreement at 3",
    ]
    print(f"\nseed {args.seed}, {args.n_per_model} simulations per model, {args.n_test} test")
    report(header, rows, args.out, args, runs)


if __name__ == "__main__":
    main()
