"""Sections of the report of a ``sbiflow compare`` folder (model comparison).

Each function takes the comparison's ``summary.json`` dictionary and its folder and
returns a section, or ``None`` when that part did not run.
"""

from __future__ import annotations

import math
from typing import Any

from sbiflow.report.html import figure, fmt, key_values, note, section, table
from sbiflow.summary_text import error_kind, evidence_strength

__all__ = ["comparison_sections", "comparison_title"]

#: Sources of the nested-sampling cross-check, in the order of the table's columns.
SOURCES = ("closed_form", "exact", "emulator")


def comparison_title(summary: dict[str, Any]) -> str:
    """``sbiflow compare: cored, cusped``."""
    return "sbiflow compare: " + ", ".join(summary.get("models", summary["probabilities"]))


def comparison_sections(summary: dict[str, Any], folder: str) -> list[str | None]:
    """Every section of a comparison's report, in reading order."""
    return [
        overview(summary),
        probabilities(summary),
        misspecification(summary),
        calibration(summary, folder),
        crosscheck(summary),
        training(summary, folder),
    ]


def overview(summary: dict[str, Any]) -> str | None:
    """The models and the classifier: simulations, epochs, loss, timings."""
    models = summary.get("models", {})
    rows = [(name, spec.get("simulator"), _options(spec)) for name, spec in models.items()]
    facts: list[tuple[str, Any]] = [
        (label, summary[key])
        for key, label in (
            ("observation", "data"),
            ("loss", "classifier loss"),
            ("ensemble", "ensemble members"),
            ("n_per_model", "simulations per model"),
            ("epochs", "epochs"),
            ("best_epoch", "best epoch (kept)"),
            ("best_validation_loss", "best validation loss"),
        )
        if key in summary
    ]
    facts += [(f"time: {k} (s)", float(v)) for k, v in summary.get("seconds", {}).items()]
    model_table = table(["model", "simulator", "options"], rows) if rows else None
    return section("Summary", [model_table, key_values(facts)])


def _options(spec: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in spec.items() if k != "simulator")


def probabilities(summary: dict[str, Any]) -> str | None:
    """Posterior model probabilities and the log Bayes factor of every pair."""
    prior = summary.get("prior_probs", {})
    rows = [(name, prior.get(name), p) for name, p in summary["probabilities"].items()]
    parts = [table(["model", "prior probability", "posterior probability"], rows)]
    pairs = summary.get("log_bayes_factors", [])
    if pairs:
        parts.append(
            table(
                ["Bayes factor", "log K", f"± ({error_kind(summary)})", "K", "evidence"],
                [
                    (
                        f"{p['a']} / {p['b']}",
                        p["log_k"],
                        p.get("err"),
                        math.exp(p["log_k"]) if abs(p["log_k"]) < 700 else math.inf,
                        evidence_strength(p["log_k"], p["a"], p["b"], p.get("err")),
                    )
                    for p in pairs
                ],
            )
        )
    return section("Model probabilities and Bayes factors", parts)


def misspecification(summary: dict[str, Any]) -> str | None:
    """Whether the observation looks like any of the models at all."""
    miss = summary.get("misspecification")
    if not miss:
        return None
    parts = [key_values([("p-value", miss["p_value"]), ("score", miss["score"])])]
    if miss.get("flagged_at_0.05"):
        parts.append(note("FLAGGED at the 5% level: the data look like none of the models.", "bad"))
    else:
        parts.append(note("Typical of at least one model at the 5% level.", "good"))
    return section("Misspecification", parts)


def calibration(summary: dict[str, Any], folder: str) -> str | None:
    """Accuracy and expected calibration error on fresh simulations, reliability diagram."""
    cal = summary.get("calibration", {})
    parts = []
    if cal:
        facts = [
            ("fresh simulations per model", cal.get("simulations_per_model")),
            ("accuracy", cal.get("accuracy")),
        ]
        facts += [(f"ECE, {name}", value) for name, value in cal.get("ece", {}).items()]
        parts.append(key_values(facts))
    parts.append(
        figure(
            folder,
            "calibration.png",
            "reliability of the model probabilities; diagonal: calibrated",
        )
    )
    return section("Calibration", parts)


def crosscheck(summary: dict[str, Any]) -> str | None:
    """The classifier's log Bayes factors against nested-sampling evidences."""
    check = summary.get("crosscheck")
    if not check:
        return None
    sources = [s for s in SOURCES if any(s in p for p in check["log_bayes_factors"])]
    rows = []
    for pair in check["log_bayes_factors"]:
        classifier = fmt(pair["classifier"])
        if pair.get("classifier_err") is not None:
            classifier += f" ± {fmt(pair['classifier_err'], 2)}"
        nested = [
            f"{fmt(pair[s]['log_k'])} ± {fmt(pair[s]['err'], 2)}" if s in pair else None
            for s in sources
        ]
        tension = pair.get("tension")
        rows.append((f"{pair['a']} / {pair['b']}", classifier, *nested, tension))
    header = ["log K", "classifier", *(s.replace("_", " ") for s in sources), "tension (σ)"]
    return section("Nested-sampling cross-check", [table(header, rows)])


def training(summary: dict[str, Any], folder: str) -> str | None:
    """The classifier's loss curves."""
    caption = "classifier training and validation loss; dashed: the epoch kept"
    return section("Training", [figure(folder, "loss.png", caption)])
