"""Nested sampling (dynesty) on any batched log-likelihood: evidence and posterior samples."""

from __future__ import annotations

import math  # noqa: F401  (the doctest uses it)
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbiflow.priors import prior_dim
from sbiflow.samplers.prior_transform import prior_transform as default_prior_transform
from sbiflow.samplers.support import log_likelihood_in_support

__all__ = ["NestedResult", "nested"]


@dataclass
class NestedResult:
    """Output of :func:`nested`.

    Attributes:
        samples: Equal-weight posterior samples in random order, ``(N, D)`` float32.
        log_evidence: log Z, the log marginal likelihood (the prior is normalized).
        log_evidence_err: dynesty's standard error of ``log_evidence``.
        information: Kullback-Leibler divergence from prior to posterior, nats.
        weights: Normalized importance weights of ``result.samples`` (the dead points).
        num_calls: Calls of ``log_likelihood`` (each call evaluates a batch of points).
        result: dynesty's ``Results``, for plots and further analysis.
    """

    samples: Tensor
    log_evidence: float
    log_evidence_err: float
    information: float
    weights: np.ndarray
    num_calls: int
    result: Any


class _Likelihood:
    """dynesty's log-likelihood, batched through a :class:`_BatchingPool` when one runs it.

    ``batch`` evaluates rows ``(B, D)`` in one call of the user's function (rows outside the
    prior's support get ``-inf``; NaN becomes ``-inf``). ``__call__`` takes the one point
    ``(D,)`` that dynesty asks for: inside a pool's ``map`` it queues the point and waits for
    the batch; elsewhere it evaluates it alone.
    """

    def __init__(self, log_likelihood: Callable[[Tensor], Tensor], prior: Distribution) -> None:
        self.log_likelihood, self.prior = log_likelihood, prior
        with torch.random.fork_rng(devices=[]):
            self.dtype = prior.sample().dtype
        self.pool: _BatchingPool | None = None
        self.num_calls = 0

    def batch(self, v: np.ndarray) -> np.ndarray:
        theta = torch.as_tensor(np.asarray(v, dtype=np.float32)).to(self.dtype)  # (B, D)
        log_l, inside = log_likelihood_in_support(self.log_likelihood, self.prior, theta)
        self.num_calls += int(bool(inside.any()))
        return log_l

    def __call__(self, v: np.ndarray) -> float:
        if self.pool is not None and self.pool.owns_current_thread():
            return self.pool.submit(np.asarray(v, dtype=np.float64))
        return float(self.batch(np.asarray(v)[None])[0])


class _BatchingPool:
    """A pool for dynesty whose ``map`` evaluates the likelihood in batches.

    dynesty's ``map(func, items)`` proposes one new point per item (``queue_size`` items),
    and each ``func`` calls the likelihood one point at a time (once for uniform sampling,
    ``walks`` times for random walks, ...). Here each item runs in its own thread; a thread
    that calls the likelihood queues its point and waits. Once every unfinished thread is
    waiting, the queued points are evaluated in one batched call, in item order, and the
    threads resume. The batches are the same in every run, so a seed reproduces the run.
    """

    def __init__(self, likelihood: _Likelihood, size: int) -> None:
        self.likelihood, self.size = likelihood, size
        self._lock = threading.Lock()
        self._all_waiting = threading.Condition(self._lock)
        self._local = threading.local()
        self._running = 0
        self._pending: dict[int, np.ndarray] = {}
        self._results: dict[int, float | BaseException] = {}
        self._wakeups: dict[int, threading.Event] = {}

    def owns_current_thread(self) -> bool:
        return getattr(self._local, "index", None) is not None

    def submit(self, v: np.ndarray) -> float:
        index = self._local.index
        wakeup = self._wakeups[index]
        with self._lock:
            self._pending[index] = v
            self._running -= 1
            if self._running == 0:
                self._all_waiting.notify()
        wakeup.wait()
        wakeup.clear()
        result = self._results.pop(index)
        if isinstance(result, BaseException):
            raise result
        return result

    def _work(self, index: int, func: Callable, item: Any, out: list, errors: list) -> None:
        self._local.index = index
        try:
            out[index] = func(item)
        except BaseException as error:  # handed to the caller of map
            errors[index] = error
        finally:
            self._local.index = None
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._all_waiting.notify()

    def map(self, func: Callable, items: Iterable) -> list:
        items = list(items)
        n = len(items)
        out: list = [None] * n
        errors: list = [None] * n
        self._wakeups = {i: threading.Event() for i in range(n)}
        self._running = n
        threads = [
            threading.Thread(target=self._work, args=(i, func, item, out, errors), daemon=True)
            for i, item in enumerate(items)
        ]
        for thread in threads:
            thread.start()
        with self._lock:
            while True:
                while self._running > 0:
                    self._all_waiting.wait()
                if not self._pending:
                    break
                indices = sorted(self._pending)
                points = np.stack([self._pending.pop(i) for i in indices])  # (B, D)
                try:
                    values: list = self.likelihood.batch(points).tolist()
                except BaseException as error:  # every waiting thread raises it
                    values = [error] * len(indices)
                self._running = len(indices)
                for i, value in zip(indices, values, strict=True):
                    self._results[i] = value
                    self._wakeups[i].set()
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None:
                raise error
        return out


