"""The run configuration: a TOML file, checked key by key before any work starts."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from sbiflow.estimators import ESTIMATORS
from sbiflow.training import TrainingConfig

__all__ = ["METHODS", "SAMPLERS", "ConfigError", "RunConfig", "load_config"]

#: Sections of a single-simulator run that a ``[models]`` comparison does not use.
_RUN_ONLY = ("inference", "estimator", "sampling", "diagnostics")
#: Keys of a ``[models]`` entry that say which simulator; every other key is an option of it.
_MODEL_KEYS = ("simulator", "module", "factory")

#: Values of ``inference.method`` and of ``sampling.sampler``.
METHODS = ("npe", "nle")
SAMPLERS = ("mcmc", "nested")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable, or has a bad key or value."""


def _key(default: Any = dataclasses.MISSING, doc: str = "", *, choices: Any = None) -> Any:
    """A configuration key: its default, its help text and its allowed values.

    The help and the allowed values feed the configuration reference of the documentation
    (``docs/configs.md``, generated from these fields when the site is built).

    Args:
        default: The default value; a ``dict`` or ``list`` default is copied per instance.
        doc: What the key does, in a sentence or two (Markdown).
        choices: The allowed values: a tuple, or a function returning one (for values that
            live in a module this one does not import at load time).

    Returns:
        A :func:`dataclasses.field` carrying ``doc`` and ``choices`` in its metadata.
    """
    metadata = {"help": doc, **({"choices": choices} if choices is not None else {})}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


#: Values of ``comparison.quadratic`` (``"auto"``: the ``ModelComparison`` default).
QUADRATIC_CHOICES = ("auto", "diagonal", "chi2", "none")


def _resamplings() -> tuple[str, ...]:
    """Ways an ensemble's members differ (``ModelComparison(resampling=...)``)."""
    from sbiflow.comparison.model_comparison import RESAMPLING

    return RESAMPLING


def _losses() -> tuple[str, ...]:
    """The classifier losses of a model comparison (imported when asked, not at load)."""
    from sbiflow.comparison.losses import LOSSES

    return tuple(LOSSES)


@dataclass
class SimulatorSection:
    """Which simulator: a registered name, or your own factory ``"package.module:function"``.

    Any other key of ``[simulator]`` is an option of the simulator (it joins ``options``),
    e.g. ``model = "cored"`` for ``simulators.get("dwarf", model="cored")``.
    """

    name: str = _key("", 'A name registered in `module` (e.g. `"two_moons"`, `"dwarf"`).')
    module: str = _key(
        "simulators", "The module whose `get(name, **options)` returns the simulator."
    )
    factory: str = _key(
        "",
        'Your own simulator instead: `"package.module:function"`, a function returning an '
        "object with `prior` and `simulate(theta, rng)` (a module next to the configuration "
        "file is found).",
    )
    options: dict[str, Any] = _key(
        {}, "Keyword arguments of the simulator (`get(name, **options)` or the factory)."
    )


@dataclass
class SimulationSection:
    """How many simulations, how seeded, where run and stored.

    ``scheduler`` runs the chunks on a Dask cluster (``sbiflow simulate`` and ``run``): the
    scheduler's address ``"tcp://host:port"``, or the JSON file its ``--scheduler-file``
    wrote (relative to the configuration file). ``workers`` then stays 1: the cluster's
    workers run them.
    """

    num_simulations: int = _key(10_000, "Simulations to run (at least 10).")
    seed: int = _key(
        0, "Seed of the simulations (one `SeedSequence`: results do not depend on `workers`)."
    )
    workers: int = _key(1, "Local processes that run the chunks (at least 1).")
    chunk_size: int = _key(1000, "Simulations per chunk: the unit of seeding, storage and resume.")
    store: str = _key(
        "",
        "A Zarr store that keeps the simulations and resumes an interrupted run, relative to "
        '`output.directory` (`""`: in memory only).',
    )
    scheduler: str = _key(
        "",
        "A Dask scheduler for `sbiflow simulate` and `sbiflow run`: its address "
        '`"tcp://host:port"` or the `.json` file its `--scheduler-file` wrote (relative to '
        "the configuration file).",
    )


