r"""Diffusion maths for score models: forward SDEs, reverse-time samplers, the ODE density.

Everything here acts on a score function ``score_fn(z, t) -> (N, D)`` of the diffused
variable :math:`z_t` and knows nothing about networks, so a learned score, a sum of scores
(iid composition) or an analytic one all use the same samplers.

The forward process is linear: :math:`z_t = m_t z_0 + \sigma_t \epsilon`, with
:math:`dz = f(t) z\,dt + g(t)\,dw`. Sampling runs the reverse-time SDE
:math:`dz = [f z - g^2 \nabla \log p_t(z)]\,dt + g\,d\bar w` or the probability-flow ODE
:math:`dz/dt = f z - \tfrac12 g^2 \nabla \log p_t(z)` from :math:`t = 1` to :math:`t_{\min}`.

References:
    Score-Based Generative Modeling through Stochastic Differential Equations
    (Song et al., 2021), arXiv:2011.13456.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, Uniform

__all__ = [
    "SDE",
    "BoxPrior",
    "GaussianPrior",
    "VESDE",
    "VPSDE",
    "ScoreFn",
    "VelocityFn",
    "euler_maruyama",
    "heun_ode",
    "make_sde",
    "ode_log_prob",
    "standardized_prior",
    "time_grid",
]

#: A score ``(z (N, D), t scalar tensor) -> (N, D)``.
ScoreFn = Callable[[Tensor, Tensor], Tensor]
#: A probability-flow velocity with the same signature.
VelocityFn = Callable[[Tensor, Tensor], Tensor]


class SDE:
    r"""A linear forward SDE :math:`dz = f(t) z\,dt + g(t)\,dw` on :math:`t \in [0, 1]`.

    Subclasses give the marginal scale :math:`m_t` and noise :math:`\sigma_t` of
    :math:`z_t \mid z_0 \sim \mathcal{N}(m_t z_0, \sigma_t^2 I)`, the drift factor
    :math:`f(t)` and the squared diffusion :math:`g(t)^2`. Times are tensors (any shape).
    """

    kind = "base"

    def mean_scale(self, t: Tensor) -> Tensor:
        r""":math:`m_t`."""
        raise NotImplementedError

    def std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t`."""
        raise NotImplementedError

    def drift(self, t: Tensor) -> Tensor:
        r""":math:`f(t)`, the drift is ``f(t) * z``."""
        raise NotImplementedError

    def diffusion2(self, t: Tensor) -> Tensor:
        r""":math:`g(t)^2`."""
        raise NotImplementedError

    def terminal_var(self) -> float:
        """Variance per dimension of :math:`z_1` for data of unit variance (the sampler's start)."""
        one = torch.ones((), dtype=torch.float64)
        return float(self.mean_scale(one) ** 2 + self.std(one) ** 2)


class VPSDE(SDE):
    r"""Variance-preserving SDE: :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`.

    :math:`f = -\beta/2`, :math:`g^2 = \beta`, :math:`m_t = e^{-\frac12\int_0^t \beta}`,
    :math:`\sigma_t^2 = 1 - m_t^2`.

    Args:
        beta_min: :math:`\beta(0)`.
        beta_max: :math:`\beta(1)`.
    """

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"Need 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_mean_scale(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def mean_scale(self, t: Tensor) -> Tensor:
        r""":math:`m_t = e^{-\frac12\int_0^t \beta}`."""
        return self._log_mean_scale(t).exp()

    def std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t = \sqrt{1 - m_t^2}`."""
        return (-torch.expm1(2.0 * self._log_mean_scale(t))).sqrt()

    def drift(self, t: Tensor) -> Tensor:
        r""":math:`f = -\beta(t)/2`."""
        return -0.5 * self.diffusion2(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        r""":math:`g^2 = \beta(t)`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)


class VESDE(SDE):
    r"""Variance-exploding SDE: :math:`\sigma_t = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t`.

    :math:`f = 0`, :math:`m_t = 1`, :math:`g^2 = d\sigma_t^2/dt`.

    Args:
        sigma_min: Noise at :math:`t = 0`.
        sigma_max: Noise at :math:`t = 1`; should exceed the data's spread.
    """

    kind = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def mean_scale(self, t: Tensor) -> Tensor:
        r""":math:`m_t = 1`."""
        return torch.ones_like(t)

    def std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t`."""
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift(self, t: Tensor) -> Tensor:
        r""":math:`f = 0`."""
        return torch.zeros_like(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        r""":math:`g^2 = 2\log(\sigma_{\max}/\sigma_{\min})\,\sigma_t^2`."""
        return 2.0 * self._log_ratio * self.std(t) ** 2


def make_sde(
    kind: str, beta_min: float, beta_max: float, sigma_min: float, sigma_max: float
) -> SDE:
    """The SDE named ``kind`` (``"vp"`` or ``"ve"``) with its parameters."""
    if kind == "vp":
        return VPSDE(beta_min, beta_max)
    if kind == "ve":
        return VESDE(sigma_min, sigma_max)
    raise ValueError(f"Unknown SDE {kind!r}; choose 'vp' or 've'.")


def time_grid(steps: int, t_min: float, rho: float = 1.0) -> Tensor:
    r"""Decreasing times from 1 to ``t_min``, ``steps + 1`` of them.

    :math:`t_k = (1 + \tfrac{k}{S}(t_{\min}^{1/\rho} - 1))^\rho`: uniform for
    :math:`\rho = 1`, denser near :math:`t_{\min}` (where the score changes fastest) for
    :math:`\rho > 1`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return (1.0 + u * (t_min ** (1.0 / rho) - 1.0)) ** rho


