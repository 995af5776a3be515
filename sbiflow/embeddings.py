"""Embedding networks that compress an observation x into features for an estimator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "EMBEDDINGS",
    "CNNEmbedding",
    "DeepSetEmbedding",
    "KinematicSetEmbedding",
    "MLPEmbedding",
    "PowerSpectrumEmbedding",
    "build_embedding",
    "default_embedding",
    "embedding_spec",
    "is_masked_set",
]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


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
        self.net = _mlp([in_features] + [hidden_features] * num_layers + [out_features])
        self.spec = {
            "type": "mlp",
            "out_features": out_features,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape ``(B, *x_shape)`` into ``(B, out_features)``."""
        return self.net(x.flatten(start_dim=1))


class DeepSetEmbedding(nn.Module):
    r"""Permutation-invariant network for a padded set with a mask in its last column.

    Each element's features go through :math:`\phi`; the masked mean over present elements,
    together with the log of their number (the size of a set is data too), goes through
    :math:`\rho`. Padding rows never reach the output.

    Args:
        x_shape: ``(N_max, F + 1)``: up to ``N_max`` elements of ``F`` features, then the mask
            (1 present, 0 padding).
        out_features: Number of output features.
        hidden_features: Width of the hidden layers of both networks.
        num_layers: Hidden layers of each network.

    Example:
        >>> net = DeepSetEmbedding((5, 3), out_features=4)
        >>> x = torch.zeros(2, 5, 3)
        >>> x[:, :3, 2] = 1.0  # three elements present
        >>> net(x).shape
        torch.Size([2, 4])

    References:
        Deep Sets (Zaheer et al., 2017), arXiv:1703.06114.
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_features: int = 20,
        hidden_features: int = 64,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        if len(x_shape) != 2 or x_shape[1] < 2:
            raise ValueError(f"A masked set has shape (N_max, F + 1), got {tuple(x_shape)}.")
        self.x_shape = tuple(x_shape)
        self.out_features = out_features
        features = x_shape[1] - 1
        self.phi = _mlp([features] + [hidden_features] * num_layers + [hidden_features])
        self.rho = _mlp([hidden_features + 1] + [hidden_features] * num_layers + [out_features])
        self.spec = {
            "type": "deepset",
            "out_features": out_features,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Embed sets ``(B, N_max, F + 1)`` into ``(B, out_features)``."""
        # phi runs on the present elements only: padding costs nothing (sets of ~2/3 full
        # rows train ~1.5x faster than with phi on every row and a masked sum).
        elements, sum_per_set, count = _packed(x)
        pooled = sum_per_set(self.phi(elements[:, :-1])) / count.clamp_min(1.0)  # (B, H)
        return self.rho(torch.cat([pooled, torch.log1p(count)], dim=1))


def _packed(x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor], Tensor]:
    """The present elements of padded sets ``(B, N_max, F + 1)``, packed.

    Returns:
        The elements ``(M, F + 1)`` of the whole batch (M present in all), a function that
        sums per-element values ``(M, K)`` over each set into ``(B, K)``, and the number of
        elements of each set ``(B, 1)``.
    """
    present = x[..., -1] > 0.5  # (B, N)
    sizes = present.sum(dim=1)
    rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(sizes)

    def sum_per_set(values: Tensor) -> Tensor:
        return values.new_zeros(x.shape[0], values.shape[1]).index_add(0, rows, values)

    return x[present], sum_per_set, sizes.unsqueeze(1).to(x.dtype)


class CNNEmbedding(nn.Module):
    """Convolutional network for maps: 3x3 convolutions and 2x2 pooling, then a linear head.

    Args:
        x_shape: ``(H, W)`` (one channel) or ``(C, H, W)``.
        out_features: Number of output features.
        channels: Channels of the successive convolution blocks; each block halves H and W.
        hidden_features: Width of the linear layer after the convolutions.
        circular: Pad periodically (a map of a periodic box, e.g. a simulated field).

    Example:
        >>> net = CNNEmbedding((16, 16), out_features=5)
        >>> net(torch.zeros(3, 16, 16)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_features: int = 20,
        channels: tuple[int, ...] | list[int] = (16, 32, 64),
        hidden_features: int = 64,
        circular: bool = False,
    ) -> None:
        super().__init__()
        if len(x_shape) not in (2, 3):
            raise ValueError(f"A map has shape (H, W) or (C, H, W), got {tuple(x_shape)}.")
        self.x_shape = tuple(x_shape)
        self.out_features = out_features
        in_channels, height, width = (1, *x_shape) if len(x_shape) == 2 else x_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            if min(height, width) < 2:
                raise ValueError(f"{len(channels)} pooling blocks are too many for {x_shape}.")
            layers += [
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    3,
                    padding=1,
                    padding_mode="circular" if circular else "zeros",
                ),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.head = _mlp([in_channels * height * width, hidden_features, out_features])
        self.spec = {
            "type": "cnn",
            "out_features": out_features,
            "channels": list(channels),
            "hidden_features": hidden_features,
            "circular": circular,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Embed maps ``(B, *x_shape)`` into ``(B, out_features)``."""
        if len(self.x_shape) == 2:
            x = x.unsqueeze(1)  # (B, 1, H, W)
        return self.head(self.features(x).flatten(start_dim=1))


