"""``sbiflow compare CONFIG.toml``: the model-comparison workflow of a ``[models]`` config.

Simulate each model → train the classifier → model probabilities, Bayes factors,
calibration, misspecification and the nested-sampling cross-check.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch

from sbiflow.config import ConfigError, RunConfig
from sbiflow.report import write_report
from sbiflow.resolve import resolve
from sbiflow.summary_text import comparison_text

__all__ = ["compare"]


def compare(config: RunConfig) -> dict[str, Any]:
    """Run a model comparison (a configuration with ``[models]``) and write its outputs.

    Simulates ``comparison.n_per_model`` of each model, trains the classifier, and reports
    for the observation the posterior model probabilities, the log Bayes factor of every
    pair (with the ensemble's spread as its error when ``ensemble >= 2``) and the
    misspecification check; measures the calibration on fresh simulations; with
    ``comparison.crosscheck``, compares the Bayes factors with nested-sampling evidences.
    Outputs in ``config.output.directory``: ``calibration.png``, ``loss.png``, ``model.pt``,
    ``summary.json``, ``summary.txt`` and ``report.html`` (all of it on one page).

    Returns:
        The summary (also written to ``summary.json``).
    """
    import matplotlib.pyplot as plt

    import sbiflow
    from sbiflow.plots import loss_plot

    out = os.path.abspath(config.output.directory)
    os.makedirs(out, exist_ok=True)
    progress, section = config.output.progress, config.comparison
    simulators = {
        name: resolve(model, config.base_dir, f"models.{name}")
        for name, model in config.models.items()
    }
    x_o = _comparison_observation(config, simulators)
    _check_shapes(simulators, x_o, seed=config.simulation.seed)  # before any training
    resampling = section.resampling
    if not section.bootstrap:
        if resampling not in ("bootstrap", "none"):
            raise ConfigError(
                f'[comparison]: bootstrap = false asks for resampling = "none", but resampling '
                f"= {resampling!r}: set one of the two."
            )
        resampling = "none"
    try:
        mc = sbiflow.ModelComparison(
            simulators,
            prior_probs=section.prior_probs or None,
            embedding_net=section.embedding_net,
            loss=section.loss,
            ensemble=section.ensemble,
            resampling=resampling,
            penalty=section.penalty,
            quadratic=section.quadratic,
            hidden_features=section.hidden_features,
            num_layers=section.num_layers,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[comparison]: {err}") from err
    training, seed, workers = config.training, config.simulation.seed, config.simulation.workers
    started = time.perf_counter()
    mc.fit(
        section.n_per_model,
        seed=seed,
        workers=workers,
        n_reference=section.n_reference,
        progress=progress,
        batch_size=training.batch_size or None,
        learning_rate=training.learning_rate,
        validation_fraction=training.validation_fraction,
        stop_after_epochs=training.stop_after_epochs,
        max_epochs=training.max_epochs,
        clip_max_norm=training.clip_max_norm,
    )
    trained = time.perf_counter()
    x_o = x_o.reshape(mc.x_shape)  # a leading batch dimension of 1 is accepted
    probabilities = mc.probabilities(x_o)
    misspecification = mc.misspecification(x_o)
    calibration = mc.calibration(
        section.calibration_simulations, seed=seed + 1, workers=workers, progress=progress
    )
    assert calibration.figure is not None
    calibration.figure.savefig(os.path.join(out, "calibration.png"), dpi=150)
    plt.close(loss_plot(mc.history, path=os.path.join(out, "loss.png")))  # pyplot keeps it
    sbiflow.save(mc, os.path.join(out, "model.pt"))
    checked = time.perf_counter()

    pairs = []
    for i, b in enumerate(mc.names):
        for a in mc.names[i + 1 :]:
            if mc.ensemble >= 2:
                log_k, err = mc.log_bayes_factor(x_o, a, b, return_std=True)
            else:
                log_k, err = mc.log_bayes_factor(x_o, a, b), None
            pairs.append({"a": a, "b": b, "log_k": log_k, "err": err})
    summary: dict[str, Any] = {
        "models": {
            name: {"simulator": model.name or model.factory, **model.options}
            for name, model in config.models.items()
        },
        "observation": _observation_label(config, mc.names),
        "n_per_model": section.n_per_model,
        "loss": section.loss,
        "ensemble": section.ensemble,
        "resampling": mc.resampling,
        "epochs": len(mc.history.train_loss),
        "best_epoch": mc.history.best_epoch,
        "best_validation_loss": min(mc.history.val_loss),
        "prior_probs": {n: float(p) for n, p in zip(mc.names, mc.prior_probs, strict=True)},
        "probabilities": probabilities,
        "log_bayes_factors": pairs,
        "misspecification": {
            "score": misspecification.score,
            "p_value": misspecification.p_value,
            "p_values": misspecification.p_values,
            "flagged_at_0.05": bool(misspecification.flagged(0.05)),
        },
        "calibration": {
            "simulations_per_model": section.calibration_simulations,
            "ece": calibration.ece,
            "accuracy": calibration.accuracy,
        },
        "seconds": {
            "simulate_and_train": round(trained - started, 2),
            "calibrate": round(checked - trained, 2),
        },
    }
    if section.crosscheck:
        check = mc.evidence_crosscheck(
            x_o,
            section.crosscheck_simulations,
            emulator=section.crosscheck_emulator,
            exact=section.crosscheck_exact,
            nested_options={"nlive": section.crosscheck_nlive},
            importance_samples=section.crosscheck_importance,
            seed=seed,
            workers=workers,
            progress=progress,
        )
        summary["crosscheck"] = check.as_dict()
        summary["seconds"]["crosscheck"] = round(time.perf_counter() - checked, 2)
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(out, "summary.txt"), "w") as handle:
        handle.write(comparison_text(summary))
    write_report(out)
    return summary


def _comparison_observation(config: RunConfig, simulators: dict[str, Any]) -> torch.Tensor:
    """The observation of a comparison: ``values``, or observation ``index`` of one model."""
    section = config.observation
    if section.values:
        return torch.as_tensor(section.values, dtype=torch.float32)
    name = section.model or next(iter(simulators))
    if not hasattr(simulators[name], "observation"):
        raise ConfigError(
            f"The simulator of model {name!r} ships no observations: give "
            "observation.values = [...] or observation.model = <a model that has them>."
        )
    return torch.as_tensor(simulators[name].observation(section.index), dtype=torch.float32)


def _check_shapes(simulators: dict[str, Any], x_o: torch.Tensor, seed: int) -> None:
    """One simulation per model: every model and the observation must share x's shape."""
    shapes = {}
    for name, sim in simulators.items():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            theta = sim.prior.sample((1,))
        x = torch.as_tensor(sim.simulate(theta, np.random.default_rng(seed)))
        shapes[name] = tuple(x.shape[1:])
    if len(set(shapes.values())) > 1:
        raise ConfigError(
            f"[models]: the models' simulations differ in shape: {shapes}; model comparison "
            "needs every model to produce x of the same shape."
        )
    x_shape = next(iter(shapes.values()))
    if tuple(x_o.shape) not in (x_shape, (1, *x_shape)):
        raise ConfigError(
            f"[observation]: the observation has shape {tuple(x_o.shape)}; the models "
            f"simulate x shaped {x_shape}."
        )
    if not bool(torch.isfinite(x_o).all()):
        from sbiflow.inference.base import nonfinite_where

        raise ConfigError(
            f"[observation]: the observation holds NaN or inf {nonfinite_where(x_o)}."
        )


def _observation_label(config: RunConfig, names: list[str]) -> str:
    section = config.observation
    if section.values:
        return "observation.values"
    return f"observation {section.index} of model {section.model or names[0]!r}"
