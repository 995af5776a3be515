"""Model comparison: model probabilities, Bayes factors, calibration, misspecification, cross-check.

Example:
    >>> from sbiflow.comparison import ModelComparison
    >>> from sbiflow.comparison.analytic import prior_widths
    >>> mc = ModelComparison(prior_widths(dim=2, widths=(1.0, 3.0)))
    >>> mc.fit(500, max_epochs=1, progress=False).names
    ['width_1', 'width_3']
"""

from sbiflow.comparison.analytic import LinearGaussianModel, nested_regressions, prior_widths
from sbiflow.comparison.calibration import Calibration
from sbiflow.comparison.crosscheck import CrossCheck, Evidence, PairCheck
from sbiflow.comparison.losses import LOSSES
from sbiflow.comparison.misspecification import Misspecification
from sbiflow.comparison.model_comparison import ModelComparison

__all__ = [
    "LOSSES",
    "Calibration",
    "CrossCheck",
    "Evidence",
    "LinearGaussianModel",
    "Misspecification",
    "ModelComparison",
    "PairCheck",
    "nested_regressions",
    "prior_widths",
]
