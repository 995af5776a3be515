"""What a configuration names, made real: its simulator (a plug-in) and its observation.

``sbiflow`` never imports ``simulators``: a ``[simulator]`` section names a registry module
and a simulator in it, or a factory ``package.module:function`` (a module next to the config
file is found too), and this module imports it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import torch

from sbiflow.config import ConfigError, RunConfig, SimulatorSection

__all__ = ["observation", "resolve", "resolve_simulator"]


def resolve_simulator(config: RunConfig) -> Any:
    """The simulator named in the config, through a plug-in lookup (sbiflow never imports it)."""
    return resolve(config.simulator, config.base_dir)


def resolve(section: SimulatorSection, base_dir: str, label: str = "simulator") -> Any:
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


def observation(config: RunConfig, simulator: Any) -> torch.Tensor:
    """The observation x_o of ``[observation]``: its ``values``, or the simulator's ``index``."""
    section = config.observation
    if section.values:
        return torch.as_tensor(section.values, dtype=torch.float32)
    if not hasattr(simulator, "observation"):
        raise ConfigError("This simulator ships no observations: give observation.values = [...].")
    return torch.as_tensor(simulator.observation(section.index), dtype=torch.float32)