@dataclass
class InferenceSection:
    """What is learned: the posterior (``"npe"``) or a likelihood emulator (``"nle"``)."""

    method: str = _key(
        "npe",
        '`"npe"`: a posterior q(θ | x); `"nle"`: a likelihood emulator q(x | θ) that '
        "emcee or dynesty sample.",
        choices=METHODS,
    )


@dataclass
class EstimatorSection:
    """The density estimator family and its options (e.g. ``hidden_features``).

    ``kind = ""`` takes the method's default: NSF for NPE, MAF (behind a θ-dependent affine
    layer) for NLE. Any other key of ``[estimator]`` is a keyword argument of ``sbiflow.NPE``
    or ``sbiflow.NLE`` (it joins ``options``), e.g. ``calibration = "check"``,
    ``embedding_net = "kinematic_set"``, ``hidden_features = 64``.
    """

    kind: str = _key(
        "",
        'The estimator family (`""`: NSF for NPE, MAF for NLE).',
        choices=ESTIMATORS,
    )
    options: dict[str, Any] = _key(
        {}, "Keyword arguments of `sbiflow.NPE` / `sbiflow.NLE` and of the estimator."
    )


@dataclass
class TrainingSection:
    """Options of the training loop (see ``sbiflow.training.TrainingConfig``)."""

    batch_size: int = _key(
        0, "Samples per gradient step; 0 chooses from the number of simulations (200 to 512)."
    )
    learning_rate: float = _key(TrainingConfig.learning_rate, "Adam learning rate (positive).")
    validation_fraction: float = _key(
        TrainingConfig.validation_fraction,
        "Share of the simulations held out for early stopping (and NPE's calibration check), "
        "in (0, 1).",
    )
    stop_after_epochs: int = _key(
        TrainingConfig.stop_after_epochs,
        "Stop when the validation loss has not improved for this many epochs (at most).",
    )
    max_epochs: int = _key(TrainingConfig.max_epochs, "Hard limit on epochs.")
    clip_max_norm: float = _key(5.0, "Gradient norm clipping.")
    seed: int = _key(0, "Seed of the validation split, the initialization and the batch order.")
    stream: bool = _key(
        False,
        "Train by streaming `simulation.store` a few chunks at a time (memory bounded "
        "whatever the number of simulations) instead of loading it; needs a store.",
    )


@dataclass
class ObservationSection:
    """The observed data: the simulator's observation ``index``, or explicit ``values``."""

    index: int = _key(0, "The simulator's `observation(index)` (from 1); 0: use `values`.")
    values: list[Any] = _key(
        [], "The measured data, shaped like one simulator output (nested lists for arrays)."
    )
    model: str = _key(
        "",
        'A `[models]` comparison: the model whose `observation(index)` is used (`""`: the first).',
    )


#: dynesty's live points in a run's nested sampling unless ``sampling.nlive`` says otherwise.
DEFAULT_NLIVE = 500


@dataclass
class SamplingSection:
    """Posterior samples to draw, and for NLE the sampler that draws them.

    ``sampler``: ``"mcmc"`` (emcee, the NLE default) or ``"nested"`` (dynesty, which also
    gives the evidence). ``evidence = true`` runs dynesty for log Z in any case (NLE only).
    """

    num_samples: int = _key(10_000, "Posterior samples to draw (at least 1).")
    seed: int = _key(0, "Seed of the sampling.")
    sampler: str = _key(
        "",
        'NLE only: `"mcmc"` (emcee, the default) or `"nested"` (dynesty, which also gives '
        "the evidence).",
        choices=SAMPLERS,
    )
    evidence: bool = _key(False, "NLE only: also run dynesty for the evidence log Z.")
    nlive: int = _key(
        DEFAULT_NLIVE,
        "NLE only: dynesty's live points (≥ 10); the error of log Z shrinks as "
        "1 / √nlive, the run grows in proportion.",
    )


