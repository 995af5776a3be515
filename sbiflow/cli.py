"""``sbiflow run CONFIG.toml``: simulate → train (NPE or NLE) → sample → plots and a summary.

A configuration with a ``[models]`` section is a model comparison instead (also
``sbiflow compare CONFIG.toml``): simulate each model → train the classifier → model
probabilities, Bayes factors, calibration, misspecification and the nested-sampling
cross-check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from sbiflow.config import ConfigError, RunConfig, SimulatorSection, load_config

__all__ = ["compare", "main", "run", "simulate_only", "simulators_text"]


def _resolve_simulator(config: RunConfig) -> Any:
    """The simulator named in the config, through a plug-in lookup (sbiflow never imports it)."""
    return _resolve(config.simulator, config.base_dir)


def _resolve(section: SimulatorSection, base_dir: str, label: str = "simulator") -> Any:
    """The simulator of one section (``[simulator]``, or one entry of ``[models]``)."""
    try:
        if section.factory:
            module_name, _, attribute = section.factory.partition(":")
            if not attribute:
                raise ConfigError(
                    f"{label}.factory must look like 'package.module:function', got "
                    f"{section.factory!r}."
                )
            if base_dir not in sys.path:  # a factory module next to the config file
                sys.path.insert(0, base_dir)
            factory = getattr(importlib.import_module(module_name), attribute)
            return factory(**section.options)
        registry = importlib.import_module(section.module)
        return registry.get(section.name, **section.options)
    except (ImportError, AttributeError) as err:
        where = "" if label == "simulator" else f" of {label}"
        raise ConfigError(f"Cannot load the simulator{where}: {err}") from err
    except (KeyError, ValueError, TypeError) as err:
        name = "simulator" if label.startswith("models.") else "name"
        raise ConfigError(f"{label}.{name} = {section.name!r}: {err}") from err


def _observation(config: RunConfig, simulator: Any) -> torch.Tensor:
    section = config.observation
    if section.values:
        return torch.as_tensor(section.values, dtype=torch.float32)
    if not hasattr(simulator, "observation"):
        raise ConfigError("This simulator ships no observations: give observation.values = [...].")
    return torch.as_tensor(simulator.observation(section.index), dtype=torch.float32)


def _store_path(config: RunConfig) -> str | None:
    """``[simulation] store``, relative to the output folder."""
    store = config.simulation.store or None
    if store is not None and not os.path.isabs(store):
        store = os.path.join(os.path.abspath(config.output.directory), store)
    return store


#: Seconds to wait for a Dask scheduler to answer.
CONNECT_TIMEOUT = 30


def _connect(scheduler: str, base_dir: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``tcp://host:port`` or in a scheduler file."""
    try:
        from distributed import Client
    except ImportError as err:
        raise ConfigError(
            f'simulation.scheduler = {scheduler!r} needs Dask: pip install "sbiflow[dask]".'
        ) from err
    is_file = "://" not in scheduler
    path = os.path.join(base_dir, os.path.expanduser(scheduler))  # kept if absolute
    if is_file and not os.path.exists(path):
        raise ConfigError(
            f"simulation.scheduler = {scheduler!r}: no scheduler file at {path!r}. Give the "
            "scheduler's address (tcp://host:port) or the file its --scheduler-file wrote."
        )
    try:
        if is_file:
            return Client(scheduler_file=path, timeout=CONNECT_TIMEOUT)
        return Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(
            f"Cannot reach the Dask scheduler at {scheduler!r} within {CONNECT_TIMEOUT} s "
            f"({type(err).__name__}: {err}). Is it running (dask scheduler, or a "
            "dask-jobqueue cluster's scheduler_address), and reachable from this machine?"
        ) from err


