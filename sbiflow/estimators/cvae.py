r"""Conditional variational autoencoder: a latent-variable density :math:`q(a \mid b)`.

.. math::

    q(a \mid b) = \int p(a \mid z, b)\, p(z \mid b)\, dz,

with a Gaussian decoder :math:`p(a \mid z, b)` of learned diagonal variance, a learned
Gaussian conditional prior :math:`p(z \mid b)` and a Gaussian encoder :math:`q(z \mid a, b)`,
all on z-scored a and b. Training maximizes the importance-weighted bound of the log
density (4 draws by default; with 1 draw it is the evidence lower bound, ELBO), optionally
with a weight β on its KL term; :meth:`CVAEEstimator.log_prob` is an importance-weighted
estimate of the log density, not an exact value.

References:
    Learning Structured Output Representation using Deep Conditional Generative Models
    (Sohn, Lee & Yan, 2015), NeurIPS 2015 (not on arXiv).
    Auto-Encoding Variational Bayes (Kingma & Welling, 2013), arXiv:1312.6114.
    Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2015), arXiv:1509.00519.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sbiflow.estimators.base import ConditionalEstimator

__all__ = ["CVAEEstimator"]

_LOG_2PI = math.log(2.0 * math.pi)
#: Soft bounds of every log-variance (standardized units): std from ~1e-3 to ~7.
LOG_VAR_MIN, LOG_VAR_MAX = -14.0, 4.0
#: Rows × importance samples per decoder call in :meth:`CVAEEstimator.log_prob`.
_IW_CHUNK = 131_072
#: Seed of the noise used in eval mode, so that losses and log densities are repeatable.
_EVAL_SEED = 0


def _bounded(log_var: Tensor) -> Tensor:
    """Squash ``log_var`` smoothly into ``[LOG_VAR_MIN, LOG_VAR_MAX]`` (identity in between)."""
    log_var = LOG_VAR_MIN + F.softplus(log_var - LOG_VAR_MIN)
    return LOG_VAR_MAX - F.softplus(LOG_VAR_MAX - log_var)


def _gaussian_log_prob(value: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Diagonal Gaussian log density, summed over the last dim: ``(..., D)`` → ``(...)``."""
    return -0.5 * (_LOG_2PI + log_var + (value - mean) ** 2 * torch.exp(-log_var)).sum(dim=-1)


#: Mean and log-variance of a diagonal Gaussian, ``(..., D)`` each.
_Gaussian = tuple[Tensor, Tensor]


