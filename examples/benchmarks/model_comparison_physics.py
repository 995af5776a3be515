"""Model comparison on the physics simulators, against exact-likelihood nested sampling.

Three pairs of models (issue 12, item 3), log K = log p(x | second) - log p(x | first):

- ``dwarf``: cored (gamma = 0) vs cusped (gamma = 1) dark-matter halo of a dwarf spheroidal,
  x = padded star sets, ``embedding_net="kinematic_set"``;
- ``collider``: background only vs signal plus background, x = 30 dijet-mass bin counts;
- ``galaxy_field``: LCDM vs WDM, x = 32 x 32 maps of the Gaussian variant
  (``exact=True``, the one with a likelihood), ``embedding_net="power_spectrum"``.

Per pair one ``ModelComparison`` (a bootstrapped ensemble) is trained on
``--n-per-model`` simulations per model, then

1. ``calibration`` on ``--calibration`` fresh simulations per model: accuracy, per-model
   ECE (10 bins) and the reliability diagram (``docs/results/model_comparison_physics_
   <pair>.png`` next to ``--out``);
2. ``--datasets`` test datasets (half from each model, seeds apart from those of training
   and calibration; round-robin over the pairs once all are trained, the JSON rewritten
   after each; ``--deadline HH:MM`` starts none after that time): per dataset the
   classifier's log K with the ensemble's standard deviation as its error, and log K from
   dynesty on each model's exact ``log_likelihood`` (``evidence_crosscheck(emulator=
   False)``, ``--nlive`` live points), with dynesty's errors of the two log Z in quadrature.
   Tension z = abs(difference) / sqrt(err_clf^2 + err_dynesty^2); the log Bayes factors
   "agree within the combined errors" when z <= 2 (the share with z <= 1 is reported too;
   0.683 / 0.954 if both errors were exact and Gaussian). Decisions at abs(log K) = 3:
   favour the first model, the second, or inconclusive.

Targets (issue 12): z <= 2 for >= 90% of datasets, decisions agree for >= 97%.

    flock /tmp/core0.lock env OMP_NUM_THREADS=1 taskset -c 0 \\
        python examples/benchmarks/model_comparison_physics.py \\
        --pairs collider galaxy_field dwarf --n-per-model 30000 10000 8000 \\
        --datasets 30 --nlive 300 --max-epochs 60 \\
        --out docs/results/model_comparison_physics.json \\
        | tee docs/results/model_comparison_physics.log
    python examples/benchmarks/model_comparison_physics.py --quick --out /tmp/mcp.json  # smoke test

``--models DIR`` saves each trained classifier as ``DIR/<pair>_<n-per-model>.pt`` and
loads it instead of training when it is there (to test more datasets on the same one).
``--refine-nlive N`` reruns dynesty with N live points for the datasets whose exact log K
lies within two of its errors of abs(log K) = 3: there dynesty's own noise (0.15-0.2 nats
at 300 live points) decides the "exact" decision as much as the data do; the row keeps
the first value under ``refined_from``. ``--importance N`` instead refines every exact log Z
by N importance-sampling draws from a proposal built on dynesty's posterior samples
(``evidence_crosscheck(importance_samples=N)``): errors of ~0.01 nats, so that the
reference no longer decides near the threshold by its own noise.
``--exact-from JSON`` takes the exact-likelihood log K of each test dataset from an earlier
run's results (same pair, seed and dataset parameters; dynesty is the slow part, and it does
not depend on the classifier) and runs dynesty only for the others; ``--mc-options`` passes
``ModelComparison`` options (e.g. ``'{"loss": "exponential"}'``) to every pair and
``--sim-options`` simulator options (e.g. ``'{"transform": "anscombe"}'`` for the collider:
a one-to-one transform of x, so log K and the earlier exact values are unchanged).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, markdown_table, report  # noqa: E402

import sbiflow  # noqa: E402
import simulators  # noqa: E402
from sbiflow import ModelComparison, simulate  # noqa: E402

# pair -> simulator, (first, second) model, simulator options, ModelComparison options
PAIRS = {
    "dwarf": ("dwarf", ("cored", "cusped"), {}, {"embedding_net": "kinematic_set"}),
    "collider": ("collider", ("background", "signal"), {}, {}),
    "galaxy_field": (
        "galaxy_field",
        ("lcdm", "wdm"),
        {"exact": True},
        {"embedding_net": "power_spectrum"},
    ),
}
DECISION = 3.0  # abs(log K) threshold of a decision
AGREE = 2.0  # z <= AGREE: agreement within the combined errors
TARGET_AGREE, TARGET_DECISION = 0.90, 0.97
# Tag of the test datasets' seeds (fit uses 0, calibration 1, evidence_crosscheck 2).
TEST_TAG = 3
# --refine-nlive: datasets whose exact log K lies within this many of its errors of the
# decision threshold get dynesty again with more live points (seeds offset by this).
REFINE_SIGMAS, REFINE_SEED_OFFSET = 2.0, 500
NEAR = 0.2  # --summary-of: share of exact log K within this many nats of the threshold
QUICK = {"n_per_model": 600, "datasets": 4, "nlive": 100, "calibration": 200, "max_epochs": 5}


def near_threshold(log_k: float, err: float) -> bool:
    """Whether |log K| = DECISION lies within REFINE_SIGMAS errors of log K."""
    return abs(abs(log_k) - DECISION) <= REFINE_SIGMAS * err


def decision(log_k: float) -> int:
    """+1 favour the second model, -1 the first, 0 inconclusive."""
    return 0 if abs(log_k) <= DECISION else int(math.copysign(1, log_k))


def test_datasets(sims: dict, n: int, seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``n`` datasets, alternating between the models: ``(model, theta, x)`` each."""
    per_model = {}
    for i, (name, sim) in enumerate(sims.items()):
        count = (n + len(sims) - 1 - i) // len(sims)
        child = int(np.random.SeedSequence([seed, i, TEST_TAG]).generate_state(1)[0])
        per_model[name] = simulate(sim, count, seed=child, progress=False)
    out = []
    for j in range(max(len(x) for _, x in per_model.values())):
        for name, (theta, x) in per_model.items():
            if j < len(x):
                out.append((name, theta[j], x[j]))
    return out