def simulate_only(config: RunConfig) -> dict[str, Any]:
    """Fill the configuration's simulation store and stop (``sbiflow simulate``).

    Simulation can then run on one machine (or a cluster) and training elsewhere:
    ``sbiflow run`` with the same configuration finds the store complete and resumes from
    it. Needs ``[simulation] store``; a store filled part-way (interrupted) is resumed.
    With ``[simulation] scheduler`` (``tcp://host:port``, or a scheduler file) the chunks
    run on that Dask cluster's workers, and the store is written here.

    Returns:
        ``{"store", "num_simulations", "seconds", "scheduler"}``.
    """
    import sbiflow

    store = _store_path(config)
    if store is None:
        raise ConfigError(
            "sbiflow simulate needs [simulation] store = 'simulations.zarr' (a path, relative "
            "to [output] directory): the simulations go there, and sbiflow run resumes from it."
        )
    if config.models:
        raise ConfigError(
            "sbiflow simulate fills the store of one simulator; a [models] configuration "
            "simulates each model inside sbiflow compare."
        )
    scheduler = config.simulation.scheduler
    if scheduler and config.simulation.workers != 1:
        raise ConfigError(
            f"simulation.workers = {config.simulation.workers} and a scheduler "
            f"({scheduler!r}): the chunks run on the cluster's workers. Remove workers, or "
            "the scheduler to run on local processes."
        )
    os.makedirs(os.path.abspath(config.output.directory), exist_ok=True)
    simulator = _resolve_simulator(config)
    client = _connect(scheduler, config.base_dir) if scheduler else None
    started = time.perf_counter()
    try:
        theta, _ = sbiflow.simulate(
            simulator,
            config.simulation.num_simulations,
            seed=config.simulation.seed,
            workers=config.simulation.workers,
            chunk_size=config.simulation.chunk_size,
            store=store,
            client=client,
            progress=config.output.progress,
        )
    finally:
        if client is not None:
            client.close()
    return {
        "store": store,
        "num_simulations": int(theta.shape[0]),
        "seconds": time.perf_counter() - started,
        "scheduler": scheduler or None,
    }


def run(config: RunConfig) -> dict[str, Any]:
    """Run a whole configuration and write its outputs.

    NPE samples its posterior directly; NLE samples with emcee (``sampling.sampler =
    "mcmc"``) or dynesty (``"nested"``), and with dynesty reports the evidence log Z.
    Outputs in ``config.output.directory``: ``posterior_samples.npz``, ``corner.png`` (over
    the simulator's reference posterior, in grey, where it has one), ``loss.png``,
    ``model.pt``, ``summary.json`` and ``summary.txt``; with ``diagnostics.coverage_tests``,
    also ``coverage.png`` and ``ranks.png``.

    A configuration with ``[models]`` runs :func:`compare`.

    Returns:
        The summary (also written to ``summary.json``).
    """
    if config.models:
        return compare(config)
    import sbiflow
    from sbiflow.plots import corner_plot, loss_plot

    out = os.path.abspath(config.output.directory)  # relative to the working directory
    os.makedirs(out, exist_ok=True)
    progress = config.output.progress
    simulator = _resolve_simulator(config)
    x_o = _observation(config, simulator)
    model = _model(config, simulator)  # a bad [estimator] fails here, before simulating

    started = time.perf_counter()
    store = _store_path(config)
    theta, x = sbiflow.simulate(
        simulator,
        config.simulation.num_simulations,
        seed=config.simulation.seed,
        workers=config.simulation.workers,
        chunk_size=config.simulation.chunk_size,
        store=store,
        progress=progress,
    )
    simulated = time.perf_counter()

    model = _fit(config, model, theta, x, progress)
    trained = time.perf_counter()
    samples, sampler_summary = _sample(config, model, x_o, progress)
    sampled = time.perf_counter()

    names = list(getattr(simulator, "names", [f"theta_{i + 1}" for i in range(samples.shape[1])]))
    labels = list(getattr(simulator, "labels", names))
    truth = None
    if config.observation.index and hasattr(simulator, "true_parameters"):
        truth = simulator.true_parameters(config.observation.index)
    reference = None
    if config.diagnostics.reference and hasattr(simulator, "reference_posterior"):
        reference = simulator.reference_posterior(x_o, config.sampling.num_samples, seed=0)
    np.savez(
        os.path.join(out, "posterior_samples.npz"),
        samples=samples.numpy(),
        observation=x_o.numpy(),
        names=np.array(names),
    )
    sbiflow.save(model, os.path.join(out, "model.pt"))
    corner_plot(
        samples,
        labels=labels,
        truths=truth,
        reference=reference,
        path=os.path.join(out, "corner.png"),
    )
    loss_plot(model.history, path=os.path.join(out, "loss.png"))

    summary = {
        "simulator": config.simulator.name or config.simulator.factory,
        "num_simulations": config.simulation.num_simulations,
        "num_valid_simulations": int(theta.shape[0]),
        "method": config.inference.method,
        "estimator": model.estimator_kind,
        "epochs": len(model.history.train_loss),
        "best_epoch": model.history.best_epoch,
        "best_validation_loss": min(model.history.val_loss),
        "seconds": {
            "simulate": round(simulated - started, 2),
            "train": round(trained - simulated, 2),
            "sample": round(sampled - trained, 2),
        },
        "posterior": {
            name: {
                "mean": float(samples[:, i].mean()),
                "std": float(samples[:, i].std()),
                "q05": float(samples[:, i].quantile(0.05)),
                "q95": float(samples[:, i].quantile(0.95)),
                **({"true": float(truth[i])} if truth is not None else {}),
            }
            for i, name in enumerate(names)
        },
        **sampler_summary,
    }
    if "evidence" in summary and hasattr(simulator, "log_evidence"):
        summary["evidence"]["log_z_exact"] = float(simulator.log_evidence(x_o))
    if reference is not None and config.diagnostics.c2st:
        from sbiflow.diagnostics import c2st

        summary["c2st_vs_reference"] = c2st(reference, samples)
    check = getattr(model, "calibration", None)
    if check is not None:
        summary["calibration_check"] = {**check.as_dict(), "summary": check.summary()}
        if getattr(model, "balance", 0.0):
            summary["calibration_check"]["balance"] = model.balance
    if config.diagnostics.coverage_tests > 0:
        summary["coverage"] = _calibration(config, simulator, model, labels, out, progress)
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(out, "summary.txt"), "w") as handle:
        handle.write(_summary_text(summary))
    return summary


