"""Plots a physicist expects: corner plots (the corner package), loss curves, calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files, not windows: works on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from sbiflow.diagnostics import CoverageResult, PredictiveCheck, SBCResult  # noqa: E402
from sbiflow.training import TrainingHistory  # noqa: E402

__all__ = [
    "corner_plot",
    "coverage_plot",
    "loss_plot",
    "nested_run_plot",
    "predictive_plot",
    "rank_plot",
    "trace_plot",
]


def corner_plot(
    samples: Tensor | np.ndarray,
    labels: Sequence[str] | None = None,
    truths: Tensor | np.ndarray | None = None,
    reference: Tensor | np.ndarray | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Corner plot of posterior samples, optionally over reference samples and the truth.

    Args:
        samples: Posterior samples, shape ``(N, D)``.
        labels: Parameter labels (LaTeX allowed), length ``D``.
        truths: True parameters, shape ``(D,)``, drawn as lines.
        reference: Reference posterior samples ``(M, D)``, drawn in grey underneath.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    import corner
    from matplotlib.lines import Line2D

    samples = np.asarray(samples, dtype=np.float64)
    sets = [samples] if reference is None else [samples, np.asarray(reference, np.float64)]
    # Ranges from the central 99% of every sample set (and the truth): one stray draw in
    # the tails no longer squashes the bulk of a parameter into a spike.
    low = np.min([np.quantile(s, 0.005, axis=0) for s in sets], axis=0)
    high = np.max([np.quantile(s, 0.995, axis=0) for s in sets], axis=0)
    if truths is not None:
        t = np.asarray(truths, dtype=np.float64)
        low, high = np.minimum(low, t), np.maximum(high, t)
    pad = 0.08 * (high - low) + 1e-12
    style = {"bins": 50, "smooth": 1.0, "range": list(zip(low - pad, high + pad, strict=True))}
    figure = None
    if reference is not None:
        figure = corner.corner(
            sets[1],
            color="0.6",
            labels=labels,
            plot_datapoints=False,
            plot_density=False,
            hist_kwargs={"density": True},
            **style,
        )
    figure = corner.corner(
        samples,
        fig=figure,
        labels=labels,
        color="C0",
        plot_datapoints=False,
        **style,
        truths=None if truths is None else np.asarray(truths, dtype=np.float64),
        truth_color="C3",
        hist_kwargs={"density": True},
        show_titles=True,  # median and 68% interval of the posterior samples
        title_fmt=".3g",
    )
    handles = [Line2D([], [], color="C0", label="posterior samples")]
    if reference is not None:
        handles.append(Line2D([], [], color="0.6", label="reference"))
    if truths is not None:
        handles.append(Line2D([], [], color="C3", label="truth"))
    if len(handles) > 1:
        figure.legend(handles=handles, loc="upper right", frameon=False)
    if path is not None:
        figure.savefig(os.fspath(path), dpi=120, bbox_inches="tight")
    return figure


def loss_plot(history: TrainingHistory, path: str | os.PathLike | None = None) -> Figure:
    """Training and validation loss per epoch, with the restored best epoch marked.

    Args:
        history: The ``history`` of a trained estimator.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    figure, axis = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(len(history.train_loss))
    axis.plot(epochs, history.train_loss, label="training")
    axis.plot(epochs, history.val_loss, label="validation")
    if history.best_epoch >= 0:
        axis.axvline(history.best_epoch, color="0.5", ls="--", lw=1, label="best (kept)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (mean −log q)")
    axis.legend()
    figure.tight_layout()
    if path is not None:
        figure.savefig(os.fspath(path), dpi=120)
    return figure


def _save(figure: Figure, path: str | os.PathLike | None) -> Figure:
    figure.tight_layout()
    if path is not None:
        figure.savefig(os.fspath(path), dpi=120)
    return figure


def coverage_plot(result: CoverageResult, path: str | os.PathLike | None = None) -> Figure:
    """Expected coverage of HPD regions against the credibility level.

    On the diagonal, the posterior is calibrated; below, overconfident; above, conservative.
    The grey band is the 95% binomial range of a calibrated posterior over as many tests.

    Args:
        result: From ``sbiflow.diagnostics.expected_coverage``.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    hpd = np.sort(result.hpd_levels.numpy())
    n = len(hpd)
    alpha = np.linspace(0.0, 1.0, 201)
    empirical = np.searchsorted(hpd, alpha, side="right") / n
    band = 1.96 * np.sqrt(alpha * (1 - alpha) / n)
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.fill_between(alpha, alpha - band, alpha + band, color="0.85", label="calibrated ±95%")
    axis.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
    axis.plot(alpha, empirical, color="C0", label="expected coverage")
    axis.scatter(result.levels.numpy(), result.coverage.numpy(), color="C3", zorder=3)
    axis.set_xlabel("credibility level")
    axis.set_ylabel("coverage of the true parameter")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left")
    return _save(figure, path)


def rank_plot(
    result: SBCResult,
    labels: Sequence[str] | None = None,
    bins: int = 20,
    path: str | os.PathLike | None = None,
) -> Figure:
    """SBC rank histograms, one panel per parameter, over the 99% band of uniform ranks.

    Args:
        result: From ``sbiflow.diagnostics.sbc``.
        labels: Parameter labels.
        bins: Histogram bins.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    from scipy import stats

    ranks = result.ranks.numpy()
    n, dim = ranks.shape
    low, high = stats.binom.ppf([0.005, 0.995], n, 1.0 / bins)
    # at least 7 inches wide, so the two-line title fits over one or two panels
    figure, axes = plt.subplots(1, dim, figsize=(max(2.6 * dim, 7.0), 2.6), squeeze=False)
    for d, axis in enumerate(axes[0]):
        axis.axhspan(low, high, color="0.85")
        axis.axhline(n / bins, color="0.4", lw=1)
        axis.hist(ranks[:, d], bins=bins, range=(0, result.num_posterior_samples), color="C0")
        name = labels[d] if labels else f"parameter {d + 1}"
        axis.set_xlabel(f"rank of the truth, {name}")
        if d == 0:
            axis.set_ylabel("simulations")
    figure.suptitle(
        f"SBC ranks among {result.num_posterior_samples} posterior samples, {n} simulations\n"
        "(grey: 99% band of uniform ranks)",
        fontsize=9,
    )
    figure.tight_layout()
    return _save(figure, path)