def prepare_pair(pair: str, args: argparse.Namespace, budget: dict) -> dict:
    """Train the classifier of one pair and check its calibration; the test datasets to come."""
    simulator, models, options, mc_options = PAIRS[pair]
    sims = {m: simulators.get(simulator, model=m, **(options | args.sim_options)) for m in models}
    first, second = models
    started = time.perf_counter()
    saved = Path(args.models) / f"{pair}_{budget['n_per_model']}.pt" if args.models else None
    if saved is not None and saved.exists():
        mc = sbiflow.load(saved)
        mc.simulators = sims
        fit_seconds = None
        print(f"[{pair}] classifier loaded from {saved}", flush=True)
    else:
        mc = ModelComparison(sims, ensemble=args.ensemble, **(mc_options | args.mc_options))
        training = {"max_epochs": budget["max_epochs"]} if budget["max_epochs"] else {}
        mc.fit(budget["n_per_model"], seed=args.seed, progress=False, **training)
        fit_seconds = time.perf_counter() - started
        print(
            f"[{pair}] fit: {fit_seconds:.0f} s, {len(mc.history.val_loss)} epochs "
            f"(best {mc.history.best_epoch})",
            flush=True,
        )
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            sbiflow.save(mc, saved)

    started = time.perf_counter()
    calibration = mc.calibration(budget["calibration"], seed=args.seed + 1)
    calibration_seconds = time.perf_counter() - started
    figure_path = Path(args.figures) / f"model_comparison_physics_{pair}.png"
    if calibration.figure is not None and args.figures:
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        calibration.figure.axes[0].set_title(f"{pair}: {first} vs {second}")
        calibration.figure.savefig(figure_path, dpi=120)
    print(
        f"[{pair}] calibration on {budget['calibration']} per model: accuracy "
        f"{calibration.accuracy:.3f}, ECE {calibration.ece} ({calibration_seconds:.0f} s)",
        flush=True,
    )
    result = {
        "pair": pair,
        "models": list(models),
        "n_per_model": budget["n_per_model"],
        "ensemble": args.ensemble,
        "mc_options": mc_options | args.mc_options,
        "simulator_options": options | args.sim_options,
        "nlive": budget["nlive"],
        "calibration_per_model": budget["calibration"],
        "datasets_planned": budget["datasets"],
        "fit_seconds": fit_seconds,
        "epochs": len(mc.history.val_loss),
        "calibration_seconds": calibration_seconds,
        "accuracy": calibration.accuracy,
        "ece": calibration.ece,
        "figure": str(figure_path) if args.figures else None,
        "datasets": [],
    }
    tests = test_datasets(sims, budget["datasets"], args.seed)
    exact = earlier_exact(args.exact_from, pair, args.seed, budget["datasets"])
    return {"mc": mc, "tests": tests, "result": result, "exact": exact}


