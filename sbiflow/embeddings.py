"""Embedding networks that compress an observation x into features for an estimator."""

from __future__ import annotations

import math
from typing import Any

import torch  # noqa: F401  (the doctest uses it)
from torch import Tensor, nn

__all__ = ["MLPEmbedding", "build_embedding", "embedding_spec"]


class MLPEmbedding(nn.Module):
    """A fully connected network on the flattened observation.

    Args:
        x_shape: Shape of one observation, e.g. ``(8,)``.
        out_features: Number of output features.
        hidden_features: Width of each hidden layer.
        num_layers: Number of hidden layers.

    Example:
        >>> net = MLPEmbedding((4, 2), out_features=3)
        >>> net(torch.zeros(5, 4, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_features: int = 20,
        hidden_features: int = 64,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.out_features = out_features
        in_features = math.prod(self.x_shape)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(in_features, hidden_features), nn.ReLU()]
            in_features = hidden_features
        layers.append(nn.Linear(in_features, out_features))
        self.net = nn.Sequential(*layers)
        self.spec = {
            "type": "mlp",
            "out_features": out_features,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape ``(B, *x_shape)`` into ``(B, out_features)``."""
        return self.net(x.flatten(start_dim=1))


_EMBEDDINGS = {"mlp": MLPEmbedding}


def build_embedding(spec: dict[str, Any], x_shape: tuple[int, ...]) -> nn.Module:
    """Build an embedding net from its spec (as stored in a saved model)."""
    options = dict(spec)
    kind = options.pop("type")
    if kind not in _EMBEDDINGS:
        raise ValueError(f"Unknown embedding type {kind!r}; known: {sorted(_EMBEDDINGS)}.")
    return _EMBEDDINGS[kind](x_shape, **options)


def embedding_spec(net: nn.Module) -> dict[str, Any] | None:
    """The spec that rebuilds ``net``, or None for a user's own module (pass it again on load)."""
    spec = getattr(net, "spec", None)
    return dict(spec) if isinstance(spec, dict) else None
