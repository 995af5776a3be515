"""Estimators put to work on θ and x: posteriors (NPE) and likelihood emulators (NLE)."""

from sbiflow.inference.base import NeuralInference, NotFittedError
from sbiflow.inference.nle import NLE
from sbiflow.inference.npe import NPE, PriorSupportError

__all__ = ["NLE", "NPE", "NeuralInference", "NotFittedError", "PriorSupportError"]
