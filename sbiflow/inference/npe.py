"""Neural posterior estimation: q(θ | x) trained on simulations, restricted to the prior."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sbiflow.embeddings import default_embedding
from sbiflow.inference.base import NeuralInference
from sbiflow.priors import in_support, validate_theta
from sbiflow.training import threads_for

__all__ = ["NPE", "PriorSupportError"]

#: Below this acceptance rate, sampling warns that mass leaks out of the prior.
LOW_ACCEPTANCE = 0.01
#: Below this rate (after enough proposals), sampling gives up: the posterior is broken.
HOPELESS_ACCEPTANCE = 1e-4


class PriorSupportError(RuntimeError):
    """Almost no posterior samples fall inside the prior's support."""


class NPE(NeuralInference):
    r"""Neural posterior estimation: a conditional density :math:`q(\theta \mid x)`.

    Samples are restricted to the prior's support by rejection; ``log_prob`` is renormalized
    for the mass the estimator puts outside it.

    Example:
        >>> import sbiflow
        >>> prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn(500, 2)
        >>> npe = sbiflow.NPE(prior).fit(theta, x, max_epochs=2, progress=False)
        >>> npe.sample(100, x=torch.zeros(2)).shape
        torch.Size([100, 2])

    References:
        Automatic posterior transformation for likelihood-free inference
        (Greenberg et al., 2019), arXiv:1905.07488.
    """

    def _roles(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return theta, x

    def _x_standardizer(self) -> nn.Module:
        return self._trained().b_standardizer

    def _default_embedding(self, b: Tensor) -> nn.Module | None:
        return default_embedding(b)

    @torch.no_grad()
    def sample(
        self, n: int, x: Tensor, *, seed: int | None = None, iid_method: str = "gauss"
    ) -> Tensor:
        """Draw posterior samples inside the prior's support.

        Args:
            n: Number of samples.
            x: One observation, shape ``x_shape`` (or ``(1, *x_shape)``); with
                ``estimator="score"`` also iid trials ``(k, *x_shape)``, whose posterior is
                composed from the single-observation model (``ScoreEstimator.sample_iid``).
            seed: Seed for reproducible samples (``None``: torch's global RNG).
            iid_method: Composition of iid trials, ``"gauss"`` or ``"geffner"``.

        Returns:
            Samples, shape ``(n, D)``.

        Raises:
            PriorSupportError: If fewer than 1 in 10⁴ proposals fall inside the prior.
        """
        estimator = self._trained()
        trials = self._observation(x, allow_trials=hasattr(estimator, "sample_iid"))

        def draw(m: int) -> Tensor:
            if trials.shape[0] > 1:
                return estimator.sample_iid(m, trials, self.prior, method=iid_method)
            return estimator.sample(m, trials[0])

        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            with threads_for(estimator):
                samples, rate = self._rejection_sample(draw, n)
        if rate < LOW_ACCEPTANCE:
            warnings.warn(
                f"Only {rate:.2%} of posterior samples fell inside the prior's support: the "
                "estimator puts most of its mass outside the prior. Is the observation far "
                "from the training simulations?",
                UserWarning,
                stacklevel=2,
            )
        return samples.cpu()

    def _rejection_sample(self, draw: Callable[[int], Tensor], n: int) -> tuple[Tensor, float]:
        kept: list[Tensor] = []
        n_kept, n_proposed, rate = 0, 0, 1.0
        while n_kept < n:
            want = min(int(1.2 * (n - n_kept) / max(rate, 1e-3)) + 16, 100_000)
            proposal = draw(want)
            inside = in_support(self.prior, proposal.cpu())
            kept.append(proposal[inside.to(proposal.device)])
            n_kept += int(inside.sum())
            n_proposed += want
            rate = n_kept / n_proposed
            if n_proposed >= 10_000 and rate < HOPELESS_ACCEPTANCE:
                raise PriorSupportError(
                    f"Only {n_kept} of {n_proposed} posterior samples fell inside the prior's "
                    "support. The estimator is not usable for this observation: it is probably "
                    "far outside the training simulations, or training failed."
                )
        return torch.cat(kept)[:n], rate

    @torch.no_grad()
    def log_prob(
        self, theta: Tensor, x: Tensor, *, normalize: bool = True, num_samples: int = 10_000
    ) -> Tensor:
        r"""Posterior log density :math:`\log q(\theta \mid x_o)` restricted to the prior.

        Args:
            theta: Parameters, shape ``(B, D)``.
            x: One observation, shape ``x_shape``.
            normalize: Renormalize for the estimator's mass outside the prior, estimated
                from ``num_samples`` seeded draws (cached per observation).
            num_samples: Draws for that estimate.

        Returns:
            Log densities ``(B,)``; ``-inf`` outside the prior's support.
        """
        estimator = self._trained()
        theta = validate_theta(self.prior, theta)
        x_o = self._observation(x)
        logq = estimator.log_prob(theta.to(self.device), x_o.expand(theta.shape[0], *x_o.shape[1:]))
        logq = logq.cpu()
        if normalize:
            logq = logq - math.log(self._acceptance_rate(x_o[0], num_samples))
        return torch.where(in_support(self.prior, theta), logq, torch.full_like(logq, -math.inf))

    def _acceptance_rate(self, x_o: Tensor, num_samples: int) -> float:
        key = ("acceptance", x_o.cpu().numpy().tobytes(), num_samples)
        cache = self._cache
        if key not in cache:
            with torch.random.fork_rng():  # a fixed seed: log_prob is a deterministic function
                torch.manual_seed(0)
                proposal = self._trained().sample(num_samples, x_o)
            inside = in_support(self.prior, proposal.cpu())
            cache[key] = max(float(inside.float().mean()), 1.0 / num_samples)
        return cache[key]
