"""Score-based NPE, sbiflow against sbi's NPSE, trained on the same simulations in one process.

For each task: sbi's NPSE with its defaults (``NPSE(prior).append_simulations(θ, x).train()``,
``build_posterior().sample``) and ``sbiflow.NPE(prior, estimator="score")`` fit the same 10⁴
simulations; each is sampled 10,000 times at observations 1..K and scored with the SBI-benchmark
C2ST against sbibm's reference samples. Fit and sampling wall times are measured in the
same process, one after the other. Pin the run and give both tools one thread:

    taskset -c 1 python examples/benchmarks/score_vs_sbi.py --threads 1 \
        --out docs/results/score_vs_sbi.json

gaussian_linear also gets the two other score targets of issue 5: sbiflow's ``log_prob`` against
the analytic posterior (mean absolute error on posterior draws, observations 1..K), and the
posterior given 10 iid trials composed from the single-observation model (``sample_iid``, both
compositions, ``--iid-samples`` draws; sbi's NPSE with its default iid method alongside with
``--iid-sbi``), by C2ST against the analytic posterior. C2ST scores are computed (untimed) in
the same process as soon as their samples exist, and the JSON is rewritten each time, so a
stopped run keeps what it finished.

The same run also fits ``NPE(prior, estimator="cvae")`` with its defaults on the same tasks
(``cvae_accuracy.run_cvae``; skip with ``--no-cvae``) and reports its C2ST and, on
gaussian_linear, its IWAE log-density error: the cVAE targets of issue 5 (C2ST ≤ 0.65 on
two_moons, ≤ 0.60 on gaussian_linear; log_prob within 0.3 nats).

Targets (issue 5): sbiflow C2ST ≤ sbi's and sbiflow fit + sampling time ≤ sbi's; log_prob
error < 0.1 nats; iid C2ST ≤ 0.6.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    machine,
    reference_samples,
    report,
    timed,
)
from cvae_accuracy import run_cvae  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow.diagnostics import c2st  # noqa: E402
from sbiflow.priors import in_support  # noqa: E402

TRIALS = 10


def fit_sbi(prior, theta, x, seed):
    from sbi.inference import NPSE

    torch.manual_seed(seed)
    inference = NPSE(prior=prior, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train()
    return inference.build_posterior(estimator)


def sample_sbi(posterior, n, x_o, seed):
    torch.manual_seed(seed)
    return posterior.sample((n,), x=x_o, show_progress_bars=False)


def fit_sbiflow(prior, theta, x, seed):
    return sbiflow.NPE(prior, estimator="score").fit(theta, x, seed=seed, progress=False)


def sample_sbiflow(npe, n, x_o, seed):
    return npe.sample(n, x=x_o, seed=seed)


def sample_sbiflow_iid(npe, n, trials, seed, method):
    """The composed posterior, inside the prior's support (rejection, as NPE.sample)."""
    torch.manual_seed(seed)
    kept, have = [], 0
    while have < n:
        draws = npe.estimator.sample_iid(n, trials, npe.prior, method=method)
        draws = draws[in_support(npe.prior, draws)]
        kept.append(draws)
        have += len(draws)
    return torch.cat(kept)[:n]


def _score(job):
    key, reference, samples = job
    return key, c2st(reference, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--log-prob-points", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-iid", action="store_true", help="skip the iid composition")
    parser.add_argument("--iid-samples", type=int, default=2_000, help="samples per iid C2ST")
    parser.add_argument(
        "--iid-sbi", action="store_true", help="also sample sbi's NPSE iid posterior (slow)"
    )
    parser.add_argument("--no-cvae", action="store_true", help="skip the cVAE rows")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for both tools (0: torch default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"# score_vs_sbi on {machine()}", flush=True)
    n = args.num_samples

    # Per task: both tools fit and sample (timed), one after the other; then C2ST (untimed).
    runs: list[dict] = []
    scores: dict[tuple[str, str, str], list[float]] = {}
    for task in args.tasks:
        jobs: list = []
        sim = simulators.get(task)
        theta, x = sbiflow.simulate(sim, args.num_simulations, seed=args.seed, progress=False)
        sbi_posterior, sbi_fit = timed(fit_sbi, sim.prior, theta, x, args.seed)
        print(f"{task}: sbi NPSE fit {sbi_fit:.0f} s", flush=True)
        ours, our_fit = timed(fit_sbiflow, sim.prior, theta, x, args.seed)
        print(f"{task}: sbiflow score fit {our_fit:.0f} s", flush=True)
        run = {
            "task": task,
            "num_simulations": args.num_simulations,
            "fit_seconds": {"sbi": sbi_fit, "sbiflow": our_fit},
            "sample_seconds": {"sbi": 0.0, "sbiflow": 0.0},
            "epochs": {"sbiflow": len(ours.history.val_loss)},
        }
        for obs in range(1, args.observations + 1):
            x_o = sim.observation(obs)
            reference = reference_samples(task, obs, n)
            for tool, sampler, posterior in (
                ("sbi", sample_sbi, sbi_posterior),
                ("sbiflow", sample_sbiflow, ours),
            ):
                samples, seconds = timed(sampler, posterior, n, x_o, obs)
                run["sample_seconds"][tool] += seconds
                jobs.append(((task, "c2st", tool), reference, samples))
        runs.append(run)
        print(run, flush=True)
        if not args.no_cvae:
            run["cvae"] = run_cvae(
                task,
                args.num_simulations,
                seed=args.seed,
                threads=torch.get_num_threads(),
                observations=args.observations,
                num_samples=n,
            )
        score_jobs(jobs, scores)
        report_runs(runs, scores, args)
        if task == "gaussian_linear":
            run["log_prob_mae"] = log_prob_errors(sim, ours, args)
            report_runs(runs, scores, args)
            if not args.no_iid:
                run["iid_seconds"] = {}
                for obs in range(1, args.observations + 1):
                    jobs = iid_jobs(sim, ours, sbi_posterior, args, obs, run["iid_seconds"])
                    score_jobs(jobs, scores)
                    report_runs(runs, scores, args)