def euler_maruyama(
    score_fn: ScoreFn,
    sde: SDE,
    z: Tensor,
    times: Tensor,
    corrector_steps: int = 0,
    snr: float = 0.1,
) -> Tensor:
    r"""Reverse-time SDE by Euler–Maruyama, with optional Langevin corrector steps.

    Each predictor step :math:`z \leftarrow z - h(fz - g^2 s) + g\sqrt{h}\,\xi`; the last step
    adds no noise. With ``corrector_steps > 0`` this is the predictor–corrector sampler of
    Song et al. (2021, Alg. 1): after each predictor step, Langevin steps
    :math:`z \leftarrow z + \epsilon s + \sqrt{2\epsilon}\,\xi` with
    :math:`\epsilon = 2(\mathrm{snr}\,\|\xi\| / \|s\|)^2`, norms averaged over the batch.

    Args:
        score_fn: Score of :math:`p_t`.
        sde: The forward SDE.
        z: Start, draws of :math:`p_1`, shape ``(N, D)``.
        times: Decreasing times ``(S + 1,)`` from 1 to :math:`t_{\min}` (:func:`time_grid`).
        corrector_steps: Langevin steps after each predictor step.
        snr: Signal-to-noise ratio setting the Langevin step size.

    Returns:
        Samples at :math:`t_{\min}`, shape ``(N, D)``.
    """
    times = times.to(z.dtype)
    for k in range(len(times) - 1):
        t, h = times[k], times[k] - times[k + 1]
        g2 = sde.diffusion2(t)
        z_mean = z - h * (sde.drift(t) * z - g2 * score_fn(z, t))
        last = k == len(times) - 2
        z = z_mean if last else z_mean + (g2 * h).sqrt() * torch.randn_like(z)
        for _ in range(0 if last else corrector_steps):
            z = _langevin_step(score_fn, z, times[k + 1], snr)
    return z


def _langevin_step(score_fn: ScoreFn, z: Tensor, t: Tensor, snr: float) -> Tensor:
    score = score_fn(z, t)
    noise = torch.randn_like(z)
    # Norms averaged over the batch (per-sample ones blow up near a mode, where s -> 0).
    ratio = noise.norm(dim=-1).mean() / score.norm(dim=-1).mean().clamp_min(1e-12)
    step = 2.0 * (snr * ratio) ** 2
    return z + step * score + (2.0 * step).sqrt() * noise


def heun_ode(score_fn: ScoreFn, sde: SDE, z: Tensor, times: Tensor) -> Tensor:
    r"""Probability-flow ODE :math:`dz/dt = fz - \tfrac12 g^2 s` by Heun's method (2nd order).

    Deterministic: the same start gives the same samples.

    Args:
        score_fn: Score of :math:`p_t`.
        sde: The forward SDE.
        z: Start, draws of :math:`p_1`, shape ``(N, D)``.
        times: Decreasing times from 1 to :math:`t_{\min}`.

    Returns:
        Samples at :math:`t_{\min}`, shape ``(N, D)``.
    """
    times = times.to(z.dtype)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return sde.drift(t) * x - 0.5 * sde.diffusion2(t) * score_fn(x, t)

    v = velocity(z, times[0])
    for k in range(len(times) - 1):
        dt = times[k + 1] - times[k]  # negative
        z_euler = z + dt * v
        v_next = velocity(z_euler, times[k + 1])
        z = z + 0.5 * dt * (v + v_next)
        v = v_next if k == len(times) - 2 else velocity(z, times[k + 1])
    return z


