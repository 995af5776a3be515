"""Pluggable simulators for sbiflow, importable on their own.

Example:
    >>> import numpy as np
    >>> import simulators
    >>> sim = simulators.get("two_moons")
    >>> x = sim.simulate(sim.prior.sample((8,)), np.random.default_rng(0))
    >>> tuple(x.shape)
    (8, 2)
"""

from __future__ import annotations

import importlib
from typing import Any

from simulators.base import Simulator, SimulatorBase

__all__ = ["Simulator", "SimulatorBase", "get", "names"]

# name -> "module:Class"; modules are imported on first use, so a heavy simulator costs
# nothing until asked for. A new simulator joins with one line here.
_REGISTRY: dict[str, str] = {
    "collider": "simulators.collider:Collider",
    "dwarf": "simulators.dwarf:Dwarf",
    "galaxy_field": "simulators.galaxy_field:GalaxyField",
    "gaussian_linear": "simulators.benchmarks:GaussianLinear",
    "gaussian_mixture": "simulators.benchmarks:GaussianMixture",
    "slcp": "simulators.benchmarks:SLCP",
    "two_moons": "simulators.benchmarks:TwoMoons",
}


def names() -> list[str]:
    """Names of the registered simulators, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> Simulator:
    """Build a registered simulator.

    Args:
        name: Registry name, e.g. ``"two_moons"`` (case and ``-``/``_`` are not significant).
        **options: Passed to the simulator's constructor.

    Returns:
        The simulator.

    Raises:
        KeyError: If ``name`` is unknown; the message lists the available names.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise KeyError(f"unknown simulator {name!r}; available: {', '.join(names())}")
    module, cls = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
