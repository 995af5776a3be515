r"""A learned, unconditional score model of a prior :math:`p(z)` over vectors or maps.

The diffusion runs on standardized :math:`u = (z - \mu)/s`, as in the score estimator:
:math:`u_t = m_t u + \sigma_t\epsilon` (VP SDE). The network predicts a correction to the
exact noise of a Gaussian *baseline* :math:`\mathcal{N}(0, C)` fitted to the training data,

.. math:: \hat\epsilon = \sigma_t (m_t^2 C + \sigma_t^2)^{-1} u_t
    + \frac{\sigma_t m_t^2}{m_t^2 + \sigma_t^2}\,
      \mathrm{net}\big((m_t^2 C + \sigma_t^2)^{-1/2} u_t,\ t\big),

so a Gaussian prior is exact before any training and the network learns only what is not
Gaussian (the skewness of a lognormal field, the shapes of galaxies). ``C`` is the sample
covariance (``"full"``), the power spectrum of a stationary periodic map (``"fourier"``,
diagonal in Fourier space) or the variances (``"diagonal"``). Trained by denoising score
matching with the package's one training loop.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from sbiflow.diffusion.covariance import (
    COVARIANCES,
    Covariance,
    EigenCovariance,
    FourierCovariance,
    fit_covariance,
)
from sbiflow.diffusion.networks import UNet
from sbiflow.diffusion.sampling import denoiser_sample
from sbiflow.diffusion.standardized import StandardizedPrior
from sbiflow.estimators.score import ScoreNet
from sbiflow.estimators.sde import VPSDE, time_grid
from sbiflow.training import TrainingConfig, TrainingHistory, train

__all__ = ["ScorePrior"]

#: Largest D for the dense sample covariance chosen by ``covariance="auto"``.
_MAX_FULL_DIM = 4096
_EVAL_SEED = 0


class ScorePrior(StandardizedPrior, nn.Module):
    r"""An unconditional diffusion model of :math:`p(z)`, fitted to prior draws.

    Args:
        z_shape: Shape of one z: ``(D,)`` for vectors, ``(H, W)`` for maps.
        network: ``"mlp"`` (vectors), ``"unet"`` (maps) or ``"auto"`` (by ``z_shape``).
        covariance: The Gaussian baseline: ``"full"``, ``"fourier"``, ``"diagonal"`` or
            ``"auto"`` (``"fourier"`` for periodic maps, ``"full"`` up to 4,096 numbers,
            else ``"diagonal"``).
        periodic: The maps live on a torus: circular padding and a stationary baseline.
        hidden_features: Width of the MLP.
        num_blocks: Residual blocks of the MLP.
        channels: U-Net channels per level.
        time_features: Size of the sinusoidal time embedding.
        beta_min: VP noise rate at t = 0.
        beta_max: VP noise rate at t = 1.
        t_min: Smallest training time.
        ema_decay: Exponential moving average of the weights, used outside training.

    Example:
        >>> prior = ScorePrior((4,), hidden_features=16)
        >>> _ = prior.fit(torch.randn(300, 4), max_epochs=2, progress=False)
        >>> prior.sample(5, steps=4, seed=0).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        z_shape: tuple[int, ...] | int,
        network: str = "auto",
        covariance: str = "auto",
        periodic: bool = False,
        hidden_features: int = 256,
        num_blocks: int = 3,
        channels: tuple[int, ...] = (32, 64),
        time_features: int = 32,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-4,
        ema_decay: float = 0.995,
    ) -> None:
        super().__init__()
        self.z_shape = (
            (int(z_shape),) if isinstance(z_shape, int) else tuple(int(s) for s in z_shape)
        )
        if len(self.z_shape) not in (1, 2) or min(self.z_shape) < 1:
            raise ValueError(f"z_shape must be (D,) or (H, W), got {self.z_shape}.")
        self.dim = math.prod(self.z_shape)
        is_map = len(self.z_shape) == 2
        network = ("unet" if is_map else "mlp") if network == "auto" else network
        if network not in ("mlp", "unet") or (network == "unet" and not is_map):
            raise ValueError(
                f"network must be 'mlp', 'unet' (for maps) or 'auto', got {network!r}."
            )
        if covariance == "auto":
            covariance = (
                "fourier"
                if periodic and is_map
                else "full"
                if self.dim <= _MAX_FULL_DIM
                else "diagonal"
            )
        if covariance not in COVARIANCES or (covariance == "fourier" and not is_map):
            raise ValueError(
                f"covariance must be one of {COVARIANCES} ('fourier' for maps), got {covariance!r}."
            )
        self.options: dict[str, Any] = {
            "network": network,
            "covariance": covariance,
            "periodic": bool(periodic),
            "hidden_features": hidden_features,
            "num_blocks": num_blocks,
            "channels": list(channels),
            "time_features": time_features,
            "beta_min": beta_min,
            "beta_max": beta_max,
            "t_min": t_min,
            "ema_decay": ema_decay,
        }
        self.sde = VPSDE(beta_min, beta_max)
        self.t_min = float(t_min)
        self.dtype = torch.float32
        self.register_buffer("loc", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("fitted_flag", torch.zeros((), dtype=torch.bool))
        self.covariance: Covariance = (
            FourierCovariance(self.z_shape)  # type: ignore[arg-type]
            if covariance == "fourier"
            else EigenCovariance(dim=self.dim)
        ).to(torch.float32)
        if network == "unet":
            self.net: nn.Module = UNet(tuple(channels), time_features, periodic)
        else:
            self.net = ScoreNet(self.dim, 0, hidden_features, num_blocks, time_features)
        self.ema_decay = float(ema_decay)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None
        self.history: TrainingHistory | None = None

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or loading) has set the weights."""
        return bool(self.fitted_flag)

    # -- the model ------------------------------------------------------------------------
    def _net_out(self, white: Tensor, t: Tensor) -> Tensor:
        net = self.ema_net if (not self.training and self.ema_net is not None) else self.net
        if self.options["network"] == "unet":
            times = t.reshape(-1).expand(white.shape[0]) if t.numel() > 1 else t.reshape(())
            return net(white.reshape(-1, *self.z_shape), times).reshape(white.shape)
        context = white.new_zeros(t.numel(), 0)
        return net(white, net.conditioning(t.reshape(-1), context))  # type: ignore[operator]

    def _eps(self, u: Tensor, t: Tensor) -> Tensor:
        """Noise prediction for rows ``u`` ``(N, D)``; ``t`` a scalar or ``(N, 1)``."""
        m, s = self.sde.mean_scale(t), self.sde.std(t)
        # Per-row times (N, 1) broadcast over the covariance's eigenvalues (D,) or (H, W/2+1).
        rows = (-1,) + (1,) * self.covariance.evals.ndim if t.numel() > 1 else ()
        mc, sc = m.reshape(rows), s.reshape(rows)
        base = self.covariance.apply(u, lambda lam: sc / (mc**2 * lam + sc**2))
        white = self.covariance.apply(u, lambda lam: (mc**2 * lam + sc**2).rsqrt())
        # The correction's weight s m² / (m² + s²): at small noise a correction to the score
        # (as in the score estimator); at large noise it fades like m², as the baseline's
        # error does (its mean and covariance are exact), so the Tweedie covariance
        # γ ∂û/∂u that guidance uses stays close to C instead of being swamped by the
        # network's Jacobian times γ = s²/m (~150 at t = 1).
        return base + self._net_out(white, t) * (s * m**2 / (m**2 + s**2))

    def denoise(self, u: Tensor, t: Tensor) -> Tensor:
        r""":math:`E[u_0 \mid u_t]` by Tweedie's formula.

        Args:
            u: Diffused standardized rows :math:`u_t`, ``(N, D)``.
            t: Diffusion time, a scalar.

        Returns:
            The denoised rows, ``(N, D)``.
        """
        t = torch.as_tensor(t, dtype=u.dtype)
        m, s = self.sde.mean_scale(t), self.sde.std(t)
        return (u - s * self._eps(u, t)) / m

    # -- training -------------------------------------------------------------------------
    def loss(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        r"""Denoising score matching :math:`\|\hat\epsilon - \epsilon\|^2` for rows of z.

        Args:
            a: Training fields ``(B, *z_shape)``.
            b: Ignored (the training loop passes an empty condition).

        Returns:
            The loss of each row, ``(B,)``.
        """
        if self.training:
            self._update_ema()
        u = self.from_z(a)
        n = u.shape[0]
        generator = None if self.training else torch.Generator().manual_seed(_EVAL_SEED)
        strata = torch.randperm(n, generator=generator)
        t = self.t_min + (1 - self.t_min) * (strata + torch.rand(n, generator=generator)) / n
        t = t.to(u).unsqueeze(1)  # (B, 1), stratified
        eps = torch.randn(u.shape, generator=generator).to(u)
        u_t = self.sde.mean_scale(t) * u + self.sde.std(t) * eps
        return ((self._eps(u_t, t) - eps) ** 2).sum(dim=-1)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_net is None:
            return
        for ema, param in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
            ema.lerp_(param, 1.0 - self.ema_decay)

    def fit(self, z: Tensor, **training: Any) -> ScorePrior:
        """Fit the standardization, the Gaussian baseline and the network to draws ``z``.

        Args:
            z: Prior draws ``(N, *z_shape)`` (thousands at least; the baseline's
                covariance needs well over D of them for ``"full"``).
            **training: Options of ``sbiflow.training.TrainingConfig`` (``max_epochs``,
                ``batch_size``, ``learning_rate``, ``progress``, ...).

        Returns:
            ``self``, in evaluation mode, with ``history`` set.
        """
        z = torch.as_tensor(z, dtype=torch.float32)
        if tuple(z.shape[1:]) != self.z_shape:
            raise ValueError(
                f"z must have shape (N, {', '.join(map(str, self.z_shape))}), got {tuple(z.shape)}."
            )
        bad = ~torch.isfinite(z.reshape(z.shape[0], -1)).all(dim=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} of {z.shape[0]} training draws hold NaN/inf; drop them first."
            )
        if z.shape[0] < 50:
            raise ValueError(
                f"Too few training draws: {z.shape[0]}; a score prior needs thousands."
            )
        rows = z.reshape(z.shape[0], -1).double()
        with torch.no_grad():
            if self.options["covariance"] == "fourier":
                self.loc.fill_(float(rows.mean()))
                self.scale.fill_(float(rows.std()))
            else:
                self.loc.copy_(rows.mean(dim=0))
                self.scale.copy_(rows.std(dim=0).clamp_min(1e-8))
            centred = (rows - self.loc.double()) / self.scale.double()
            self.covariance = fit_covariance(self.options["covariance"], centred, self.z_shape).to(
                torch.float32
            )
            self.fitted_flag.fill_(True)
        config = TrainingConfig(**{"stop_after_epochs": 30, "patience_after_decay": 10, **training})
        self.train()
        self.history = train(self, z, z.new_zeros(z.shape[0], 0), config)
        self.eval()
        return self

    # -- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int = 64, seed: int | None = None) -> Tensor:
        """Unconditional draws by the probability-flow ODE.

        Args:
            n: Number of draws.
            steps: Steps of the ODE solver (Heun).
            seed: Seed for reproducible draws (``None``: torch's global RNG).

        Returns:
            Draws ``(n, *z_shape)``.

        Raises:
            RuntimeError: The prior is not fitted.
        """
        self._check_fitted()
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            u = denoiser_sample(
                self.denoise, self.sde, self.terminal(n), time_grid(steps, 1e-5, 3.0), "ode"
            )
        return self.to_z(u)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("This ScorePrior is not fitted: call .fit(z_train) first.")

    # -- saving ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Configuration and weights as plain types and tensors (for ``sbiflow.save``).

        Returns:
            ``{"z_shape", "options", "weights"}``.
        """
        self._check_fitted()
        return {
            "z_shape": list(self.z_shape),
            "options": self.options,
            "weights": self.state_dict(),
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        prior: Any = None,
        embedding_net: Any = None,
        device: str = "cpu",
    ) -> ScorePrior:
        """Rebuild a prior from :meth:`state`.

        Args:
            state: What :meth:`state` returned.
            prior: Unused (the common signature of ``sbiflow.load``).
            embedding_net: Unused.
            device: Torch device of the rebuilt prior.

        Returns:
            The prior, in evaluation mode.
        """
        options = dict(state["options"])
        options["channels"] = tuple(options["channels"])
        model = cls(tuple(state["z_shape"]), **options)
        model.load_state_dict(state["weights"])
        return model.to(device).eval()

    def save(self, path: str | os.PathLike) -> None:
        """Write weights and configuration to ``path``; the same as ``sbiflow.save``.

        Args:
            path: The file to write.
        """
        from sbiflow.serialization import save

        save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> ScorePrior:
        """Load a prior written by :meth:`save` or ``sbiflow.save``.

        Args:
            path: The file.
            device: Torch device of the loaded prior.

        Returns:
            The prior, in evaluation mode.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            sbiflow.ModelFileError: If the file is corrupted, foreign, or holds another model.
        """
        from sbiflow.serialization import ModelFileError, load

        model = load(path, device=device)
        if not isinstance(model, cls):
            raise ModelFileError(
                f"{os.fspath(path)!r} holds a {type(model).__name__}, not a ScorePrior."
            )
        return model
