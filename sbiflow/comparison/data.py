"""The inputs of model comparison: prior model probabilities and simulations per model."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbiflow.simulate import simulate

__all__ = ["check_simulations", "model_prior", "simulate_models"]


def model_prior(names: list[str], prior_probs: dict[str, float] | Sequence[float] | None) -> Tensor:
    """Prior model probabilities ``(M,)`` in the order of ``names``, normalized, float64.

    Args:
        names: Model names.
        prior_probs: ``{name: p}``, a sequence in model order, or ``None`` (equal).
    """
    if prior_probs is None:
        return torch.full((len(names),), 1.0 / len(names), dtype=torch.float64)
    if isinstance(prior_probs, dict):
        unknown = sorted(set(prior_probs) - set(names))
        missing = [n for n in names if n not in prior_probs]
        if unknown or missing:
            raise ValueError(
                f"prior_probs must give each model one probability; unknown {unknown}, "
                f"missing {missing} (models: {names})."
            )
        prior_probs = [prior_probs[n] for n in names]
    p = torch.as_tensor(prior_probs, dtype=torch.float64).flatten()
    if p.shape[0] != len(names) or not bool(torch.isfinite(p).all() & (p > 0).all()):
        raise ValueError(f"prior_probs must hold {len(names)} positive numbers, got {prior_probs}.")
    return p / p.sum()


def simulate_models(
    simulators: dict[str, Any], n: int, seed: int, tag: int, workers: int, progress: bool
) -> dict[str, Tensor]:
    """Simulate ``n`` x per model through :func:`sbiflow.simulate`.

    Model ``i`` gets the seed ``SeedSequence([seed, i, tag])``: models never share noise,
    and different ``tag`` (training, calibration) never share simulations.

    Returns:
        ``{name: x (n_valid, *x_shape)}``.
    """
    out = {}
    for i, (name, sim) in enumerate(simulators.items()):
        child = int(np.random.SeedSequence([seed, i, tag]).generate_state(1)[0])
        out[name] = simulate(sim, n, seed=child, workers=workers, progress=progress)[1]
    return out


def check_simulations(
    x: Any, names: list[str], x_shape: tuple[int, ...] | None = None
) -> dict[str, Tensor]:
    """Simulations per model as float32 of one shape; rows with NaN/inf left out (warned).

    Args:
        x: ``{name: (N_m, *x_shape)}`` with one entry per model.
        names: Model names.
        x_shape: The shape every simulation must have (that of training), or ``None``.

    Returns:
        ``{name: x}`` in the order of ``names``.
    """
    if not isinstance(x, dict) or set(x) != set(names):
        got = sorted(x) if isinstance(x, dict) else type(x).__name__
        raise ValueError(f"x must be a dict with one entry per model {names}, got {got}.")
    xs = {n: torch.as_tensor(x[n], dtype=torch.float32) for n in names}
    xs = {n: v.unsqueeze(1) if v.ndim == 1 else v for n, v in xs.items()}
    shapes = {n: tuple(v.shape[1:]) for n, v in xs.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"The models' simulations differ in shape (per simulation): {shapes}. Model "
            "comparison needs every model to produce x of the same shape."
        )
    if x_shape is not None and shapes[names[0]] != tuple(x_shape):
        raise ValueError(
            f"The simulations have shape {shapes[names[0]]} per simulation; the classifier "
            f"was trained on {tuple(x_shape)}."
        )
    for n, v in xs.items():
        finite = torch.isfinite(v.flatten(start_dim=1)).all(dim=1)
        if not bool(finite.any()):
            raise ValueError(f"Every simulation of model {n!r} holds NaN or inf.")
        if not bool(finite.all()):
            warnings.warn(
                f"{int((~finite).sum())} of {v.shape[0]} simulations of model {n!r} hold NaN "
                "or inf and were left out.",
                RuntimeWarning,
                stacklevel=3,
            )
            xs[n] = v[finite]
    return xs
