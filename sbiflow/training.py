"""One training loop for every estimator: batches, validation, early stopping.

The loop reads its data through a small protocol, :class:`TrainingData`: in-memory
tensors (:class:`InMemoryData`, what :func:`train` uses) or chunks streamed from a
simulation store (``sbiflow.streaming.StoreData``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "InMemoryData",
    "TrainingConfig",
    "TrainingData",
    "TrainingDivergedError",
    "TrainingHistory",
    "seeded_generator",
    "threads_for",
    "train",
    "train_on",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the estimator keeps its best weights so far."""


@dataclass
class TrainingConfig:
    """Options of :func:`train`.

    Attributes:
        batch_size: Samples per gradient step; ``None`` picks ``clip(N_train / 16, 200, 512)``:
            sbi's 200 for small budgets, bigger and faster batches from 3,200 simulations on
            (per step, 512 samples cost 1.3 times 200 here, so an epoch is ~2x faster).
        learning_rate: Adam learning rate.
        validation_fraction: Share of the data held out for early stopping.
        stop_after_epochs: Stop when the validation loss has not improved for this many epochs
            (at most; see ``min_patience``).
        max_epochs: Hard limit on epochs.
        clip_max_norm: Gradient norm clipping (``None`` disables it).
        seed: Seed for the split, initialization-independent batch order.
        progress: Show a tqdm progress bar.
        lr_decays: On a plateau (``stop_after_epochs`` without improvement), restore the
            best weights, multiply the learning rate by ``lr_decay_factor`` and go on, this
            many times before stopping.
        lr_decay_factor: Learning-rate factor of each decay.
        patience_after_decay: Epochs without improvement that end a phase after the first
            decay (``None``: ``stop_after_epochs``). A smaller step settles within a few
            epochs, so waiting as long as the first phase mostly costs time.
        min_patience: The patience of the first phase is the epoch of the best validation
            loss so far, kept between ``min_patience`` and ``stop_after_epochs`` (``None``:
            always ``stop_after_epochs``). A run whose best epoch is early overfits the
            simulations soon and will not come back; one that has improved for a long time
            is improving slowly and noisily and gets the full patience.
    """

    batch_size: int | None = None
    learning_rate: float = 2e-3
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_epochs: int = 10_000
    clip_max_norm: float | None = 5.0
    seed: int | None = 0
    progress: bool = True
    num_threads: int | None = None
    lr_decays: int = 1
    lr_decay_factor: float = 0.2
    patience_after_decay: int | None = 5
    min_patience: int | None = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must lie in (0, 1).")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be a positive integer.")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive.")
        for name in ("stop_after_epochs", "max_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int, got {value!r}"
                    + (
                        " (early stopping ends training; for no other limit leave max_epochs "
                        "at its default, 10,000)."
                        if value is None
                        else "."
                    )
                )


@dataclass
class TrainingHistory:
    """Losses per epoch (mean negative log density unless the estimator says otherwise)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    wall_time: float = 0.0
    #: Rows of the training data held out for validation (not saved with a model).
    validation_index: Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, list[float] | int | float]:
        """Plain types, for saving."""
        return {
            "train_loss": list(self.train_loss),
            "val_loss": list(self.val_loss),
            "best_epoch": self.best_epoch,
            "wall_time": self.wall_time,
        }


def summed_loss(model: nn.Module, a: Tensor, b: Tensor, chunk: int = 8192) -> float:
    """Sum of ``model.loss`` over rows ``a (N, ...)``, ``b (N, ...)``, ``chunk`` rows at a time.

    Rows are moved to the model's device chunk by chunk (a no-op when they are there).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = 0.0
    for start in range(0, a.shape[0], chunk):
        rows = slice(start, start + chunk)
        total += float(model.loss(a[rows].to(device), b[rows].to(device)).sum())
    return total


SMALL_MODEL_PARAMETERS = 1_000_000


def default_threads(model: nn.Module) -> int:
    """Torch threads for ``model``: one for a small network, torch's setting otherwise."""
    size = sum(p.numel() for p in model.parameters())
    return 1 if size < SMALL_MODEL_PARAMETERS else torch.get_num_threads()