class PowerSpectrumEmbedding(nn.Module):
    r"""The binned power spectrum of a periodic map, then an MLP.

    For a statistically homogeneous field on a periodic grid the Fourier modes are
    uncorrelated, so the power in shells of :math:`|k|` carries (nearly) all of the
    information of a Gaussian field: it is the classic summary of a cosmological map. The map
    ``(H, W)`` goes through a 2-D real FFT; :math:`|\hat x_k|^2 / (HW)` is averaged over
    shells of :math:`|k|` (grid units, the mean mode :math:`k = 0` left out), and the
    logarithm of the shell averages goes through an MLP. Only the MLP is learned.

    Shells of integer :math:`|k|` (the default; 23 for a 32 x 32 map) are what power-spectrum
    analyses use. With ``shells="distinct"`` there is one shell per distinct
    :math:`k_x^2 + k_y^2` (134 for 32 x 32): for a Gaussian field whose spectrum depends on
    :math:`|k|` alone these averages are sufficient statistics (the likelihood is a sum over
    them), while integer shells lose what the spectrum does within a shell.

    Args:
        x_shape: ``(H, W)`` (one channel) or ``(C, H, W)`` (the spectrum of each channel).
        out_features: Number of output features.
        hidden_features: Width of the MLP's hidden layers.
        num_layers: Hidden layers of the MLP.
        shells: ``"integer"`` (shells of integer :math:`|k|`) or ``"distinct"`` (one per
            distinct :math:`|k|^2`).

    Example:
        >>> net = PowerSpectrumEmbedding((16, 16), out_features=4)
        >>> net.num_shells, net(torch.randn(3, 16, 16)).shape
        (11, torch.Size([3, 4]))

    References:
        Fisher-matrix and power-spectrum analyses of galaxy surveys: Feldman, Kaiser &
        Peacock 1994 (arXiv:astro-ph/9304022).
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_features: int = 20,
        hidden_features: int = 64,
        num_layers: int = 2,
        shells: str = "integer",
    ) -> None:
        super().__init__()
        if len(x_shape) not in (2, 3):
            raise ValueError(f"A map has shape (H, W) or (C, H, W), got {tuple(x_shape)}.")
        if shells not in ("integer", "distinct"):
            raise ValueError(f"shells must be 'integer' or 'distinct', got {shells!r}.")
        self.x_shape = tuple(x_shape)
        self.out_features = out_features
        channels, height, width = (1, *x_shape) if len(x_shape) == 2 else x_shape
        ky = torch.fft.fftfreq(height, 1.0 / height)[:, None]  # integers 0, 1, ..., -1
        kx = torch.fft.rfftfreq(width, 1.0 / width)[None, :]
        k2 = (kx**2 + ky**2).round().long()  # (H, W // 2 + 1)
        if shells == "integer":
            shell = torch.round(torch.sqrt(k2.double())).long()
        else:  # 0 for k = 0, then 1, 2, ... in order of |k|^2
            shell = torch.unique(k2, return_inverse=True)[1]
        # rfft2 keeps one of each pair (k, -k): the other columns count twice.
        weight = torch.full(shell.shape, 2.0)
        weight[:, 0] = 1.0
        if width % 2 == 0:
            weight[:, -1] = 1.0
        weight[0, 0] = 0.0  # the mean is not a fluctuation
        self.num_shells = int(shell.max())
        onehot = nn.functional.one_hot(shell.flatten(), self.num_shells + 1).float()
        binning = (weight.flatten()[:, None] * onehot)[:, 1:]  # (H (W//2 + 1), S)
        self.register_buffer("binning", binning / binning.sum(dim=0), persistent=False)
        self.channels, self.pixels = channels, height * width
        self.net = _mlp(
            [channels * self.num_shells] + [hidden_features] * num_layers + [out_features]
        )
        self.spec = {
            "type": "power_spectrum",
            "out_features": out_features,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
            "shells": shells,
        }

    def power(self, x: Tensor) -> Tensor:
        """Shell-averaged power ``(B, C, S)`` of maps ``(B, *x_shape)``."""
        x = x.reshape(x.shape[0], self.channels, *x.shape[-2:])  # (B, C, H, W)
        modes = torch.fft.rfft2(x).abs().square() / self.pixels  # (B, C, H, W // 2 + 1)
        return modes.flatten(start_dim=2) @ self.binning  # (B, C, S)

    def forward(self, x: Tensor) -> Tensor:
        """Embed maps ``(B, *x_shape)`` into ``(B, out_features)``."""
        return self.net(torch.log(self.power(x) + 1e-12).flatten(start_dim=1))


class KinematicSetEmbedding(nn.Module):
    r"""Learned velocity-dispersion profiles of a padded set of stars.

    Each element holds one velocity-like feature :math:`v` (zero mean by symmetry, e.g. a
    line-of-sight velocity in the system's rest frame), covariates :math:`c` (e.g. projected
    radius and measurement error) and the mask. If :math:`v_i` is Gaussian with a variance
    :math:`s^2(c_i; \theta)`, the log-likelihood
    :math:`\sum_i [-v_i^2 / (2 s^2(c_i; \theta)) - \log s(c_i; \theta)]` depends on the data
    only through sums of :math:`v_i^2` weighted by functions of :math:`c_i`: the classic
    binned dispersion profile of a Jeans analysis, with the bins learned. This net computes
    ``num_profiles`` such profiles,

    .. math:: S_k = \frac{\sum_i w_k(c_i)\, v_i^2}{\sum_i w_k(c_i)},
        \qquad w_k = \mathrm{softplus}(\mathrm{MLP}(c))_k > 0,

    and passes :math:`\log S_k`, the log of each profile's mean weight and
    :math:`\log(1 + N)` through an MLP :math:`\rho`. With ``fourth_moments``, also the
    log kurtosis of each profile, :math:`\log(Q_k / S_k^2)` with
    :math:`Q_k = \sum_i w_k v_i^4 / \sum_i w_k` (:math:`\log 3` for Gaussian velocities):
    not needed for a Gaussian likelihood, but the shape of the velocity distribution is
    what betrays stars that do not belong (foreground contamination, binaries), and what
    the virial shape parameters of Jeans analyses measure. Unlike :class:`DeepSetEmbedding`,
    whose per-element network has to learn :math:`v^2` and its products with functions of
    :math:`c` from the data, the structure of the likelihood is built in; only the weights
    and :math:`\rho` are learned. Padding rows never reach the output.

    Args:
        x_shape: ``(N_max, F + 1)``: up to ``N_max`` elements of ``F >= 2`` features (the
            velocity among them), then the mask (1 present, 0 padding).
        out_features: Number of output features.
        velocity_column: Index of the velocity among the ``F`` features.
        num_profiles: Number of weighted profiles :math:`K`.
        hidden_features: Width of the hidden layers of the weight network and :math:`\rho`.
        num_layers: Hidden layers of each network.
        fourth_moments: Also pool each profile's fourth moment (its log kurtosis).

    Example:
        >>> net = KinematicSetEmbedding((5, 4), out_features=3)
        >>> x = torch.zeros(2, 5, 4)
        >>> x[:, :3] = torch.tensor([0.5, 1.0, 2.0, 1.0])  # three stars (R, v, dv, mask)
        >>> net(x).shape
        torch.Size([2, 3])

    References:
        Jeans analyses of dwarf spheroidals on binned dispersion profiles, e.g. Walker et
        al. 2009 (arXiv:0906.0341); virial shape parameters (fourth moments), Merrifield &
        Kent 1990 and Read & Steger 2017 (arXiv:1701.04833); Deep Sets (Zaheer et al.,
        2017), arXiv:1703.06114.
    """

    def __init__(
        self,
        x_shape: tuple[int, ...],
        out_features: int = 20,
        velocity_column: int = 1,
        num_profiles: int = 16,
        hidden_features: int = 64,
        num_layers: int = 2,
        fourth_moments: bool = False,
    ) -> None:
        super().__init__()
        if len(x_shape) != 2 or x_shape[1] < 3:
            raise ValueError(
                "A kinematic set has shape (N_max, F + 1) with a velocity and at least one "
                f"covariate per element, got {tuple(x_shape)}."
            )
        features = x_shape[1] - 1
        if not 0 <= velocity_column < features:
            raise ValueError(
                f"velocity_column must index one of the {features} features, got {velocity_column}."
            )
        self.x_shape = tuple(x_shape)
        self.out_features = out_features
        self.velocity_column = velocity_column
        covariates = [i for i in range(features) if i != velocity_column]
        self.register_buffer("covariates", torch.tensor(covariates), persistent=False)
        self.weights = _mlp([len(covariates)] + [hidden_features] * num_layers + [num_profiles])
        self.fourth_moments = bool(fourth_moments)
        pooled = (3 if self.fourth_moments else 2) * num_profiles + 1
        self.rho = _mlp([pooled] + [hidden_features] * num_layers + [out_features])
        self.spec = {
            "type": "kinematic_set",
            "out_features": out_features,
            "velocity_column": velocity_column,
            "num_profiles": num_profiles,
            "hidden_features": hidden_features,
            "num_layers": num_layers,
        }
        if self.fourth_moments:  # only when set: specs saved before the option still load
            self.spec["fourth_moments"] = True

    def forward(self, x: Tensor) -> Tensor:
        """Embed sets ``(B, N_max, F + 1)`` into ``(B, out_features)``."""
        stars, sum_per_set, count = _packed(x)  # (M, F + 1), M stars in the batch
        weight = nn.functional.softplus(self.weights(stars[:, self.covariates])) + 1e-4  # (M, K)
        square = stars[:, self.velocity_column, None].square()  # (M, 1)
        weight_sum = sum_per_set(weight).clamp_min(1e-12)  # (B, K)
        log_second = torch.log(sum_per_set(weight * square) / weight_sum + 1e-6)
        pooled = [log_second]
        if self.fourth_moments:
            fourth = sum_per_set(weight * square.square()) / weight_sum
            pooled.append(torch.log(fourth + 1e-12) - 2.0 * log_second)
        coverage = torch.log(weight_sum / count.clamp_min(1.0))
        return self.rho(torch.cat([*pooled, coverage, torch.log1p(count)], dim=1))


#: Embedding families by name (the ``type`` of a saved spec).
EMBEDDINGS: dict[str, type[nn.Module]] = {
    "mlp": MLPEmbedding,
    "deepset": DeepSetEmbedding,
    "cnn": CNNEmbedding,
    "power_spectrum": PowerSpectrumEmbedding,
    "kinematic_set": KinematicSetEmbedding,
}

#: Smallest side of a 2-D x read as a map (smaller ones are flattened into an MLP's input).
MIN_MAP_SIDE = 8


def is_masked_set(x: Tensor) -> bool:
    """Whether simulations ``(N, N_max, F + 1)`` look like padded sets with a 0/1 mask column.

    The last column must be 0 or 1 everywhere, padding rows (mask 0) must be all zeros, and
    some sets must be padded. A map's last column is not like that.
    """
    if x.ndim != 3 or x.shape[2] < 2:
        return False
    mask = x[..., -1]
    if not bool(((mask == 0) | (mask == 1)).all()):
        return False
    padded = mask == 0
    return bool(padded.any()) and bool((x[padded] == 0).all())


def default_embedding(x: Tensor) -> nn.Module | None:
    """The embedding ``NPE`` picks from the training simulations ``(N, *x_shape)``.

    Masked sets get a :class:`DeepSetEmbedding`, maps ``(H, W)`` or ``(C, H, W)`` with sides
    of at least ``MIN_MAP_SIDE`` a :class:`CNNEmbedding`; anything else ``None``: the flattened
    vector goes to the estimator as it is.
    """
    shape = tuple(x.shape[1:])
    if is_masked_set(x):
        return DeepSetEmbedding(shape)
    if len(shape) in (2, 3) and min(shape[-2:]) >= MIN_MAP_SIDE:
        return CNNEmbedding(shape)
    return None


def declared_embedding(simulator: Any) -> dict[str, Any] | None:
    """The embedding a simulator declares for its x, as a spec ``{"type": name, **options}``.

    A simulator may set an attribute ``embedding_net`` (a name of ``EMBEDDINGS`` or such a
    dict); ``embedding_net="auto"`` then takes it (``NPE(prior, simulator=sim)``, ``sbiflow
    run``, ``ModelComparison``) instead of guessing from the shape of x. sbiflow reads the
    attribute only: it never imports the simulators.

    Args:
        simulator: Any simulator object (or None).

    Returns:
        The spec, or None when the simulator declares none.

    Raises:
        ValueError: If the declaration names no known embedding.
    """
    declared = getattr(simulator, "embedding_net", None)
    if declared is None:
        return None
    spec = {"type": declared} if isinstance(declared, str) else dict(declared)
    if spec.get("type") not in EMBEDDINGS:
        raise ValueError(
            f"{type(simulator).__name__}.embedding_net = {declared!r} names no embedding; "
            f"choose one of {sorted(EMBEDDINGS)} (or a dict with such a 'type')."
        )
    return spec


def build_embedding(spec: dict[str, Any], x_shape: tuple[int, ...]) -> nn.Module:
    """Build an embedding net from its spec (as stored in a saved model)."""
    options = dict(spec)
    kind = options.pop("type")
    if kind not in EMBEDDINGS:
        raise ValueError(f"Unknown embedding type {kind!r}; known: {sorted(EMBEDDINGS)}.")
    return EMBEDDINGS[kind](x_shape, **options)


def embedding_spec(net: nn.Module) -> dict[str, Any] | None:
    """The spec that rebuilds ``net``, or None for a user's own module (pass it again on load)."""
    spec = getattr(net, "spec", None)
    return dict(spec) if isinstance(spec, dict) else None