@dataclass
class DiagnosticsSection:
    """Checks against the simulator's reference posterior, where it has one."""

    reference: bool = _key(True, "Overlay the simulator's reference posterior on `corner.png`.")
    c2st: bool = _key(
        False, "Also score the posterior against the reference with C2ST (slow in high dimension)."
    )
    coverage_tests: int = _key(
        0,
        "> 0: expected coverage (`coverage.png`) and SBC ranks (`ranks.png`) over this many "
        "fresh simulations (NPE only).",
    )


@dataclass
class OutputSection:
    """Where results go and whether to show progress bars."""

    directory: str = _key(
        "sbiflow-run", "The folder for samples, plots, the model and the summary."
    )
    progress: bool = _key(True, "Show progress bars.")


@dataclass
class ComparisonSection:
    """Options of a model comparison (a config with a ``[models]`` section).

    ``n_per_model`` simulations per model train the classifier (``loss``, ``ensemble``,
    ``bootstrap``, ``resampling``, ``embedding_net``, head size as in ``sbiflow.ModelComparison``);
    ``n_reference`` of them are held out for the misspecification check;
    ``calibration_simulations`` fresh ones per model measure the reliability.
    ``crosscheck = true`` also runs ``ModelComparison.evidence_crosscheck`` on the
    observation: an NLE per model on ``crosscheck_simulations`` simulations
    (``crosscheck_emulator``) and dynesty on the exact likelihoods (``crosscheck_exact``),
    with ``crosscheck_nlive`` live points, each exact log Z refined by
    ``crosscheck_importance`` importance-sampling draws if that is above 0.
    """

    n_per_model: int = _key(20_000, "Simulations per model that train the classifier (≥ 100).")
    loss: str = _key("cross_entropy", "The classifier's loss.", choices=_losses)
    ensemble: int = _key(
        1, "Classifiers in the ensemble; their spread is the error of log K (≥ 1)."
    )
    bootstrap: bool = _key(
        True,
        '`false`: ensemble members differ in initialization only (`resampling = "none"`).',
    )
    resampling: str = _key(
        "jackknife",
        "How ensemble members differ besides initialization, as `resampling` of "
        '`sbiflow.ModelComparison`: `"jackknife"` fits each without a different K-th of the '
        'simulations and gives honest error bars; `"bootstrap"` weighs them by a Bayesian '
        "bootstrap in one batched pass.",
        choices=_resamplings,
    )
    embedding_net: Any = _key(
        "auto", "The summary network of x, as `embedding_net` of `sbiflow.ModelComparison`."
    )
    penalty: float = _key(
        0.0,
        "L2 penalty per simulation on the classifier head's weights, as `penalty` of "
        "`sbiflow.ModelComparison` (≥ 0).",
    )
    quadratic: str = _key(
        "auto",
        "The quadratic skip of the classifier head, as `quadratic` of "
        '`sbiflow.ModelComparison`: `"auto"` (the `"diagonal"` form for vector x, none after '
        'an embedding), `"diagonal"`, `"chi2"` (better for 100-d vectors) or `"none"`.',
        choices=QUADRATIC_CHOICES,
    )
    hidden_features: int = _key(128, "Width of the classifier head's hidden layers.")
    num_layers: int = _key(3, "Hidden layers of the classifier head.")
    prior_probs: dict[str, Any] = _key({}, "Prior model probabilities by model name (`{}`: equal).")
    n_reference: int = _key(
        1000, "Simulations per model (at most a fifth) held out for the misspecification check."
    )
    calibration_simulations: int = _key(
        2000, "Fresh simulations per model that measure the calibration (≥ 1)."
    )
    crosscheck: bool = _key(
        False, "Also compute evidences by nested sampling (`evidence_crosscheck`)."
    )
    crosscheck_simulations: int = _key(
        10_000, "Simulations per model for the cross-check's NLE (≥ 1)."
    )
    crosscheck_emulator: bool = _key(True, "Cross-check with an NLE per model and dynesty.")
    crosscheck_exact: bool = _key(
        True, "Cross-check with dynesty on the exact likelihoods, where the simulators have them."
    )
    crosscheck_nlive: int = _key(500, "dynesty's live points in the cross-check (≥ 10).")
    crosscheck_importance: int = _key(
        0,
        "Likelihood calls that refine each exact-likelihood dynesty log Z by importance "
        "sampling (0: off); ~20000 give errors of ~0.01 nats.",
    )


