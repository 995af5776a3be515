"""sbiflow: simulation-based inference for physicists.

A simulator and a prior go in; a calibrated posterior, a likelihood emulator, an evidence
and a model choice come out.
"""

__version__ = "0.1.0"

from sbiflow import samplers  # noqa: E402
from sbiflow.comparison import ModelComparison  # noqa: E402
from sbiflow.diffusion import (  # noqa: E402
    DiffusionPosterior,
    GaussianScorePrior,
    LinearGaussianLikelihood,
    LogLikelihood,
)
from sbiflow.diffusion.score_prior import ScorePrior  # noqa: E402
from sbiflow.inference import NLE, NPE, NotFittedError, PriorSupportError  # noqa: E402
from sbiflow.priors import BoxUniform  # noqa: E402
from sbiflow.serialization import ModelFileError, load, save  # noqa: E402
from sbiflow.simulate import simulate  # noqa: E402
from sbiflow.store import load_store  # noqa: E402
from sbiflow.training import TrainingDivergedError  # noqa: E402

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
