r"""An ensemble of conditional density estimators: the equal-weight mixture of K members.

.. math::
    q(a \mid b) = \frac{1}{K} \sum_{k=1}^{K} q_k(a \mid b)

The members have the same architecture and differ in their initial weights; they are
trained side by side in one fit loop, each on its own negative log density (the loss is
their mean, so no member sees another's gradient). Averaging the densities of networks
that each fit the data but disagree away from it widens the posterior where a single
network is overconfident.

Vectorized (the default): the members' weights are stacked along a new first axis on
every call and one network evaluates all K on the batch through ``torch.func.vmap``
(``functional_call`` on a weightless copy of one member), so a step runs each layer's
operation once for all members instead of K times; gradients flow back to each member's
own parameters through the stack. :meth:`clip_gradients_` then gives every member exactly
the gradient it would have had alone (the loss's 1/K undone, clipped on its own norm),
so training the ensemble equals training its members one by one on the same batches.
Where an embedding's operations have no batching rule (vmap raises), the members are
evaluated one after another with the same results.

References:
    A Trust Crisis In Simulation-Based Inference? Your Posterior Approximations Can Be
    Unfaithful (Hermans et al., 2022), arXiv:2110.06581.
    Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles
    (Lakshminarayanan et al., 2017), arXiv:1612.01474.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from sbiflow.estimators.base import ConditionalEstimator

__all__ = ["EnsembleEstimator"]


def _reinitialized(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with fresh initial weights (from torch's global generator)."""
    fresh = copy.deepcopy(net)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