@dataclass
class RunConfig:
    """A whole ``sbiflow run`` configuration.

    With a ``[models]`` section it is a model comparison: ``models`` holds one simulator
    section per model (the ``[simulator]`` section, if any, gives their shared defaults).
    """

    simulator: SimulatorSection
    simulation: SimulationSection
    inference: InferenceSection
    estimator: EstimatorSection
    training: TrainingSection
    observation: ObservationSection
    sampling: SamplingSection
    diagnostics: DiagnosticsSection
    output: OutputSection
    base_dir: str = "."
    models: dict[str, SimulatorSection] = field(default_factory=dict)
    comparison: ComparisonSection = field(default_factory=ComparisonSection)


_SECTIONS = {
    "simulator": SimulatorSection,
    "simulation": SimulationSection,
    "inference": InferenceSection,
    "estimator": EstimatorSection,
    "training": TrainingSection,
    "observation": ObservationSection,
    "sampling": SamplingSection,
    "diagnostics": DiagnosticsSection,
    "output": OutputSection,
    "comparison": ComparisonSection,
}
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table of keys, got {type(raw).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            if "options" in fields:  # estimator/simulator options pass through
                extra[key] = value
                continue
            raise ConfigError(
                f"Unknown key {name}.{key}; the keys of [{name}] are: {', '.join(fields)}."
            )
        expected = _TYPES.get(str(fields[key].type))
        bad_bool = isinstance(value, bool) and str(fields[key].type) != "bool"
        if expected is not None and (not isinstance(value, expected) or bad_bool):
            raise ConfigError(f"{name}.{key} must be of type {fields[key].type}, got {value!r}.")
        values[key] = value
    if extra:
        values["options"] = {**values.get("options", {}), **extra}
    return cls(**values)


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read and check a run configuration.

    Args:
        path: A TOML file (see ``examples/configs/two_moons.toml``).

    Raises:
        ConfigError: Naming the file and the bad key or value.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"No configuration file at {path!r}.") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path!r} is not valid TOML: {err}") from err
    unknown = sorted(set(raw) - set(_SECTIONS) - {"models"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {unknown}; the sections are: "
            f"{', '.join([*_SECTIONS, 'models'])}."
        )
    try:
        sections = {name: _section(name, raw.get(name, {})) for name in _SECTIONS}
        models = _models(raw["models"], sections["simulator"]) if "models" in raw else {}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    config = RunConfig(**sections, base_dir=os.path.dirname(os.path.abspath(path)), models=models)
    if models:
        _check_comparison(config, raw, path)
    else:
        _check_values(config, path)
        if "comparison" in raw or config.observation.model:
            raise ConfigError(
                f"{path}: [comparison] and observation.model apply to a model comparison: "
                "add a [models] section (e.g. cored = { simulator = 'dwarf', model = 'cored' })."
            )
    return config


def _models(raw: Any, shared: SimulatorSection) -> dict[str, SimulatorSection]:
    """One simulator section per ``[models]`` entry, on top of the ``[simulator]`` defaults."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(
            "[models] must hold one table per model, e.g. "
            "cored = { simulator = 'dwarf', model = 'cored' }."
        )
    models = {}
    for name, entry in raw.items():
        for key in _MODEL_KEYS:
            if key in entry and not isinstance(entry[key], str):
                raise ConfigError(f"models.{name}.{key} must be a string, got {entry[key]!r}.")
        options = {k: v for k, v in entry.items() if k not in _MODEL_KEYS}
        section = SimulatorSection(
            name=entry.get("simulator", shared.name if "factory" not in entry else ""),
            module=entry.get("module", shared.module),
            factory=entry.get("factory", shared.factory if "simulator" not in entry else ""),
            options={**shared.options, **options},
        )
        if not section.name and not section.factory:
            raise ConfigError(
                f"models.{name} names no simulator: give it simulator = '<registered name>' "
                "(or factory = 'package.module:function'), or set [simulator] name for all."
            )
        models[str(name)] = section
    return models


def _check_comparison(config: RunConfig, raw: dict[str, Any], path: str) -> None:
    """Checks of a model comparison: its own sections and values, none of a single run's."""
    from sbiflow.comparison.losses import LOSSES

    def fail(message: str) -> None:
        raise ConfigError(f"{path}: {message}")

    present = [name for name in _RUN_ONLY if name in raw]
    if present:
        fail(
            f"section(s) {present} apply to a run of one simulator; a [models] comparison "
            "takes [simulator] (shared defaults), [models], [comparison], [simulation], "
            "[training], [observation] and [output]."
        )
    simulation = raw.get("simulation", {})
    for key, instead in (
        ("num_simulations", "comparison.n_per_model"),
        ("store", "nothing yet: comparison simulations are kept in memory"),
        ("scheduler", "simulation.workers: comparison simulations run on local processes"),
    ):
        if key in simulation:
            fail(f"simulation.{key} does not apply to a model comparison; use {instead}.")
    if "seed" in raw.get("training", {}):
        fail(
            "training.seed does not apply to a model comparison: simulation.seed seeds its "
            "simulations and its training."
        )
    comparison, names = config.comparison, list(config.models)
    if len(names) < 2:
        fail(f"[models] needs at least two models, got {names}.")
    if comparison.n_per_model < 100:
        fail("comparison.n_per_model must be at least 100.")
    if comparison.loss not in LOSSES:
        fail(f"comparison.loss must be one of {sorted(LOSSES)}, got {comparison.loss!r}.")
    if comparison.resampling not in _resamplings():
        fail(
            f"comparison.resampling must be one of {list(_resamplings())}, got "
            f"{comparison.resampling!r}."
        )
    if comparison.penalty < 0:
        fail(f"comparison.penalty must be at least 0, got {comparison.penalty!r}.")
    if comparison.quadratic not in QUADRATIC_CHOICES:
        fail(
            f"comparison.quadratic must be one of {list(QUADRATIC_CHOICES)}, got "
            f"{comparison.quadratic!r}."
        )
    for key in ("ensemble", "calibration_simulations", "crosscheck_simulations"):
        if getattr(comparison, key) < 1:
            fail(f"comparison.{key} must be at least 1.")
    if comparison.crosscheck_nlive < 10:
        fail("comparison.crosscheck_nlive must be at least 10.")
    if comparison.crosscheck_importance < 0:
        fail("comparison.crosscheck_importance must be at least 0 (0 turns it off).")
    if config.simulation.workers < 1:
        fail("simulation.workers must be at least 1.")
    if config.training.learning_rate <= 0:
        fail("training.learning_rate must be positive.")
    if not 0 < config.training.validation_fraction < 1:
        fail("training.validation_fraction must lie in (0, 1).")
    if config.training.stream:
        fail(
            "training.stream does not apply to a model comparison: its classifier trains on "
            "the models' simulations in memory."
        )
    if config.observation.model and config.observation.model not in names:
        fail(
            f"observation.model must be one of the models {names}, got "
            f"{config.observation.model!r}."
        )
    if config.observation.index == 0 and not config.observation.values:
        fail(
            "[observation] needs index = <n> (the n-th observation of observation.model, "
            "default the first model) or values."
        )


#: A Dask scheduler address: scheme://host:port (host a name, an IPv4 or a [bracketed IPv6]).
_SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|ucx|ws|wss)://(\[[0-9a-fA-F:]+\]|[^\s/:\[\]]+):\d+/?")