@contextlib.contextmanager
def _threads(model: nn.Module, num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        num_threads = default_threads(model)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(
    model: nn.Module, num_threads: int | None = None
) -> contextlib.AbstractContextManager:
    """Run torch on one thread for a small ``model`` (see ``TrainingConfig.num_threads``).

    Sampling and likelihood calls of small networks slow down many-fold with two threads
    when the cores are shared; use ``with threads_for(estimator): ...`` around them.
    """
    return _threads(model, num_threads)


def _clip_gradients(model: nn.Module, max_norm: float | None) -> None:
    """Clip the gradient norm to ``max_norm``, or let the model do it (``clip_gradients_``).

    An ensemble clips each member on its own norm (as if trained alone) rather than all
    members on their joint norm.
    """
    own = getattr(model, "clip_gradients_", None)
    if callable(own):
        own(max_norm)
    elif max_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)


def _adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch supports it (~10% faster here)."""
    devices = {p.device.type for p in model.parameters()}
    fused = devices <= {"cpu", "cuda"}
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=fused or None)


class TrainingData(Protocol):
    """Where the training loop takes its batches and its validation loss from.

    The split into training and validation rows is made when the object is built, from the
    generator it is given, and stays fixed.
    """

    #: Rows used for training (an epoch's batches cover them once).
    num_train: int
    #: Indices of the validation rows in the caller's data, where that means something.
    validation_index: Tensor | None

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled training batches ``(a (B, *a_shape), b (B, *b_shape))``."""
        ...

    def validation_loss(self, model: nn.Module) -> float:
        """Mean ``model.loss`` over the validation rows."""
        ...


