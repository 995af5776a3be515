"""Samplers on any batched log-likelihood and prior: ensemble MCMC (emcee), nested (dynesty)."""

from sbiflow.samplers.mcmc import MCMCResult, mcmc
from sbiflow.samplers.nested import NestedResult, nested
from sbiflow.samplers.prior_transform import UnsupportedPriorError, prior_transform

__all__ = [
    "MCMCResult",
    "NestedResult",
    "UnsupportedPriorError",
    "mcmc",
    "nested",
    "prior_transform",
]
