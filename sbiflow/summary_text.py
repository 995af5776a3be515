"""The plain-text summaries that ``sbiflow run`` and ``sbiflow compare`` print and write."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["comparison_text", "error_kind", "evidence_strength", "run_text"]

# Kass & Raftery (1995), on the natural-log Bayes factor: upper bound of |log K| -> words.
STRENGTH_SCALE = ((1.0, "not worth more than a bare mention"), (3.0, "positive"), (5.0, "strong"))
DECISION_THRESHOLD = 3.0  # |log K| above which a model is called strongly favoured
SETTLED_SIGMAS = 2.0  # a decision is settled when the threshold is this many errors away


def error_kind(summary: dict[str, Any]) -> str:
    """What the ± of a comparison's log Bayes factors is: the jackknife error or a spread."""
    return "jackknife error" if summary.get("resampling") == "jackknife" else "ensemble spread"


def evidence_strength(log_k: float, a: str, b: str, err: float | None = None) -> str:
    """Words for a log Bayes factor of ``a`` over ``b`` on the Kass & Raftery scale.

    Args:
        log_k: Natural-log Bayes factor of ``a`` over ``b``.
        a: Name of the model in the numerator.
        b: Name of the model in the denominator.
        err: Its error (one sigma), or None.

    Returns:
        E.g. ``"strong for a"``; with ``"; within 2 errors of |log K| = 3: not settled"``
        appended when the threshold lies within two errors of log K.

    Example:
        >>> evidence_strength(3.5, "cusped", "cored", err=0.3)
        'strong for cusped; within 2 errors of |log K| = 3: not settled'
    """
    if math.isnan(log_k):
        return "undefined (log K is NaN)"
    size = abs(log_k)
    words = next((w for bound, w in STRENGTH_SCALE if size <= bound), "very strong")
    text = words if size <= STRENGTH_SCALE[0][0] else f"{words} for {a if log_k > 0 else b}"
    if err is not None and abs(size - DECISION_THRESHOLD) <= SETTLED_SIGMAS * err:
        threshold = f"|log K| = {DECISION_THRESHOLD:g}"
        text += f"; within {SETTLED_SIGMAS:g} errors of {threshold}: not settled"
    return text


def run_text(summary: dict[str, Any]) -> str:
    """``summary.txt`` of ``sbiflow run``, from its ``summary.json`` dictionary."""
    seconds = summary["seconds"]
    lines = [
        f"sbiflow run: {summary['simulator']}, {summary['estimator']} "
        + ("likelihood emulator" if summary["method"] == "nle" else "posterior"),
        f"simulations: {summary['num_valid_simulations']} valid of {summary['num_simulations']}",
        f"training: {summary['epochs']} epochs, best epoch {summary['best_epoch']}, "
        f"validation loss {summary['best_validation_loss']:.4f}",
        f"time: simulate {seconds['simulate']} s, train {seconds['train']} s, "
        f"sample {seconds['sample']} s",
    ]
    if "c2st_vs_reference" in summary:
        lines.append(
            f"C2ST against the reference posterior: {summary['c2st_vs_reference']:.3f} "
            "(0.5: indistinguishable)"
        )
    if "mcmc" in summary:
        chain = summary["mcmc"]
        tau = max(chain["autocorrelation_time"])
        lines.append(
            f"emcee: {chain['walkers']} walkers x {chain['steps']} steps, autocorrelation time "
            f"{tau:.1f}, acceptance {chain['acceptance_fraction']:.2f}"
            + ("" if chain["converged"] else " (NOT converged: see the warning)")
        )
    if "evidence" in summary:
        evidence = summary["evidence"]
        line = f"dynesty: log Z = {evidence['log_z']:.3f} ± {evidence['log_z_err']:.3f}"
        if "log_z_exact" in evidence:
            line += f" (exact: {evidence['log_z_exact']:.3f})"
        lines.append(line)
    if "calibration_check" in summary:
        check = summary["calibration_check"]
        lines.append(f"calibration check after training: {check['summary']}")
        if "temperature" in check:
            lines.append(
                f"  the posterior was widened by a temperature of {check['temperature']:.3f} "
                "(docs/calibration.md)"
            )
        if not check["calibrated"]:
            lines.append(
                "  the posterior is overconfident: simulate more, or train an ensemble "
                '(estimator kind = "ensemble") or with a larger balance'
            )
    if "coverage" in summary:
        pairs = ", ".join(f"{level}: {value:.3f}" for level, value in summary["coverage"].items())
        lines.append(f"expected coverage (level: measured): {pairs}")
    lines += [
        "",
        f"{'parameter':<16}{'mean':>10}{'std':>10}{'5%':>10}{'95%':>10}{'true':>10}",
    ]
    for name, stats in summary["posterior"].items():
        true = f"{stats['true']:>10.4f}" if "true" in stats else f"{'':>10}"
        lines.append(
            f"{name:<16}{stats['mean']:>10.4f}{stats['std']:>10.4f}{stats['q05']:>10.4f}"
            f"{stats['q95']:>10.4f}{true}"
        )
    return "\n".join(lines) + "\n"


