"""The model classifier: standardized x, embeddings, an ensemble of heads in one pass."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from sbiflow.comparison.losses import LOSSES, leaky_parity_odd_power
from sbiflow.embeddings import EMBEDDINGS, build_embedding, default_embedding
from sbiflow.estimators.base import Standardizer

__all__ = ["BatchedLinear", "ComparisonNetwork", "check_embedding", "member_embeddings"]

#: The output layer starts with weights this much smaller than ``nn.Linear``'s (as Evidence
#: Networks scale their output by 0.1), so training starts near equal odds for every x.
INITIAL_OUTPUT_SCALE = 0.1


class BatchedLinear(nn.Module):
    """``K`` independent linear layers applied in one batched matrix product.

    Initialized like ``nn.Linear`` (uniform in ``±1/sqrt(in_features)``), each member on its
    own draw.

    Args:
        members: Number of layers ``K``.
        in_features: Input features.
        out_features: Output features.

    Example:
        >>> layer = BatchedLinear(3, 4, 2)
        >>> layer(torch.zeros(3, 5, 4)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: Tensor) -> Tensor:
        """Map ``(K, B, in_features)`` to ``(K, B, out_features)``."""
        return torch.baddbmm(self.bias, h, self.weight)


class ComparisonNetwork(nn.Module):
    r"""Scores :math:`s_m(x)`, one per model, from ``K`` independently initialized members.

    x is standardized (from the training simulations, saved with the weights), passes each
    member's embedding (if any; otherwise it is flattened) and each member's MLP head. All
    heads run as one batched product (:class:`BatchedLinear`); embeddings, whose shapes can
    depend on the data (sets), run one after the other.

    For ``loss="cross_entropy"`` the head has ``M`` outputs, the scores. For
    ``loss="exponential"`` (two models) it has one output :math:`f`, and the scores are
    :math:`(0, \mathrm{lPOP}(f))`.

    Args:
        x_shape: Shape of one observation.
        num_models: Number of models ``M``.
        loss: ``"cross_entropy"`` or ``"exponential"``.
        embeddings: ``K`` embedding nets with ``out_features``, or ``None``.
        members: Ensemble size ``K``.
        hidden_features: Width of the head's hidden layers.
        num_layers: Hidden layers of the head.
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        num_models: int,
        loss: str = "cross_entropy",
        embeddings: list[nn.Module] | None = None,
        members: int = 1,
        hidden_features: int = 128,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)}.")
        if embeddings is not None and len(embeddings) != members:
            raise ValueError(
                f"Need {members} embedding nets, one per member, got {len(embeddings)}."
            )
        self.x_shape, self.num_models, self.loss_name = tuple(x_shape), num_models, loss
        self.members, self.hidden_features, self.num_layers = members, hidden_features, num_layers
        self.standardizer = Standardizer(self.x_shape)
        self.embeddings = nn.ModuleList(embeddings) if embeddings is not None else None
        width = (
            int(embeddings[0].out_features) if embeddings is not None else math.prod(self.x_shape)
        )
        sizes = [width] + [hidden_features] * num_layers
        self.hidden = nn.ModuleList(
            BatchedLinear(members, n_in, n_out)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        outputs = 1 if loss == "exponential" else num_models
        self.output = BatchedLinear(members, sizes[-1], outputs)
        with torch.no_grad():  # start near equal odds: the exponential loss of large
            self.output.weight.mul_(INITIAL_OUTPUT_SCALE)  # early log-odds swamps a batch
            self.output.bias.zero_()
        # log of the training mix's model frequencies, set by ModelComparison.fit
        self.register_buffer("log_train_prior", torch.full((num_models,), -math.log(num_models)))

    def config(self) -> dict[str, Any]:
        """The constructor arguments besides the embeddings (for saving)."""
        return {
            "x_shape": list(self.x_shape),
            "num_models": self.num_models,
            "loss": self.loss_name,
            "members": self.members,
            "hidden_features": self.hidden_features,
            "num_layers": self.num_layers,
        }

    def features(self, x: Tensor) -> Tensor:
        """Every member's last hidden layer ``(K, B, hidden_features)`` of x ``(B, *x_shape)``."""
        z = self.standardizer(x)
        if self.embeddings is None:
            h = z.flatten(start_dim=1).expand(self.members, -1, -1)  # (K, B, D)
        else:
            h = torch.stack([net(z) for net in self.embeddings])  # (K, B, E)
        for layer in self.hidden:
            h = nn.functional.silu(layer(h))  # (K, B, H)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(K, B, M)`` of x ``(B, *x_shape)``; their softmax is p_train(m | x)."""
        out = self.output(self.features(x))  # (K, B, M) or (K, B, 1)
        if self.loss_name == "exponential":
            log_odds = leaky_parity_odd_power(out)
            return torch.cat([torch.zeros_like(log_odds), log_odds], dim=-1)  # (K, B, 2)
        return out

    def loss(self, labels: Tensor, x: Tensor) -> Tensor:
        """Training loss per sample ``(B,)``: the members' losses summed (each its own fit)."""
        return LOSSES[self.loss_name](self(x), labels).sum(dim=0)


def check_embedding(embedding_net: object) -> None:
    """Raise a ``ValueError`` unless ``embedding_net`` names an embedding as NPE takes it."""
    if embedding_net is None or isinstance(embedding_net, nn.Module) or embedding_net == "auto":
        return
    spec = {"type": embedding_net} if isinstance(embedding_net, str) else embedding_net
    if not isinstance(spec, dict) or spec.get("type") not in EMBEDDINGS:
        raise ValueError(
            f'embedding_net must be a torch module, "auto", one of {sorted(EMBEDDINGS)}, a dict '
            f'{{"type": name, **options}} naming one of them, or None; got {embedding_net!r}.'
        )


def member_embeddings(
    embedding_net: nn.Module | str | dict[str, Any] | None,
    x: Tensor,
    members: int,
) -> list[nn.Module] | None:
    """One embedding net per ensemble member, each with its own initialization.

    Args:
        embedding_net: ``"auto"`` (``sbiflow.embeddings.default_embedding`` of ``x``), a
            name or spec dict of ``sbiflow.embeddings``, a module (copied, and its layers
            re-initialized, for every member after the first), or ``None``.
        x: Training simulations ``(N, *x_shape)`` (only their shape matters but for ``"auto"``).
        members: Ensemble size.

    Returns:
        ``members`` nets, or None when x goes to the head flattened.
    """
    check_embedding(embedding_net)
    if embedding_net is None:
        return None
    if isinstance(embedding_net, nn.Module):
        nets = [embedding_net]
        for _ in range(members - 1):
            net = copy.deepcopy(embedding_net)
            for module in net.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            nets.append(net)
        return nets
    if embedding_net == "auto":
        first = default_embedding(x)
        return (
            None if first is None else [first] + [default_embedding(x) for _ in range(members - 1)]
        )
    spec = {"type": embedding_net} if isinstance(embedding_net, str) else dict(embedding_net)
    return [build_embedding(spec, tuple(x.shape[1:])) for _ in range(members)]