def dynesty_log_k(
    mc: ModelComparison,
    x: torch.Tensor,
    pair: tuple[str, str],
    nlive: int,
    seed: int,
    importance: int = 0,
) -> tuple[float, float, dict]:
    """log K of ``pair`` (a over b) from dynesty on the exact likelihoods: value, error, log Z.

    With ``importance`` > 0 each log Z is refined by that many importance-sampling draws.
    """
    check = mc.evidence_crosscheck(
        x,
        emulator=False,
        exact=True,
        nested_options={"nlive": nlive},
        importance_samples=importance,
        seed=seed,
    )
    (p,) = check.pairs
    assert (p.a, p.b) == pair
    exact = p.nested["exact"]
    log_z = {m: {"log_z": e.log_z, "err": e.err} for m, e in check.evidences["exact"].items()}
    return exact.log_z, exact.err, log_z


def check_dataset(pair: str, state: dict, j: int, args: argparse.Namespace) -> dict:
    """Classifier against exact-likelihood dynesty for test dataset ``j`` of a pair."""
    mc, result = state["mc"], state["result"]
    first, second = result["models"]
    truth, theta, x = state["tests"][j]
    theta_rounded = [round(float(t), 4) for t in theta]
    started = time.perf_counter()
    digest = hashlib.sha1(x.double().numpy().tobytes()).hexdigest()[:16]
    earlier = state["exact"].get((j, truth, tuple(theta_rounded)))
    if earlier is not None and earlier.get("x_digest", digest) != digest:
        earlier = None  # same parameters, other data (another --datasets draws other x)
    if earlier is not None and earlier.get("importance_samples", 0) != args.importance:
        earlier = None  # another kind of reference
    classifier, classifier_err = mc.log_bayes_factor(x, second, first, return_std=True)
    if earlier is None:
        log_k_exact, err_exact, log_z_exact = dynesty_log_k(
            mc, x, (second, first), result["nlive"], args.seed * 1000 + j, args.importance
        )
    else:
        log_k_exact, err_exact = earlier["log_k_exact"], earlier["err_exact"]
        log_z_exact = earlier["log_z_exact"]
    refined_from = earlier.get("refined_from") if earlier is not None else None
    refine = args.refine_nlive and not args.importance and refined_from is None
    if refine and near_threshold(log_k_exact, err_exact):
        # the reference's own noise decides the exact decision here: rerun dynesty longer
        refined_from = {"log_k_exact": log_k_exact, "err_exact": err_exact}
        log_k_exact, err_exact, log_z_exact = dynesty_log_k(
            mc, x, (second, first), args.refine_nlive, args.seed * 1000 + j + REFINE_SEED_OFFSET
        )
    z = abs(classifier - log_k_exact) / math.sqrt(classifier_err**2 + err_exact**2)
    row = {
        "model": truth,
        "theta": theta_rounded,
        "x_digest": digest,
        "log_k_classifier": classifier,
        "err_classifier": classifier_err,
        "log_k_exact": log_k_exact,
        "err_exact": err_exact,
        "log_z_exact": log_z_exact,
        "importance_samples": args.importance,
        "exact_from_earlier_run": earlier is not None,
        "refined_from": refined_from,
        "z": z,
        "decision_classifier": decision(classifier),
        "decision_exact": decision(log_k_exact),
        "seconds": time.perf_counter() - started,
    }
    print(
        f"[{pair}] dataset {j:2d} ({truth:>10}): log K classifier {classifier:8.3f} ± "
        f"{classifier_err:.3f}, exact {log_k_exact:8.3f} ± {err_exact:.3f}, "
        f"z {row['z']:5.2f} ({row['seconds']:.0f} s)",
        flush=True,
    )
    return row


