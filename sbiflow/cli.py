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
import math
import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch

from sbiflow.compare_run import compare
from sbiflow.config import ConfigError, RunConfig, load_config
from sbiflow.report import ReportError, write_report
from sbiflow.resolve import observation, resolve, resolve_simulator
from sbiflow.store import valid_rows
from sbiflow.summary_text import comparison_text, run_text

__all__ = ["compare", "main", "run", "simulate_only", "simulators_text"]

#: The names under which tests and scripts have imported these helpers.
_resolve, _resolve_simulator = resolve, resolve_simulator


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
    started = time.perf_counter()
    _simulate(config, resolve_simulator(config), store, in_memory=False)
    return {
        "store": store,
        "num_simulations": valid_rows(store),
        "seconds": time.perf_counter() - started,
        "scheduler": scheduler or None,
    }


def _simulate(
    config: RunConfig, simulator: Any, store: str | None, in_memory: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run (or resume) the configured simulations, on ``[simulation] scheduler`` if set."""
    import sbiflow

    scheduler = config.simulation.scheduler
    client = _connect(scheduler, config.base_dir) if scheduler else None
    try:
        return sbiflow.simulate(
            simulator,
            config.simulation.num_simulations,
            seed=config.simulation.seed,
            workers=config.simulation.workers,
            chunk_size=config.simulation.chunk_size,
            store=store,
            client=client,
            progress=config.output.progress,
            in_memory=in_memory,
        )
    finally:
        if client is not None:
            client.close()


def run(config: RunConfig) -> dict[str, Any]:
    """Run a whole configuration and write its outputs.

    NPE samples its posterior directly; NLE samples with emcee (``sampling.sampler =
    "mcmc"``) or dynesty (``"nested"``), and with dynesty reports the evidence log Z.
    Outputs in ``config.output.directory``: ``posterior_samples.npz``, ``corner.png`` (over
    the simulator's reference posterior, in grey, where it has one), ``loss.png``,
    ``model.pt``, ``ppc.png`` (the simulator at ``PPC_DRAWS`` posterior draws against x_o),
    ``summary.json``, ``summary.txt`` and ``report.html`` (all of it on one self-contained
    page); with emcee, ``traces.png``; with dynesty, ``nested_run.png``; with
    ``diagnostics.coverage_tests``, also ``coverage.png`` and ``ranks.png``.

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
    simulator = resolve_simulator(config)
    x_o = observation(config, simulator)
    model = _model(config, simulator)  # a bad [estimator] fails here, before simulating

    started = time.perf_counter()
    store = _store_path(config)
    stream = config.training.stream
    simulated_data = _simulate(config, simulator, store, in_memory=not stream)
    simulated = time.perf_counter()

    model = _fit(config, model, simulated_data, store, progress)
    trained = time.perf_counter()
    samples, sampler_summary, sampler_results = _sample(config, model, x_o, progress)
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
    _close(
        corner_plot(
            samples,
            labels=labels,
            truths=truth,
            reference=reference,
            path=os.path.join(out, "corner.png"),
        ),
        loss_plot(model.history, path=os.path.join(out, "loss.png")),
    )

    summary = {
        "simulator": config.simulator.name or config.simulator.factory,
        "num_simulations": config.simulation.num_simulations,
        "num_valid_simulations": int(model.num_simulations),
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
    _sampler_plots(sampler_results, labels, summary.get("evidence", {}).get("log_z_exact"), out)
    summary["posterior_predictive"] = _predictive(
        simulator, model, samples, x_o, config.sampling.seed, out
    )
    if reference is not None and config.diagnostics.c2st:
        from sbiflow.diagnostics import c2st

        summary["c2st_vs_reference"] = c2st(reference, samples)
    check = getattr(model, "calibration", None)
    if check is not None:
        summary["calibration_check"] = {**check.as_dict(), "summary": check.summary()}
        if getattr(model, "balance", 0.0):
            summary["calibration_check"]["balance"] = model.balance
        temperature = getattr(model, "temperature", 1.0)
        if temperature != 1.0:
            summary["calibration_check"]["temperature"] = temperature
    if config.diagnostics.coverage_tests > 0:
        summary["coverage"] = _calibration(config, simulator, model, labels, out, progress)
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(out, "summary.txt"), "w") as handle:
        handle.write(run_text(summary))
    write_report(out)
    return summary


def _close(*figures: Any) -> None:
    """Free saved figures: pyplot keeps every figure it made until it is closed."""
    import matplotlib.pyplot as plt

    for figure in figures:
        plt.close(figure)


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


def _fit(
    config: RunConfig,
    model: Any,
    data: tuple[torch.Tensor, torch.Tensor] | None,
    store: str | None,
    progress: bool,
):
    """Train ``model`` on ``data = (θ, x)``, or by streaming ``store`` when ``data`` is None."""
    training = config.training
    source = {"store": store} if data is None else {"theta": data[0], "x": data[1]}
    return model.fit(
        **source,
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
) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
    """Posterior samples ``(n, D)``, what the sampler reports, and its results.

    Returns:
        The samples; the summary entries (``"mcmc"``, ``"evidence"``); the sampler's own
        results for plots (``"mcmc"``: ``MCMCResult``, ``"nested"``: ``NestedResult``).
        NPE samples directly: the last two are empty.
    """
    n, seed = config.sampling.num_samples, config.sampling.seed
    if config.inference.method == "npe":
        return model.sample(n, x=x_o, seed=seed), {}, {}
    report: dict[str, Any] = {}
    results: dict[str, Any] = {}
    sampler = config.sampling.sampler or "mcmc"
    samples = None
    if sampler == "mcmc":
        chain = model.mcmc(n, x_o, seed=seed, progress=progress)
        samples, results["mcmc"] = chain.samples, chain
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
        result = model.nested(
            x_o, seed=seed, progress=progress, num_samples=n, nlive=config.sampling.nlive
        )
        results["nested"] = result
        if samples is None:
            samples = result.samples
        report["evidence"] = {
            "log_z": result.log_evidence,
            "log_z_err": result.log_evidence_err,
            "information_nats": result.information,
            "nlive": config.sampling.nlive,
        }
    return samples, report, results


def _sampler_plots(
    results: dict[str, Any], labels: list[str], log_z_exact: float | None, out: str
) -> None:
    """``traces.png`` of an emcee run, ``nested_run.png`` of a dynesty run."""
    from sbiflow.plots import nested_run_plot, trace_plot

    if "mcmc" in results:
        chain = results["mcmc"]
        path = os.path.join(out, "traces.png")
        _close(trace_plot(chain.chain, labels=labels, burn_in=chain.burn_in, path=path))
    if "nested" in results:
        path = os.path.join(out, "nested_run.png")
        _close(nested_run_plot(results["nested"].result, log_z_exact=log_z_exact, path=path))


#: Posterior draws at which the posterior predictive check runs the simulator (ppc.png).
PPC_DRAWS = 100


def _predictive(
    simulator: Any, model: Any, samples: torch.Tensor, x_o: torch.Tensor, seed: int, out: str
) -> dict[str, Any]:
    """Simulate at ``PPC_DRAWS`` posterior draws and plot them against x_o (``ppc.png``).

    Returns:
        ``{"draws", "p_value"}``, or ``{"skipped": why}`` when x_o holds several iid trials
        (one simulation per draw is not comparable to them) or the check failed.
    """
    from sbiflow.diagnostics import posterior_predictive
    from sbiflow.plots import predictive_plot

    size = math.prod(model.x_shape)
    if x_o.numel() != size:
        return {"skipped": f"the observation holds {x_o.numel() // size} iid trials"}
    try:
        check = posterior_predictive(
            samples, simulator, x_o.reshape(model.x_shape), num_draws=PPC_DRAWS, seed=seed
        )
    except (RuntimeError, ValueError) as err:  # e.g. simulations with NaN at some draws
        warnings.warn(f"The posterior predictive check failed: {err}", stacklevel=2)
        return {"skipped": f"failed: {err}"}
    _close(predictive_plot(check, path=os.path.join(out, "ppc.png")))
    return {"draws": int(check.simulated.shape[0]), "p_value": check.p_value}


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
    from sbiflow.diagnostics import sbc_and_coverage
    from sbiflow.plots import coverage_plot, rank_plot

    theta, x = sbiflow.simulate(
        simulator,
        config.diagnostics.coverage_tests,
        seed=config.simulation.seed + 1,
        workers=config.simulation.workers,
        progress=progress,
    )
    ranks, coverage = sbc_and_coverage(npe, theta, x, progress=progress)
    _close(
        coverage_plot(coverage, path=os.path.join(out, "coverage.png")),
        rank_plot(ranks, labels=labels, path=os.path.join(out, "ranks.png")),
    )
    return coverage.as_dict()


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
    report = commands.add_parser(
        "report", help="rebuild report.html of a run folder from its summary.json and PNGs"
    )
    report.add_argument("run_dir", help="an output folder of sbiflow run or sbiflow compare")
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
    if args.command == "report":
        try:
            path = write_report(args.run_dir)
        except ReportError as err:
            print(f"sbiflow: {err}", file=sys.stderr)
            return 2
        print(f"Report written to {path}")
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
        summary_text = comparison_text(summary) if config.models else run_text(summary)
    except ConfigError as err:
        print(f"sbiflow: configuration error: {err}", file=sys.stderr)
        return 2
    print(summary_text)
    out = os.path.abspath(config.output.directory)
    print(f"Results written to {out} (open {os.path.join(out, 'report.html')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