class _MethodCall(nn.Module):
    """``forward(name, *args)`` calls ``module.name(*args)``: any method via functional_call."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.m, method)(*args)


class EnsembleEstimator(ConditionalEstimator):
    """Equal-weight mixture of ``num_members`` estimators of one family.

    Args:
        a_shape: Shape of one a, ``(D_a,)``.
        b_shape: Shape of one b.
        embedding_net: Network for standardized b; the first member uses it, every other
            member a copy with fresh initial weights (the members share nothing).
        num_members: Number of members K (at least 1).
        member: Family of the members, any of ``sbiflow.estimators.ESTIMATORS`` except
            ``"ensemble"``.
        vectorized: Evaluate the members in one vmapped pass (see the module docstring);
            ``False`` evaluates them one after another (same results, slower).
        bootstrap: Train each member on its own Bayesian bootstrap of the simulations:
            member k weighs every training pair by an Exponential(1) draw, the same in every
            epoch (a hash of the pair's values, so no index is needed). The members then
            differ as fits to different data sets would, and the mixture widens where the
            simulations do not pin the posterior down.
        **member_options: Passed to every member (e.g. ``hidden_features=64``).

    Example:
        >>> q = EnsembleEstimator((2,), (3,), num_members=3)
        >>> q.log_prob(torch.zeros(4, 2), torch.zeros(4, 3)).shape
        torch.Size([4])
        >>> q.sample(10, torch.zeros(3)).shape
        torch.Size([10, 2])
    """

    kind = "ensemble"

    def __init__(
        self,
        a_shape: tuple[int, ...],
        b_shape: tuple[int, ...],
        embedding_net: nn.Module | None = None,
        num_members: int = 5,
        member: str = "nsf",
        vectorized: bool = True,
        bootstrap: bool = False,
        **member_options: Any,
    ) -> None:
        from sbiflow.estimators import build_estimator  # the registry imports this module

        super().__init__(a_shape, b_shape)
        if int(num_members) < 1:
            raise ValueError(f"An ensemble needs num_members >= 1, got {num_members}.")
        if member == self.kind:
            raise ValueError("The members of an ensemble cannot be ensembles.")
        self.num_members, self.member = int(num_members), member
        self.member_options = dict(member_options)
        members = []
        for k in range(self.num_members):
            net = (
                embedding_net if k == 0 or embedding_net is None else _reinitialized(embedding_net)
            )
            members.append(build_estimator(member, a_shape, b_shape, net, **member_options))
        self.members = nn.ModuleList(members)
        self.vectorized = bool(vectorized)
        self.bootstrap = bool(bootstrap)
        # A weightless copy of one member (not a submodule: no parameters, not saved) that
        # functional_call fills with each member's weights.
        self.__dict__["_template"] = _MethodCall(copy.deepcopy(members[0]).to("meta"))
        self.__dict__["_vmap_failed"] = False

    @property
    def embedding_net(self) -> nn.Module:
        """The first member's network for standardized b (all members have its architecture)."""
        return self.members[0].embedding_net

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for save/load."""
        return {
            "kind": self.kind,
            "a_shape": list(self.a_shape),
            "b_shape": list(self.b_shape),
            "num_members": self.num_members,
            "member": self.member,
            "vectorized": self.vectorized,
            "bootstrap": self.bootstrap,
            **self.member_options,
        }

    def standardize_from(self, a: Tensor, b: Tensor) -> None:
        """Learn z-scoring from training a and b, for the ensemble and every member."""
        super().standardize_from(a, b)
        for member in self.members:
            member.standardize_from(a, b)

    def _stacked_state(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The members' parameters stacked (name → ``(K, *shape)``), and their buffers.

        ``torch.stack`` is differentiable, so gradients reach each member's parameters.
        The condition's z-scoring and the embedding's buffers, equal in every member, are
        passed once, unbatched: the standardized condition then stays one tensor, so an
        embedding that packs padded sets by a data-dependent mask still runs under vmap.
        (The other buffers stay batched: flows add batched terms into them in place.)

        Returns:
            Stacked parameters, stacked buffers (those that differ), shared buffers.
        """
        named = [dict(m.named_parameters()) for m in self.members]
        buffers = [dict(m.named_buffers()) for m in self.members]
        params = {f"m.{k}": torch.stack([p[k] for p in named]) for k in named[0]}
        first_member = self.members[0]
        condition_side = {id(b) for b in first_member.b_standardizer.buffers()}
        condition_side |= {id(b) for b in first_member.embedding_net.buffers()}
        stacked, shared = {}, {}
        for k, first in buffers[0].items():
            if id(first) in condition_side and all(torch.equal(first, b[k]) for b in buffers[1:]):
                shared[f"m.{k}"] = first
            else:
                stacked[f"m.{k}"] = torch.stack([b[k] for b in buffers])
        return params, stacked, shared

    def _over_members(self, method: str, *args: Any, randomness: str = "error") -> Tensor:
        """``member.method(*args)`` for every member, stacked → ``(K, ...)``.

        One vmapped call where the members' operations allow it, else a loop.
        """
        if self.vectorized and not self._vmap_failed:
            params, stacked, shared = self._stacked_state()
            template = self._template

            def call(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
                return functional_call(template, (p, {**b, **shared}), (method, *args))

            try:
                return vmap(call, randomness=randomness)(params, stacked)
            except (RuntimeError, NotImplementedError, ValueError) as error:
                self.__dict__["_vmap_failed"] = True
                warnings.warn(
                    f"The ensemble's members cannot be evaluated in one vectorized pass "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); they run "
                    "one after another (same results, slower).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return torch.stack([getattr(member, method)(*args) for member in self.members])

    @property
    def temperature(self) -> float:
        """The base temperature every member is widened by (1: as trained; flows only)."""
        return float(getattr(self.members[0], "temperature", 1.0))

    def set_temperature(self, temperature: float) -> None:
        """Widen every member by the same base-normal scale ``temperature`` (≥ 1).

        Each member's density becomes its tempered flow's (see
        ``sbiflow.estimators.flows.FlowEstimator.set_temperature``), so the mixture stays
        normalized; sampling and ``log_prob`` both follow it, and it is saved with the
        model. Members that are not flows have no temperature: this raises.
        """
        if not callable(getattr(self.members[0], "set_temperature", None)):
            raise TypeError(f"Members of kind {self.member!r} have no temperature.")
        for member in self.members:
            member.set_temperature(temperature)
        self._template.m.set_temperature(temperature)  # what the vectorized pass evaluates
        if float(temperature) != 1.0:
            self.member_options["temperature"] = float(temperature)
        else:
            self.member_options.pop("temperature", None)

    def member_log_probs(self, a: Tensor, b: Tensor) -> Tensor:
        """Log densities of every member: a ``(B, D_a)``, b ``(B, *b_shape)`` → ``(K, B)``."""
        return self._over_members("log_prob", a, b)

    def member_losses(self, a: Tensor, b: Tensor) -> Tensor:
        """Every member's own per-sample loss → ``(K, B)``."""
        return self._over_members("loss", a, b)

    def clip_gradients_(self, max_norm: float | None) -> None:
        """Give every member the gradient of its own loss, clipped on its own norm.

        :meth:`loss` is the members' mean, so each member's gradient is 1/K of what it
        would be alone: it is scaled back by K, then clipped to ``max_norm`` as the training
        loop clips a lone estimator. Called by ``sbiflow.training.train`` after ``backward``.
        """
        for member in self.members:
            grads = [p.grad for p in member.parameters() if p.grad is not None]
            if not grads:
                continue
            torch._foreach_mul_(grads, float(self.num_members))
            if max_norm is not None:
                nn.utils.clip_grad_norm_(
                    [p for p in member.parameters() if p.grad is not None], max_norm, foreach=True
                )

    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        """Log density of the mixture, ``logsumexp_k log q_k - log K`` → ``(B,)``."""
        logq = self.member_log_probs(a, b)  # (K, B)
        return torch.logsumexp(logq, dim=0) - math.log(self.num_members)

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean of the members' own losses ``(B,)``: each member trains as if alone.

        With ``bootstrap``, member k's loss of each pair is weighted by
        :meth:`bootstrap_weights` (in training and validation alike).
        """
        losses = self.member_losses(a, b)  # (K, B)
        if self.bootstrap:
            losses = losses * self.bootstrap_weights(a, b)
        return losses.mean(dim=0)

    def _projection(self, features: int, device: torch.device) -> Tensor:
        """The fixed ``(features, K)`` float64 projection of :meth:`bootstrap_weights`.

        Drawn once from a fixed seed and kept (not saved: the seed rebuilds it), so a
        training step does not draw it again.
        """
        key = (features, str(device))
        cache = self.__dict__.setdefault("_projections", {})
        if key not in cache:
            generator = torch.Generator().manual_seed(20_240_917)
            projection = torch.randn(features, self.num_members, generator=generator)
            cache[key] = projection.double().to(device)
        return cache[key]

    @torch.no_grad()
    def bootstrap_weights(self, a: Tensor, b: Tensor) -> Tensor:
        """Exponential(1) weights ``(K, B)`` of pairs a ``(B, D_a)``, b ``(B, *b_shape)``.

        A pair's weight is a function of its values: a fixed random projection per member
        (a fixed seed), whose fractional part at a fine scale is uniform for continuous
        data, and ``-log`` of that. The same pair gets the same weight in every epoch and
        after save/load; different members weigh it independently.
        """
        rows = torch.cat([a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)], dim=1)
        scaled = rows.double() @ self._projection(rows.shape[1], rows.device)  # (B, K)
        uniform = torch.frac(scaled.abs() * 1e4)
        return -torch.log(uniform.clamp(1e-6, 1.0)).T.to(a.dtype)  # (K, B)

    def _member_counts(self, n: int) -> list[int]:
        weights = torch.ones(self.num_members)
        choice = torch.multinomial(weights, n, replacement=True)  # (n,)
        return torch.bincount(choice, minlength=self.num_members).tolist()

    def sample(self, n: int, b: Tensor) -> Tensor:
        """Draw ``n`` samples given one ``b`` ``(*b_shape)`` → ``(n, D_a)``.

        The number of draws from each member is multinomial with equal weights; the draws
        come back in random order.
        """
        counts = self._member_counts(n)
        if self.vectorized:
            # every member draws as many as the largest count, in one pass; keep counts[k]
            drawn = self._over_members("sample", max(counts), b, randomness="different")
            parts = [drawn[k, :c] for k, c in enumerate(counts)]
        else:
            parts = [m.sample(c, b) for m, c in zip(self.members, counts, strict=True) if c > 0]
        samples = torch.cat(parts)  # (n, D_a)
        return samples[torch.randperm(n, device=samples.device)]

    def sample_each(self, b: Tensor) -> Tensor:
        """Draw one a per condition, each from a uniformly chosen member → ``(B, D_a)``."""
        choice = torch.randint(self.num_members, (b.shape[0],), device=b.device)  # (B,)
        out = b.new_empty(b.shape[0], *self.a_shape)
        for k, member in enumerate(self.members):
            rows = torch.nonzero(choice == k).flatten()
            if len(rows):
                out[rows] = member.sample_each(b[rows])
        return out