def earlier_exact(path: str | None, pair: str, seed: int, planned: int) -> dict:
    """Exact log K of an earlier run's datasets of ``pair``: {(j, model, theta): row}.

    A row is matched to a dataset by its x digest; rows written before digests were
    recorded only when the earlier run planned as many datasets (the same test datasets:
    with another count the simulator draws the same parameters but other x).
    """
    if not path:
        return {}
    earlier = json.loads(Path(path).read_text())
    if earlier.get("args", {}).get("seed", 0) != seed:
        return {}
    out = {}
    for result in earlier["results"]:
        if result.get("pair") != pair:
            continue
        same_draws = result.get("datasets_planned") == planned
        for j, row in enumerate(result.get("datasets", [])):
            if "x_digest" in row or same_draws:
                out[(j, row["model"], tuple(row["theta"]))] = row
    return out


def summarize(datasets: list[dict]) -> dict:
    """Agreement shares and the error budget of a list of datasets."""
    z = np.array([d["z"] for d in datasets])
    diff = np.array([d["log_k_classifier"] - d["log_k_exact"] for d in datasets])
    exact = np.array([d["log_k_exact"] for d in datasets])
    moderate = np.abs(exact) <= 5.0
    return {
        "n_datasets": len(datasets),
        "share_z_le_2": float(np.mean(z <= AGREE)),
        "share_z_le_1": float(np.mean(z <= 1.0)),
        "share_z_le_2_moderate": float(np.mean(z[moderate] <= AGREE)) if moderate.any() else None,
        "n_moderate": int(moderate.sum()),
        "decision_agreement": float(
            np.mean([d["decision_classifier"] == d["decision_exact"] for d in datasets])
        ),
        "median_err_classifier": float(np.median([d["err_classifier"] for d in datasets])),
        "median_err_exact": float(np.median([d["err_exact"] for d in datasets])),
        "rms_difference": float(np.sqrt(np.mean(diff**2))),
        "mean_difference": float(np.mean(diff)),
        "rms_difference_moderate": float(np.sqrt(np.mean(diff[moderate] ** 2)))
        if moderate.any()
        else None,
        "median_abs_log_k_exact": float(np.median(np.abs(exact))),
        "max_abs_log_k_exact": float(np.max(np.abs(exact))),
        "median_z": float(np.median(z)),
        "n_refined": sum(d.get("refined_from") is not None for d in datasets),
        **reference_decisions(datasets),
    }


def reference_decisions(datasets: list[dict]) -> dict:
    """How far the exact reference and the classifier's own error bar settle the decisions.

    ``reference_flips``: refined datasets whose exact decision changed between the first
    dynesty run and the longer one (the reference's own noise at the threshold).
    ``decision_agreement_settled``: decision agreement over the ``n_settled`` datasets whose
    exact log K lies more than 2 of its errors from the threshold.
    ``decision_agreement_clf_settled``: the same over the ``n_clf_settled`` datasets whose
    classifier log K lies more than 2 of its errors from it (what a user can see);
    ``misses_flagged``: decision misses with the threshold within the classifier's 2 errors.
    ``share_exact_near``: datasets with exact abs(log K) within NEAR nats of the threshold;
    ``rms_difference_near``: classifier RMS error where 2 < abs(exact log K) < 4.
    """
    refined = [d for d in datasets if d.get("refined_from") is not None]
    flips = sum(decision(d["refined_from"]["log_k_exact"]) != d["decision_exact"] for d in refined)
    agree = {id(d): d["decision_classifier"] == d["decision_exact"] for d in datasets}
    settled = [d for d in datasets if not near_threshold(d["log_k_exact"], d["err_exact"])]
    clf_flagged = [near_threshold(d["log_k_classifier"], d["err_classifier"]) for d in datasets]
    clf_settled = [d for d, flag in zip(datasets, clf_flagged, strict=True) if not flag]
    exact = np.array([d["log_k_exact"] for d in datasets])
    diff = np.array([d["log_k_classifier"] for d in datasets]) - exact
    near = (np.abs(exact) > DECISION - 1) & (np.abs(exact) < DECISION + 1)
    share = lambda rows: float(np.mean([agree[id(d)] for d in rows])) if rows else None  # noqa: E731
    return {
        "reference_flips": flips,
        "n_settled": len(settled),
        "decision_agreement_settled": share(settled),
        "n_clf_settled": len(clf_settled),
        "decision_agreement_clf_settled": share(clf_settled),
        "misses_flagged": sum(
            flag for d, flag in zip(datasets, clf_flagged, strict=True) if not agree[id(d)]
        ),
        "share_exact_near": float(np.mean(np.abs(np.abs(exact) - DECISION) < NEAR)),
        "rms_difference_near": float(np.sqrt(np.mean(diff[near] ** 2))) if near.any() else None,
    }


