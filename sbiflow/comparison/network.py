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

__all__ = [
    "BatchedLinear",
    "ComparisonNetwork",
    "QuadraticSkip",
    "Whitener",
    "check_embedding",
    "member_embeddings",
]

#: The output layer starts with weights this much smaller than ``nn.Linear``'s (as Evidence
#: Networks scale their output by 0.1), so training starts near equal odds for every x.
INITIAL_OUTPUT_SCALE = 0.1
#: :class:`Whitener` raises eigenvalues of the training covariance (of standardized x, whose
#: eigenvalues average 1) to at least this share of their mean.
WHITEN_FLOOR = 1e-3
#: Flat x with more features than this is standardized only (a D x D whitening matrix of
#: 4096 features is 64 MB and its eigendecomposition takes seconds).
MAX_WHITEN_FEATURES = 2048
#: Learned squared projections of :class:`QuadraticSkip` (``None``: ``hidden_features``).
QUADRATIC_RANK: int | None = None
#: Parameter-name prefixes of the weights ``ComparisonNetwork(penalty=...)`` penalizes: the
#: MLP head and the quadratic skip's projections, not the skip's output weights.
PENALIZED = ("hidden.", "output.", "quadratic.project.")


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


class Whitener(nn.Module):
    r"""PCA whitening of flat x, learned from training data and saved with the weights.

    :math:`w = (z - \bar z)\, V \Lambda^{-1/2}` from the eigendecomposition
    :math:`V \Lambda V^\top` of the training covariance; eigenvalues below
    ``WHITEN_FLOOR`` times their mean are raised to it, so a direction the simulations
    barely vary along is not blown up.

    Args:
        dim: Number of features ``D``.

    Example:
        >>> whitener = Whitener(2)
        >>> whitener.fit(torch.randn(500, 2) @ torch.tensor([[3.0, 0.0], [2.0, 0.5]]))
        >>> w = whitener(torch.randn(500, 2))
        >>> w.shape
        torch.Size([500, 2])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Learn the mean and whitening matrix from ``data`` ``(N, D)``."""
        x = data.double()
        mean = x.mean(dim=0)
        covariance = torch.cov((x - mean).T).reshape(x.shape[1], x.shape[1])
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        values = values.clamp(min=WHITEN_FLOOR * float(values.mean().clamp(min=1e-12)))
        matrix = (vectors / values.sqrt()).flip(dims=(1,))  # largest variance first
        self.mean.copy_(mean.float())
        self.matrix.copy_(matrix.float())

    def forward(self, x: Tensor) -> Tensor:
        """Whiten ``(B, D)``."""
        return (x - self.mean) @ self.matrix


#: Forms of :class:`QuadraticSkip`: ``"diagonal"`` (the default) and ``"chi2"``.
QUADRATIC_FORMS = ("diagonal", "chi2")


class QuadraticSkip(nn.Module):
    r"""Scores from a quadratic form of :math:`h`, added to the MLP's.

    The log Bayes factor between Gaussian evidences is a quadratic form of x; through this
    skip the head represents it exactly and the MLP learns what is left. The output weights
    start at zero, so training starts from the MLP alone. Two forms:

    - ``"diagonal"``: linear in :math:`h`, :math:`h^2` and :math:`(U h)^2` (the diagonal
      through :math:`h^2`, any rank-``rank`` part through the learned projections
      :math:`U`). Its output weights on :math:`h` and :math:`h^2`, :math:`2 D` per score,
      are fitted freely, and each one's noise adds up: on 100-d pairs that is ~0.1 nats of
      log K at 2 x 10^4 simulations per model.
    - ``"chi2"``: linear in :math:`(U h + c)^2` and :math:`\chi^2 = \sum_i (h_i^2 - 1)`,
      the chi-square of standardized x around its training mean. One free weight per score
      carries a log Bayes factor that depends on :math:`|x|^2` (models that differ in
      their scatter); the projections (and their offsets c, which give linear terms) stay
      under the head penalty. No per-feature output weights: what a linear or diagonal
      term is needed goes through :math:`U` and the MLP.

    Args:
        members: Ensemble size ``K``.
        in_features: Features ``D`` of h.
        rank: Learned projections ``r``.
        outputs: Scores per member.
        form: One of :data:`QUADRATIC_FORMS`.
    """

    def __init__(
        self, members: int, in_features: int, rank: int, outputs: int, form: str = "diagonal"
    ) -> None:
        super().__init__()
        if form not in QUADRATIC_FORMS:
            raise ValueError(f"Unknown quadratic form {form!r}; choose one of {QUADRATIC_FORMS}.")
        self.form = form
        self.project = BatchedLinear(members, in_features, rank)
        features = rank + (2 * in_features if form == "diagonal" else 1)
        self.linear = BatchedLinear(members, features, outputs)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        """Map ``(K, B, D)`` to ``(K, B, outputs)``."""
        u = self.project(h)  # (K, B, r)
        if self.form == "chi2":
            chi2 = (h * h - 1.0).sum(dim=-1, keepdim=True)  # standardized h: mean 0
            return self.linear(torch.cat([u * u, chi2], dim=-1))
        return self.linear(torch.cat([h, h * h, u * u], dim=-1))


