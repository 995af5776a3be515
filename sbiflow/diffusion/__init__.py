r"""Diffusion posteriors for inverse problems: a score prior over z, a likelihood of y, guidance.

``DiffusionPosterior(prior, likelihood, guidance="mmps").sample(n, y=y)`` draws
:math:`p(z \mid y) \propto p(z) p(y \mid z)`. The prior is a learned :class:`ScorePrior`
or a Gaussian with an exact score; the likelihood is linear-Gaussian (:math:`y = Az + n`),
any differentiable log-likelihood, or a fitted NLE.
"""

from sbiflow.diffusion.covariance import EigenCovariance, FourierCovariance
from sbiflow.diffusion.gaussian import GaussianScorePrior, gaussian_posterior, wiener_filter
from sbiflow.diffusion.guidance import GUIDANCES
from sbiflow.diffusion.likelihoods import LinearGaussianLikelihood, LogLikelihood
from sbiflow.diffusion.operators import GaussianNoise, LinearOperator, as_operator
from sbiflow.diffusion.posterior import DiffusionPosterior, summarize
from sbiflow.diffusion.sampling import SAMPLERS
from sbiflow.diffusion.score_prior import ScorePrior

__all__ = [
    "GUIDANCES",
    "SAMPLERS",
    "DiffusionPosterior",
    "EigenCovariance",
    "FourierCovariance",
    "GaussianNoise",
    "GaussianScorePrior",
    "LinearGaussianLikelihood",
    "LinearOperator",
    "LogLikelihood",
    "ScorePrior",
    "as_operator",
    "gaussian_posterior",
    "summarize",
    "wiener_filter",
]