def table_row(name: str, s: dict, accuracy: str, ece: str) -> list[str]:
    moderate = "-" if s["share_z_le_2_moderate"] is None else f"{s['share_z_le_2_moderate']:.2f}"
    met = s["share_z_le_2"] >= TARGET_AGREE and s["decision_agreement"] >= TARGET_DECISION
    return [
        name,
        str(s["n_datasets"]),
        accuracy,
        ece,
        f"{s['share_z_le_2']:.3f}",
        f"{s['share_z_le_1']:.3f}",
        f"{moderate} ({s['n_moderate']})",
        f"{s['decision_agreement']:.3f}",
        f"{s['median_err_classifier']:.3f} / {s['median_err_exact']:.3f}",
        f"{s['rms_difference']:.2f} ({s['mean_difference']:+.2f})",
        f"{s['median_abs_log_k_exact']:.1f} / {s['max_abs_log_k_exact']:.1f}",
        "met" if met else "not met",
    ]


HEADER = [
    "pair",
    "datasets",
    "accuracy",
    "ECE per model",
    "z ≤ 2 (≥ 0.90)",
    "z ≤ 1",
    "z ≤ 2 where abs(log K) ≤ 5 (n)",
    "decision agreement at 3 (≥ 0.97)",
    "median error clf / dynesty",
    "RMS (mean) clf − exact",
    "abs(exact log K) median / max",
    "targets",
]


def pair_row(result: dict) -> list[str]:
    """Summarize one pair's run in place and give its table row."""
    result |= summarize(result["datasets"])
    ece = ", ".join(f"{m} {v:.3f}" for m, v in result["ece"].items())
    return table_row(result["pair"], result, f"{result['accuracy']:.3f}", ece)