def predictive_plot(
    check: PredictiveCheck, max_elements: int = 40, path: str | os.PathLike | None = None
) -> Figure:
    """Posterior predictive bands per data element, with the observation on top.

    The simulator's 5-95% (light) and 25-75% (dark) predictive ranges in blue, the
    emulator's (if checked) in orange beside them, x_o in black.

    Args:
        check: From ``sbiflow.diagnostics.posterior_predictive``.
        max_elements: Plot at most this many (flattened) elements of x.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    sets = [("simulator", check.simulated, "C0", -0.15)]
    if check.emulated is not None:
        sets.append(("emulator", check.emulated, "C1", 0.15))
    x_o = check.x_o.flatten().numpy()[:max_elements]
    index = np.arange(len(x_o))
    figure, axis = plt.subplots(figsize=(max(4.0, 0.25 * len(x_o) + 2), 3.5))
    for name, draws, color, offset in sets:
        q = np.quantile(
            draws.flatten(start_dim=1).numpy()[:, : len(x_o)], [0.05, 0.25, 0.75, 0.95], 0
        )
        axis.vlines(index + offset, q[0], q[3], color=color, alpha=0.35, lw=4)
        axis.vlines(index + offset, q[1], q[2], color=color, lw=4, label=f"{name} predictive")
    axis.scatter(index, x_o, color="k", s=12, zorder=3, label="observation")
    axis.set_xlabel("element of x")
    axis.set_ylabel("x")
    axis.set_title(f"predictive p-value {check.p_value:.2f}")
    axis.legend(fontsize="small")
    return _save(figure, path)


def trace_plot(
    chain: np.ndarray,
    labels: Sequence[str] | None = None,
    burn_in: int = 0,
    max_walkers: int = 32,
    path: str | os.PathLike | None = None,
) -> Figure:
    """MCMC walker traces, one panel per parameter, with the burn-in shaded.

    Args:
        chain: The full chain, burn-in included, shape ``(steps, walkers, D)`` (emcee's
            ``get_chain()``; ``MCMCResult.chain``).
        labels: Parameter labels, length ``D``.
        burn_in: Steps discarded at the start of every walker.
        max_walkers: Draw at most this many walkers (the first ones), to keep traces legible.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    chain = np.asarray(chain)
    steps, walkers, dim = chain.shape
    figure, axes = plt.subplots(dim, 1, figsize=(7, 1.5 * dim + 0.7), sharex=True, squeeze=False)
    for d, axis in enumerate(axes[:, 0]):
        axis.plot(chain[:, :max_walkers, d], color="C0", alpha=0.25, lw=0.6)  # (steps, W)
        if burn_in > 0:
            axis.axvspan(0, burn_in, color="0.88", zorder=0)
        axis.set_ylabel(labels[d] if labels else f"parameter {d + 1}")
    axes[-1, 0].set_xlabel("step")
    shown = min(walkers, max_walkers)
    axes[0, 0].set_title(
        f"{shown} of {walkers} walkers, {steps} steps (grey: burn-in, {burn_in} steps)",
        fontsize=9,
    )
    return _save(figure, path)


def nested_run_plot(
    results: object, log_z_exact: float | None = None, path: str | os.PathLike | None = None
) -> Figure:
    """The run plot of nested sampling: live points, likelihood, weights and evidence.

    A thin wrapper of ``dynesty.plotting.runplot``, against -ln X (the prior volume).

    Args:
        results: dynesty's ``Results`` (``NestedResult.result``).
        log_z_exact: The exact log evidence, drawn as a line on the evidence panel.
        path: If given, the figure is saved there.

    Returns:
        The matplotlib figure.
    """
    from dynesty import plotting

    figure, _ = plotting.runplot(results, lnz_truth=log_z_exact)
    figure.set_size_inches(7, 7)
    return _save(figure, path)
