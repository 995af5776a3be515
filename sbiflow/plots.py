"""Plots a physicist expects: corner plots (the corner package) and loss curves."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files, not windows: works on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from sbiflow.training import TrainingHistory  # noqa: E402

__all__ = ["corner_plot", "loss_plot"]


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

    samples = np.asarray(samples, dtype=np.float64)
    low, high = np.quantile(samples, [0.0005, 0.9995], axis=0)
    pad = 0.05 * (high - low) + 1e-12
    style = {"bins": 50, "smooth": 1.0, "range": list(zip(low - pad, high + pad, strict=True))}
    figure = None
    if reference is not None:
        figure = corner.corner(
            np.asarray(reference, dtype=np.float64),
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
        show_titles=reference is None,
    )
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
