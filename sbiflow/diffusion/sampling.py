r"""Reverse-time samplers driven by a denoiser :math:`\hat u(u_t, t) = E[u_0 \mid u_t]`.

The denoiser form of the score is :math:`\nabla \log p_t(u) = (m_t \hat u - u)/\sigma_t^2`, so
the score-based samplers of ``sbiflow.estimators.sde`` (Euler–Maruyama, predictor–corrector,
the probability-flow ODE) run unchanged; ``"ddpm"`` adds the ancestral sampler
(Ho et al. 2020; DDIM with :math:`\eta = 1`, Song et al. 2021), which steps with the exact
Gaussian transition :math:`q(u_s \mid u_t, u_0 = \hat u)` and is the most accurate per
network evaluation. Every sampler ends with one denoising step at :math:`t_{\min}`
(Tweedie), which removes the remaining noise :math:`\sigma_{t_{\min}}`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbiflow.estimators.sde import SDE, euler_maruyama, heun_ode

__all__ = ["SAMPLERS", "denoiser_sample"]

SAMPLERS = ("ddpm", "sde", "pc", "ode")


def denoiser_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    start: Tensor,
    times: Tensor,
    method: str = "ddpm",
    progress: bool = False,
) -> Tensor:
    r"""Run the reverse process from ``start`` ``(N, D)`` at ``times[0]`` down to ``times[-1]``.

    Args:
        denoise: ``(u (N, D), t scalar) -> E[u_0 | u_t] (N, D)``.
        sde: The forward process.
        start: Draws at the first time.
        times: Decreasing times ``(S + 1,)`` (``sbiflow.estimators.sde.time_grid``).
        method: One of :data:`SAMPLERS`.
        progress: Show a progress bar over the steps.

    Returns:
        Denoised samples ``(N, D)``: :math:`\\hat u` at the last time.
    """
    if method not in SAMPLERS:
        raise ValueError(f"Unknown sampler {method!r}; choose one of {SAMPLERS}.")
    times = times.to(torch.float64)
    bar = tqdm(
        total=len(times) - 1, desc="diffusion", unit="step", disable=not progress, leave=False
    )

    def score(u: Tensor, t: Tensor) -> Tensor:
        bar.update(1)
        m, s = sde.mean_scale(t), sde.std(t)
        return ((m * denoise(u, t) - u) / s**2).to(u.dtype)

    try:
        if method == "ddpm":
            u = start
            for k in range(len(times) - 1):
                u = _ddpm_step(denoise, sde, u, times[k], times[k + 1])
                bar.update(1)
        elif method == "ode":
            u = heun_ode(score, sde, start, times)
        else:
            u = euler_maruyama(score, sde, start, times, corrector_steps=int(method == "pc"))
        return denoise(u, times[-1])
    finally:
        bar.close()


def _ddpm_step(
    denoise: Callable[[Tensor, Tensor], Tensor], sde: SDE, u: Tensor, t: Tensor, s: Tensor
) -> Tensor:
    r"""One ancestral step :math:`u_t \to u_s`, :math:`s < t`.

    :math:`u_s = m_s\hat u + \sigma_s\sqrt{1-\tau}\,\hat\epsilon + \sigma_s\sqrt{\tau}\,\xi`,
    :math:`\hat\epsilon = (u_t - m_t \hat u)/\sigma_t`,
    :math:`\tau = 1 - (m_t\sigma_s / (m_s\sigma_t))^2`.
    """
    m_t, s_t, m_s, s_s = sde.mean_scale(t), sde.std(t), sde.mean_scale(s), sde.std(s)
    tau = 1.0 - (m_t * s_s / (m_s * s_t)) ** 2
    u_hat = denoise(u, t)
    eps = (u - m_t.to(u) * u_hat) / s_t.to(u)
    out = m_s * u_hat + s_s * (1.0 - tau).sqrt() * eps
    return (out + s_s * tau.sqrt() * torch.randn_like(u)).to(u.dtype)