class InMemoryData:
    """Training data held as tensors: a random validation split, random-permutation batches.

    Args:
        a: Targets, shape ``(N, *a_shape)``.
        b: Conditions, shape ``(N, *b_shape)``.
        validation_fraction: Share of the rows held out for validation.
        generator: Draws the split now and each epoch's permutation later.
    """

    def __init__(
        self, a: Tensor, b: Tensor, validation_fraction: float, generator: torch.Generator
    ) -> None:
        n = a.shape[0]
        n_val = max(1, int(round(validation_fraction * n)))
        if n - n_val < 2:
            raise ValueError(f"Too few samples to train: {n} (need at least a few dozen).")
        order = torch.randperm(n, generator=generator)
        self.validation_index: Tensor | None = order[:n_val].clone()
        self.a_val, self.b_val = a[order[:n_val]], b[order[:n_val]]
        self.a_train, self.b_train = a[order[n_val:]], b[order[n_val:]]
        self.num_train = int(self.a_train.shape[0])

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches in a fresh random permutation (the last one may be smaller)."""
        perm = torch.randperm(self.num_train, generator=generator)
        for first in range(0, self.num_train, batch_size):
            idx = perm[first : first + batch_size]
            yield self.a_train[idx], self.b_train[idx]

    def validation_loss(self, model: nn.Module) -> float:
        """Mean loss over the validation rows, in chunks of 8,192."""
        return summed_loss(model, self.a_val, self.b_val) / self.a_val.shape[0]


def train(model: nn.Module, a: Tensor, b: Tensor, config: TrainingConfig) -> TrainingHistory:
    """Fit ``model`` by minimizing ``model.loss(a, b).mean()`` with Adam.

    Random-permutation batches from in-memory tensors, a held-out validation split,
    early stopping that restores the best weights, and gradient clipping. Gradients are on
    whatever the caller's autograd mode (inside ``torch.no_grad()``, or after a library such
    as BayesFlow's torch backend turned them off process-wide, training still trains).

    Args:
        model: Module with ``loss(a, b) -> (B,)``.
        a: Targets, shape ``(N, *a_shape)``.
        b: Conditions, shape ``(N, *b_shape)``.
        config: Training options.

    Returns:
        The loss history; ``model`` holds the weights of the best validation epoch.

    Raises:
        TrainingDivergedError: If the loss becomes NaN/inf (best weights are restored first).
    """
    generator = seeded_generator(config.seed)
    return train_on(
        model, InMemoryData(a, b, config.validation_fraction, generator), config, generator
    )


def train_on(
    model: nn.Module,
    data: TrainingData,
    config: TrainingConfig,
    generator: torch.Generator | None = None,
) -> TrainingHistory:
    """Fit ``model`` on any :class:`TrainingData` (in memory or streamed from a store).

    Args:
        model: Module with ``loss(a, b) -> (B,)``.
        data: The batches and the validation loss.
        config: Training options (``validation_fraction`` is the data's business).
        generator: The generator that drew ``data``'s split; batches continue from it
            (``None``: a fresh one seeded with ``config.seed``).

    Returns:
        The loss history; ``model`` holds the weights of the best validation epoch.

    Raises:
        TrainingDivergedError: If the loss becomes NaN/inf (best weights are restored first).
    """
    generator = generator if generator is not None else seeded_generator(config.seed)
    with _threads(model, config.num_threads), torch.enable_grad():
        return _train(model, data, config, generator)


def seeded_generator(seed: int | None) -> torch.Generator:
    """The generator of a training run's split and batch order (``None``: fresh entropy)."""
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    if seed is None:
        generator.seed()
    return generator


def _train(
    model: nn.Module, data: TrainingData, config: TrainingConfig, generator: torch.Generator
) -> TrainingHistory:
    history = TrainingHistory(validation_index=data.validation_index)
    batch_size = config.batch_size or int(min(512, max(200, data.num_train // 16)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    optimizer = _adam(model, config.learning_rate)
    best_val, best_state, since_best = math.inf, copy.deepcopy(model.state_dict()), 0
    decays_left = config.lr_decays
    patience = config.stop_after_epochs
    start = time.perf_counter()
    # No total: early stopping decides the length, so a bar towards max_epochs would mislead.
    bar = tqdm(desc="training", disable=not config.progress, unit="epoch", leave=False)
    for epoch in range(config.max_epochs):
        model.train()
        running, seen = 0.0, 0
        for a_batch, b_batch in data.batches(batch_size, generator):
            a_batch, b_batch = a_batch.to(device), b_batch.to(device)
            loss = model.loss(a_batch, b_batch).mean()
            if not torch.isfinite(loss):
                model.load_state_dict(best_state)
                raise TrainingDivergedError(
                    f"The training loss became {float(loss.detach())} in epoch {epoch}. "
                    "The estimator keeps its best weights so far. Likely causes: a learning "
                    f"rate too high (now {config.learning_rate}), extreme or nearly constant "
                    "values in the training data, or a prior much wider than the simulations."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip_gradients(model, config.clip_max_norm)
            optimizer.step()
            running += float(loss.detach()) * a_batch.shape[0]
            seen += a_batch.shape[0]
        model.eval()
        with torch.no_grad():
            val = data.validation_loss(model)
        if not math.isfinite(val):
            model.load_state_dict(best_state)
            raise TrainingDivergedError(
                f"The validation loss became {val} in epoch {epoch}. The estimator keeps its "
                "best weights so far. Check the data for extreme values and lower the "
                "learning rate."
            )
        history.train_loss.append(running / max(seen, 1))
        history.val_loss.append(val)
        if val < best_val:
            best_val, since_best, history.best_epoch = val, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if decays_left == config.lr_decays and config.min_patience is not None:
            patience = min(config.stop_after_epochs, max(config.min_patience, history.best_epoch))
        # The early-stopping state tells a person when the run will end: it stops (or decays
        # the learning rate, "decays left") once "since best" reaches the patience.
        bar.set_postfix(
            train=f"{running / max(seen, 1):.3f}",
            val=f"{val:.3f}",
            best=history.best_epoch,
            since_best=f"{since_best}/{patience}",
            decays_left=decays_left,
        )
        bar.update(1)
        if since_best >= patience:
            if decays_left == 0:
                break
            # A plateau: go on from the best weights with a smaller step.
            decays_left -= 1
            since_best = 0
            patience = config.patience_after_decay or config.stop_after_epochs
            model.load_state_dict(best_state)
            for group in optimizer.param_groups:
                group["lr"] *= config.lr_decay_factor
    bar.close()
    model.load_state_dict(best_state)
    history.wall_time = time.perf_counter() - start
    return history
