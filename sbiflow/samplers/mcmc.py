"""Ensemble MCMC (emcee) on any batched log-likelihood and prior, with automatic run length."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbiflow.priors import prior_dim
from sbiflow.samplers.support import log_likelihood_in_support

if TYPE_CHECKING:
    import emcee

__all__ = ["MCMCResult", "default_moves", "mcmc"]

#: Steps kept after burn-in, in autocorrelation times (see ``mcmc``).
SAMPLE_AUTOCORR_TIMES = 10
#: Least burn-in, in autocorrelation times.
BURN_IN_TIMES = 3
#: Thinning, in autocorrelation times.
THIN_TIMES = 1.0
#: Walkers at most by default (more samples than they fill then take longer chains).
MAX_DEFAULT_WALKERS = 4096
#: Prior draws per walker and round, and rounds at most, to pick the starting walkers from.
CANDIDATES_PER_WALKER, INIT_ROUNDS = 32, 4
#: Steps of the first round, and the least number of steps of every later round.
FIRST_ROUND, MIN_ROUND = 150, 50
#: Rows of one likelihood call while the starting candidates are scored.
INIT_BATCH = 8192


@dataclass
class MCMCResult:
    """Output of :func:`mcmc`.

    Attributes:
        samples: Posterior samples in random order, shape ``(num_samples, D)``, float32,
            inside the prior's support.
        chain: emcee's full chain, burn-in included, shape ``(steps, walkers, D)``.
        log_prob: Log target (log-likelihood + log prior) of the chain, ``(steps, walkers)``.
        autocorr_time: emcee's integrated autocorrelation time per parameter, ``(D,)``, steps.
        burn_in: Steps discarded at the start of every walker.
        thin: Every ``thin``-th step after burn-in was kept.
        acceptance_fraction: Mean acceptance fraction of the walkers.
        converged: Whether the chain met the run-length criterion before ``max_steps``.
        num_calls: Calls of ``log_likelihood`` (one per half-step, plus the initialization).
        sampler: The ``emcee.EnsembleSampler``, for further analysis or more steps.
    """

    samples: Tensor
    chain: np.ndarray
    log_prob: np.ndarray
    autocorr_time: np.ndarray
    burn_in: int
    thin: int
    acceptance_fraction: float
    converged: bool
    num_calls: int
    sampler: emcee.EnsembleSampler


def default_moves() -> list[tuple[emcee.moves.Move, float]]:
    """Moves that :func:`mcmc` gives emcee unless told otherwise.

    90% differential evolution and 10% stretch moves, with the accept step vectorized (see
    :func:`sbiflow.samplers.emcee_moves.default_moves` for the measurements behind them).
    """
    from sbiflow.samplers.emcee_moves import default_moves as moves

    return moves()


class _LogTarget:
    """Log-likelihood + log prior on numpy rows; ``-inf`` outside the support.

    The likelihood is called once per call, under ``torch.no_grad()``, on the rows inside
    the prior's support only. Rows are rounded to float32 first, so the returned samples are
    exactly the points that were evaluated (and checked against the support).
    """

    def __init__(self, log_likelihood: Callable[[Tensor], Tensor], prior: Distribution) -> None:
        self.log_likelihood, self.prior = log_likelihood, prior
        self.dim = prior_dim(prior)
        self.dtype = torch.float32
        self.num_calls = 0

    def log_prior(self, theta: Tensor) -> Tensor:
        """Prior log-density of rows ``(B, D)`` inside the support, ``(B,)``."""
        return self.prior.log_prob(theta if self.prior.event_shape else theta[:, 0])

    def split(self, theta: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood and log prior of rows ``(B, D)``, each ``(B,)`` float64, -inf outside."""
        log_l, inside = log_likelihood_in_support(self.log_likelihood, self.prior, theta)
        self.num_calls += int(bool(inside.any()))
        log_p = np.full(len(theta), -np.inf)
        if bool(inside.any()):
            with torch.no_grad():
                log_p[inside.numpy()] = self.log_prior(theta[inside]).to(torch.float64).numpy()
        return log_l, log_p

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        theta = torch.from_numpy(np.asarray(coords, dtype=np.float32)).to(self.dtype)
        log_l, log_p = self.split(theta)
        return log_l + log_p


