"""Held-out NLL (and optionally C2ST) of sbiflow's NPE training loop under several settings.

Used to choose the training defaults recorded in docs/results/history_npe.md, e.g.

    python examples/benchmarks/training_calibration.py two_moons 10000 \\
        512,1e-3,20,0 512,1e-3,20,1 --c2st

Each setting is ``batch,lr,patience,lr_decays[,after_decay[,min_patience]]``.
The held-out NLL is measured on 20,000 fresh simulations (seed 99): a less noisy proxy for the
posterior's quality than C2ST.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import reference_samples  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import c2st  # noqa: E402
from sbiflow.estimators import build_estimator  # noqa: E402
from sbiflow.training import TrainingConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("num_simulations", type=int)
    parser.add_argument(
        "settings",
        nargs="+",
        help="batch,lr,patience,decays[,after_decay[,min_patience]]",
    )
    parser.add_argument("--c2st", action="store_true", help="also C2ST on observations 1-5")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sim = simulators.get(args.task)
    theta, x = sbiflow.simulate(sim, args.num_simulations, seed=0, progress=False)
    test_theta, test_x = sbiflow.simulate(sim, 20_000, seed=99, progress=False)
    for setting in args.settings:
        batch, lr, patience, decays, *after = setting.split(",")
        torch.manual_seed(0)
        estimator = build_estimator("nsf", tuple(theta.shape[1:]), tuple(x.shape[1:]))
        estimator.standardize_from(theta, x)
        config = TrainingConfig(
            batch_size=int(batch),
            learning_rate=float(lr),
            stop_after_epochs=int(patience),
            lr_decays=int(decays),
            patience_after_decay=int(after[0]) if after else None,
            min_patience=int(after[1]) if len(after) > 1 else None,
            progress=False,
        )
        start = time.perf_counter()
        history = train(estimator, theta, x, config)
        seconds = time.perf_counter() - start
        estimator.eval()
        with torch.no_grad():
            nll = float(-estimator.log_prob(test_theta, test_x).mean())
        line = (
            f"{args.task} N={args.num_simulations} {setting}: fit {seconds:.1f} s, "
            f"{len(history.val_loss)} epochs, best {history.best_epoch}, test NLL {nll:.4f}"
        )
        if args.c2st:
            posterior = sbiflow.NPE(sim.prior)  # samples restricted to the prior, as in NPE
            posterior.estimator, posterior.x_shape = estimator, tuple(x.shape[1:])
            scores = [
                c2st(reference_samples(args.task, i), posterior.sample(10_000, sim.observation(i)))
                for i in range(1, 6)
            ]
            line += f", C2ST {np.mean(scores):.3f} {np.round(scores, 3)}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