def _check_scheduler(simulation: SimulationSection, fail: Any) -> None:
    """``[simulation] scheduler``: an address ``scheme://host:port`` or a scheduler file."""
    scheduler = simulation.scheduler
    if not scheduler:
        return
    if "://" in scheduler:
        if not _SCHEDULER_ADDRESS.fullmatch(scheduler):
            fail(
                f"simulation.scheduler = {scheduler!r} is not a scheduler address: use "
                "'tcp://host:port' (as dask scheduler prints), or a scheduler file's path."
            )
    elif not scheduler.endswith(".json"):
        fail(
            f"simulation.scheduler = {scheduler!r}: give the scheduler's address "
            "'tcp://host:port', or the .json file its --scheduler-file wrote."
        )
    if simulation.workers != 1:
        fail(
            f"simulation.workers = {simulation.workers} and simulation.scheduler: the chunks "
            "run on the cluster's workers; remove workers (or the scheduler)."
        )


def _check_values(config: RunConfig, path: str) -> None:
    def fail(message: str) -> None:
        raise ConfigError(f"{path}: {message}")

    if not config.simulator.name and not config.simulator.factory:
        fail("simulator.name is required (or simulator.factory = 'package.module:function').")
    if config.simulation.num_simulations < 10:
        fail("simulation.num_simulations must be at least 10.")
    if config.simulation.workers < 1:
        fail("simulation.workers must be at least 1.")
    _check_scheduler(config.simulation, fail)
    if config.sampling.num_samples < 1:
        fail("sampling.num_samples must be at least 1.")
    if config.sampling.nlive < 10:
        fail("sampling.nlive must be at least 10.")
    if config.training.learning_rate <= 0:
        fail("training.learning_rate must be positive.")
    if not 0 < config.training.validation_fraction < 1:
        fail("training.validation_fraction must lie in (0, 1).")
    if config.training.stream and not config.simulation.store:
        fail(
            "training.stream = true streams the simulation store: set simulation.store = "
            "'simulations.zarr' (or remove training.stream to train in memory)."
        )
    method = config.inference.method
    if method not in METHODS:
        fail(f"inference.method must be one of {list(METHODS)}, got {method!r}.")
    if config.estimator.kind and config.estimator.kind not in ESTIMATORS:
        fail(f"estimator.kind must be one of {list(ESTIMATORS)}, got {config.estimator.kind!r}.")
    sampler = config.sampling.sampler
    nlive_set = config.sampling.nlive != DEFAULT_NLIVE
    if method == "npe" and (sampler or config.sampling.evidence or nlive_set):
        fail(
            "sampling.sampler, sampling.evidence and sampling.nlive apply to a likelihood "
            "emulator: an NPE posterior is sampled directly. "
            'Set inference.method = "nle" to use emcee/dynesty.'
        )
    if sampler and sampler not in SAMPLERS:
        fail(f"sampling.sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
    if method == "nle" and config.diagnostics.coverage_tests > 0:
        fail(
            'diagnostics.coverage_tests needs inference.method = "npe" (each NLE test '
            "posterior is an MCMC run); set it to 0, or check an NPE run's calibration."
        )
    if config.observation.index == 0 and not config.observation.values:
        fail("[observation] needs index = <n> (the simulator's n-th observation) or values.")
