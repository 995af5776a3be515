"""What NPE and NLE share: checked training data, the fit, the observation, the saved state."""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbiflow.embeddings import EMBEDDINGS, build_embedding, embedding_spec
from sbiflow.estimators import ESTIMATORS, ConditionalEstimator, build_estimator
from sbiflow.priors import in_support, prior_dim, validate_theta
from sbiflow.streaming import StoreData
from sbiflow.training import (
    InMemoryData,
    TrainingConfig,
    TrainingHistory,
    seeded_generator,
    train_on,
)

__all__ = ["NeuralInference", "NotFittedError"]


class NotFittedError(RuntimeError):
    """The method needs a trained estimator: call ``fit`` (or ``sbiflow.load``) first."""


def nonfinite_where(x: Tensor, most: int = 5) -> str:
    """Where a tensor holds NaN/inf, for an error message: ``"at index (0, 3) and 2 more"``."""
    bad = torch.nonzero(~torch.isfinite(x)).tolist()
    shown = ", ".join(str(tuple(i)) for i in bad[:most])
    more = f" and {len(bad) - most} more" if len(bad) > most else ""
    return f"at index {shown}{more} (of shape {tuple(x.shape)})"


class NeuralInference:
    """A conditional density estimator trained on simulated (θ, x) pairs.

    Subclasses choose which of θ and x is the density's variable (``a``) and which the
    condition (``b``) through :meth:`_roles`.

    Args:
        prior: Any ``torch.distributions.Distribution`` over θ with event shape ``(D,)``.
        estimator: Estimator family, one of ``sbiflow.estimators.ESTIMATORS``.
        embedding_net: Network for the condition (x for NPE). ``"auto"`` (default): NPE
            picks one from the training simulations (a DeepSet for padded sets with a mask
            column, a CNN for maps, none for vectors); the name of one of
            ``sbiflow.embeddings`` (``"mlp"``, ``"deepset"``, ``"cnn"``,
            ``"power_spectrum"``, ``"kinematic_set"``): that one with its defaults, built for
            the shape of x at ``fit`` (so a config file can choose it); a dict
            ``{"type": name, **options}``: that one with these options (e.g.
            ``{"type": "deepset", "hidden_features": 32}``); ``None``: none, x is flattened.
        device: Torch device for training and sampling.
        **estimator_options: Passed to the estimator (e.g. ``hidden_features=64``).
    """

    def __init__(
        self,
        prior: Distribution,
        estimator: str = "nsf",
        embedding_net: nn.Module | str | dict[str, Any] | None = "auto",
        device: str = "cpu",
        **estimator_options: Any,
    ) -> None:
        self.embedding_spec = _embedding_spec(embedding_net)
        if not isinstance(prior, Distribution):
            raise TypeError(
                f"prior must be a torch.distributions.Distribution, got {type(prior).__name__}."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator {estimator!r}; choose one of {list(ESTIMATORS)}.")
        self.prior = prior
        self.theta_dim = prior_dim(prior)
        self.estimator_kind = estimator
        self.estimator_options = estimator_options
        self.embedding_net: nn.Module | None = None
        self.auto_embedding = isinstance(embedding_net, str) and embedding_net == "auto"
        if isinstance(embedding_net, nn.Module):
            self.embedding_net = embedding_net
        self.device = torch.device(device)
        self.estimator: ConditionalEstimator | None = None
        self.x_shape: tuple[int, ...] | None = None
        self.num_simulations: int | None = None
        self.history = TrainingHistory()
        self._cache: dict = {}  # per-observation quantities of the trained estimator

    # -- roles -------------------------------------------------------------------------
    def _roles(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (a, b): the density's variable and the condition."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------
    def _check_training_data(
        self, theta: Tensor, x: Tensor, quiet: bool = False
    ) -> tuple[Tensor, Tensor]:
        theta = validate_theta(self.prior, theta)
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 1:
            x = x.unsqueeze(1)
        if x.shape[0] != theta.shape[0]:
            raise ValueError(
                f"theta and x must hold the same number of simulations, got {theta.shape[0]} "
                f"and {x.shape[0]}. x must have shape (N, *x_shape)."
            )
        finite = torch.isfinite(x.flatten(start_dim=1)).all(dim=1) & torch.isfinite(theta).all(1)
        n_bad = int((~finite).sum())
        if n_bad == theta.shape[0]:
            raise ValueError("Every simulation holds NaN or inf: there is nothing to train on.")
        if n_bad:
            if not quiet:
                warnings.warn(
                    f"{n_bad} of {theta.shape[0]} simulations hold NaN or inf and were left out "
                    "of training.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            theta, x = theta[finite], x[finite]
        outside = int((~in_support(self.prior, theta)).sum())
        if outside and not quiet:
            warnings.warn(
                f"{outside} of {theta.shape[0]} training parameters lie outside the prior's "
                "support; were they simulated from another prior?",
                UserWarning,
                stacklevel=3,
            )
        return theta, x

    #: Rows read from a store to learn the standardization and choose an embedding.
    STANDARDIZATION_ROWS = 50_000
    #: Validation rows handed to the post-fit checks (:meth:`_after_fit`).
    CHECK_ROWS = 2_000

    def fit(
        self,
        theta: Tensor | None = None,
        x: Tensor | None = None,
        *,
        store: str | os.PathLike | None = None,
        seed: int | None = 0,
        progress: bool = True,
        **training_options: Any,
    ) -> NeuralInference:
        """Train the estimator on simulations, in memory or streamed from a store.

        Rows holding NaN/inf are left out with a warning. The estimator learns its
        standardization from this data and keeps the weights of the best validation epoch.

        Args:
            theta: Parameters, shape ``(N, D)``.
            x: Simulations, shape ``(N, *x_shape)``.
            store: Instead of ``theta`` and ``x``: the path of a finished simulation store
                (``sbiflow.simulate(..., store=path)``), streamed a few chunks at a time so
                that memory does not grow with the store (see ``sbiflow.streaming``). The
                validation split is made of whole chunks; standardization and the embedding
                are learned from ``STANDARDIZATION_ROWS`` rows of random training chunks.
            seed: Seed for weights, split and batch order (``None``: fresh randomness).
            progress: Show a progress bar.
            **training_options: Any field of ``sbiflow.training.TrainingConfig``; they
                override the estimator's ``training_defaults``:
                ``batch_size``, ``learning_rate``, ``validation_fraction``,
                ``stop_after_epochs``, ``max_epochs``, ``clip_max_norm``, ``lr_decays``,
                ``num_threads``, ...

        Returns:
            ``self``, trained; ``self.history`` holds the losses.

        Raises:
            TypeError: For an unknown training option.
            ValueError: Neither or both of ``(theta, x)`` and ``store``.
        """
        # fail early on typos; the split of a streamed store is drawn before the estimator
        # (and its training_defaults, which never set validation_fraction) exists
        requested = TrainingConfig(seed=seed, progress=progress, **training_options)
        _one_source(theta, x, store)
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            generator = seeded_generator(seed)
            if store is None:
                theta, x = self._check_training_data(theta, x)
                self.num_simulations = int(x.shape[0])
                sample = (theta, x)
            else:
                streamed = StoreData(store, self._roles, requested.validation_fraction, generator)
                sample = self._check_training_data(
                    *streamed.sample_rows(self.STANDARDIZATION_ROWS, generator)
                )
                self.num_simulations = streamed.num_rows
            self.x_shape = tuple(sample[1].shape[1:])
            a, b = self._roles(*sample)
            if self.auto_embedding:
                self.embedding_net = self._default_embedding(b)
            elif self.embedding_spec is not None:
                self.embedding_net = build_embedding(self.embedding_spec, tuple(b.shape[1:]))
            self.estimator = self._build_estimator(tuple(a.shape[1:]), tuple(b.shape[1:]))
            options = {**self.estimator.training_defaults, **training_options}
            config = TrainingConfig(seed=seed, progress=progress, **options)
            self.estimator.standardize_from(a, b)
            self._cache.clear()
            self.estimator.to(self.device)
            module = self._training_module(self.estimator)
            # inside the seeded block: losses that draw noise (score, cVAE) repeat too
            if store is None:
                data = InMemoryData(
                    a.to(self.device), b.to(self.device), config.validation_fraction, generator
                )
                self.history = train_on(module, data, config, generator)
                held_out = self.history.validation_index[: self.CHECK_ROWS]
                checks = (theta[held_out], x[held_out])
            else:
                sample = a = b = None  # the standardization rows are not kept while streaming
                try:
                    self.history = train_on(module, streamed, config, generator)
                finally:
                    streamed.close()
                checks = streamed.rows(streamed.validation_chunks, self.CHECK_ROWS)
        self.estimator.eval()
        self._after_fit(*checks, progress)
        return self

    def _training_module(self, estimator: ConditionalEstimator) -> nn.Module:
        """The module whose ``loss`` training minimizes (the estimator, or a wrapper)."""
        return estimator

    def _after_fit(self, theta: Tensor, x: Tensor, progress: bool) -> None:
        """Checks run on the trained estimator (NPE: calibration on the validation split).

        ``theta`` ``(B, D)``, ``x`` ``(B, *x_shape)``: up to ``CHECK_ROWS`` validation rows,
        never trained on (NaN/inf rows already left out).
        """

    def __repr__(self) -> str:
        """E.g. ``NPE(nsf, theta (2,), x (2,), trained on 10,000 simulations, 87 epochs)``."""
        parts = [self.estimator_kind, f"theta ({self.theta_dim},)"]
        if self.x_shape is not None:
            parts.append(f"x {self.x_shape}")
        if self.embedding_net is not None:
            parts.append(f"embedding {type(self.embedding_net).__name__}")
        if self.estimator is None:
            parts.append("not trained")
        else:
            trained = "trained"
            if self.num_simulations is not None:
                trained += f" on {self.num_simulations:,} simulations"
            if self.history.val_loss:
                trained += f", {len(self.history.val_loss)} epochs"
            parts.append(trained)
            temperature = getattr(self.estimator, "temperature", 1.0)
            if temperature != 1.0:
                parts.append(f"temperature {temperature:.3g}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _default_embedding(self, b: Tensor) -> nn.Module | None:
        """The embedding picked for conditions ``b`` when the user gave none."""
        return None

    def _build_estimator(
        self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
    ) -> ConditionalEstimator:
        return build_estimator(
            self.estimator_kind,
            a_shape,
            b_shape,
            embedding_net=self.embedding_net,
            **self.estimator_options,
        )

    # -- using the trained estimator ---------------------------------------------------
    def _trained(self) -> ConditionalEstimator:
        if self.estimator is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not trained yet: call .fit(theta, x) or "
                "sbiflow.load(path) first."
            )
        return self.estimator

    def _observation(self, x: Tensor, allow_trials: bool = False) -> Tensor:
        """Check one observation ``x_o`` (or ``(n, *x_shape)`` trials if allowed)."""
        self._trained()
        assert self.x_shape is not None
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape) == self.x_shape:
            x = x.unsqueeze(0)
        elif x.ndim != len(self.x_shape) + 1 or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"x must be one observation shaped like one simulation, {self.x_shape} "
                f"(or {(1, *self.x_shape)}), got {tuple(x.shape)}."
            )
        if x.shape[0] > 1 and not allow_trials:
            raise ValueError(
                f"x holds {x.shape[0]} observations; {type(self).__name__} conditions on one "
                "observation at a time. For iid trials use NLE, or call once per observation."
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"The observation x holds NaN or inf {nonfinite_where(x)}.")
        self._warn_if_outside_training_range(x)
        return x.to(self.device)

    def _warn_if_outside_training_range(self, x: Tensor) -> None:
        standardizer = self._x_standardizer()
        outside = standardizer.outside_range(x.to(standardizer.mean.device)).any(dim=0)
        if bool(outside.any()):
            where = torch.nonzero(outside.flatten()).flatten().tolist()[:10]
            warnings.warn(
                f"The observation lies outside the range of the training simulations (flattened "
                f"x elements {where}). The result is an extrapolation: simulate with a wider "
                "prior, or check the observation's units and preprocessing.",
                UserWarning,
                stacklevel=4,
            )

    def _x_standardizer(self) -> nn.Module:
        raise NotImplementedError

    # -- saving ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Weights, configuration and history as plain tensors and types (see ``sbiflow.save``).

        Returns:
            A dict of tensors, numbers, strings and lists, for ``torch.save`` and
            ``torch.load(weights_only=True)``.

        Raises:
            NotFittedError: Before ``fit``.
        """
        estimator = self._trained()
        return {
            "estimator_kind": self.estimator_kind,
            "estimator_config": estimator.config(),
            "estimator_options": dict(self.estimator_options),
            "embedding": embedding_spec(estimator.embedding_net)
            if self.embedding_net is not None
            else None,
            "custom_embedding": self.embedding_net is not None
            and embedding_spec(self.embedding_net) is None,
            "x_shape": list(self.x_shape or ()),
            "state_dict": {k: v.detach().cpu() for k, v in estimator.state_dict().items()},
            "history": self.history.as_dict(),
            "num_simulations": self.num_simulations,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        prior: Distribution,
        embedding_net: nn.Module | None = None,
        device: str = "cpu",
    ) -> NeuralInference:
        """Rebuild a trained object from :meth:`state` (used by ``sbiflow.load``).

        Args:
            state: What :meth:`state` returned.
            prior: The prior over θ, event shape ``(D,)`` (not saved with the weights).
            embedding_net: A freshly built module of the same architecture, if the model was
                trained with your own embedding network.
            device: Torch device of the rebuilt model.

        Returns:
            The trained object.

        Raises:
            ValueError: The model used your own embedding network and none was given.
        """
        config = dict(state["estimator_config"])
        a_shape, b_shape = tuple(config.pop("a_shape")), tuple(config.pop("b_shape"))
        config.pop("kind", None)
        if state["custom_embedding"] and embedding_net is None:
            raise ValueError(
                "This model was trained with your own embedding network: pass a freshly built "
                "one of the same architecture, sbiflow.load(path, embedding_net=MyNet(...))."
            )
        if embedding_net is None and state["embedding"] is not None:
            embedding_net = build_embedding(state["embedding"], tuple(b_shape))
        obj = cls(
            prior,
            estimator=state["estimator_kind"],
            embedding_net=embedding_net,
            device=device,
            **state["estimator_options"],
        )
        obj.x_shape = tuple(state["x_shape"])
        obj.num_simulations = state.get("num_simulations")
        # The estimator as saved: its config holds its constructor arguments, and an option
        # a file predates takes the estimator's own default, the behaviour it was trained
        # with (not the method's default of today, which fills in estimator_options).
        obj.estimator = build_estimator(
            state["estimator_kind"], a_shape, b_shape, embedding_net=embedding_net, **config
        )
        obj.estimator.load_state_dict(state["state_dict"])
        obj.estimator.to(obj.device).eval()
        history = state.get("history", {})
        obj.history = TrainingHistory(
            train_loss=list(history.get("train_loss", [])),
            val_loss=list(history.get("val_loss", [])),
            best_epoch=int(history.get("best_epoch", -1)),
            wall_time=float(history.get("wall_time", 0.0)),
        )
        return obj


def _one_source(theta: Tensor | None, x: Tensor | None, store: object) -> None:
    """Training data comes as ``(theta, x)`` or as ``store=``, not both, not neither."""
    if store is None and (theta is None or x is None):
        raise ValueError("fit needs simulations: fit(theta, x), or fit(store=path) for a store.")
    if store is not None and (theta is not None or x is not None):
        raise ValueError("Give either fit(theta, x) or fit(store=path), not both.")


def _embedding_spec(embedding_net: object) -> dict[str, Any] | None:
    """The spec of a named embedding (``"deepset"`` or ``{"type": "deepset", ...}``), checked.

    None for ``"auto"``, ``None`` and a torch module (which are not built from a spec).
    """
    if embedding_net is None or isinstance(embedding_net, nn.Module) or embedding_net == "auto":
        return None
    spec = {"type": embedding_net} if isinstance(embedding_net, str) else embedding_net
    if not isinstance(spec, dict) or spec.get("type") not in EMBEDDINGS:
        raise ValueError(
            f'embedding_net must be a torch module, "auto", one of {sorted(EMBEDDINGS)}, a dict '
            f'{{"type": name, **options}} naming one of them, or None; got {embedding_net!r}.'
        )
    options = dict(spec)
    kind = options.pop("type")
    known = set(inspect.signature(EMBEDDINGS[kind]).parameters) - {"x_shape"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} of the {kind!r} embedding; it takes {sorted(known)}."
        )
    return dict(spec)
