r"""Amortized Bayesian model comparison: a classifier over models, trained on simulations.

A classifier trained on simulations from models :math:`M_1 \dots M_K` drawn with
frequencies :math:`\pi_{\rm train}(m)` learns :math:`p_{\rm train}(m \mid x) \propto
\pi_{\rm train}(m)\, p(x \mid m)` under a proper scoring rule. Its scores minus
:math:`\log \pi_{\rm train}(m)` are therefore :math:`\log p(x \mid m)` up to one constant
per x: their differences are log Bayes factors, whatever the training mix, and posterior
model probabilities for any prior follow by adding :math:`\log \pi(m)` and normalizing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sbiflow.comparison.calibration import Calibration, calibration_figure, reliability
from sbiflow.comparison.crosscheck import CrossCheck, evidence_crosscheck
from sbiflow.comparison.data import check_simulations, model_prior, simulate_models
from sbiflow.comparison.losses import LOSSES
from sbiflow.comparison.misspecification import Misspecification, SummaryReference
from sbiflow.comparison.network import (
    QUADRATIC_FORMS,
    ComparisonNetwork,
    check_embedding,
    member_embeddings,
    quadratic_form,
)
from sbiflow.embeddings import declared_embedding, embedding_spec
from sbiflow.inference.base import NotFittedError
from sbiflow.training import TrainingConfig, TrainingHistory, threads_for, train

__all__ = ["ModelComparison"]

#: Rows per forward pass at prediction time (bounds the memory of a large batch).
CHUNK = 4096
#: Embeddings whose pooled statistics (the input of the named final network) are the
#: misspecification space, when they have at most ``MAX_STATISTICS`` features.
POOLED_STATISTICS = {
    "kinematic_set": "rho",
    "deepset": "rho",
    "power_spectrum": "net",
    "cnn": "head",
}
MAX_STATISTICS = 256
#: Ways the ensemble's members differ besides their initialization (``resampling``).
RESAMPLING = ("bootstrap", "jackknife", "none")
# Tags that keep the simulations of fit and calibration apart for the same seed.
_FIT, _CALIBRATION = 0, 1


class ModelComparison:
    r"""Posterior model probabilities and Bayes factors from a classifier over models.

    The models may have different parameters; only the shape of x must agree. The
    classifier sees standardized x through the same embeddings as NPE (DeepSet for padded
    sets, CNN for maps, none for vectors) and an MLP head, plus (for vectors) a linear and
    quadratic skip to the scores: between Gaussian evidences the log Bayes factor is a
    quadratic form of x, which an MLP alone learned poorly from class labels (1.39 nats RMSE
    against 0.63 with the skip on a 100-d pair at 2 x 10^4 simulations per model).
    ``ensemble=K`` trains ``K`` members, so each log Bayes factor gets a mean and an error
    bar. By default (``resampling="jackknife"``) each member trains on its own (its own
    validation split and early stopping), leaving out a different K-th of the
    simulations, and the error bar is sqrt(K - 1) times the members' spread: the
    delete-a-group jackknife's error of a fit on all simulations. On exact log K (2 x 10^4
    simulations per model, 5 members, three cases of the analytic suite) it covered the
    exact value at 2 sigma for 98-99% of datasets (conservative: the members' mean is more
    accurate than one fit), and the mean's RMSE was as good as or better than the
    alternatives' (0.18 nats on a 10-d width pair against 0.27 for the bootstrap) for about
    the same time. ``resampling="bootstrap"`` (Rubin's Bayesian bootstrap: each member
    weighs every simulation by its own Exponential(1) draw, all trained in one batched
    pass) covered 87% at 3,000 simulations per model but only 82-91% at 2 x 10^4: its
    members stop together and each sees every simulation, so its spread falls behind the
    error (1.3-1.7x too small). Members that differ in initialization only cover 26-28%
    (examples/benchmarks/model_comparison_error_bars.py). For error bars use
    ``ensemble >= 5``.

    Args:
        simulators: ``{name: simulator}`` (objects with ``prior`` and ``simulate(theta,
            rng)``, as for :func:`sbiflow.simulate`), at least two; or just the model names,
            if you bring your own simulations to :meth:`fit`.
        prior_probs: Prior model probabilities, ``{name: p}`` or a sequence in model order
            (normalized); ``None``: equal. They change :meth:`probabilities`, never
            :meth:`log_bayes_factor`.
        embedding_net: ``"auto"`` (as NPE), the name of one of ``sbiflow.embeddings``, a dict
            ``{"type": name, **options}``, a torch module, or ``None`` (x flattened).
        loss: ``"cross_entropy"`` (default) or ``"exponential"`` (the l-POP exponential
            loss of Evidence Networks, two models only; for decisive Bayes factors).
        ensemble: Number of members ``K``.
        bootstrap: Shorthand of ``resampling``: ``True`` is ``"bootstrap"``, ``False`` is
            ``"none"``; pass one of the two.
        resampling: How the members (when ``K >= 2``) differ besides their
            initialization: ``"jackknife"`` (default) trains each on its own without a
            different K-th of the simulations (stratified by model) and scales the error
            bar by sqrt(K - 1); ``"bootstrap"`` gives each its own Bayesian-bootstrap
            weights of the training simulations, trained in one batched pass (its error
            bars are too small at larger budgets); ``"none"``: members differ in
            initialization only.
        penalty: L2 penalty per training simulation on the weights of the MLP head and of
            the quadratic skip's projections (not on the skip's output weights); 0: none.
            On the analytic suite at 2 x 10^4 simulations per model, 3e-3 cut the log K
            RMSE 1.4-2.9x (0.22 -> 0.15 nats on a 10-d width pair, 0.63 -> 0.22 on a 100-d
            one) where the unscoped penalty broke a quartet with log K in the hundreds.
        hidden_features: Width of the head's hidden layers.
        num_layers: Hidden layers of the head.
        whiten: Whiten x (PCA of the training simulations) when it reaches the head as a
            flat vector (no embedding). Off by default: on the analytic suite it changed
            nothing for prior widths and made nested regressions worse (see
            docs/model_comparison.md).
        quadratic: Add a skip from the head's input, its squares and learned squared
            projections to the scores (``comparison.network.QuadraticSkip``), so a log
            Bayes factor quadratic in x is in reach; ``None``: on when x reaches the head
            as a flat vector (no embedding), where it was measured to help (``"auto"``
            means the same); ``False`` or ``"none"``: no skip. ``True`` or
            ``"diagonal"``: its default form; ``"chi2"``: the form without per-feature
            output weights, which on the 100-d pairs of the analytic suite cut the log K
            error (2 x 10^4 simulations per model, penalty 3e-3: 0.21 -> 0.07 nats on a
            prior-width pair, 0.30 -> 0.24 on nested regressions) but not on 10-d ones
            (a quartet of widths up to 8: 0.14 -> 0.22); see
            docs/results/model_comparison_analytic.md.
        device: Torch device.

    Example:
        >>> from sbiflow.comparison.analytic import prior_widths
        >>> models = prior_widths(dim=3, widths=(1.0, 2.0))
        >>> mc = ModelComparison(models).fit(1000, max_epochs=2, progress=False)
        >>> sorted(mc.probabilities(torch.zeros(3)))
        ['width_1', 'width_2']
        >>> mc.log_bayes_factor(torch.zeros(5, 3), "width_2", "width_1").shape
        torch.Size([5])

    References:
        Amortized Bayesian model comparison with evidential deep learning (Radev et al.,
        2021), arXiv:2004.10629; Evidence Networks (Jeffrey & Wandelt, 2024),
        arXiv:2305.11241.
    """

    def __init__(
        self,
        simulators: dict[str, Any] | Sequence[str],
        prior_probs: dict[str, float] | Sequence[float] | None = None,
        embedding_net: nn.Module | str | dict[str, Any] | None = "auto",
        loss: str = "cross_entropy",
        ensemble: int = 1,
        bootstrap: bool | None = None,
        hidden_features: int = 128,
        num_layers: int = 3,
        whiten: bool = False,
        quadratic: bool | str | None = None,
        device: str = "cpu",
        resampling: str | None = None,
        penalty: float = 0.0,
    ) -> None:
        if isinstance(simulators, dict):
            self.names, self.simulators = [str(n) for n in simulators], dict(simulators)
        else:
            self.names, self.simulators = [str(n) for n in simulators], None
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise ValueError(
                f"Model comparison needs at least two models with distinct names, got {self.names}."
            )
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)}.")
        if loss == "exponential" and len(self.names) != 2:
            raise ValueError(
                f'loss="exponential" compares two models, got {len(self.names)}: use '
                '"cross_entropy" for more.'
            )
        if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
            raise ValueError(f"ensemble must be a positive int, got {ensemble!r}.")
        self.prior_probs = model_prior(self.names, prior_probs)
        if isinstance(embedding_net, str) and embedding_net == "auto" and self.simulators:
            # the embedding the simulators declare, if they all declare the same one
            declared = [declared_embedding(sim) for sim in self.simulators.values()]
            if declared[0] is not None and all(d == declared[0] for d in declared):
                embedding_net = declared[0]
        check_embedding(embedding_net)
        self.embedding_net = embedding_net
        if resampling is not None and bootstrap is not None:
            raise ValueError("Pass resampling or bootstrap (its shorthand), not both.")
        if resampling is None:
            resampling = {None: "jackknife", True: "bootstrap", False: "none"}[bootstrap]
        if resampling not in RESAMPLING:
            raise ValueError(
                f"Unknown resampling {resampling!r}; choose one of {list(RESAMPLING)}."
            )
        self.loss, self.ensemble, self.resampling = loss, ensemble, resampling
        self.hidden_features, self.num_layers = hidden_features, num_layers
        if isinstance(quadratic, str):
            quadratic = {"auto": None, "none": False}.get(quadratic, quadratic)
        if quadratic is not None:
            try:
                quadratic_form(quadratic)  # fail early on a bad value
            except ValueError:
                raise ValueError(
                    f"quadratic must be None or 'auto', False or 'none', True, or one of "
                    f"{QUADRATIC_FORMS}, got {quadratic!r}."
                ) from None
        self.whiten, self.quadratic = bool(whiten), quadratic
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or penalty < 0:
            raise ValueError(f"penalty must be a number >= 0, got {penalty!r}.")
        self.penalty = float(penalty)
        self.device = torch.device(device)
        self.network: ComparisonNetwork | None = None
        self.reference: SummaryReference | None = None
        self.summary_space = "hidden"  # or "statistics": see _summaries
        self.x_shape: tuple[int, ...] | None = None
        self.history = TrainingHistory()

    # -- training ----------------------------------------------------------------------
    def _simulators(self) -> dict[str, Any]:
        if self.simulators is None:
            raise ValueError(
                "This ModelComparison has model names but no simulators: pass your "
                "simulations, x={name: (N, *x_shape)}, or set .simulators = {name: simulator}."
            )
        return self.simulators

    def fit(
        self,
        n_per_model: int | None = None,
        *,
        x: dict[str, Tensor] | None = None,
        seed: int = 0,
        workers: int = 1,
        n_reference: int = 1000,
        progress: bool = True,
        **training_options: Any,
    ) -> ModelComparison:
        """Simulate each model (or take ``x``) and train the classifier.

        ``n_reference`` simulations of each model (at most a fifth) are held out of training
        for the misspecification check.

        Args:
            n_per_model: Simulations per model, through :func:`sbiflow.simulate` (model
                ``i`` with its own seed derived from ``seed``).
            x: Instead, your own simulations ``{name: (N_m, *x_shape)}`` (e.g. shared with
                another method); rows with NaN/inf are left out with a warning.
            seed: Seed of simulations, weights, split and batch order.
            workers: Processes for the simulations.
            n_reference: Held-out simulations per model for :meth:`misspecification`.
            progress: Show progress bars.
            **training_options: Fields of ``sbiflow.training.TrainingConfig``
                (``batch_size``, ``learning_rate``, ``max_epochs``, ...).

        Returns:
            ``self``, trained; ``self.history`` holds the losses.
        """
        TrainingConfig(seed=seed, progress=progress, **training_options)  # fail early on typos
        if (x is None) == (n_per_model is None):
            raise ValueError("Pass either n_per_model (to simulate) or x (your simulations).")
        if x is None:
            x = simulate_models(self._simulators(), n_per_model, seed, _FIT, workers, progress)
        xs = check_simulations(x, self.names)
        self.x_shape = tuple(next(iter(xs.values())).shape[1:])
        generator = torch.Generator().manual_seed(seed)
        train_x, held_out = [], {}
        for name, xm in xs.items():
            perm = torch.randperm(xm.shape[0], generator=generator)
            n_ref = min(n_reference, xm.shape[0] // 5)
            held_out[name], xm = xm[perm[:n_ref]], xm[perm[n_ref:]]
            train_x.append(xm)
        counts = torch.tensor([float(xm.shape[0]) for xm in train_x])
        labels = torch.cat([torch.full((len(xm),), m) for m, xm in enumerate(train_x)])
        data = torch.cat(train_x)
        targets = self._targets(labels, generator)
        config = TrainingConfig(seed=seed, progress=progress, **training_options)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            network = self._network(data, counts)
            if self.jackknife:
                folds = self._folds(labels, generator)
                histories = []
                for k in range(self.ensemble):
                    keep = folds != k
                    member = network.member(k)
                    histories.append(
                        train(
                            member,
                            targets[keep].to(self.device),
                            data[keep].to(self.device),
                            dataclasses.replace(config, seed=seed + k),
                        )
                    )
                    network.set_member(k, member)
                self.history = histories[0]
            else:
                self.history = train(network, targets.to(self.device), data.to(self.device), config)
        self.network = network.eval()
        self.summary_space = "statistics" if self._statistics_net() is not None else "hidden"
        self.reference = SummaryReference({n: self._summaries(h) for n, h in held_out.items()})
        return self

    @property
    def bootstrap(self) -> bool:
        """Whether the members train on Bayesian-bootstrap weights (``resampling``)."""
        return self.resampling == "bootstrap"

    @property
    def jackknife(self) -> bool:
        """Whether the members are delete-a-group jackknife fits (``resampling``)."""
        return self.resampling == "jackknife" and self.ensemble >= 2

    def _folds(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The fold ``(N,)`` in ``0..K-1`` each simulation is left out of, stratified by model."""
        folds = torch.empty_like(labels)
        for m in labels.unique():
            rows = (labels == m).nonzero().squeeze(1)
            order = torch.randperm(len(rows), generator=generator)
            folds[rows[order]] = torch.arange(len(rows)) % self.ensemble
        return folds

    def _targets(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Model indices ``(N,)``, or with bootstrap ``(N, 1 + K)``: index and K weights."""
        if not (self.bootstrap and self.ensemble >= 2):
            return labels
        weights = torch.empty(len(labels), self.ensemble).exponential_(generator=generator)
        return torch.cat([labels[:, None].float(), weights], dim=1)

    def _network(self, data: Tensor, counts: Tensor) -> ComparisonNetwork:
        """A fresh network with its input transforms and training mix learned from ``data``."""
        assert self.x_shape is not None
        embeddings = member_embeddings(self.embedding_net, data, self.ensemble)
        quadratic = embeddings is None if self.quadratic is None else self.quadratic
        network = ComparisonNetwork(
            self.x_shape,
            len(self.names),
            loss=self.loss,
            embeddings=embeddings,
            members=self.ensemble,
            hidden_features=self.hidden_features,
            num_layers=self.num_layers,
            whiten=self.whiten,
            quadratic=quadratic,
            penalty=self.penalty,
        )
        network.fit_inputs(data)
        network.log_train_prior.copy_((counts / counts.sum()).log())
        return network.to(self.device)

    # -- prediction --------------------------------------------------------------------
    def _trained(self) -> ComparisonNetwork:
        if self.network is None:
            raise NotFittedError(
                "This ModelComparison is not trained yet: call .fit(n_per_model) (or "
                ".fit(x={name: simulations})) or sbiflow.load(path) first."
            )
        return self.network

    def _observations(self, x: Tensor) -> tuple[Tensor, bool]:
        """The observations as a batch ``(N, *x_shape)``, and whether x was one observation."""
        self._trained()
        assert self.x_shape is not None
        x = torch.as_tensor(x, dtype=torch.float32)
        single = tuple(x.shape) == self.x_shape
        if single:
            x = x.unsqueeze(0)
        elif x.ndim != len(self.x_shape) + 1 or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"x must be one observation shaped like one simulation, {self.x_shape}, or a "
                f"batch (N, {', '.join(map(str, self.x_shape))}); got {tuple(x.shape)}."
            )
        bad = ~torch.isfinite(x.flatten(start_dim=1)).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()[:10]
            raise ValueError(f"x holds NaN or inf (observations {rows}).")
        return x, single

    @torch.no_grad()
    def _log_evidences(self, x: Tensor) -> Tensor:
        """Members' log p(x | m) up to a constant per x: ``(K, N, M)`` for x ``(N, *x_shape)``."""
        network = self._trained()
        out = []
        with threads_for(network):
            for start in range(0, x.shape[0], CHUNK):
                out.append(network(x[start : start + CHUNK].to(self.device)).cpu())
        return torch.cat(out, dim=1).double() - network.log_train_prior.cpu().double()

    def _statistics_net(self) -> nn.Module | None:
        """The first member's embedding's final network, if its input is the space to test."""
        network = self._trained()
        if network.embeddings is None:
            return None
        embedding = network.embeddings[0]
        spec = getattr(embedding, "spec", None)
        name = POOLED_STATISTICS.get(spec.get("type")) if isinstance(spec, dict) else None
        final = getattr(embedding, name, None) if name is not None else None
        first = final[0] if isinstance(final, nn.Sequential) else None
        if isinstance(first, nn.Linear) and first.in_features <= MAX_STATISTICS:
            return final
        return None

    @torch.no_grad()
    def _summaries(self, x: Tensor) -> Tensor:
        """The misspecification space ``(N, S)`` of x, from the first member.

        ``summary_space == "statistics"``: the statistics its embedding pools, the input of
        the embedding's final network (the log dispersion profiles, coverages and star
        count of ``kinematic_set``, the log power spectrum of ``power_spectrum``, the pooled
        element features of ``deepset``, the flattened feature maps of ``cnn``; at most
        ``MAX_STATISTICS`` of them). Everything the classifier knows of x passes through
        them, while the layers after them are trained to separate the candidates and drop
        what does not: on dwarfs whose star lists hold 10% foreground stars the flag's power
        at 5% was 0.82 / 0.68 (cored / cusped halos) here against 0.61 / 0.29 in the last
        hidden layer, same network and reference simulations
        (docs/results/model_comparison_misspecification.md).
        ``"hidden"`` (no such embedding, or a model saved before this space existed): the
        head's last hidden layer.
        """
        network = self._trained()
        final = self._statistics_net() if self.summary_space == "statistics" else None
        if self.summary_space == "statistics" and final is None:
            raise ValueError("This embedding has no pooled statistics to test in.")
        captured: list[Tensor] = []
        hook = (
            None
            if final is None
            else final.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        )
        out = []
        try:
            with threads_for(network):
                for s in range(0, x.shape[0], CHUNK):
                    batch = x[s : s + CHUNK].to(self.device)
                    if final is None:
                        out.append(network.features(batch)[0].cpu())
                        continue
                    captured.clear()
                    network.embeddings[0](network.standardizer(batch))
                    out.append(captured[0].cpu())
        finally:
            if hook is not None:
                hook.remove()
        return torch.cat(out)

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"Unknown model {name!r}; the models are {self.names}.")
        return self.names.index(name)

    def probabilities(self, x: Tensor) -> dict[str, float | Tensor]:
        """Posterior model probabilities under ``prior_probs``.

        The ensemble's prediction averages the members' log evidences.

        Args:
            x: One observation ``x_shape`` or a batch ``(N, *x_shape)``.

        Returns:
            ``{name: p}``: floats for one observation, ``(N,)`` tensors for a batch; they sum
            to 1 over the models.
        """
        batch, single = self._observations(x)
        log_z = self._log_evidences(batch).mean(dim=0)  # (N, M)
        p = torch.softmax(log_z + self.prior_probs.log(), dim=1).float()
        return {n: float(p[0, m]) if single else p[:, m] for m, n in enumerate(self.names)}

    def log_bayes_factor(
        self, x: Tensor, a: str, b: str, *, return_std: bool = False
    ) -> float | Tensor | tuple[float | Tensor, float | Tensor]:
        r"""The log Bayes factor :math:`\log K_{ab} = \log p(x \mid a) - \log p(x \mid b)`.

        Independent of ``prior_probs`` and of the training mix.

        Args:
            x: One observation ``x_shape`` or a batch ``(N, *x_shape)``.
            a: Model in the numerator.
            b: Model in the denominator.
            return_std: Also return the error: the standard deviation over ensemble members
                (needs ``ensemble >= 2``), times sqrt(K - 1) for ``resampling="jackknife"``.

        Returns:
            The ensemble mean: a float for one observation, ``(N,)`` for a batch; with
            ``return_std``, ``(mean, std)``.
        """
        ia, ib = self._index(a), self._index(b)
        if return_std and self.ensemble < 2:
            raise ValueError("return_std needs an ensemble: ModelComparison(..., ensemble=5).")
        batch, single = self._observations(x)
        log_z = self._log_evidences(batch)
        members = (log_z[..., ia] - log_z[..., ib]).float()  # (K, N)
        mean = members.mean(dim=0)
        if not return_std:
            return float(mean[0]) if single else mean
        std = members.std(dim=0)
        if self.jackknife:
            std = std * math.sqrt(self.ensemble - 1)
        return (float(mean[0]), float(std[0])) if single else (mean, std)

    # -- checks ------------------------------------------------------------------------
    def calibration(
        self,
        n: int = 2000,
        *,
        seed: int = 1,
        x: dict[str, Tensor] | None = None,
        workers: int = 1,
        bins: int = 10,
        plot: bool = True,
        progress: bool = False,
    ) -> Calibration:
        """Reliability of the posterior model probabilities on fresh simulations.

        Datasets are weighted so that the models appear with their ``prior_probs``.

        Args:
            n: Fresh simulations per model (seeds apart from those of :meth:`fit`).
            seed: Seed of the simulations.
            x: Instead, your own held-out simulations ``{name: (N_m, *x_shape)}``.
            workers: Processes for the simulations.
            bins: Probability bins of the reliability curve.
            plot: Draw the reliability diagram (``result.figure``).
            progress: Show progress bars of the simulations.

        Returns:
            Per-model ECE and reliability curves, accuracy, and the figure.
        """
        self._trained()
        if x is None:
            x = simulate_models(self._simulators(), n, seed, _CALIBRATION, workers, progress)
        xs = check_simulations(x, self.names, self.x_shape)
        counts = torch.tensor([float(v.shape[0]) for v in xs.values()], dtype=torch.float64)
        labels = torch.cat([torch.full((len(v),), m) for m, v in enumerate(xs.values())])
        weights = (self.prior_probs / (counts / counts.sum()))[labels]
        probs = self.probabilities(torch.cat(list(xs.values())))
        p = torch.stack([probs[name] for name in self.names], dim=1)  # (N, M)
        result = reliability(p, labels, weights, self.names, bins)
        if plot:
            result.figure = calibration_figure(result)
        return result

    def misspecification(self, x: Tensor) -> Misspecification:
        """Whether x is typical of any candidate model (see ``comparison.misspecification``).

        Args:
            x: One observation ``x_shape`` or a batch ``(N, *x_shape)`` (tested one by one).

        Returns:
            Score, p-value and per-model p-values; ``result.flagged(0.05)`` says whether x
            is atypical of every model at a 5% false-positive rate.
        """
        self._trained()
        assert self.reference is not None
        batch, single = self._observations(x)
        score, p_value, p_values = self.reference.test(self._summaries(batch))
        if single:
            return Misspecification(
                float(score[0]), float(p_value[0]), {n: float(p[0]) for n, p in p_values.items()}
            )
        return Misspecification(score, p_value, p_values)

    def evidence_crosscheck(
        self,
        x: Tensor,
        n_simulations: int = 10_000,
        *,
        emulator: bool = True,
        exact: bool = True,
        nle_options: dict[str, Any] | None = None,
        training_options: dict[str, Any] | None = None,
        nested_options: dict[str, Any] | None = None,
        importance_samples: int = 0,
        seed: int = 0,
        workers: int = 1,
        progress: bool = False,
    ) -> CrossCheck:
        """The classifier's log Bayes factors against nested-sampling evidences of x.

        Per model: an NLE trained on ``n_simulations`` fresh simulations and integrated by
        dynesty, dynesty on the simulator's exact ``log_likelihood`` where it has one, and
        the closed-form ``log_evidence`` where it has one (see ``comparison.crosscheck``).

        Args:
            x: One observation ``x_shape``.
            n_simulations: Simulations per model for its NLE.
            emulator: Train and integrate the NLEs (turn off for x a flow cannot model,
                such as padded sets, or when the exact likelihood is enough).
            exact: Integrate the exact likelihoods where the simulators have them.
            nle_options: Passed to :class:`~sbiflow.NLE`.
            training_options: Passed to ``NLE.fit``.
            nested_options: Passed to :func:`sbiflow.samplers.nested` (``nlive``, ...).
            importance_samples: If > 0, refine each exact-likelihood dynesty log Z by
                importance sampling with this many likelihood calls
                (:func:`sbiflow.samplers.importance_evidence`): errors of about 0.01 nats,
                for Bayes factors near a decision threshold.
            seed: Seed of the simulations, training, dynesty and the refinement.
            workers: Processes for the simulations.
            progress: Show progress bars.

        Returns:
            Per-model log evidences with errors, and per pair of models the log Bayes
            factors from each source next to the classifier's, with errors.
        """
        return evidence_crosscheck(
            self,
            x,
            n_simulations=n_simulations,
            emulator=emulator,
            exact=exact,
            nle_options=nle_options,
            training_options=training_options,
            nested_options=nested_options,
            importance_samples=importance_samples,
            seed=seed,
            workers=workers,
            progress=progress,
        )

    # -- saving ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Weights, configuration and held-out summaries as plain tensors and types.

        Returns:
            A dict for ``sbiflow.save`` (loaded with ``torch.load(weights_only=True)``).
        """
        network = self._trained()
        assert self.reference is not None
        embeddings = network.embeddings
        return {
            "names": list(self.names),
            "prior_probs": self.prior_probs.clone(),
            "network_config": network.config(),
            "embedding": embedding_spec(embeddings[0]) if embeddings is not None else None,
            "custom_embedding": isinstance(self.embedding_net, nn.Module),
            "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
            "reference": {n: s.clone() for n, s in self.reference.summaries.items()},
            "summary_space": self.summary_space,
            "history": self.history.as_dict(),
            "bootstrap": self.bootstrap,
            "resampling": self.resampling,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        prior: Any = None,
        embedding_net: nn.Module | None = None,
        device: str = "cpu",
    ) -> ModelComparison:
        """Rebuild a trained object from :meth:`state` (used by ``sbiflow.load``).

        Pass ``simulators`` again by setting ``obj.simulators = {name: simulator}`` to
        simulate in :meth:`calibration`.

        Args:
            state: What :meth:`state` returned.
            prior: Accepted for the common interface and ignored: each model has its own,
                and none is needed after training.
            embedding_net: A freshly built module, if trained with your own embedding.
            device: Torch device of the rebuilt classifier.

        Returns:
            The trained model comparison.
        """
        config = dict(state["network_config"])
        members = int(config["members"])
        if state["custom_embedding"] and embedding_net is None:
            raise ValueError(
                "This model comparison was trained with your own embedding network: pass a "
                "freshly built one of the same architecture, sbiflow.load(path, "
                "embedding_net=MyNet(...))."
            )
        x_shape = tuple(config["x_shape"])
        choice = embedding_net if embedding_net is not None else state["embedding"]
        embeddings = member_embeddings(choice, torch.zeros(1, *x_shape), members)
        obj = cls(
            state["names"],
            prior_probs=state["prior_probs"],
            embedding_net=choice,
            loss=config["loss"],
            ensemble=members,
            resampling=str(
                state.get("resampling", "bootstrap" if state.get("bootstrap") else "none")
            ),
            hidden_features=int(config["hidden_features"]),
            num_layers=int(config["num_layers"]),
            whiten=bool(config.get("whiten", False)),
            quadratic=config.get("quadratic", False),
            penalty=float(config.get("penalty", 0.0)),
            device=device,
        )
        network = ComparisonNetwork(
            x_shape,
            int(config["num_models"]),
            loss=config["loss"],
            embeddings=embeddings,
            members=members,
            hidden_features=int(config["hidden_features"]),
            num_layers=int(config["num_layers"]),
            whiten=bool(config.get("whiten", False)),
            quadratic=config.get("quadratic", False),
            penalty=float(config.get("penalty", 0.0)),
        )
        network.load_state_dict(state["state_dict"])
        obj.network, obj.x_shape = network.to(obj.device).eval(), x_shape
        obj.summary_space = str(state.get("summary_space", "hidden"))
        obj.reference = SummaryReference(dict(state["reference"]))
        history = state.get("history", {})
        obj.history = TrainingHistory(
            train_loss=list(history.get("train_loss", [])),
            val_loss=list(history.get("val_loss", [])),
            best_epoch=int(history.get("best_epoch", -1)),
            wall_time=float(history.get("wall_time", 0.0)),
        )
        return obj