def _resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` equal-weight draws by systematic resampling, in random order."""
    positions = (rng.random() + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0
    return rng.permutation(np.searchsorted(cumulative, positions))


def nested(
    log_likelihood: Callable[[Tensor], Tensor],
    prior: Distribution,
    *,
    nlive: int = 500,
    dlogz: float = 0.1,
    bound: str = "multi",
    sample: str = "auto",
    seed: int = 0,
    progress: bool = True,
    num_samples: int | None = None,
    prior_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int | None = None,
    maxcall: int | None = None,
) -> NestedResult:
    r"""Evidence :math:`Z = \int L(\theta) p(\theta) d\theta` and posterior by nested sampling.

    dynesty's static nested sampler, with the likelihood evaluated in batches: dynesty
    proposes ``batch_size`` new live points at a time (its ``queue_size``), and their
    likelihood calls are gathered into one call of ``log_likelihood`` each (see
    :class:`_BatchingPool`). A larger batch makes fewer calls but wastes more proposals
    (points proposed against an older likelihood threshold that the newer one rejects,
    about ``batch_size / (2 nlive)`` of them).

    Args:
        log_likelihood: Batched log-likelihood, ``(B, D) -> (B,)``, called only on rows inside
            the prior's support, in the prior's dtype; may return ``-inf``.
        prior: Prior with event shape ``(D,)``; see :func:`prior_transform` for the
            supported types, or pass ``prior_transform``.
        nlive: Live points. Larger: more accurate evidence (error ~ sqrt(information /
            nlive)) and more posterior samples, at proportional cost.
        dlogz: Stop when the estimated remaining evidence is below this (in log Z).
        bound: dynesty's bounding method (``"multi"``: multiple ellipsoids).
        sample: dynesty's sampling method; ``"auto"`` picks uniform sampling in the bound
            below 10 dimensions, random walks up to 20, slice sampling above.
        seed: Seeds dynesty's generator and the resampling of the posterior samples.
        progress: Print dynesty's progress line (on a terminal; into a log file, where it
            would write one line per iteration, a single summary line at the end instead).
        num_samples: Number of equal-weight posterior samples; default: as many as dynesty's
            own resampling gives (the number of dead points).
        prior_transform: Map from the unit cube to θ, ``(D,) -> (D,)`` numpy; default
            :func:`sbiflow.samplers.prior_transform` of ``prior``.
        batch_size: Points proposed (and evaluated) together; default ``max(1, nlive // 5)``.
            ``1`` evaluates one point per call, without threads.
        maxcall: Stop after this many likelihood evaluations (points, not batches).

    Returns:
        A :class:`NestedResult`.

    Example:
        >>> from sbiflow.priors import BoxUniform
        >>> prior = BoxUniform(-5 * torch.ones(2), 5 * torch.ones(2))
        >>> res = nested(lambda t: -0.5 * (t**2).sum(-1), prior, nlive=100, progress=False)
        >>> exact = math.log(2 * math.pi / 100)  # -2.77
        >>> abs(res.log_evidence - exact) < 3 * res.log_evidence_err
        True

    References:
        dynesty: a dynamic nested sampling package for estimating Bayesian posteriors and
        evidences (Speagle, 2020), arXiv:1904.02180.
    """
    import dynesty  # here, not at module level: ``import sbiflow`` stays light

    dim = prior_dim(prior)
    transform = prior_transform or default_prior_transform(prior)
    likelihood = _Likelihood(log_likelihood, prior)
    batch_size = max(1, nlive // 5) if batch_size is None else int(batch_size)
    pool = _BatchingPool(likelihood, batch_size) if batch_size > 1 else None
    likelihood.pool = pool
    sampler = dynesty.NestedSampler(
        likelihood,
        transform,
        dim,
        nlive=nlive,
        bound=bound,
        sample=sample,
        rstate=np.random.default_rng(seed),
        pool=pool,
        queue_size=batch_size if pool is not None else None,
        use_pool={"prior_transform": False, "update_bound": False},
    )
    interactive = sys.stderr.isatty()
    sampler.run_nested(dlogz=dlogz, maxcall=maxcall, print_progress=progress and interactive)
    res = sampler.results
    if progress and not interactive:
        print(
            f"dynesty: {res.niter} iterations, {int(np.sum(res.ncall))} likelihood calls, "
            f"log Z = {float(res.logz[-1]):.3f} ± {float(res.logzerr[-1]):.3f}",
            file=sys.stderr,
        )
    weights = res.importance_weights()
    rng = np.random.default_rng(seed)
    if num_samples is None:
        samples = res.samples_equal(rstate=rng)
    else:
        samples = res.samples[_resample(weights, int(num_samples), rng)]
    return NestedResult(
        samples=torch.as_tensor(samples, dtype=torch.float32),
        log_evidence=float(res.logz[-1]),
        log_evidence_err=float(res.logzerr[-1]),
        information=float(res.information[-1]),
        weights=weights,
        num_calls=likelihood.num_calls,
        result=res,
    )