def print_summary(path: str) -> None:
    """The table of an earlier run's JSON, summarized with this script's summary."""
    if not Path(path).is_file():
        raise SystemExit(f"--summary-of: no file {path}")
    rows = []
    for result in json.loads(Path(path).read_text())["results"]:
        if result.get("pair") == "all" or not result.get("datasets"):
            continue
        rows.append(pair_row(result))
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        by_model = {}
        for d in result["datasets"]:
            by_model.setdefault(d["model"], []).append(d)
        near = ", ".join(
            f"{m} {reference_decisions(rows_m)['share_exact_near']:.2f}"
            for m, rows_m in by_model.items()
        )
        print(
            f"# {result['pair']}: {result['n_refined']} references refined, "
            f"{result['reference_flips']} changed decision; decisions on the "
            f"{result['n_settled']} datasets the reference settles: "
            f"{fmt(result['decision_agreement_settled'])}; on the {result['n_clf_settled']} "
            f"the classifier's error bar settles: {fmt(result['decision_agreement_clf_settled'])}"
            f" (misses flagged: {result['misses_flagged']}); RMS error at 2 < abs(exact) < 4: "
            f"{fmt(result['rms_difference_near'])}; exact log K within {NEAR} of the threshold "
            f"by model: {near}"
        )
    print()
    print(markdown_table(HEADER, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--n-per-model", type=int, nargs="+", default=[8_000, 30_000, 10_000])
    parser.add_argument("--datasets", type=int, default=30, help="test datasets per pair")
    parser.add_argument("--nlive", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=1000, help="simulations per model")
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=60, help="0: early stopping only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, a smoke test")
    parser.add_argument("--out", default=None, help="JSON results (written after each dataset)")
    parser.add_argument(
        "--deadline",
        default=None,
        help="HH:MM (local time): start no test dataset after it; the table says how many ran",
    )
    parser.add_argument(
        "--exact-from", default=None, help="JSON of an earlier run: reuse its exact log K"
    )
    parser.add_argument(
        "--mc-options", type=json.loads, default={}, help="JSON: ModelComparison options"
    )
    parser.add_argument(
        "--sim-options", type=json.loads, default={}, help="JSON: simulator options"
    )
    parser.add_argument(
        "--refine-nlive",
        type=int,
        default=0,
        help="rerun dynesty with this many live points where the exact log K is within "
        "2 errors of the decision threshold (0: never)",
    )
    parser.add_argument(
        "--importance",
        type=int,
        default=0,
        help="refine each exact dynesty log Z by this many importance-sampling draws "
        "(errors of ~0.01 nats; --refine-nlive is then not needed and not used)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help="folder of trained classifiers: <pair>_<n>.pt is loaded if there, else saved",
    )
    parser.add_argument(
        "--summary-of",
        default=None,
        help="JSON of an earlier run: print its table again (with today's summary) and exit",
    )
    parser.add_argument(
        "--figures", default=None, help="folder of the reliability plots (default: that of --out)"
    )
    args = parser.parse_args()
    if args.summary_of:
        print_summary(args.summary_of)
        return
    if args.figures is None:
        args.figures = str(Path(args.out).parent) if args.out else ""
    n_per_model = args.n_per_model * len(args.pairs) if len(args.n_per_model) == 1 else None
    if n_per_model is None:
        if len(args.n_per_model) == len(args.pairs):
            n_per_model = args.n_per_model
        elif len(args.n_per_model) == len(PAIRS):  # defaults in the order of PAIRS
            n_per_model = [args.n_per_model[list(PAIRS).index(p)] for p in args.pairs]
        else:
            parser.error("--n-per-model: one value, or one per pair")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(f"# model_comparison_physics on {machine()}", flush=True)
    print(f"# {vars(args)}", flush=True)
    deadline = None
    if args.deadline:
        hour, minute = (int(v) for v in args.deadline.split(":"))
        now = datetime.datetime.now()
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if deadline < now:
            deadline += datetime.timedelta(days=1)
    states = {}
    for pair, n in zip(args.pairs, n_per_model, strict=True):
        budget = {
            "n_per_model": n,
            "datasets": args.datasets,
            "nlive": args.nlive,
            "calibration": args.calibration,
            "max_epochs": args.max_epochs,
        }
        if args.quick:
            budget = dict(QUICK)
        states[pair] = prepare_pair(pair, args, budget)
    runs = [state["result"] for state in states.values()]
    # Test datasets round-robin over the pairs, so that a deadline cuts every pair alike.
    planned = max(len(state["tests"]) for state in states.values())
    for j in range(planned):
        if deadline is not None and datetime.datetime.now() > deadline:
            print(f"# deadline {args.deadline} reached: stopped after {j} datasets per pair")
            break
        for pair, state in states.items():
            if j < len(state["tests"]):
                state["result"]["datasets"].append(check_dataset(pair, state, j, args))
        report(HEADER, [], args.out, args, runs)  # JSON so far
    rows = []
    for result in runs:
        rows.append(pair_row(result))
    if len(runs) > 1:
        everything = [d for r in runs for d in r["datasets"]]
        overall = summarize(everything)
        rows.append(table_row("**all**", overall, "-", "-"))
        runs.append({"pair": "all", **overall})
    print(f"\nz = abs(classifier - exact) / sqrt(err_clf^2 + err_dynesty^2); agree: z <= {AGREE}")
    report(HEADER, rows, args.out, args, runs)


if __name__ == "__main__":
    main()
