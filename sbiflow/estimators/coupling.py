r"""Rational-quadratic spline coupling layers whose context terms are computed once.

The conditioner is nflows' ``ResidualNet`` as sbi's NSF uses it: an input layer on
(identity half, context), residual blocks of two ReLU layers whose output is gated by the
context through a GLU, and a linear output layer giving the spline parameters. Its terms
that depend on the context alone do not depend on the layer's input, so
:class:`ContextProjection` computes all of them, for every layer, in one matrix product;
each :class:`SplineCoupling` then splits its input with slices (no index tensors) and
gates with ``h * sigmoid(g)`` (the same function as ``glu(cat(h, g))``, without the copy).
Same function family, same parameter count, a fraction of the tiny operations per step,
which is what a training step on SBI-sized batches costs on a CPU.

References:
    Neural Spline Flows (Durkan et al., 2019), arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sbiflow.estimators.splines import rational_quadratic_spline

__all__ = ["ContextProjection", "SplineCoupling"]


class ContextProjection(nn.Module):
    """The context's contribution to every coupling layer, in one linear map.

    Args:
        context_features: Width ``C`` of the (embedded) context.
        num_layers: Number of coupling layers ``T``.
        num_terms: Context terms per layer ``G`` (input layer + one gate per block).
        hidden_features: Width ``H`` of the conditioners.
    """

    def __init__(
        self, context_features: int, num_layers: int, num_terms: int, hidden_features: int
    ) -> None:
        super().__init__()
        self.shape = (num_layers, num_terms, hidden_features)
        self.linear = nn.Linear(context_features, num_layers * num_terms * hidden_features)

    def forward(self, context: Tensor) -> Tensor:
        """Context ``(B, C)`` → terms ``(B, T, G, H)``."""
        return self.linear(context).view(context.shape[0], *self.shape)


class SplineCoupling(nn.Module):
    r"""Coupling layer: a monotonic spline of one half, conditioned on the other half.

    The identity half is ``inputs[:, identity]`` and the transformed half the rest, as
    contiguous slices; alternate ``first_half`` between layers (and mix features in
    between, e.g. with an LU-linear layer).

    Args:
        features: Input width ``D`` (at least 2).
        hidden_features: Conditioner width ``H``.
        num_blocks: Residual blocks of the conditioner.
        num_bins: Spline bins ``K``.
        tail_bound: Spline interval half-width; identity outside.
        first_half: Transform the first ``D - D // 2`` features (else the last ``D // 2``).
        context_features: Context width ``C``, only for initializing the input layer like
            nflows' ``Linear(D_id + C, H)``.

    Example:
        >>> layer = SplineCoupling(3, 8, 2, 5, 3.0, first_half=True, context_features=4)
        >>> terms = torch.zeros(6, 3, 8)  # (B, 1 + num_blocks, H)
        >>> y, logdet = layer(torch.randn(6, 3), terms)
        >>> y.shape, logdet.shape
        (torch.Size([6, 3]), torch.Size([6]))
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        num_blocks: int,
        num_bins: int,
        tail_bound: float,
        first_half: bool,
        context_features: int,
    ) -> None:
        super().__init__()
        if features < 2:
            raise ValueError("A coupling layer needs at least two features.")
        split = features - features // 2 if first_half else features // 2
        # Transformed features are [0, split) or [split, D).
        self.sizes = [split, features - split]
        self.first_half = first_half
        num_transformed = split if first_half else features - split
        num_identity = features - num_transformed
        self.num_bins, self.tail_bound, self.hidden_features = num_bins, tail_bound, hidden_features
        self.input_layer = nn.Linear(num_identity, hidden_features)
        bound = 1.0 / math.sqrt(num_identity + context_features)  # nflows' fan-in
        nn.init.uniform_(self.input_layer.weight, -bound, bound)
        nn.init.uniform_(self.input_layer.bias, -bound, bound)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(hidden_features, hidden_features) for _ in range(2)])
            for _ in range(num_blocks)
        )
        for _, second in self.blocks:
            # Residual blocks start near the identity, as in nflows.
            nn.init.uniform_(second.weight, -1e-3, 1e-3)
            nn.init.uniform_(second.bias, -1e-3, 1e-3)
        self.output_layer = nn.Linear(hidden_features, num_transformed * (3 * num_bins - 1))

    def _spline_parameters(self, identity: Tensor, terms: Tensor) -> Tensor:
        # unbind/split, not indexing: their backward is one stack/cat, where every index
        # would write its gradient into a zero tensor of the full size.
        initial, *gates = terms.unbind(1)  # (B, H) each
        hidden = self.input_layer(identity) + initial  # (B, H)
        for (first, second), gate in zip(self.blocks, gates, strict=True):
            update = second(F.relu(first(F.relu(hidden))))
            hidden = hidden + update * torch.sigmoid(gate)
        params = self.output_layer(hidden)  # (B, D_t * (3K - 1))
        return params.view(identity.shape[0], -1, 3 * self.num_bins - 1)  # (B, D_t, 3K - 1)

    def _transform(self, inputs: Tensor, terms: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        first, second = inputs.split(self.sizes, dim=1)
        identity, transformed = (second, first) if self.first_half else (first, second)
        params = self._spline_parameters(identity, terms)
        k = self.num_bins
        widths, heights, derivatives = params.split([k, k, k - 1], dim=-1)
        scale = math.sqrt(self.hidden_features)  # nflows' scaling of the width/height logits
        outputs, logabsdet = rational_quadratic_spline(
            transformed,
            widths / scale,
            heights / scale,
            derivatives,
            inverse=inverse,
            tail_bound=self.tail_bound,
        )
        parts = (outputs, identity) if self.first_half else (identity, outputs)
        return torch.cat(parts, dim=1), logabsdet.sum(dim=1)

    def forward(self, inputs: Tensor, terms: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``(B, D)`` and context terms ``(B, 1 + num_blocks, H)`` → outputs, log-det."""
        return self._transform(inputs, terms, inverse=False)

    def inverse(self, inputs: Tensor, terms: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse map and its log-det, same shapes as :meth:`forward`."""
        return self._transform(inputs, terms, inverse=True)