def score_jobs(jobs, scores) -> None:
    """C2ST of each queued sample set against its reference, appended to ``scores``."""
    for key, score in map(_score, jobs):
        scores.setdefault(key, []).append(score)
        print(f"{' '.join(key)}: {score:.4f}", flush=True)


def log_prob_errors(sim, npe, args) -> list[float]:
    """Mean |log q - log p| over posterior draws, one value per observation."""
    errors = []
    for obs in range(1, args.observations + 1):
        x_o = sim.observation(obs)
        theta = sim.reference_posterior(x_o, args.log_prob_points, seed=obs)
        # The prior is Gaussian, no support to renormalize for: the score model's own density.
        logq = npe.log_prob(theta, x=x_o, normalize=False)
        errors.append(float((logq - sim.posterior(x_o).log_prob(theta)).abs().mean()))
        print(f"log_prob gaussian_linear obs {obs}: MAE {errors[-1]:.4f} nats", flush=True)
    return errors


def iid_jobs(sim, ours, sbi_posterior, args, obs, seconds) -> list:
    """Sample the posterior given TRIALS iid observations with each method (timings added
    to ``seconds``); return the C2ST jobs against the analytic posterior."""
    jobs = []
    rng = np.random.default_rng(args.seed + obs)
    trials = sim.simulate(sim.true_parameters(obs).expand(TRIALS, -1), rng)
    n = args.iid_samples
    reference = sim.reference_posterior(trials, n)
    methods = {
        "sbiflow-gauss": lambda: sample_sbiflow_iid(ours, n, trials, obs, "gauss"),
        "sbiflow-geffner": lambda: sample_sbiflow_iid(ours, n, trials, obs, "geffner"),
    }
    if args.iid_sbi:
        methods["sbi"] = lambda: sample_sbi(sbi_posterior, n, trials, obs)
    for name, draw in methods.items():
        try:
            samples, spent = timed(draw)
        except Exception as error:  # noqa: BLE001 - report a failing method, go on
            print(f"iid {name} failed: {error!r}", flush=True)
            continue
        seconds[name] = seconds.get(name, 0.0) + spent
        jobs.append((("gaussian_linear", "iid", name), reference, samples))
    return jobs


def report_runs(runs, scores, args) -> None:
    rows = []
    for run in runs:
        task = run["task"]
        run["c2st"] = {tool: scores[(task, "c2st", tool)] for tool in ("sbi", "sbiflow")}
        total = {t: run["fit_seconds"][t] + run["sample_seconds"][t] for t in ("sbi", "sbiflow")}
        sbi_c2st, our_c2st = np.mean(run["c2st"]["sbi"]), np.mean(run["c2st"]["sbiflow"])
        run["targets_met"] = bool(our_c2st <= sbi_c2st and total["sbiflow"] <= total["sbi"])
        rows.append(
            [
                task,
                f"{sbi_c2st:.3f}",
                f"{our_c2st:.3f}",
                f"{run['fit_seconds']['sbi']:.0f} + {run['sample_seconds']['sbi']:.0f}",
                f"{run['fit_seconds']['sbiflow']:.0f} + {run['sample_seconds']['sbiflow']:.0f}",
                f"{total['sbiflow'] / total['sbi']:.2f}",
                "yes" if run["targets_met"] else "**no**",
            ]
        )
    header = [
        "task",
        "C2ST sbi NPSE",
        "C2ST sbiflow score",
        "fit + sample s, sbi",
        "fit + sample s, sbiflow",
        "time ratio",
        "targets met",
    ]
    extra = []
    for run in runs:
        if "log_prob_mae" in run:
            maes = run["log_prob_mae"]
            extra.append(["log_prob MAE (nats), sbiflow", " / ".join(f"{m:.3f}" for m in maes)])
        if "iid_seconds" in run:
            for name in run["iid_seconds"]:
                values = scores.get(("gaussian_linear", "iid", name), [])
                run.setdefault("iid_c2st", {})[name] = values
                extra.append(
                    [
                        f"iid C2ST, {TRIALS} trials, {name}",
                        " / ".join(f"{v:.3f}" for v in values)
                        + f" ({run['iid_seconds'][name]:.0f} s)",
                    ]
                )
    cvae_rows = [
        [
            run["task"],
            " / ".join(f"{c:.3f}" for c in run["cvae"]["c2st"]),
            " / ".join(f"{e:.3f}" for e in run["cvae"]["log_prob_error"]) or "-",
            f"{run['cvae']['fit_seconds']:.0f} + {run['cvae']['sample_seconds']:.0f}",
            "yes" if run["cvae"]["targets_met"] else "**no**",
        ]
        for run in runs
        if "cvae" in run
    ]
    cvae_header = ["task", "cVAE C2ST obs 1..K", "cVAE log_prob error", "fit + sample s", "met"]
    extra_header = ["gaussian_linear, observations 1..K", "value"]
    report(header, rows, args.out, args, runs, [(cvae_header, cvae_rows), (extra_header, extra)])


if __name__ == "__main__":
    main()