def quadratic_form(quadratic: bool | str | None) -> str | None:
    """The :class:`QuadraticSkip` form that ``quadratic`` names, or ``None`` for no skip.

    ``True`` is ``"diagonal"``, the form of every model saved before ``"chi2"`` existed.

    Raises:
        ValueError: For anything but a bool, ``None`` or one of :data:`QUADRATIC_FORMS`.
    """
    if quadratic is None or quadratic is False:
        return None
    if quadratic is True:
        return "diagonal"
    if isinstance(quadratic, str) and quadratic in QUADRATIC_FORMS:
        return quadratic
    raise ValueError(
        f"quadratic must be True, False or one of {QUADRATIC_FORMS}, got {quadratic!r}."
    )


class ComparisonNetwork(nn.Module):
    r"""Scores :math:`s_m(x)`, one per model, from ``K`` independently initialized members.

    x is standardized (from the training simulations, saved with the weights), passes each
    member's embedding (if any; otherwise it is flattened) and each member's MLP head. All
    heads run as one batched product (:class:`BatchedLinear`); embeddings, whose shapes can
    depend on the data (sets), run one after the other.

    For ``loss="cross_entropy"`` the head has ``M`` outputs, the scores. For
    ``loss="exponential"`` (two models) it has one output :math:`f`, and the scores are
    :math:`(0, \mathrm{lPOP}(f))`. With ``quadratic``, a :class:`QuadraticSkip` from the
    head's input adds to the scores (to the log-odds after l-POP).

    Args:
        x_shape: Shape of one observation.
        num_models: Number of models ``M``.
        loss: ``"cross_entropy"`` or ``"exponential"``.
        embeddings: ``K`` embedding nets with ``out_features``, or ``None``.
        members: Ensemble size ``K``.
        hidden_features: Width of the head's hidden layers.
        num_layers: Hidden layers of the head.
        whiten: Whiten flattened x (:class:`Whitener`, fitted by :meth:`fit_inputs`); only
            without embeddings, where x goes to the head as a vector of at most
            ``MAX_WHITEN_FEATURES``.
        quadratic: Add the :class:`QuadraticSkip` (rank ``hidden_features``): ``True`` or
            ``"diagonal"`` for its default form, ``"chi2"`` for the other; ``False``: none.
        penalty: L2 penalty per training sample on the weight matrices of the MLP head and
            of the quadratic skip's projections (:data:`PENALIZED`), added to the loss;
            the skip's output weights are free, so large quadratic log K stay in reach.
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
        whiten: bool = False,
        quadratic: bool | str = False,
        penalty: float = 0.0,
    ) -> None:
        super().__init__()
        if not penalty >= 0.0:
            raise ValueError(f"penalty must be >= 0, got {penalty!r}.")
        self.penalty = float(penalty)
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
        flat = embeddings is None and width <= MAX_WHITEN_FEATURES
        self.whitener = Whitener(width) if whiten and flat else None
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
        form = quadratic_form(quadratic)
        self.quadratic = (
            QuadraticSkip(members, width, QUADRATIC_RANK or hidden_features, outputs, form)
            if form is not None
            else None
        )
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
            "whiten": self.whitener is not None,
            "quadratic": self.quadratic.form if self.quadratic is not None else False,
            "penalty": self.penalty,
        }

    def _batched_names(self) -> set[str]:
        """Names of the parameters stacked over members (those of every ``BatchedLinear``)."""
        return {
            f"{prefix}.{name}"
            for prefix, module in self.named_modules()
            if isinstance(module, BatchedLinear)
            for name in ("weight", "bias")
        }

    def member(self, k: int) -> ComparisonNetwork:
        """Member ``k`` as a network of its own, for training it alone.

        The one-member network holds copies of member ``k``'s head weights and of the input
        transforms, and *shares* member ``k``'s embedding module; write its trained head
        back with :meth:`set_member`.

        Args:
            k: Member index, ``0 <= k < members``.

        Returns:
            A ``ComparisonNetwork`` with ``members=1``.
        """
        if not 0 <= k < self.members:
            raise IndexError(f"member {k} of an ensemble of {self.members}")
        single = ComparisonNetwork(
            **(self.config() | {"members": 1}),
            embeddings=None if self.embeddings is None else [self.embeddings[k]],
        ).to(self.log_train_prior.device)
        full, batched = self.state_dict(), self._batched_names()
        state = {}
        for name in single.state_dict():
            if name.startswith("embeddings.0."):
                state[name] = full[f"embeddings.{k}." + name[len("embeddings.0.") :]]
            else:
                state[name] = full[name][k : k + 1] if name in batched else full[name]
        single.load_state_dict(state)
        return single

    @torch.no_grad()
    def set_member(self, k: int, single: ComparisonNetwork) -> None:
        """Write a one-member network's head weights (from :meth:`member`) into member ``k``."""
        own, theirs = dict(self.named_parameters()), dict(single.named_parameters())
        batched = self._batched_names()
        unshared = [n for n in theirs if n not in batched and not n.startswith("embeddings.0.")]
        if unshared:  # a parameter neither stacked nor in the shared embedding would be lost
            raise RuntimeError(f"Cannot write back parameters {unshared} into the ensemble.")
        for name in batched:
            own[name][k].copy_(theirs[name][0])

    @torch.no_grad()
    def fit_inputs(self, x: Tensor) -> None:
        """Learn the standardization (and whitening) of x from training data ``(N, *x_shape)``."""
        self.standardizer.fit(x)
        if self.whitener is not None:
            self.whitener.fit(self.standardizer(x).flatten(start_dim=1))

    def inputs(self, x: Tensor) -> Tensor:
        """Every member's head input ``(K, B, D)`` of x ``(B, *x_shape)``."""
        z = self.standardizer(x)
        if self.embeddings is not None:
            return torch.stack([net(z) for net in self.embeddings])  # (K, B, E)
        z = z.flatten(start_dim=1)
        if self.whitener is not None:
            z = self.whitener(z)
        return z.expand(self.members, -1, -1)  # (K, B, D)

    def _hidden(self, h: Tensor) -> Tensor:
        for layer in self.hidden:
            h = nn.functional.silu(layer(h))  # (K, B, H)
        return h

    def features(self, x: Tensor) -> Tensor:
        """Every member's last hidden layer ``(K, B, hidden_features)`` of x ``(B, *x_shape)``."""
        return self._hidden(self.inputs(x))

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``(K, B, M)`` of x ``(B, *x_shape)``; their softmax is p_train(m | x)."""
        h = self.inputs(x)
        out = self.output(self._hidden(h))  # (K, B, M) or (K, B, 1)
        if self.loss_name == "exponential":
            out = leaky_parity_odd_power(out)
        if self.quadratic is not None:
            out = out + self.quadratic(h)
        if self.loss_name == "exponential":
            return torch.cat([torch.zeros_like(out), out], dim=-1)  # (K, B, 2)
        return out

    def loss(self, targets: Tensor, x: Tensor) -> Tensor:
        """Training loss per sample ``(B,)``: the members' losses summed (each its own fit).

        Args:
            targets: Model indices ``(B,)``, or ``(B, 1 + K)``: the model index (as a float)
                and each member's weight of the sample (bootstrap counts).
            x: Simulations ``(B, *x_shape)``.
        """
        if targets.dim() == 1:
            loss = LOSSES[self.loss_name](self(x), targets).sum(dim=0)
        else:
            labels, weights = targets[:, 0].long(), targets[:, 1:].T  # (B,), (K, B)
            loss = (LOSSES[self.loss_name](self(x), labels) * weights).sum(dim=0)
        return loss + self.penalty * self.penalized_norm() if self.penalty else loss

    def penalized_norm(self) -> Tensor:
        """Sum of squares of the weight matrices that ``penalty`` applies to (all members)."""
        return sum(
            p.pow(2).sum()
            for name, p in self.named_parameters()
            if name.endswith(".weight") and name.startswith(PENALIZED)
        )


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
