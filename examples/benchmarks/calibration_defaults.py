"""Calibration of NPE's training choices: plain NSF, balanced (BNPE), vectorized ensembles.

For each task and simulation budget, every variant trains on the same simulations (seed 0)
and is scored on

- expected HPD coverage at 50 / 68 / 95% over ``--test`` fresh simulations from the prior
  (seed 1000), with ``NPE.check_calibration`` (500 posterior draws each);
- C2ST against sbibm's reference posterior at observations 1..K (10,000 samples each);
- fit wall time, in one process, one variant after the other (compare ratios).

``--sbi`` adds sbi's NPE (NSF, its defaults) on the same simulations: its fit time and its
coverage by ``sbiflow.diagnostics.expected_coverage`` (sbi's run_sbc).
``--epoch-timing`` measures one training epoch of one NSF against K-member ensembles,
vectorized and member by member, on 10,000 two_moons simulations.

    taskset -c 0 python examples/benchmarks/calibration_defaults.py --threads 1 \\
        --tasks two_moons gaussian_linear --out docs/results/calibration_defaults_a.json

Targets (issue 14): coverage >= nominal - 0.03 at every level, C2ST within +0.02 of plain
NSF, default fit <= 0.5x sbi's on two_moons and gaussian_linear at 10^4, a K = 5 ensemble
epoch <= 1.5x one member's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import c2st_scores, machine, report, timed  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import expected_coverage  # noqa: E402
from sbiflow.estimators import build_estimator  # noqa: E402
from sbiflow.training import TrainingConfig, train  # noqa: E402

LEVELS = (0.5, 0.68, 0.95)

#: name -> NPE keyword arguments ("check": measure, never retrain; "default": NPE(prior))
VARIANTS = {
    "plain": {"balance": 0.0, "calibration": "check"},
    "bnpe": {"balance": 100.0, "calibration": "check"},
    "bnpe10": {"balance": 10.0, "calibration": "check"},
    "ens5": {"estimator": "ensemble", "num_members": 5, "calibration": "check"},
    "ens3": {"estimator": "ensemble", "num_members": 3, "calibration": "check"},
    "ens5_boot": {
        "estimator": "ensemble",
        "num_members": 5,
        "bootstrap": True,
        "calibration": "check",
    },
    "ens5_bnpe": {
        "balance": 100.0,
        "estimator": "ensemble",
        "num_members": 5,
        "calibration": "check",
    },
    "ens5_boot_bnpe": {
        "balance": 100.0,
        "estimator": "ensemble",
        "num_members": 5,
        "bootstrap": True,
        "calibration": "check",
    },
    "ens5_bnpe300": {
        "balance": 300.0,
        "estimator": "ensemble",
        "num_members": 5,
        "calibration": "check",
    },
    "ens8_bnpe": {
        "balance": 100.0,
        "estimator": "ensemble",
        "num_members": 8,
        "calibration": "check",
    },
    "ens3_bnpe": {
        "balance": 100.0,
        "estimator": "ensemble",
        "num_members": 3,
        "calibration": "check",
    },
    "default": {},
    # one NSF trained with sbi's NPE training options (batch 200, Adam 5e-4, patience 20, no
    # learning-rate decay) instead of sbiflow's faster ones
    # one factor of sbi's training options at a time (which one calibrates a single flow?)
    "plain_nodecay": {"balance": 0.0, "calibration": "check", "_training": {"lr_decays": 0}},
    "plain_lr5e-4": {
        "balance": 0.0,
        "calibration": "check",
        "_training": {"learning_rate": 5e-4},
    },
    "plain_bs200": {"balance": 0.0, "calibration": "check", "_training": {"batch_size": 200}},
    "plain_nominpat": {
        "balance": 0.0,
        "calibration": "check",
        "_training": {"min_patience": None},
    },
    "plain_sbi_training": {
        "balance": 0.0,
        "calibration": "check",
        "_training": {
            "batch_size": 200,
            "learning_rate": 5e-4,
            "stop_after_epochs": 20,
            "lr_decays": 0,
            "min_patience": None,
        },
    },
}


class Oscillator:
    """The README's own-simulator example (issue 14's case): a damped oscillator seen at 20
    times with noise 0.1; θ = (frequency, damping, amplitude) in a box. No reference
    posterior: coverage only."""

    name = "oscillator"

    def __init__(self) -> None:
        low, high = torch.tensor([0.5, 0.0, 0.5]), torch.tensor([2.0, 0.5, 2.0])
        self.prior = sbiflow.BoxUniform(low, high)
        self.t = torch.linspace(0.0, 10.0, 20)

    def simulate(self, theta, rng):
        w, gamma, amp = theta.unbind(-1)
        clean = amp[:, None] * torch.exp(-gamma[:, None] * self.t) * torch.cos(w[:, None] * self.t)
        noise = torch.as_tensor(rng.standard_normal(clean.shape), dtype=torch.float32)
        return clean + 0.1 * noise


def get_task(name: str):
    return Oscillator() if name == "oscillator" else simulators.get(name)


def fit_variant(prior, options, theta, x, seed):
    options = dict(options)
    training = options.pop("_training", {})
    return sbiflow.NPE(prior, **options).fit(theta, x, seed=seed, progress=False, **training)


def fit_sbi(prior, theta, x, seed):
    from sbi.inference import NPE as SbiNPE

    torch.manual_seed(seed)
    inference = SbiNPE(prior=prior, density_estimator="nsf", show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(show_train_summary=False)
    return inference.build_posterior(estimator)


class _SbiPosterior:
    """sbi's posterior with the ``sample(n, x, seed)`` / ``log_prob(theta, x)`` of ours."""

    def __init__(self, posterior):
        self.posterior = posterior

    def sample(self, n, x, seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        return self.posterior.sample((n,), x=x, show_progress_bars=False)

    def log_prob(self, theta, x, normalize=False):
        # sbi's density is already restricted to the prior; HPD ranks need no normalizer
        return self.posterior.log_prob(theta, x=x, norm_posterior=normalize)


def epoch_timing(
    members: tuple[int, ...], task: str = "two_moons", n: int = 10_000, epochs: int = 3
) -> list[dict]:
    """Seconds per epoch: one NSF, and K-member ensembles vectorized and member by member."""
    sim = simulators.get(task, transform="anscombe") if task == "collider" else get_task(task)
    theta, x = sbiflow.simulate(sim, n, seed=0, progress=False)
    config = TrainingConfig(max_epochs=epochs, stop_after_epochs=10**6, progress=False, seed=0)

    def per_epoch(kind: str, **options) -> float:
        torch.manual_seed(0)
        model = build_estimator(kind, (theta.shape[1],), (x.shape[1],), **options)
        model.standardize_from(theta, x)
        return train(model, theta, x, config).wall_time / epochs

    one = per_epoch("nsf")
    rows = [{"task": task, "members": 1, "mode": "one NSF", "seconds": one, "ratio": 1.0}]
    for k in members:
        for vectorized in (True, False):
            seconds = per_epoch("ensemble", num_members=k, vectorized=vectorized)
            mode = "vectorized" if vectorized else "member by member"
            rows.append(
                {
                    "task": task,
                    "members": k,
                    "mode": mode,
                    "seconds": seconds,
                    "ratio": seconds / one,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="*",
        default=["two_moons", "slcp", "gaussian_linear", "gaussian_mixture"],
    )
    parser.add_argument("--budgets", nargs="+", type=int, default=[1_000, 10_000])
    parser.add_argument("--variants", nargs="+", default=["plain", "bnpe", "ens5"])
    parser.add_argument("--test", type=int, default=300, help="test simulations for coverage")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--sbi", action="store_true", help="also fit sbi's NPE")
    parser.add_argument(
        "--epoch-timing",
        nargs="*",
        default=None,
        help="time epochs on these tasks (task or task:n; none given: two_moons:10000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--c2st-workers", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"# calibration_defaults on {machine()}", flush=True)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")

    runs, jobs = [], []
    timing = []
    for spec in args.epoch_timing if args.epoch_timing is not None else []:
        name, _, size = spec.partition(":")
        timing += epoch_timing((3, 5), name, int(size or 10_000))
    if args.epoch_timing == []:
        timing = epoch_timing((3, 5))
    for task in args.tasks:
        sim = get_task(task)
        theta_test, x_test = sbiflow.simulate(sim, args.test, seed=1000, progress=False)
        for budget in args.budgets:
            theta, x = sbiflow.simulate(sim, budget, seed=args.seed, progress=False)
            fits = {}
            for name in args.variants:
                npe, seconds = timed(fit_variant, sim.prior, VARIANTS[name], theta, x, args.seed)
                check = npe.check_calibration(theta_test, x_test, num_samples=500, warn=False)
                fits[name] = {
                    "fit_seconds": seconds,
                    "epochs": len(npe.history.val_loss),
                    "estimator": npe.estimator_kind,
                    "temperature": npe.temperature,
                    "coverage": list(check.coverage),
                    "validation_check": None
                    if npe.calibration is None
                    else npe.calibration.as_dict(),
                }
                for obs in range(1, args.observations + 1 if hasattr(sim, "observation") else 1):
                    samples = npe.sample(args.num_samples, x=sim.observation(obs), seed=obs)
                    jobs.append(((task, budget, name), task, obs, samples.numpy()))
                print(task, budget, name, fits[name], flush=True)
            if args.sbi:
                posterior, seconds = timed(fit_sbi, sim.prior, theta, x, args.seed)
                view = _SbiPosterior(posterior)
                cov = expected_coverage(
                    view, theta_test, x_test, LEVELS, num_posterior_samples=500, progress=False
                )
                fits["sbi"] = {"fit_seconds": seconds, "coverage": cov.coverage.tolist()}
                for obs in range(1, args.observations + 1 if hasattr(sim, "observation") else 1):
                    samples = view.sample(args.num_samples, sim.observation(obs), seed=obs)
                    jobs.append(((task, budget, "sbi"), task, obs, samples.numpy()))
                print(task, budget, "sbi", fits["sbi"], flush=True)
            runs.append({"task": task, "num_simulations": budget, "fits": fits})

    scores = c2st_scores(jobs, args.c2st_workers) if jobs else {}
    rows = []
    for run in runs:
        task, budget = run["task"], run["num_simulations"]
        plain = scores.get((task, budget, "plain"))
        for name, fit in run["fits"].items():
            fit["c2st"] = scores.get((task, budget, name), [])
            c2st_mean = float(np.mean(fit["c2st"])) if fit["c2st"] else float("nan")
            coverage_ok = all(c >= lv - 0.03 for c, lv in zip(fit["coverage"], LEVELS, strict=True))
            accuracy_ok = plain is None or c2st_mean <= float(np.mean(plain)) + 0.02
            fit["coverage_met"], fit["accuracy_met"] = coverage_ok, bool(accuracy_ok)
            rows.append(
                [
                    task,
                    f"{budget:,}",
                    name,
                    " / ".join(f"{c:.3f}" for c in fit["coverage"]),
                    f"{c2st_mean:.3f}",
                    f"{fit['fit_seconds']:.1f}",
                    "yes" if coverage_ok else "**no**",
                    "yes" if accuracy_ok else "**no**",
                ]
            )
    header = [
        "task",
        "simulations",
        "variant",
        "coverage 50 / 68 / 95",
        "C2ST",
        "fit s",
        "coverage met",
        "C2ST met",
    ]
    more = []
    if timing:
        more.append(
            (
                ["task", "members", "mode", "s / epoch", "x one NSF"],
                [
                    [
                        r["task"],
                        str(r["members"]),
                        r["mode"],
                        f"{r['seconds']:.3f}",
                        f"{r['ratio']:.2f}",
                    ]
                    for r in timing
                ],
            )
        )
    runs.append({"epoch_timing": timing})
    report(header, rows, args.out, args, runs, more)


if __name__ == "__main__":
    main()
