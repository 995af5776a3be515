"""Conditional density estimators q(a | b), one module per family."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from sbiflow.estimators.base import ConditionalEstimator, Standardizer
from sbiflow.estimators.flows import FLOW_KINDS, FlowEstimator

__all__ = [
    "ESTIMATORS",
    "ConditionalEstimator",
    "FlowEstimator",
    "Standardizer",
    "build_estimator",
]

# name -> "module:Class"; the class takes (a_shape, b_shape, embedding_net=..., **options).
# A new family joins with one line here.
_REGISTRY: dict[str, str] = {
    "cvae": "sbiflow.estimators.cvae:CVAEEstimator",
    "ensemble": "sbiflow.estimators.ensemble:EnsembleEstimator",
    "score": "sbiflow.estimators.score:ScoreEstimator",
}

ESTIMATORS: tuple[str, ...] = (*FLOW_KINDS, *_REGISTRY)


def build_estimator(
    kind: str,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    embedding_net: nn.Module | None = None,
    **options: Any,
) -> ConditionalEstimator:
    """Build an estimator q(a | b) by name.

    Args:
        kind: One of :data:`ESTIMATORS`.
        a_shape: Shape of one a.
        b_shape: Shape of one b.
        embedding_net: Optional network applied to standardized b.
        **options: Family-specific options (e.g. ``hidden_features``).
    """
    if kind in FLOW_KINDS:
        return FlowEstimator(kind, a_shape, b_shape, embedding_net=embedding_net, **options)
    if kind in _REGISTRY:
        module, cls = _REGISTRY[kind].split(":")
        family = getattr(importlib.import_module(module), cls)
        return family(a_shape, b_shape, embedding_net=embedding_net, **options)
    raise ValueError(f"Unknown estimator {kind!r}; choose one of {list(ESTIMATORS)}.")
