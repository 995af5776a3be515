"""Estimators put to work on θ and x: posteriors (NPE) and likelihood emulators (NLE)."""

from sbiflow.inference.base import NeuralInference, NotFittedError
from sbiflow.inference.npe import NPE, PriorSupportError

__all__ = ["NPE", "NeuralInference", "NotFittedError", "PriorSupportError"]