def _model(config: RunConfig, simulator: Any) -> Any:
    """The configured posterior (NPE) or likelihood emulator (NLE), not yet trained."""
    import sbiflow

    method = sbiflow.NLE if config.inference.method == "nle" else sbiflow.NPE
    kind = config.estimator.kind or ("maf" if config.inference.method == "nle" else "nsf")
    options = dict(config.estimator.options)
    if method is sbiflow.NPE:
        options["simulator"] = simulator  # "auto" takes the embedding it declares
    try:
        return method(simulator.prior, estimator=kind, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[estimator]: {err}") from err


def _fit(config: RunConfig, model: Any, theta: torch.Tensor, x: torch.Tensor, progress: bool):
    """Train ``model`` on ``(θ, x)`` with the configured training options."""
    training = config.training
    return model.fit(
        theta,
        x,
        batch_size=training.batch_size or None,
        learning_rate=training.learning_rate,
        validation_fraction=training.validation_fraction,
        stop_after_epochs=training.stop_after_epochs,
        max_epochs=training.max_epochs,
        clip_max_norm=training.clip_max_norm,
        seed=training.seed,
        progress=progress,
    )  # the other TrainingConfig options keep their defaults


def _sample(
    config: RunConfig, model: Any, x_o: torch.Tensor, progress: bool
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Posterior samples ``(n, D)`` and what the sampler reports (NLE: emcee, dynesty)."""
    n, seed = config.sampling.num_samples, config.sampling.seed
    if config.inference.method == "npe":
        return model.sample(n, x=x_o, seed=seed), {}
    report: dict[str, Any] = {}
    sampler = config.sampling.sampler or "mcmc"
    samples = None
    if sampler == "mcmc":
        chain = model.mcmc(n, x_o, seed=seed, progress=progress)
        samples = chain.samples
        report["mcmc"] = {
            "steps": int(chain.chain.shape[0]),
            "walkers": int(chain.chain.shape[1]),
            "autocorrelation_time": [float(t) for t in chain.autocorr_time],
            "burn_in": chain.burn_in,
            "thin": chain.thin,
            "acceptance_fraction": float(chain.acceptance_fraction),
            "converged": bool(chain.converged),
        }
    if sampler == "nested" or config.sampling.evidence:
        result = model.nested(x_o, seed=seed, progress=progress, num_samples=n)
        if samples is None:
            samples = result.samples
        report["evidence"] = {
            "log_z": result.log_evidence,
            "log_z_err": result.log_evidence_err,
            "information_nats": result.information,
        }
    return samples, report


def _calibration(
    config: RunConfig,
    simulator: Any,
    npe: Any,
    labels: list[str],
    out: str,
    progress: bool,
) -> dict[str, float]:
    """Expected coverage and SBC ranks over fresh simulations; writes their plots."""
    import sbiflow
    from sbiflow.diagnostics import expected_coverage, sbc
    from sbiflow.plots import coverage_plot, rank_plot

    theta, x = sbiflow.simulate(
        simulator,
        config.diagnostics.coverage_tests,
        seed=config.simulation.seed + 1,
        workers=config.simulation.workers,
        progress=progress,
    )
    coverage = expected_coverage(npe, theta, x, progress=progress)
    ranks = sbc(npe, theta, x, progress=progress)
    coverage_plot(coverage, path=os.path.join(out, "coverage.png"))
    rank_plot(ranks, labels=labels, path=os.path.join(out, "ranks.png"))
    return coverage.as_dict()


def _summary_text(summary: dict[str, Any]) -> str:
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


def compare(config: RunConfig) -> dict[str, Any]:
    """Run a model comparison (a configuration with ``[models]``) and write its outputs.

    Simulates ``comparison.n_per_model`` of each model, trains the classifier, and reports
    for the observation the posterior model probabilities, the log Bayes factor of every
    pair (with the ensemble's spread as its error when ``ensemble >= 2``) and the
    misspecification check; measures the calibration on fresh simulations; with
    ``comparison.crosscheck``, compares the Bayes factors with nested-sampling evidences.
    Outputs in ``config.output.directory``: ``calibration.png``, ``loss.png``, ``model.pt``,
    ``summary.json`` and ``summary.txt``.

    Returns:
        The summary (also written to ``summary.json``).
    """
    import sbiflow
    from sbiflow.plots import loss_plot

    out = os.path.abspath(config.output.directory)
    os.makedirs(out, exist_ok=True)
    progress, section = config.output.progress, config.comparison
    simulators = {
        name: _resolve(model, config.base_dir, f"models.{name}")
        for name, model in config.models.items()
    }
    x_o = _comparison_observation(config, simulators)
    _check_shapes(simulators, x_o, seed=config.simulation.seed)  # before any training
    try:
        mc = sbiflow.ModelComparison(
            simulators,
            prior_probs=section.prior_probs or None,
            embedding_net=section.embedding_net,
            loss=section.loss,
            ensemble=section.ensemble,
            bootstrap=section.bootstrap,
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
    loss_plot(mc.history, path=os.path.join(out, "loss.png"))
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
            seed=seed,
            workers=workers,
            progress=progress,
        )
        summary["crosscheck"] = check.as_dict()
        summary["seconds"]["crosscheck"] = round(time.perf_counter() - checked, 2)
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(out, "summary.txt"), "w") as handle:
        handle.write(_comparison_text(summary))
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


def _comparison_text(summary: dict[str, Any]) -> str:
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
        err = "" if pair["err"] is None else f" ± {pair['err']:.3f} (ensemble spread)"
        lines.append(f"  log K({pair['a']} / {pair['b']}) = {pair['log_k']:.3f}{err}")
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


def simulators_text(module: str = "simulators") -> str:
    """A table of the registered simulators: name, parameters and the shape of x.

    Args:
        module: The registry module (anything with ``names()`` and ``get(name)``).

    Returns:
        One line per simulator (its default model).
    """
    try:
        registry = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"Cannot import the simulator registry {module!r}: {err}") from err
    lines = [f"{'name':<18}{'x shape':<14}parameters"]
    for name in registry.names():
        sim = registry.get(name)
        shape = (
            "("
            + ", ".join(str(n) for n in sim.x_shape)
            + ("," if len(sim.x_shape) == 1 else "")
            + ")"
        )
        lines.append(f"{name:<18}{shape:<14}{', '.join(sim.names)}")
    lines.append(
        "Options (e.g. model = 'cored' for the dwarf) go in [simulator] of a config; see "
        "help(simulators.get(name))."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sbiflow`` command."""
    from sbiflow._version import __version__

    parser = argparse.ArgumentParser(prog="sbiflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sbiflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser(
        "simulators", help="list the registered simulators with their parameters and x shapes"
    )
    listing.add_argument("--module", default="simulators", help="registry module")
    for command, text in (
        ("run", "run a TOML configuration end to end"),
        ("compare", "run a model comparison: a TOML configuration with a [models] section"),
        ("simulate", "only fill the configuration's simulation store ([simulation] store)"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("config", help="path to a TOML configuration")
        sub.add_argument("--output", help="output folder (overrides output.directory)")
        sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if command == "simulate":
            sub.add_argument(
                "--scheduler",
                metavar="ADDR",
                help="run the chunks on this Dask scheduler (tcp://host:port, or a scheduler "
                "file); overrides [simulation] scheduler",
            )
    args = parser.parse_args(argv)

    if args.command == "simulators":
        try:
            print(simulators_text(args.module))
        except ConfigError as err:
            print(f"sbiflow: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        config = load_config(args.config)
        if args.command == "compare" and not config.models:
            raise ConfigError(
                f"{args.config}: sbiflow compare needs a [models] section, e.g. "
                "cored = { simulator = 'dwarf', model = 'cored' }."
            )
        if args.output:
            config.output.directory = args.output
        if args.no_progress:
            config.output.progress = False
        if args.command == "simulate":
            if args.scheduler:  # an address, or a scheduler file relative to here
                scheduler = args.scheduler
                config.simulation.scheduler = (
                    scheduler if "://" in scheduler else os.path.abspath(scheduler)
                )
            done = simulate_only(config)
            where = f" on {done['scheduler']}" if done["scheduler"] else ""
            print(
                f"{done['num_simulations']} simulations in {done['store']}{where} "
                f"({done['seconds']:.1f} s); sbiflow run {args.config} resumes from it."
            )
            return 0
        summary = run(config)
        summary_text = _comparison_text(summary) if config.models else _summary_text(summary)
    except ConfigError as err:
        print(f"sbiflow: configuration error: {err}", file=sys.stderr)
        return 2
    print(summary_text)
    print(f"Results written to {os.path.abspath(config.output.directory)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
