"""What every conditional density estimator q(a | b) shares: standardization and the interface."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sbiflow.embeddings import is_masked_set

__all__ = ["ConditionalEstimator", "Standardizer"]


class Standardizer(nn.Module):
    """Element-wise z-scoring learned from training data and saved with the weights.

    Args:
        shape: Shape of one sample, e.g. ``(D,)`` or ``(H, W)``.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))
        self.register_buffer("low", torch.full(shape, -torch.inf))
        self.register_buffer("high", torch.full(shape, torch.inf))

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Learn mean, std and the observed range from ``data`` of shape ``(N, *shape)``.

        Padded sets with a mask column (see ``sbiflow.embeddings.is_masked_set``) get one
        mean and std per feature over the elements present, the same in every row, and a
        mask left as it is.
        """
        if is_masked_set(data):
            self._fit_set(data)
            return
        self.mean.copy_(data.mean(dim=0))
        std = data.std(dim=0) if data.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        self.low.copy_(data.min(dim=0).values)
        self.high.copy_(data.max(dim=0).values)

    def _fit_set(self, data: Tensor) -> None:
        present = data[data[..., -1] == 1][:, :-1]  # (M, F): every element of every set
        mean, std = present.mean(dim=0), present.std(dim=0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        # Padding rows hold zeros: the range includes 0, so they never look out of range.
        low = present.min(dim=0).values.clamp(max=0.0)
        high = present.max(dim=0).values.clamp(min=0.0)
        for buffer, features, mask_value in (
            (self.mean, mean, 0.0),
            (self.std, std, 1.0),
            (self.low, low, 0.0),
            (self.high, high, 1.0),
        ):
            buffer[..., :-1] = features
            buffer[..., -1] = mask_value

    def forward(self, data: Tensor) -> Tensor:
        """Standardize ``data`` of shape ``(N, *shape)``."""
        return (data - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        """Undo :meth:`forward`."""
        return z * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        """Log |det| of the standardizing map, a scalar: ``-sum(log std)``."""
        return -self.std.log().sum()

    def outside_range(self, data: Tensor, margin: float = 0.1) -> Tensor:
        """Which elements of ``data`` lie outside the training range widened by ``margin`` stds."""
        pad = margin * self.std
        return (data < self.low - pad) | (data > self.high + pad)


class ConditionalEstimator(nn.Module):
    """Base of every conditional density estimator q(a | b).

    Subclasses implement :meth:`log_prob` and :meth:`sample` on *raw* (unstandardized) inputs
    and keep ``a_standardizer`` / ``b_standardizer`` to move between raw and z-scored spaces.

    Args:
        a_shape: Shape of one a (the density's variable), ``(D_a,)``.
        b_shape: Shape of one b (the condition), e.g. ``(D_b,)`` or a map ``(H, W)``.
    """

    kind: str = "base"
    #: Training options (fields of ``sbiflow.training.TrainingConfig``) this estimator trains
    #: best with; ``NeuralInference.fit`` applies them under the user's own options.
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.a_shape = tuple(a_shape)
        self.b_shape = tuple(b_shape)
        self.a_standardizer = Standardizer(self.a_shape)
        self.b_standardizer = Standardizer(self.b_shape)

    def standardize_from(self, a: Tensor, b: Tensor) -> None:
        """Learn z-scoring from training a ``(N, *a_shape)`` and b ``(N, *b_shape)``."""
        self.a_standardizer.fit(a)
        self.b_standardizer.fit(b)

    def config(self) -> dict[str, Any]:
        """Everything (besides the state dict) needed to rebuild this estimator."""
        raise NotImplementedError

    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        """Log q(a | b) for a ``(B, *a_shape)``, b ``(B, *b_shape)``; returns ``(B,)``."""
        raise NotImplementedError

    def sample(self, n: int, b: Tensor) -> Tensor:
        """Draw ``n`` samples of a given one condition ``b`` ``(*b_shape)`` → ``(n, *a_shape)``."""
        raise NotImplementedError

    def sample_each(self, b: Tensor) -> Tensor:
        """Draw one a per condition: b ``(B, *b_shape)`` → ``(B, *a_shape)``."""
        raise NotImplementedError

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample training loss ``(B,)``; the default is the negative log density."""
        return -self.log_prob(a, b)
