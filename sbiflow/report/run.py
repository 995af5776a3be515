"""Sections of the report of a ``sbiflow run`` folder (NPE or NLE).

Each function takes the run's ``summary.json`` dictionary and its folder and returns a
section, or ``None`` when that part did not run (no empty sections).
"""

from __future__ import annotations

from typing import Any

from sbiflow.report.html import figure, fmt, key_values, note, row, section, table

__all__ = ["run_sections", "run_title"]


def run_title(summary: dict[str, Any]) -> str:
    """``sbiflow run: two_moons, nsf posterior``."""
    what = "likelihood emulator" if summary.get("method") == "nle" else "posterior"
    return f"sbiflow run: {summary.get('simulator')}, {summary.get('estimator')} {what}"


def run_sections(summary: dict[str, Any], folder: str) -> list[str | None]:
    """Every section of a run's report, in reading order (``None`` for those left out)."""
    return [
        overview(summary),
        posterior(summary, folder),
        calibration(summary, folder),
        predictive(summary, folder),
        evidence(summary, folder),
        mcmc(summary, folder),
        training(summary, folder),
        diffusion(summary, folder),
    ]


def overview(summary: dict[str, Any]) -> str | None:
    """Simulations, training, timings, C2ST, and the per-parameter posterior table."""
    method = {"npe": "NPE (neural posterior)", "nle": "NLE (neural likelihood)"}
    facts: list[tuple[str, Any]] = [
        ("simulator", summary.get("simulator")),
        ("method", method.get(summary.get("method", ""), summary.get("method"))),
        ("estimator", summary.get("estimator")),
    ]
    if "num_simulations" in summary:
        valid = summary.get("num_valid_simulations", summary["num_simulations"])
        facts.append(("simulations (valid / run)", f"{valid:,} / {summary['num_simulations']:,}"))
    if "epochs" in summary:
        facts.append(("epochs (best kept)", f"{summary['epochs']} ({summary.get('best_epoch')})"))
    if "best_validation_loss" in summary:
        facts.append(("best validation loss", summary["best_validation_loss"]))
    for step, seconds in summary.get("seconds", {}).items():
        facts.append((f"time: {step} (s)", float(seconds)))
    if "c2st_vs_reference" in summary:
        facts.append(("C2ST vs reference (0.5: same)", summary["c2st_vs_reference"]))
    parameters = None
    stats = summary.get("posterior", {})
    if stats:
        has_truth = any("true" in s for s in stats.values())
        header = ["parameter", *(["truth"] if has_truth else []), "mean", "std", "5%", "95%"]
        rows = [
            [name, *([s.get("true")] if has_truth else []), s["mean"], s["std"], s["q05"], s["q95"]]
            for name, s in stats.items()
        ]
        parameters = table(header, rows)
    return section("Summary", [key_values(facts), parameters])


def posterior(summary: dict[str, Any], folder: str) -> str | None:
    """The corner plot, over the reference posterior where the simulator has one."""
    caption = (
        "posterior samples (blue); where drawn, the simulator's reference posterior (grey) "
        "and the true parameters (red)"
    )
    return section("Posterior", [figure(folder, "corner.png", caption)])


def calibration(summary: dict[str, Any], folder: str) -> str | None:
    """The post-fit calibration check, and coverage and SBC ranks on fresh simulations."""
    parts: list[str | None] = []
    check = summary.get("calibration_check")
    if check:
        parts.append("<h3>Check after training</h3>")
        parts.append(
            table(
                ["credibility level", "expected coverage"],
                zip(check["levels"], check["coverage"], strict=True),
            )
        )
        verdict = "calibrated" if check["calibrated"] else "OVERCONFIDENT"
        parts.append(
            note(
                f"{verdict}, on {check['num_simulations']:,} {check.get('source', '')}"
                + (f"; balance {fmt(check['balance'])}" if "balance" in check else "")
                + (
                    f"; widened by a temperature of {fmt(check['temperature'])}"
                    if "temperature" in check
                    else ""
                ),
                "good" if check["calibrated"] else "bad",
            )
        )
        if not check["calibrated"]:
            parts.append(
                note(
                    "The credible regions miss the truth more often than they claim: simulate "
                    'more, or train an ensemble (estimator kind = "ensemble") or with a larger '
                    "balance."
                )
            )
    coverage = summary.get("coverage")
    if coverage:
        parts.append("<h3>Coverage and ranks on fresh simulations</h3>")
        parts.append(table(["credibility level", "expected coverage"], coverage.items()))
        coverage_png = "coverage of HPD regions; on the diagonal: calibrated"
        ranks_png = "SBC ranks of the true parameter; flat: calibrated"
        parts.append(
            row(
                [
                    figure(folder, "coverage.png", coverage_png),
                    figure(folder, "ranks.png", ranks_png),
                ]
            )
        )
    return section("Calibration", parts)


