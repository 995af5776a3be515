r"""The classifier's Bayes factors against nested-sampling evidences, for one observation.

Per model, up to three evidences :math:`\log Z_m = \log p(x \mid m)`:

- **emulator**: an :class:`~sbiflow.NLE` trained on that model's simulations, integrated
  over the model's prior by dynesty (:meth:`~sbiflow.NLE.nested`). It needs nothing but
  the simulator, so it applies to every model; its error bar is dynesty's only (the
  emulator's own error is not in it), and a flow on x must be able to model x: fine for
  vectors, not for padded sets (whose padding is degenerate);
- **exact**: dynesty on the simulator's own ``log_likelihood(theta, x)``, where it has
  one. Simulators may drop terms that do not depend on θ (the dwarf drops the density of
  the radii and errors); Bayes factors stay exact as long as every model drops the same;
- **closed form**: ``simulator.log_evidence(x)`` where the maths gives it (the analytic
  linear-Gaussian models), with no error.

Each pair of models then gets its log Bayes factor from every source, next to the
classifier's (with the ensemble's spread as its error), and the tension between them in
units of the combined error.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sbiflow.inference.nle import NLE
from sbiflow.samplers import NestedResult, importance_evidence, nested
from sbiflow.simulate import simulate

if TYPE_CHECKING:
    from sbiflow.comparison.model_comparison import ModelComparison

__all__ = ["CrossCheck", "Evidence", "PairCheck", "evidence_crosscheck"]

#: Evidence sources, most trusted first: the reference a classifier is measured against.
SOURCES = ("closed_form", "exact", "emulator")
#: dynesty's defaults here: 500 live points give log Z to ~sqrt(H / 500) nats (0.05-0.1 for
#: a few nats of information), and dlogz = 0.1 stops once the rest of Z is below 10%.
DEFAULT_NESTED = {"nlive": 500, "dlogz": 0.1}
# Tag of the cross-check's simulations (fit uses 0, calibration 1): never shared.
_CROSSCHECK = 2


@dataclass
class Evidence:
    """A log evidence and its standard error (0 for a closed form)."""

    log_z: float
    err: float


@dataclass
class PairCheck:
    r"""The log Bayes factor :math:`\log K_{ab} = \log Z_a - \log Z_b` from each source.

    Attributes:
        a: Model in the numerator.
        b: Model in the denominator.
        classifier: The classifier's log K (ensemble mean).
        classifier_err: Its ensemble standard deviation (NaN with one member).
        nested: Per source (``"exact"``, ``"emulator"``, ``"closed_form"``), the log K and its
            error (the two evidences' errors in quadrature).
    """

    a: str
    b: str
    classifier: float
    classifier_err: float
    nested: dict[str, Evidence] = field(default_factory=dict)

    @property
    def reference(self) -> str | None:
        """The most trusted source available: closed form, else exact, else emulator."""
        return next((s for s in SOURCES if s in self.nested), None)

    def tension(self, source: str | None = None) -> float:
        """|classifier − source| over the combined error (the ensemble's counts if known).

        Args:
            source: A key of :attr:`nested`; default :attr:`reference`.
        """
        source = source or self.reference
        if source is None:
            return math.nan
        ref = self.nested[source]
        err_c = 0.0 if math.isnan(self.classifier_err) else self.classifier_err
        combined = math.hypot(err_c, ref.err)
        diff = abs(self.classifier - ref.log_z)
        return math.inf if combined == 0 and diff > 0 else diff / max(combined, 1e-300)


@dataclass
class CrossCheck:
    """The result of :meth:`ModelComparison.evidence_crosscheck`.

    Attributes:
        evidences: Per source, per model, the log evidence with its error.
        pairs: One :class:`PairCheck` per pair of models (later model over earlier).
        seconds: Wall time per step (``simulate``, ``train``, ``nested``).
    """

    evidences: dict[str, dict[str, Evidence]]
    pairs: list[PairCheck]
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain floats and strings, for JSON."""
        return {
            "log_evidence": {
                source: {m: {"log_z": e.log_z, "err": e.err} for m, e in per.items()}
                for source, per in self.evidences.items()
            },
            "log_bayes_factors": [
                {
                    "a": p.a,
                    "b": p.b,
                    "classifier": p.classifier,
                    "classifier_err": None if math.isnan(p.classifier_err) else p.classifier_err,
                    **{s: {"log_k": e.log_z, "err": e.err} for s, e in p.nested.items()},
                    "tension": p.tension() if p.reference else None,
                }
                for p in self.pairs
            ],
            "seconds": dict(self.seconds),
        }

    def __str__(self) -> str:
        lines = ["log Bayes factors (a over b): classifier vs nested sampling"]
        for p in self.pairs:
            err = "" if math.isnan(p.classifier_err) else f" ± {p.classifier_err:.3f}"
            parts = [f"classifier {p.classifier:.3f}{err}"]
            parts += [f"{s} {e.log_z:.3f} ± {e.err:.3f}" for s, e in p.nested.items()]
            tension = f"; tension {p.tension():.1f} sigma" if p.reference else ""
            lines.append(f"  log K({p.a} / {p.b}): " + ", ".join(parts) + tension)
        return "\n".join(lines)


def evidence_crosscheck(
    mc: ModelComparison,
    x: Tensor,
    *,
    n_simulations: int = 10_000,
    emulator: bool = True,
    exact: bool = True,
    nle_options: dict[str, Any] | None = None,
    training_options: dict[str, Any] | None = None,
    nested_options: dict[str, Any] | None = None,
    importance_samples: int = 0,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> CrossCheck:
    """Per-model nested-sampling evidences of ``x`` and the Bayes factors they give.

    Args:
        mc: A trained :class:`ModelComparison` with simulators.
        x: One observation, shaped like one simulation.
        n_simulations: Simulations per model to train each NLE on (fresh ones: seeds apart
            from those of ``fit`` and ``calibration``).
        emulator: Train an NLE per model and run dynesty on it.
        exact: Run dynesty on the simulator's ``log_likelihood`` where it has one.
        nle_options: Passed to :class:`~sbiflow.NLE` (``estimator``, ``hidden_features``, ...).
        training_options: Passed to ``NLE.fit`` (``max_epochs``, ...).
        nested_options: Passed to :func:`sbiflow.samplers.nested` (``nlive``, ``dlogz``,
            ...); defaults :data:`DEFAULT_NESTED`.
        importance_samples: If > 0, refine each exact-likelihood dynesty log Z by
            importance sampling with this many likelihood calls, from the prior mixed with a
            kernel density estimate of dynesty's posterior samples
            (:func:`sbiflow.samplers.importance_evidence`): errors of about 0.01 nats instead
            of dynesty's 0.05-0.2, for Bayes factors near a decision threshold. Not for the
            emulators, whose own error (not in their error bars) is larger than dynesty's.
        seed: Seed of the simulations, the NLEs' training, dynesty and the refinement.
        workers: Processes for the simulations.
        progress: Show progress bars.

    Returns:
        The evidences and the pairwise comparison.
    """
    simulators = mc._simulators()
    batch, single = mc._observations(x)
    if not single:
        raise ValueError(
            f"evidence_crosscheck runs nested sampling for one observation shaped "
            f"{mc.x_shape}; got a batch of {batch.shape[0]}: call it once per observation."
        )
    x_o = batch[0]
    options = {**DEFAULT_NESTED, "progress": progress, "seed": seed, **(nested_options or {})}
    evidences: dict[str, dict[str, Evidence]] = {}
    seconds = {"simulate": 0.0, "train": 0.0, "nested": 0.0}
    for i, (name, sim) in enumerate(simulators.items()):
        if hasattr(sim, "log_evidence"):
            log_z = float(torch.as_tensor(sim.log_evidence(x_o)).reshape(()))
            evidences.setdefault("closed_form", {})[name] = Evidence(log_z, 0.0)
        if exact and hasattr(sim, "log_likelihood"):
            started = time.perf_counter()
            likelihood = _ExactLikelihood(sim, x_o)
            result = nested(likelihood, sim.prior, **options)
            evidences.setdefault("exact", {})[name] = _evidence(
                result, likelihood, sim.prior, importance_samples, seed
            )
            seconds["nested"] += time.perf_counter() - started
        if emulator:
            started = time.perf_counter()
            child = int(np.random.SeedSequence([seed, i, _CROSSCHECK]).generate_state(1)[0])
            theta, xs = simulate(sim, n_simulations, seed=child, workers=workers, progress=progress)
            trained = time.perf_counter()
            nle = NLE(sim.prior, **(nle_options or {}))
            nle.fit(theta, xs, **{"seed": seed, "progress": progress, **(training_options or {})})
            integrated = time.perf_counter()
            result = nle.nested(x_o, **options)
            evidences.setdefault("emulator", {})[name] = Evidence(
                result.log_evidence, result.log_evidence_err
            )
            seconds["simulate"] += trained - started
            seconds["train"] += integrated - trained
            seconds["nested"] += time.perf_counter() - integrated
    pairs = []
    for b, a in itertools.combinations(mc.names, 2):
        if mc.ensemble >= 2:
            log_k, err = mc.log_bayes_factor(x_o, a, b, return_std=True)
        else:
            log_k, err = mc.log_bayes_factor(x_o, a, b), math.nan
        pair = PairCheck(a, b, float(log_k), float(err))
        for source in SOURCES:
            per = evidences.get(source, {})
            if a in per and b in per:
                pair.nested[source] = Evidence(
                    per[a].log_z - per[b].log_z, math.hypot(per[a].err, per[b].err)
                )
        pairs.append(pair)
    return CrossCheck(evidences, pairs, {k: round(v, 2) for k, v in seconds.items()})


def _evidence(
    result: NestedResult,
    likelihood: _ExactLikelihood,
    prior: Any,
    importance_samples: int,
    seed: int,
) -> Evidence:
    """The log Z of dynesty, or with ``importance_samples`` its importance-sampling refinement."""
    if importance_samples <= 0:
        return Evidence(result.log_evidence, result.log_evidence_err)
    refined = importance_evidence(
        likelihood, prior, result.samples, num_samples=importance_samples, seed=seed
    )
    return Evidence(refined.log_evidence, refined.log_evidence_err)


class _ExactLikelihood:
    """``theta (B, D) -> log p(x_o | theta) (B,)`` from the simulator's exact likelihood."""

    def __init__(self, simulator: Any, x_o: Tensor) -> None:
        self.simulator, self.x_o = simulator, x_o

    def __call__(self, theta: Tensor) -> Tensor:
        log_l = torch.as_tensor(self.simulator.log_likelihood(theta, self.x_o))
        return torch.where(torch.isnan(log_l), torch.full_like(log_l, -math.inf), log_l)
