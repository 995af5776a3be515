"""Reliability of posterior model probabilities: curves, expected calibration error, plot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Calibration", "calibration_figure", "reliability"]


@dataclass
class Calibration:
    """The result of :meth:`ModelComparison.calibration`.

    Attributes:
        ece: Expected calibration error per model: the bin-weighted mean of
            ``|observed frequency - mean predicted probability|``.
        curves: Per model, ``(predicted, observed, weight)``, each ``(bins,)``: mean
            predicted probability, frequency of the model and share of the data in each bin
            (NaN where a bin is empty).
        accuracy: Share of datasets whose most probable model is the true one (weighted to
            the prior model probabilities).
        figure: The reliability diagram, or None if not drawn.
    """

    ece: dict[str, float]
    curves: dict[str, tuple[Tensor, Tensor, Tensor]]
    accuracy: float
    figure: Figure | None = None


def reliability(
    probabilities: Tensor, labels: Tensor, weights: Tensor, names: list[str], bins: int = 10
) -> Calibration:
    """Reliability curves and ECE of predicted model probabilities.

    Args:
        probabilities: Predicted probabilities ``(N, M)``.
        labels: True model index of each dataset ``(N,)``.
        weights: Weight of each dataset ``(N,)``: the prior probability of its model over
            that model's share of the datasets, so that the weighted data follow the prior.
        names: Model names, ``M`` of them.
        bins: Equal-width probability bins on [0, 1].

    Returns:
        The calibration result (no figure).
    """
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    weights = weights.double() / weights.sum()
    ece, curves = {}, {}
    for m, name in enumerate(names):
        p = probabilities[:, m].double()
        hit = (labels == m).double()
        index = torch.bucketize(p, edges[1:-1], right=True)  # (N,) in 0..bins-1
        mass = torch.zeros(bins, dtype=torch.float64).index_add(0, index, weights)
        predicted = torch.zeros(bins, dtype=torch.float64).index_add(0, index, weights * p)
        observed = torch.zeros(bins, dtype=torch.float64).index_add(0, index, weights * hit)
        ece[name] = float((observed - predicted).abs().sum())
        empty = mass == 0
        predicted = torch.where(empty, torch.nan, predicted / mass.clamp_min(1e-300))
        observed = torch.where(empty, torch.nan, observed / mass.clamp_min(1e-300))
        curves[name] = (predicted, observed, mass)
    correct = (probabilities.argmax(dim=1) == labels).double()
    return Calibration(ece=ece, curves=curves, accuracy=float((weights * correct).sum()))


def calibration_figure(result: Calibration) -> Figure:
    """The reliability diagram: observed frequency against predicted probability per model."""
    from matplotlib.figure import Figure  # here: ``import sbiflow`` stays light

    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, (predicted, observed, _) in result.curves.items():
        keep = ~torch.isnan(predicted)
        ax.plot(
            predicted[keep].numpy(),
            observed[keep].numpy(),
            marker="o",
            markersize=3,
            label=f"{name} (ECE {result.ece[name]:.3f})",
        )
    ax.set_xlabel("predicted model probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"accuracy {result.accuracy:.3f}")
    ax.legend(fontsize=8)
    return figure
