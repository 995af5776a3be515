"""Samplers on any batched log-likelihood and prior: MCMC (emcee), nested sampling (dynesty).

And the evidence by importance sampling from a proposal built on posterior samples.
"""

from sbiflow.samplers.importance import ImportanceEvidence, importance_evidence
from sbiflow.samplers.mcmc import MCMCResult, mcmc
from sbiflow.samplers.nested import NestedResult, nested
from sbiflow.samplers.prior_transform import UnsupportedPriorError, prior_transform

__all__ = [
    "ImportanceEvidence",
    "MCMCResult",
    "NestedResult",
    "UnsupportedPriorError",
    "importance_evidence",
    "mcmc",
    "nested",
    "prior_transform",
]
