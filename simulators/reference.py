"""Reference posteriors by MCMC on an exact likelihood (emcee), shared by the simulators."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["emcee_posterior"]


def emcee_posterior(
    log_target: Callable[[np.ndarray], np.ndarray],
    candidates: np.ndarray,
    n: int,
    rng: np.random.Generator,
    num_walkers: int = 100,
    burn_in: int = 1500,
    thin: int = 100,
) -> np.ndarray:
    """Posterior samples from emcee's ensemble sampler on a vectorized log-target.

    The walkers start at the ``num_walkers`` candidates of highest log-target (e.g. the best
    of many prior draws), which puts them in the bulk of the posterior before burn-in.

    Args:
        log_target: Log posterior up to a constant, ``(B, D) -> (B,)``; ``-inf`` outside the
            support. Must be picklable if the caller wants to parallelize it.
        candidates: Starting candidates, shape ``(M, D)`` with ``M >= num_walkers``.
        n: Number of samples wanted.
        rng: The only source of randomness.
        num_walkers: emcee walkers (at least ``2 D``).
        burn_in: Steps discarded at the start of every chain.
        thin: Keep every ``thin``-th step (about one autocorrelation time or more).

    Returns:
        Samples, shape ``(n, D)``, in random order.
    """
    import emcee  # here: simulation workers import this module but never sample

    if len(candidates) < num_walkers:
        raise ValueError(f"need at least {num_walkers} candidates, got {len(candidates)}.")
    start = candidates[np.argsort(log_target(candidates))[-num_walkers:]]  # (W, D)
    steps = burn_in + thin * -(-n // num_walkers)
    sampler = emcee.EnsembleSampler(num_walkers, candidates.shape[1], log_target, vectorize=True)
    seed = int(rng.integers(2**32))
    state = emcee.State(start, random_state=np.random.RandomState(seed).get_state())
    sampler.run_mcmc(state, steps, progress=False)
    chain = sampler.get_chain(discard=burn_in, thin=thin, flat=True)  # (>= n, D)
    return chain[rng.permutation(len(chain))[:n]]