def comparison_text(summary: dict[str, Any]) -> str:
    """``summary.txt`` of ``sbiflow compare``, from its ``summary.json`` dictionary."""
    models = ", ".join(f"{n} ({m['simulator']})" for n, m in summary["models"].items())
    seconds = ", ".join(f"{k} {v} s" for k, v in summary["seconds"].items())
    lines = [
        f"sbiflow compare: {models}",
        f"classifier: {summary['loss']}, ensemble {summary['ensemble']}, "
        f"{summary['n_per_model']} simulations per model, {summary['epochs']} epochs, "
        f"validation loss {summary['best_validation_loss']:.4f}",
        f"time: {seconds}",
        f"data: {summary['observation']}",
        "",
        "posterior model probabilities (prior: "
        + ", ".join(f"{n} {p:.3g}" for n, p in summary["prior_probs"].items())
        + ")",
    ]
    lines += [f"  {name:<16}{p:.4f}" for name, p in summary["probabilities"].items()]
    lines.append("log Bayes factors")
    for pair in summary["log_bayes_factors"]:
        err = "" if pair["err"] is None else f" ± {pair['err']:.3f} ({error_kind(summary)})"
        strength = evidence_strength(pair["log_k"], pair["a"], pair["b"], pair["err"])
        lines.append(f"  log K({pair['a']} / {pair['b']}) = {pair['log_k']:.3f}{err}: {strength}")
    miss = summary["misspecification"]
    lines.append(
        f"misspecification: p-value {miss['p_value']:.3g}, score {miss['score']:.2f} "
        + (
            "-> FLAGGED: the data look like none of the models"
            if miss["flagged_at_0.05"]
            else "(typical of at least one model at the 5% level)"
        )
    )
    cal = summary["calibration"]
    lines.append(
        f"calibration on {cal['simulations_per_model']} fresh simulations per model: accuracy "
        f"{cal['accuracy']:.3f}, ECE " + ", ".join(f"{n} {e:.3f}" for n, e in cal["ece"].items())
    )
    if "crosscheck" in summary:
        lines.append("nested-sampling cross-check (log K, error)")
        for pair in summary["crosscheck"]["log_bayes_factors"]:
            parts = [
                f"{s} {pair[s]['log_k']:.3f} ± {pair[s]['err']:.3f}"
                for s in ("closed_form", "exact", "emulator")
                if s in pair
            ]
            tension = "" if pair["tension"] is None else f"; tension {pair['tension']:.1f} sigma"
            lines.append(f"  {pair['a']} / {pair['b']}: " + ", ".join(parts) + tension)
    return "\n".join(lines) + "\n"