def ode_log_prob(
    velocity_and_div: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    z0: Tensor,
    times: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""Integrate the probability-flow ODE forward with its divergence, by classical RK4.

    :math:`\log p_{t_0}(z_0) = \log p_1(z_1) + \int_{t_0}^1 \nabla\!\cdot v(z_t, t)\,dt`.

    Args:
        velocity_and_div: ``(z (N, D), t) -> (v (N, D), div v (N,))``.
        z0: Points at the first time, shape ``(N, D)``.
        times: Increasing times ``(S + 1,)`` from :math:`t_{\min}` to 1.

    Returns:
        ``z`` at the last time ``(N, D)`` and the integral of the divergence ``(N,)``.
    """
    times = times.to(z0.dtype)
    z, total = z0, z0.new_zeros(z0.shape[0])
    for k in range(len(times) - 1):
        t, h = times[k], times[k + 1] - times[k]
        v1, d1 = velocity_and_div(z, t)
        v2, d2 = velocity_and_div(z + 0.5 * h * v1, t + 0.5 * h)
        v3, d3 = velocity_and_div(z + 0.5 * h * v2, t + 0.5 * h)
        v4, d4 = velocity_and_div(z + h * v3, t + h)
        z = z + h / 6.0 * (v1 + 2.0 * v2 + 2.0 * v3 + v4)
        total = total + h / 6.0 * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
    return z, total


# -- priors diffused by the forward process (for iid composition) -------------------------


class GaussianPrior:
    r"""A Gaussian prior :math:`\mathcal{N}(\mu, \Sigma)` and its diffused versions.

    Under the forward process :math:`p_t = \mathcal{N}(m_t\mu, m_t^2\Sigma + \sigma_t^2 I)`, so
    the diffused score is exact.

    Args:
        mean: :math:`\mu`, shape ``(D,)``.
        covariance: :math:`\Sigma`, shape ``(D, D)``.
    """

    def __init__(self, mean: Tensor, covariance: Tensor) -> None:
        self.mean, self.covariance = mean, covariance
        self.precision = torch.linalg.inv(covariance)

    def score(self, z: Tensor, m: Tensor, s: Tensor) -> Tensor:
        r""":math:`\nabla \log p_t(z)` at scale ``m`` and noise ``s`` (scalars); z ``(N, D)``."""
        eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
        cov_t = m**2 * self.covariance.to(z) + s**2 * eye
        return -torch.linalg.solve(cov_t, (z - m * self.mean.to(z)).T).T


class BoxPrior:
    r"""A uniform prior on the box :math:`[l, h)` and its diffused versions.

    Per dimension
    :math:`p_t(z) \propto \Phi(\frac{m h - z}{\sigma}) - \Phi(\frac{m l - z}{\sigma})`,
    whose score is exact and computed in log space (finite far outside the box).
    ``covariance`` is the uniform's, :math:`(h - l)^2 / 12`, used where a Gaussian
    approximation is needed.

    Args:
        low: :math:`l`, shape ``(D,)``.
        high: :math:`h`, shape ``(D,)``.
    """

    def __init__(self, low: Tensor, high: Tensor) -> None:
        self.low, self.high = low, high
        self.mean = 0.5 * (low + high)
        self.covariance = torch.diag((high - low) ** 2 / 12.0)
        self.precision = torch.linalg.inv(self.covariance)

    def score(self, z: Tensor, m: Tensor, s: Tensor) -> Tensor:
        r""":math:`\nabla \log p_t(z)` at scale ``m`` and noise ``s`` (scalars); z ``(N, D)``."""
        a = (m * self.low.to(z) - z) / s  # (N, D)
        b = (m * self.high.to(z) - z) / s
        # log(Phi(b) - Phi(a)) from the tail where it is accurate: Phi(-a) - Phi(-b) = same.
        upper = a + b > 0
        lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
        log_hi = torch.special.log_ndtr(hi)
        log_mass = log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)
        log_pdf_a, log_pdf_b = -0.5 * a**2, -0.5 * b**2  # the 1/sqrt(2 pi) cancels
        norm = math.log(math.sqrt(2.0 * math.pi))
        return (torch.exp(log_pdf_a - norm - log_mass) - torch.exp(log_pdf_b - norm - log_mass)) / s


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends."""
    x = x.clamp(max=-1e-30)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def standardized_prior(
    prior: Distribution, mean: Tensor, std: Tensor, num_samples: int = 10_000
) -> GaussianPrior | BoxPrior:
    r"""The prior of :math:`z = (\theta - \text{mean}) / \text{std}`, ready to be diffused.

    Gaussian priors (``Normal``, independent ``Normal``, ``MultivariateNormal``) and box
    uniforms (independent ``Uniform``, e.g. ``BoxUniform``) are exact. Any other prior is
    replaced by a Gaussian with the mean and covariance of ``num_samples`` prior draws (the
    approximation Linhart et al. 2024 use), so its diffused score is approximate.

    Args:
        prior: Prior over θ with event shape ``(D,)`` (or ``()`` for one parameter).
        mean: Standardization shift, shape ``(D,)``.
        std: Standardization scale, shape ``(D,)``.
        num_samples: Draws for the Gaussian approximation of other priors.
    """
    base = prior.base_dist if isinstance(prior, Independent) else prior
    if isinstance(base, Uniform):
        low, high = base.low.expand(mean.shape), base.high.expand(mean.shape)
        return BoxPrior((low - mean) / std, (high - mean) / std)
    if isinstance(base, Normal):
        loc, scale = base.loc.expand(mean.shape), base.scale.expand(mean.shape)
        return GaussianPrior((loc - mean) / std, torch.diag((scale / std) ** 2))
    if isinstance(prior, MultivariateNormal):
        cov = prior.covariance_matrix / (std[:, None] * std[None, :])
        return GaussianPrior((prior.loc - mean) / std, cov)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = prior.sample((num_samples,)).reshape(num_samples, -1)
    z = (draws.to(mean) - mean) / std
    return GaussianPrior(z.mean(dim=0), torch.cov(z.T).reshape(z.shape[1], z.shape[1]))
