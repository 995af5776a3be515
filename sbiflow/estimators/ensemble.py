r"""An ensemble of conditional density estimators: the equal-weight mixture of K members.

.. math::
    q(a \mid b) = \frac{1}{K} \sum_{k=1}^{K} q_k(a \mid b)

The members have the same architecture and differ in their initial weights; they are
trained side by side in one fit loop, each on its own negative log density (the loss is
their mean, so no member sees another's gradient). Averaging the densities of networks
that each fit the data but disagree away from it widens the posterior where a single
network is overconfident.

References:
    A Trust Crisis In Simulation-Based Inference? Your Posterior Approximations Can Be
    Unfaithful (Hermans et al., 2022), arXiv:2110.06581.
    Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles
    (Lakshminarayanan et al., 2017), arXiv:1612.01474.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

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
            **self.member_options,
        }

    def standardize_from(self, a: Tensor, b: Tensor) -> None:
        """Learn z-scoring from training a and b, for the ensemble and every member."""
        super().standardize_from(a, b)
        for member in self.members:
            member.standardize_from(a, b)

    def member_log_probs(self, a: Tensor, b: Tensor) -> Tensor:
        """Log densities of every member: a ``(B, D_a)``, b ``(B, *b_shape)`` → ``(K, B)``."""
        return torch.stack([member.log_prob(a, b) for member in self.members])

    def log_prob(self, a: Tensor, b: Tensor) -> Tensor:
        """Log density of the mixture, ``logsumexp_k log q_k - log K`` → ``(B,)``."""
        logq = self.member_log_probs(a, b)  # (K, B)
        return torch.logsumexp(logq, dim=0) - math.log(self.num_members)

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean of the members' own losses ``(B,)``: each member trains as if alone."""
        return torch.stack([member.loss(a, b) for member in self.members]).mean(dim=0)

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