def _initial_walkers(
    target: _LogTarget, num_walkers: int, seed: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Starting walkers ``(W, D)`` and their log target ``(W,)``: prior draws resampled.

    Prior draws are scored in rounds of ``CANDIDATES_PER_WALKER * W`` (at most
    ``INIT_ROUNDS`` rounds, fewer once the likelihood weights have an effective size of
    ``W``), and ``W`` of them are drawn without replacement with probability proportional
    to the likelihood (sampling-importance-resampling, by the Gumbel top-k trick). The
    walkers start near the posterior, spread over its modes in proportion to their mass
    (with an effective size below ``W`` the draw leans to the highest peaks), and not
    collapsed on one point.
    """
    num = CANDIDATES_PER_WALKER * num_walkers
    thetas, log_ls, log_ps = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(INIT_ROUNDS):
            theta = target.prior.sample((num,)).reshape(num, target.dim)
            target.dtype = theta.dtype
            theta = theta.to(torch.float32).to(theta.dtype)  # the float32 points the chain uses
            for chunk in theta.split(INIT_BATCH):
                log_l, log_p = target.split(chunk)
                log_ls.append(log_l)
                log_ps.append(log_p)
            thetas.append(theta)
            log_l = np.concatenate(log_ls)
            finite = log_l[np.isfinite(log_l)]
            weights = np.exp(finite - finite.max()) if len(finite) else finite
            if weights.sum() ** 2 >= num_walkers * (weights**2).sum() > 0:  # Kish's size
                break
    finite = int(np.isfinite(log_l).sum())
    if finite < num_walkers:
        raise ValueError(
            f"Only {finite} of {len(log_l)} prior draws have a finite likelihood, fewer than "
            f"the {num_walkers} walkers: pass starting points with init=, or check the likelihood."
        )
    pick = np.argsort(log_l + rng.gumbel(size=len(log_l)))[-num_walkers:]
    log_prob = log_l[pick] + np.concatenate(log_ps)[pick]
    return torch.cat(thetas)[pick].to(torch.float64).numpy(), log_prob


def _default_walkers(num_samples: int, dim: int) -> int:
    """Walkers that fill ``num_samples`` thinned samples in ``SAMPLE_AUTOCORR_TIMES`` τ."""
    filling = math.ceil(num_samples * THIN_TIMES / SAMPLE_AUTOCORR_TIMES)
    return min(max(512, 4 * dim, filling), max(MAX_DEFAULT_WALKERS, 4 * dim))


def _settling_step(log_prob: np.ndarray) -> int:
    """First step at which the walkers' mean log target reaches its typical level.

    The level is the median over the second half of the chain, ``log_prob`` is
    ``(steps, W)``. From a start that is already a posterior sample the mean is at its level
    within a few steps; from an over-dispersed start it climbs first, for as long as the
    ensemble takes to contract, which a burn-in of a few τ may not cover.
    """
    mean = log_prob.mean(axis=1)  # (steps,)
    reached = np.nonzero(mean >= np.median(mean[len(mean) // 2 :]))[0]
    return int(reached[0])


def _run_length(
    tau: float, settle: int, steps: int, walkers: int, num_samples: int
) -> tuple[int, int, int]:
    """Burn-in, thinning and the total steps needed, from the autocorrelation time ``tau``."""
    burn_in = max(math.ceil(BURN_IN_TIMES * tau), settle)
    thin = max(1, int(THIN_TIMES * tau))
    needed = burn_in + max(
        math.ceil(SAMPLE_AUTOCORR_TIMES * tau), thin * math.ceil(num_samples / walkers)
    )
    return min(burn_in, steps // 2), thin, needed


def _autocorr_time(sampler: emcee.EnsembleSampler) -> np.ndarray:
    """Integrated autocorrelation time per parameter ``(D,)``, batched over walkers.

    The estimator of ``emcee.autocorr.integrated_time`` (the walkers' mean normalized
    autocorrelation function, Sokal's window with c = 5), with one FFT over the whole chain
    instead of one per walker and parameter: emcee's loop took ~15% of a 2,000-walker run.
    A parameter that never moved gets ``inf``.
    """
    import emcee

    chain = sampler.get_chain()  # (steps, W, D)
    steps = chain.shape[0]
    size = 2 * emcee.autocorr.next_pow_two(steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        spectrum = np.fft.rfft(chain - chain.mean(axis=0), n=size, axis=0)
        acf = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=0)[:steps]
        acf = (acf / acf[0]).mean(axis=1)  # (steps, D)
    taus = 2.0 * np.cumsum(acf, axis=0) - 1.0
    tau = np.array(
        [taus[emcee.autocorr.auto_window(taus[:, d], 5), d] for d in range(taus.shape[1])]
    )
    return np.where(np.isfinite(tau), tau, np.inf)


def mcmc(
    log_likelihood: Callable[[Tensor], Tensor],
    prior: Distribution,
    num_samples: int = 10_000,
    *,
    num_walkers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    init: Tensor | np.ndarray | None = None,
    max_steps: int = 10_000,
    moves: list | emcee.moves.Move | None = None,
) -> MCMCResult:
    r"""Sample :math:`p(\theta \mid x) \propto L(\theta)\, p(\theta)` with emcee's ensemble.

    Each step-half evaluates ``log_likelihood`` once, batched over half the walkers, so the
    cost is about two likelihood calls per step. The run length comes from emcee's
    integrated autocorrelation time τ̂ (``get_autocorr_time``, largest over parameters),
    re-estimated after every round of steps:

    * burn-in: ``3 τ̂``, or longer if the walkers' mean log target is still climbing (the
      first step at which it reaches its median over the second half of the chain);
    * thinning: every ``τ̂``-th step (kept samples correlate by about e^-1);
    * stop once ``SAMPLE_AUTOCORR_TIMES = 10`` τ̂ follow the burn-in and at least
      ``num_samples`` thinned samples remain; the returned ones are drawn from these
      without replacement.

    emcee's guidance, a chain of 50 τ, is what a reliable estimate of τ from a few dozen
    walkers takes. Here the walkers start as an approximate posterior sample (below), so
    the chain is close to stationary from the start, and hundreds of walkers pool their
    samples: measured against exact posteriors (C2ST of 10,000 samples, where exact
    against exact gives 0.491-0.503), two moons reach 0.499-0.515 after only 100 to 800
    steps (4 to 40 τ), and a 10-D Gaussian started far too wide reaches 0.508 with this
    rule (377-442 steps, standard deviations within 3%) against 0.500 at 50 τ̂ (1,500
    steps). On short chains emcee's τ̂ is biased low (about 0.7 τ at 20 τ), so the burn-in
    is at least ~2 τ. If ``max_steps`` comes first, a ``RuntimeWarning`` says what to raise.

    Thinning by τ̂ over ``num_samples / 10`` walkers: 1,000 walkers fill 10,000 samples in
    the 10 τ̂ after burn-in, so a step is half the batch of 2,000 walkers thinned by 2 τ̂
    and the run half the time, at the same chain length. Measured with sbiflow's NLE
    emulators (C2ST of 10,000 samples against the reference, session 4): two moons,
    observations 1-3, 13.0 s and 0.494 / 0.508 / 0.532 by τ̂ against 20.3 s and
    0.509 / 0.510 / 0.526 by 2 τ̂; the 10-D linear Gaussian, observation 1, 0.515 against
    0.503 (sbi's slice sampler on its own emulator, 0.529). Thinner than τ̂ / 2 is not
    enough: 512 walkers thinned by τ̂ / 2 gave 0.610 there (an older emulator; 7% of the
    samples repeated, the rest strongly correlated).

    The walkers start at prior draws resampled in proportion to the likelihood
    (sampling-importance-resampling), which spreads them over the posterior's modes in
    proportion to their mass; the moves are differential evolution with 10% stretch moves
    (see :func:`default_moves`). Walkers cross rarely between well-separated modes, so each
    mode's weight keeps the binomial error of the start, about ``1 / (2 √W)``; where they
    cross slowly, τ̂ grows with the chain (the mode switching) and the run lasts longer.

    Args:
        log_likelihood: Batched log-likelihood, ``(B, D) -> (B,)``, called only on rows inside
            the prior's support, in the prior's dtype; may return ``-inf``.
        prior: Prior with event shape ``(D,)`` and ``sample`` / ``log_prob``.
        num_samples: Number of samples to return.
        num_walkers: emcee walkers; default ``num_samples / 10`` within
            ``[max(512, 4 D), 4096]`` (made even): 1,000 walkers fill 10,000 samples thinned
            by τ̂ within the 10 τ̂ after burn-in (fewer walkers need longer chains, more
            make each call longer) and hold each mode's weight to ~1.6%. A step costs two
            batched calls.
        seed: Seeds the starting points, emcee's random state and the final subsampling.
        progress: Show a progress bar over the steps.
        init: Starting walkers ``(W, D)`` inside the support, instead of the default.
        max_steps: Largest number of steps.
        moves: emcee moves (as for ``emcee.EnsembleSampler``); default :func:`default_moves`.

    Returns:
        An :class:`MCMCResult`; ``result.samples`` has shape ``(num_samples, D)``.

    Example:
        >>> from sbiflow.priors import BoxUniform
        >>> prior = BoxUniform(-5 * torch.ones(2), 5 * torch.ones(2))
        >>> result = mcmc(lambda t: -0.5 * (t**2).sum(-1), prior, 1000, progress=False)
        >>> result.samples.shape
        torch.Size([1000, 2])

    References:
        emcee: The MCMC Hammer (Foreman-Mackey et al., 2013), arXiv:1202.3665.
        A Markov chain Monte Carlo version of the genetic algorithm Differential Evolution
        (ter Braak, 2006), Statistics and Computing 16, 239-249.
    """
    target = _LogTarget(log_likelihood, prior)
    dim = target.dim
    rng = np.random.default_rng(seed)
    if init is None:
        walkers = num_walkers or _default_walkers(num_samples, dim)
        walkers += walkers % 2
        start, log_prob = _initial_walkers(target, walkers, seed, rng)
    else:
        start = torch.as_tensor(init).detach().to(torch.float32).to(torch.float64).numpy()
        if start.ndim != 2 or start.shape[1] != dim:
            raise ValueError(f"init must have shape (W, {dim}), got {tuple(start.shape)}.")
        with torch.random.fork_rng(devices=[]):
            target.dtype = prior.sample((1,)).dtype
        walkers = len(start)
        log_prob = target(start)
        if not np.isfinite(log_prob).all():
            raise ValueError("Every starting walker in init needs a finite log-likelihood.")

    import emcee

    from sbiflow.samplers.emcee_moves import VectorizedSampler

    sampler = VectorizedSampler(
        walkers, dim, target, vectorize=True, moves=default_moves() if moves is None else moves
    )
    random_state = np.random.RandomState(seed).get_state()
    state = emcee.State(start, log_prob=log_prob, random_state=random_state)
    goal = min(FIRST_ROUND, max_steps)
    tau = np.full(dim, np.inf)
    with tqdm(total=goal, desc="emcee", unit="step", disable=not progress) as bar:
        while True:
            for _ in sampler.sample(state, iterations=goal - sampler.iteration):
                bar.update(1)
            state = sampler.get_last_sample()
            steps = sampler.iteration
            tau = _autocorr_time(sampler)
            tau_max = float(tau.max())
            if not math.isfinite(tau_max):
                burn_in, thin, needed = steps // 2, 1, max_steps + 1
            else:
                settle = _settling_step(sampler.get_log_prob())
                burn_in, thin, needed = _run_length(
                    max(tau_max, 1.0), settle, steps, walkers, num_samples
                )
            bar.set_postfix(
                tau=f"{tau_max:.1f}", accept=f"{sampler.acceptance_fraction.mean():.2f}"
            )
            if steps >= needed or steps >= max_steps:
                break
            goal = min(max_steps, max(needed, steps + MIN_ROUND))
            bar.total = goal
            bar.refresh()

    converged = steps >= needed
    kept = walkers * ((steps - burn_in) // thin)
    if kept < num_samples:  # only when max_steps cut the run short
        thin = max(1, (steps - burn_in) * walkers // num_samples)
        kept = walkers * ((steps - burn_in) // thin)
    if not converged:
        warnings.warn(
            f"emcee stopped at max_steps={max_steps}: the chain is {steps / tau_max:.1f} "
            f"autocorrelation times long (τ ≈ {tau_max:.0f} steps), short of a burn-in plus "
            f"{SAMPLE_AUTOCORR_TIMES} τ and {num_samples} thinned samples. "
            f"Raise max_steps (to ~{needed} or more) or start the walkers nearer the "
            f"posterior (init=). If τ keeps growing with the chain, the walkers may be "
            f"crossing slowly between separated modes, whose weights then come from the "
            f"starting walkers: more walkers (num_walkers=) make them more precise.",
            RuntimeWarning,
            stacklevel=2,
        )
    pool = sampler.get_chain(discard=burn_in, thin=thin, flat=True)  # (kept, D)
    pick = rng.choice(len(pool), size=num_samples, replace=kept < num_samples)
    return MCMCResult(
        samples=torch.as_tensor(pool[pick], dtype=torch.float32),
        chain=sampler.get_chain(),
        log_prob=sampler.get_log_prob(),
        autocorr_time=tau,
        burn_in=burn_in,
        thin=thin,
        acceptance_fraction=float(np.mean(sampler.acceptance_fraction)),
        converged=converged,
        num_calls=target.num_calls,
        sampler=sampler,
    )