class _GaussianHead(nn.Module):
    """MLP from features ``(..., F)`` to a diagonal Gaussian's mean and bounded log-variance.

    The mean has a linear shortcut (zero at initialization), so a linear-Gaussian relation
    is exact and easy to learn and the MLP adds the non-linear rest: on gaussian_linear
    (10⁴ simulations, observation 1) it lowered the log-density error from 0.24 to 0.21 nats.

    Args:
        in_features: Input width.
        out_features: Dimension of the Gaussian.
        hidden_features: Width of the hidden layers.
        num_layers: Number of hidden layers.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden_features: int, num_layers: int
    ) -> None:
        super().__init__()
        self.shortcut = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.shortcut.weight)
        nn.init.zeros_(self.shortcut.bias)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(in_features, hidden_features), nn.SiLU()]
            in_features = hidden_features
        layers.append(nn.Linear(in_features, 2 * out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> _Gaussian:
        mean, log_var = self.net(features).chunk(2, dim=-1)  # 2 x (..., D)
        mean = mean + self.shortcut(features)
        return mean, _bounded(log_var)


class CVAEEstimator(ConditionalEstimator):
    r"""Conditional VAE :math:`q(a \mid b)` with a learned conditional prior.

    * encoder :math:`q(z \mid a, b) = \mathcal{N}(\mu_q, \operatorname{diag} \sigma_q^2)`,
    * conditional prior :math:`p(z \mid b) = \mathcal{N}(\mu_p, \operatorname{diag} \sigma_p^2)`,
    * decoder :math:`p(a \mid z, b) = \mathcal{N}(\mu_a, \operatorname{diag} \sigma_a^2)`,

    each an MLP; b enters all three through one shared ``embedding_net`` applied to
    standardized b. Log-variances are bounded smoothly to :data:`LOG_VAR_MIN` ..
    :data:`LOG_VAR_MAX` (standardized units).

    With ``train_importance_samples=1`` the training loss (:meth:`loss`) is the negative
    ELBO per sample,

    .. math::

        -\mathbb{E}_{q(z \mid a, b)}[\log p(a \mid z, b)]
        + \beta\, \mathrm{KL}(q(z \mid a, b) \,\|\, p(z \mid b)),

    with the KL in closed form and one reparameterized draw of z. With :math:`K > 1` it is
    the negative importance-weighted bound of Burda et al. (the ELBO's tighter relative),
    with the prior-to-encoder density ratio raised to the power β:

    .. math::

        -\log \frac{1}{K} \sum_{k=1}^K p(a \mid z_k, b)
        \left[\frac{p(z_k \mid b)}{q(z_k \mid a, b)}\right]^\beta,
        \qquad z_k \sim q(z \mid a, b).

    It keeps the latent variables in use where the ELBO lets the decoder ignore them
    (posterior collapse): on two_moons, 10⁴ simulations, the ELBO reached C2ST 0.61, 0.84
    and 0.99 with seeds 0, 1, 2, the bound with K = 8 0.58-0.60 (earlier architecture);
    the defaults (K = 4) reach 0.54-0.58 at sbibm observations 1-3 with seed 0.

    :meth:`log_prob` is the same importance-weighted estimate with
    ``num_importance_samples`` draws and β = 1: in expectation a lower bound of the true log
    density, tightening as the number of draws grows. In eval mode losses and log densities
    use noise from a fixed seed, so validation losses are comparable across epochs and
    repeated ``log_prob`` calls agree (there the same draws serve every row, so the estimate
    is a smooth function of a and b); in train mode the noise is fresh.

    Args:
        a_shape: Shape of one a, ``(D_a,)``.
        b_shape: Shape of one b, e.g. ``(D_b,)``.
        embedding_net: Module mapping standardized b ``(B, *b_shape)`` to ``(B, F)``;
            default: flatten.
        latent_features: Dimension of z.
        hidden_features: Width of the hidden layers of the encoder, prior and decoder.
        num_layers: Hidden layers of each of those networks.
        beta: Weight of the KL term (power of the density ratio) in the loss; 1: a bound of
            the log density.
        train_importance_samples: Encoder draws per sample in the loss; 1: the ELBO.
        num_importance_samples: Encoder draws per row in :meth:`log_prob`.

    Example:
        >>> q = CVAEEstimator((2,), (3,), num_importance_samples=16)
        >>> q.eval().log_prob(torch.zeros(4, 2), torch.zeros(4, 3)).shape
        torch.Size([4])
        >>> q.sample(10, torch.zeros(3)).shape
        torch.Size([10, 2])
    """

    kind = "cvae"

    def __init__(
        self,
        a_shape: tuple[int, ...],
        b_shape: tuple[int, ...],
        embedding_net: nn.Module | None = None,
        latent_features: int = 4,
        hidden_features: int = 128,
        num_layers: int = 3,
        beta: float = 1.0,
        train_importance_samples: int = 4,
        num_importance_samples: int = 128,
    ) -> None:
        super().__init__(a_shape, b_shape)
        if len(self.a_shape) != 1:
            raise ValueError(f"The cVAE models vectors: a_shape must be (D,), got {self.a_shape}.")
        if latent_features < 1 or hidden_features < 1 or num_layers < 1:
            raise ValueError("latent_features, hidden_features and num_layers must be >= 1.")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}.")
        if train_importance_samples < 1 or num_importance_samples < 1:
            raise ValueError(
                "train_importance_samples and num_importance_samples must be >= 1, got "
                f"{train_importance_samples} and {num_importance_samples}."
            )
        self.options = {
            "latent_features": latent_features,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
            "beta": beta,
            "train_importance_samples": train_importance_samples,
            "num_importance_samples": num_importance_samples,
        }
        self.latent_features = latent_features
        self.beta = beta
        self.train_importance_samples = train_importance_samples
        self.num_importance_samples = num_importance_samples
        self._embedding = embedding_net if embedding_net is not None else nn.Flatten()
        with torch.no_grad():
            context = self._embedding(torch.zeros(2, *self.b_shape)).shape[-1]
        features = self.a_shape[0]
        size = {"hidden_features": hidden_features, "num_layers": num_layers}
        self.encoder = _GaussianHead(features + context, latent_features, **size)
        self.prior = _GaussianHead(context, latent_features, **size)
        self.decoder = _GaussianHead(latent_features + context, features, **size)

    @property
    def embedding_net(self) -> nn.Module:
        """The network applied to standardized b."""
        return self._embedding

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for save/load."""
        return {
            "kind": self.kind,
            "a_shape": list(self.a_shape),
            "b_shape": list(self.b_shape),
            **self.options,
        }

    # -- pieces --------------------------------------------------------------------------
    def _context(self, b: Tensor) -> Tensor:
        """Embedded standardized b: ``(B, *b_shape)`` → ``(B, F)``."""
        return self._embedding(self.b_standardizer(b))

    def _encode(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, _Gaussian, _Gaussian]:
        """Standardized a ``(B, D_a)``, context ``(B, F)``, encoder and prior ``(B, L)`` each."""
        a_z, context = self.a_standardizer(a), self._context(b)
        posterior = self.encoder(torch.cat([a_z, context], dim=-1))
        return a_z, context, posterior, self.prior(context)

    def _decode(self, z: Tensor, context: Tensor) -> _Gaussian:
        """Decoder mean and log-variance ``(..., D_a)`` for z ``(..., L)``, context ``(..., F)``."""
        return self.decoder(torch.cat([z, context], dim=-1))

    def _noise(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal draws: from a freshly seeded generator in eval mode, else fresh."""
        if self.training:
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        generator = torch.Generator(device=like.device).manual_seed(_EVAL_SEED)
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def _log_weights(
        self, a_z: Tensor, context: Tensor, posterior: _Gaussian, prior: _Gaussian, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""Importance-weight terms for draws ``z = μ_q + σ_q eps``, eps ``(K, B or 1, L)``.

        Returns:
            :math:`\log p(a \mid z, b)` and :math:`\log p(z \mid b) - \log q(z \mid a, b)`,
            shape ``(K, B)`` each.
        """
        q_mean, q_log_var = posterior
        z = q_mean + torch.exp(0.5 * q_log_var) * eps  # (K, B, L)
        log_q = -0.5 * (_LOG_2PI + q_log_var + eps**2).sum(dim=-1)  # (K, B)
        log_ratio = _gaussian_log_prob(z, *prior) - log_q
        decoded = self._decode(z, context.expand(z.shape[0], *context.shape))
        return _gaussian_log_prob(a_z, *decoded), log_ratio

    # -- training ------------------------------------------------------------------------
    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Negative bound of ``log q(a | b)`` for a ``(B, D_a)``, b ``(B, *b_shape)`` → ``(B,)``.

        The (β-)ELBO or its importance-weighted version (see the class docstring), in raw
        units of a (the standardization's log-determinant is included), so with ``beta=1``
        it is an upper bound of ``-log q(a | b)`` in expectation.
        """
        a_z, context, posterior, prior = self._encode(a, b)
        k = self.train_importance_samples
        if k > 1:
            eps = self._noise((k, *posterior[0].shape), a_z)  # (K, B, L)
            log_lik, log_ratio = self._log_weights(a_z, context, posterior, prior, eps)
            bound = torch.logsumexp(log_lik + self.beta * log_ratio, dim=0) - math.log(k)
            return -bound - self.a_standardizer.log_abs_det()
        (q_mean, q_log_var), (p_mean, p_log_var) = posterior, prior
        z = q_mean + torch.exp(0.5 * q_log_var) * self._noise(q_mean.shape, a_z)  # (B, L)
        log_lik = _gaussian_log_prob(a_z, *self._decode(z, context))  # (B,)
        kl = 0.5 * (
            p_log_var
            - q_log_var
            + (torch.exp(q_log_var) + (q_mean - p_mean) ** 2) * torch.exp(-p_log_var)
            - 1.0
        ).sum(dim=-1)  # (B,)
        return self.beta * kl - log_lik - self.a_standardizer.log_abs_det()

    # -- density -------------------------------------------------------------------------
    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        r"""Importance-weighted estimate of :math:`\log q(a \mid b)`.

        .. math::

            \log \frac{1}{K} \sum_{k=1}^K
            \frac{p(a \mid z_k, b)\, p(z_k \mid b)}{q(z_k \mid a, b)},
            \qquad z_k \sim q(z \mid a, b),

        with :math:`K` = ``num_importance_samples``: an estimate whose expectation is a lower
        bound of the log density, tight as :math:`K \to \infty`. Deterministic in eval mode.

        Args:
            a: Values, shape ``(B, D_a)``.
            b: Conditions, shape ``(B, *b_shape)``.

        Returns:
            Log densities, shape ``(B,)``.
        """
        a_z, context, posterior, prior = self._encode(a, b)
        k = self.num_importance_samples
        shared = None if self.training else self._noise((k, 1, self.latent_features), a_z)
        out = []
        step = max(1, _IW_CHUNK // k)
        for start in range(0, a.shape[0], step):
            rows = slice(start, start + step)
            q_part = (posterior[0][rows], posterior[1][rows])  # (b, L) each
            p_part = (prior[0][rows], prior[1][rows])
            eps = shared if shared is not None else torch.randn_like(q_part[0].expand(k, -1, -1))
            terms = self._log_weights(a_z[rows], context[rows], q_part, p_part, eps)
            out.append(torch.logsumexp(sum(terms), dim=0) - math.log(k))  # (b,)
        return torch.cat(out) + self.a_standardizer.log_abs_det()

    # -- sampling ------------------------------------------------------------------------
    def _sample(self, context: Tensor) -> Tensor:
        """One draw a ~ q(a | b) per row of the embedded condition ``(N, F)`` → ``(N, D_a)``."""
        p_mean, p_log_var = self.prior(context)
        z = p_mean + torch.exp(0.5 * p_log_var) * torch.randn_like(p_mean)  # (N, L)
        mean, log_var = self._decode(z, context)
        a_z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)  # (N, D_a)
        return self.a_standardizer.inverse(a_z)

    def sample(self, n: int, b: Tensor) -> Tensor:
        """Draw ``n`` samples given one ``b`` ``(*b_shape)`` → ``(n, D_a)``."""
        context = self._context(b.reshape(1, *self.b_shape))  # (1, F)
        return self._sample(context.expand(n, context.shape[-1]))

    def sample_each(self, b: Tensor) -> Tensor:
        """Draw one a per condition: b ``(B, *b_shape)`` → ``(B, D_a)``."""
        return self._sample(self._context(b))
