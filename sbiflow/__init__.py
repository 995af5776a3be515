"""sbiflow: simulation-based inference for physicists.

A simulator and a prior go in; a calibrated posterior, a likelihood emulator, an evidence
and a model choice come out.
"""

from sbiflow import samplers
from sbiflow._version import __version__
from sbiflow.comparison import ModelComparison
from sbiflow.diffusion import (
    DiffusionPosterior,
    GaussianScorePrior,
    LinearGaussianLikelihood,
    LogLikelihood,
)
from sbiflow.diffusion.score_prior import ScorePrior
from sbiflow.inference import NLE, NPE, NotFittedError, PriorSupportError
from sbiflow.priors import BoxUniform
from sbiflow.serialization import ModelFileError, load, save
from sbiflow.simulate import simulate
from sbiflow.store import load_store
from sbiflow.training import TrainingDivergedError

__all__ = [
    "NLE",
    "NPE",
    "BoxUniform",
    "DiffusionPosterior",
    "GaussianScorePrior",
    "LinearGaussianLikelihood",
    "LogLikelihood",
    "ModelComparison",
    "ModelFileError",
    "NotFittedError",
    "PriorSupportError",
    "ScorePrior",
    "TrainingDivergedError",
    "__version__",
    "load",
    "load_store",
    "samplers",
    "save",
    "simulate",
]
