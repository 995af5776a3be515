"""Neural likelihood estimation: an emulator q(x | θ) that samplers draw on."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbiflow.estimators import FLOW_KINDS
from sbiflow.inference.base import NeuralInference
from sbiflow.priors import validate_theta
from sbiflow.samplers import MCMCResult, NestedResult, mcmc, nested
from sbiflow.training import default_threads, threads_for

__all__ = ["NLE"]

#: Rows (θ × trials) per network call when evaluating the likelihood.
_CHUNK = 65_536


class NLE(NeuralInference):
    r"""Neural likelihood estimation: a conditional density :math:`q(x \mid \theta)`.

    The trained emulator gives a log-likelihood for any observation, including ``n`` iid
    trials (their log-likelihoods add up), that emcee (:meth:`sample`, :meth:`mcmc`) and
    dynesty (:meth:`nested`) turn into posterior samples and an evidence. It is also a fast
    stand-in for the simulator (:meth:`simulate`). Flow estimators model vectors, so x is
    flattened to ``(prod(x_shape),)``.

    Example:
        >>> import sbiflow
        >>> prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn(500, 2)
        >>> nle = sbiflow.NLE(prior).fit(theta, x, max_epochs=2, progress=False)
        >>> nle.log_likelihood(prior.sample((7,)), torch.zeros(2)).shape
        torch.Size([7])

    Defaults: a MAF (as sbi's NLE) whose flow layers follow a context-dependent elementwise
    shift and scale (``conditional_affine=True``), so a likelihood whose location and width
    move with θ is exact from the first layer and the autoregressive layers model only the
    shape around it. On 10⁴ simulations this lowers the held-out KL to the true likelihood
    of gaussian_linear (10-d) from 0.34 (NSF) to 0.11 nats and the two-moons test NLL from
    -4.10 (NSF) to -4.21 (docs/results/history_nle.md). Pass ``conditional_affine=False`` for the
    plain flow.

    The MAF starts at the least-squares linear-Gaussian fit of x on θ (``linear_start=True``:
    a linear term in that shift, set by least squares, and autoregressive layers that start
    as the identity); training refines it. On 10 iid trials of gaussian_linear the
    emulator's error adds up coherently over the trials; this start brings the posterior-mean
    shift it causes from 0.5-1.3 to 0.35-0.55 posterior sigmas, the error of the
    least-squares fit itself (docs/results/nle_evidence.md).

    Args:
        prior: Any ``torch.distributions.Distribution`` over θ with event shape ``(D,)``.
        estimator: Estimator family, one of ``sbiflow.estimators.ESTIMATORS``.
        embedding_net: Network for θ (default: none).
        device: Torch device for training and sampling.
        **estimator_options: Passed to the estimator (e.g. ``hidden_features=64``).

    References:
        Sequential neural likelihood (Papamakarios, Sterratt & Murray, 2019),
        arXiv:1805.07226.
    """

    def __init__(
        self,
        prior: Distribution,
        estimator: str = "maf",
        embedding_net: nn.Module | str | dict[str, Any] | None = "auto",
        device: str = "cpu",
        **estimator_options: Any,
    ) -> None:
        if estimator in FLOW_KINDS:
            estimator_options.setdefault("conditional_affine", True)
        if estimator == "maf" and estimator_options["conditional_affine"]:
            estimator_options.setdefault("linear_start", True)
        super().__init__(prior, estimator, embedding_net, device, **estimator_options)

    def _roles(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(start_dim=1), theta

    def _x_standardizer(self) -> nn.Module:
        return self._trained().a_standardizer

    def _warn_if_outside_training_range(self, x: Tensor) -> None:
        super()._warn_if_outside_training_range(x.flatten(start_dim=1))

    @torch.no_grad()
    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Emulator log-likelihood :math:`\sum_i \log q(x_i \mid \theta)` over iid trials.

        Args:
            theta: Parameters, shape ``(B, D)``; any values (the prior is the sampler's).
            x: One observation ``x_shape`` or iid trials ``(n, *x_shape)``.

        Returns:
            Log-likelihoods, shape ``(B,)``.
        """
        trials = self._observation(x, allow_trials=True)
        return self._log_likelihood(validate_theta(self.prior, theta), trials)

    def differentiable_log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""As :meth:`log_likelihood`, differentiable in θ (for guidance and gradient samplers).

        Args:
            theta: Parameters ``(B, D)``.
            x: One observation ``x_shape`` or iid trials ``(n, *x_shape)``.

        Returns:
            :math:`\sum_i \log q(x_i \mid \theta)`, shape ``(B,)``, with autograd's graph.
        """
        return self._log_likelihood(theta, self._observation(x, allow_trials=True))

    def _log_likelihood(self, theta: Tensor, trials: Tensor) -> Tensor:
        """``theta`` ``(B, D)``, checked ``trials`` ``(n, *x_shape)`` on the device → ``(B,)``."""
        estimator = self._trained()
        n = trials.shape[0]
        x_rows = trials.flatten(start_dim=1)  # (n, D_x)
        theta = theta.to(self.device, torch.float32)
        out = []
        step = max(1, _CHUNK // n)
        for start in range(0, theta.shape[0], step):
            th = theta[start : start + step]  # (b, D)
            b = th.shape[0]
            logq = estimator.log_prob(
                x_rows.repeat(b, 1),  # (b n, D_x): trial index fastest
                th.repeat_interleave(n, dim=0),  # (b n, D)
            )
            out.append(logq.view(b, n).sum(dim=1))
        return torch.cat(out).cpu() if out else theta.new_zeros(0).cpu()

    def _target(self, x: Tensor) -> _EmulatorLikelihood:
        return _EmulatorLikelihood(self, self._observation(x, allow_trials=True))

    @torch.no_grad()
    def simulate(self, theta: Tensor, *, seed: int | None = None) -> Tensor:
        """The emulator as a simulator: one x per parameter row.

        Args:
            theta: Parameters, shape ``(B, D)``.
            seed: Seed for reproducible draws (``None``: torch's global RNG).

        Returns:
            Emulated simulations, shape ``(B, *x_shape)``.
        """
        estimator = self._trained()
        theta = validate_theta(self.prior, theta).to(self.device)
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            x = estimator.sample_each(theta)
        assert self.x_shape is not None
        return x.cpu().reshape(theta.shape[0], *self.x_shape)

    def mcmc(self, n: int, x: Tensor, **options: Any) -> MCMCResult:
        """Posterior samples by emcee on the emulator likelihood, with the chain.

        Args:
            n: Number of posterior samples.
            x: One observation ``x_shape`` or iid trials ``(n_trials, *x_shape)``.
            **options: Passed to :func:`sbiflow.samplers.mcmc` (``num_walkers``, ``seed``,
                ``progress``, ...).

        Returns:
            The sampler's result: ``.samples`` ``(n, D)``, ``.chain``, autocorrelation times.
        """
        return mcmc(self._target(x), self.prior, n, **options)

    def sample(self, n: int, x: Tensor, **options: Any) -> Tensor:
        """Posterior samples by emcee on the emulator likelihood.

        Args:
            n: Number of posterior samples.
            x: One observation ``x_shape`` or iid trials ``(n_trials, *x_shape)``.
            **options: Passed to :func:`sbiflow.samplers.mcmc` (see :meth:`mcmc`).

        Returns:
            Samples, shape ``(n, D)``.
        """
        return self.mcmc(n, x, **options).samples

    def nested(self, x: Tensor, **options: Any) -> NestedResult:
        """Nested sampling (dynesty) of the posterior and the evidence.

        Args:
            x: One observation ``x_shape`` or iid trials ``(n_trials, *x_shape)``.
            **options: Passed to :func:`sbiflow.samplers.nested` (``nlive``, ``seed``, ...).

        Returns:
            ``.samples`` (equal weights), ``.log_evidence`` and ``.log_evidence_err``: the
            evidence of the emulator likelihood under the prior.
        """
        return nested(self._target(x), self.prior, **options)


class _EmulatorLikelihood:
    """``theta (B, D) -> log q(x_o | theta) (B,)`` for one checked observation."""

    def __init__(self, nle: NLE, trials: Tensor) -> None:
        self.nle, self.trials = nle, trials
        self.num_threads = default_threads(nle._trained())  # decided once, not per call

    @torch.no_grad()
    def __call__(self, theta: Tensor) -> Tensor:
        with threads_for(self.nle._trained(), self.num_threads):
            logq = self.nle._log_likelihood(
                torch.as_tensor(theta, dtype=torch.float32), self.trials
            )
        return torch.where(torch.isnan(logq), torch.full_like(logq, -math.inf), logq)