def predictive(summary: dict[str, Any], folder: str) -> str | None:
    """The posterior predictive check: simulations at posterior draws against x_o."""
    check = summary.get("posterior_predictive")
    if not check:  # a figure an earlier run left in the folder is not shown
        return None
    if "skipped" in check:
        return section("Posterior predictive check", [note(f"Not run: {check['skipped']}")])
    facts = [
        ("posterior draws simulated", check["draws"]),
        ("p-value (Mahalanobis distance of x_o)", check["p_value"]),
    ]
    atypical = "x_o is atypical of the fitted model (p < 0.05)."
    caption = "the simulator at posterior draws (5-95% and 25-75% ranges) and x_o (black)"
    return section(
        "Posterior predictive check",
        [
            key_values(facts),
            note(atypical, "bad") if check["p_value"] < 0.05 else None,
            figure(folder, "ppc.png", caption),
        ],
    )


def evidence(summary: dict[str, Any], folder: str) -> str | None:
    """The evidence from dynesty (and the exact log Z where known), with its run plot."""
    ev = summary.get("evidence")
    if not ev:
        return None
    facts = [("log Z (dynesty)", f"{fmt(ev['log_z'])} ± {fmt(ev['log_z_err'], 2)}")]
    if "log_z_exact" in ev:
        facts.append(("log Z (exact)", ev["log_z_exact"]))
        pull = (ev["log_z"] - ev["log_z_exact"]) / max(ev["log_z_err"], 1e-12)
        facts.append(("difference (dynesty errors)", pull))
    if "information_nats" in ev:
        facts.append(("information (nats)", ev["information_nats"]))
    caption = (
        "dynesty run plot: live points, likelihood, importance weight and evidence against "
        "-ln X (the exact log Z in red where known)"
    )
    return section(
        "Evidence (nested sampling)",
        [key_values(facts), figure(folder, "nested_run.png", caption)],
    )


def mcmc(summary: dict[str, Any], folder: str) -> str | None:
    """The emcee run: walkers, steps, autocorrelation, acceptance, and the traces."""
    chain = summary.get("mcmc")
    if not chain:
        return None
    facts = [
        ("walkers x steps", f"{chain['walkers']} x {chain['steps']}"),
        ("autocorrelation time (steps)", max(chain["autocorrelation_time"])),
        ("burn-in / thin (steps)", f"{chain['burn_in']} / {chain['thin']}"),
        ("acceptance fraction", chain["acceptance_fraction"]),
        ("converged", chain["converged"]),
    ]
    unconverged = "The chain did not meet its run-length criterion."
    return section(
        "MCMC (emcee)",
        [
            key_values(facts),
            None if chain["converged"] else note(unconverged, "bad"),
            figure(folder, "traces.png", "walker traces; burn-in shaded"),
        ],
    )


def training(summary: dict[str, Any], folder: str) -> str | None:
    """Loss curves."""
    caption = "training and validation loss per epoch; dashed: the epoch kept"
    return section("Training", [figure(folder, "loss.png", caption)])


def diffusion(summary: dict[str, Any], folder: str) -> str | None:
    """A diffusion-posterior result: ``summary["diffusion"]`` (flat) and ``diffusion.png``."""
    result = summary.get("diffusion", {})
    parts = [key_values(result.items()) if result else None]
    parts.append(figure(folder, "diffusion.png", "diffusion posterior"))
    return section("Diffusion posterior", parts)
