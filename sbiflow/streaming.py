"""Training data streamed from a simulation store: chunk-shuffled batches, bounded memory.

A store of 10⁶ maps (4 GB) does not fit in memory next to a network; the training loop
reads it through :class:`StoreData` instead, a few chunks at a time. Each epoch visits the
training chunks in a fresh random order, ``buffer_chunks`` of them at a time; the rows of
a buffer are shuffled together and cut into batches (a batch never waits for a whole
epoch's permutation, which would need every row in memory). While the network trains on
one buffer, a background thread reads the next, so disk and decompression overlap with
compute. The validation split is made of whole chunks, drawn once from the seed.

Memory: two buffers (the one in use and the one being read) plus one validation buffer,
i.e. about ``3 * buffer_chunks * chunk_size`` rows, whatever the size of the store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

from sbiflow.store import SimulationStore
from sbiflow.training import summed_loss

__all__ = ["StoreData"]

#: Roles: (theta, x) -> (a, b), the density's variable and its condition.
Roles = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class StoreData:
    """Chunk-shuffled training batches and a chunk-wise validation split from a Zarr store.

    Rows the store marks invalid (failed simulations) and rows holding NaN or inf are left
    out as they are read.

    Args:
        path: A finished simulation store (``sbiflow.simulate(..., store=path)``).
        roles: ``(theta, x) -> (a, b)``: which of them is the density's variable.
        validation_fraction: Share of the chunks held out for validation (at least one).
        generator: Draws the validation chunks now and each epoch's chunk order later.
        buffer_chunks: Chunks shuffled together; memory grows with it, and so does how well
            an epoch's batches are mixed.
        max_validation_rows: At most this many validation rows (whole chunks): enough for
            early stopping, while the remaining chunks train.

    Raises:
        FileNotFoundError: No store at ``path``.
        RuntimeError: The store is not finished (the message says how to resume it).
        ValueError: The store has fewer than two chunks, or no valid row.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        roles: Roles,
        validation_fraction: float,
        generator: torch.Generator,
        *,
        buffer_chunks: int = 8,
        max_validation_rows: int = 50_000,
    ) -> None:
        self.store = SimulationStore.open(path)
        done = self.store.done
        if not done.all():
            raise RuntimeError(
                f"Store {str(path)!r} is incomplete: {int(done.sum())} of {len(done)} chunks "
                "done. Resume it with sbiflow.simulate(..., store=path) before training."
            )
        n_chunks = len(done)
        if n_chunks < 2:
            raise ValueError(
                f"Store {str(path)!r} holds one chunk: there is nothing to stream. Load it with "
                "sbiflow.store.load_store(path) and call fit(theta, x)."
            )
        self.roles = roles
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.chunk_size = int(self.store.provenance["chunk_size"])
        valid = np.asarray(self.store.group["valid"][:])
        self._valid_rows = np.array(
            [int(valid[self.store.chunk_rows(i)].sum()) for i in range(n_chunks)], dtype=np.int64
        )
        if self._valid_rows.sum() == 0:
            raise ValueError(f"Store {str(path)!r} holds no valid simulation to train on.")
        order = torch.randperm(n_chunks, generator=generator).tolist()
        wanted = max(1, round(validation_fraction * n_chunks))
        capped = max(1, max_validation_rows // self.chunk_size)
        n_val = min(wanted, capped, n_chunks - 1)
        self.validation_chunks = sorted(order[:n_val])
        if self._valid_rows[self.validation_chunks].sum() == 0:
            raise ValueError(
                f"The validation chunks {self.validation_chunks} of store {str(path)!r} hold no "
                "valid simulation; too many simulations failed to train on this store."
            )
        self.train_chunks = sorted(order[n_val:])
        #: Valid rows in the training chunks (rows holding NaN/inf are dropped on reading).
        self.num_train = int(self._valid_rows[self.train_chunks].sum())
        self.num_rows = int(self._valid_rows.sum())
        self.validation_index: Tensor | None = None  # rows of a store, not of a tensor
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbiflow-store")

    # -- reading -----------------------------------------------------------------------
    def _read(self, chunks: list[int]) -> tuple[Tensor, Tensor]:
        """The valid, finite rows of ``chunks``: (a (n, *a_shape), b (n, *b_shape))."""
        return self.roles(*self.rows(chunks, limit=None))

    def _buffers(self, chunks: list[int]) -> Iterator[tuple[Tensor, Tensor]]:
        """The rows of ``chunks``, ``buffer_chunks`` at a time, the next read ahead."""
        groups = [
            chunks[i : i + self.buffer_chunks] for i in range(0, len(chunks), self.buffer_chunks)
        ]
        pending: Future | None = self._reader.submit(self._read, groups[0]) if groups else None
        for k in range(len(groups)):
            assert pending is not None
            current = pending.result()
            pending = (
                self._reader.submit(self._read, groups[k + 1]) if k + 1 < len(groups) else None
            )
            yield current

    def rows(self, chunks: list[int], limit: int | None) -> tuple[Tensor, Tensor]:
        """The valid, finite rows of ``chunks`` in order (at most ``limit``): ``(theta, x)``."""
        thetas, xs, have = [], [], 0
        for index in chunks:
            theta, x, valid = self.store.read_chunk(index)
            keep = valid & np.isfinite(theta).all(axis=1)
            keep &= np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
            thetas.append(theta[keep])
            xs.append(x[keep])
            have += int(keep.sum())
            if limit is not None and have >= limit:
                break
        theta = torch.from_numpy(np.concatenate(thetas)[:limit]).float()
        x = torch.from_numpy(np.concatenate(xs)[:limit]).float()
        return theta, (x.unsqueeze(1) if x.ndim == 1 else x)

    def sample_rows(self, limit: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """About ``limit`` valid rows from randomly chosen training chunks, as ``(theta, x)``.

        Standardization (mean, std and observed range) and the choice of an embedding are
        made from these rows: with ``limit = 50,000`` a mean is known to 0.5% of a std.
        """
        order = torch.randperm(len(self.train_chunks), generator=generator).tolist()
        return self.rows([self.train_chunks[i] for i in order], limit)

    # -- the TrainingData protocol ----------------------------------------------------
    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch: training chunks in random order, rows shuffled within each buffer.

        A buffer's last rows that do not fill a batch are carried into the next buffer, so
        every batch but the epoch's last has ``batch_size`` rows.
        """
        order = torch.randperm(len(self.train_chunks), generator=generator).tolist()
        chunks = [self.train_chunks[i] for i in order]
        carry: tuple[Tensor, Tensor] | None = None
        for a, b in self._buffers(chunks):
            if carry is not None:
                a, b = torch.cat([carry[0], a]), torch.cat([carry[1], b])
            perm = torch.randperm(a.shape[0], generator=generator)
            full = (a.shape[0] // batch_size) * batch_size
            for first in range(0, full, batch_size):
                idx = perm[first : first + batch_size]
                yield a[idx], b[idx]
            rest = perm[full:]
            carry = (a[rest], b[rest]) if rest.numel() else None
        if carry is not None:
            yield carry

    @torch.no_grad()
    def validation_loss(self, model: nn.Module) -> float:
        """Mean loss over the validation chunks, read a buffer at a time."""
        total, count = 0.0, 0
        for a, b in self._buffers(self.validation_chunks):
            total += summed_loss(model, a, b)
            count += a.shape[0]
        return total / count if count else math.nan

    def close(self) -> None:
        """Stop the reading thread."""
        self._reader.shutdown(wait=True)
