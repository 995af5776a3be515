"""On-disk simulation store (Zarr): chunk-wise writes, resume, provenance.

A store is a Zarr v3 group with four arrays, all chunked like the simulation chunks,

- ``theta`` (n, D) float32, the parameters;
- ``x`` (n, *x_shape) float32, the simulator outputs (created with the first chunk);
- ``valid`` (n,) bool, False where the simulator returned NaN/inf or raised;
- ``done`` (n_chunks,) bool, set once a chunk's rows are written,

and the provenance in the group attributes: ``seed``, ``n``, ``chunk_size``, ``simulator``,
``dim_theta``, ``x_shape``, ``sbiflow_version`` and ``created``. A chunk's rows are written
before its ``done`` flag, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor

from sbiflow._version import __version__

__all__ = ["SimulationStore", "load_store"]

FORMAT = "sbiflow.simulations/1"
IDENTITY = ("seed", "n", "chunk_size", "simulator", "dim_theta")
"""Provenance fields that must match for a run to resume a store."""


class SimulationStore:
    """Simulations on disk, written chunk by chunk and read back as NumPy arrays.

    Open one with :meth:`open` (existing store) or :meth:`resume` (open or create for a run);
    :func:`sbiflow.simulate` does that for you when given ``store=``.

    Example:
        >>> store = SimulationStore.open("runs/gauss.zarr")  # doctest: +SKIP
        >>> store.done.sum(), store.provenance["seed"]  # doctest: +SKIP
        >>> theta, x, valid = store.read()  # doctest: +SKIP
    """

    def __init__(self, group: zarr.Group, path: str | os.PathLike) -> None:
        self.group = group
        self.path = str(path)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> SimulationStore:
        """Open an existing store.

        Args:
            path: The store's directory.
            mode: ``"r"`` to read, ``"r+"`` to write.

        Raises:
            FileNotFoundError: Nothing exists at ``path``.
            ValueError: ``path`` exists but is not a readable sbiflow simulation store.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"No simulation store at {str(path)!r}.")
        try:
            group = zarr.open_group(path, mode=mode)
            attrs = group.attrs.asdict()
            arrays = set(group.array_keys())
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} exists but is not a readable Zarr store ({type(e).__name__}: {e}). "
                "Pass a new store path, or delete it to start over."
            ) from e
        if attrs.get("format") != FORMAT or not {"theta", "valid", "done"} <= arrays:
            raise ValueError(
                f"{str(path)!r} is not an sbiflow simulation store (or is corrupted). "
                "Pass a new store path, or delete it to start over."
            )
        return cls(group, path)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        seed: int,
        n: int,
        chunk_size: int,
        simulator: str,
        dim_theta: int,
    ) -> SimulationStore:
        """Create an empty store for ``n`` simulations of ``dim_theta`` parameters."""
        group = zarr.open_group(path, mode="w-")
        n_chunks = -(-n // chunk_size)
        kw: dict[str, Any] = {"dtype": "float32", "fill_value": np.nan}
        group.create_array("theta", shape=(n, dim_theta), chunks=(chunk_size, dim_theta), **kw)
        group.create_array("valid", shape=(n,), chunks=(chunk_size,), dtype=bool, fill_value=False)
        group.create_array("done", shape=(n_chunks,), dtype=bool, fill_value=False)
        group.attrs.update(
            format=FORMAT,
            seed=seed,
            n=n,
            chunk_size=chunk_size,
            simulator=simulator,
            dim_theta=dim_theta,
            x_shape=None,
            sbiflow_version=_version(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return cls(group, path)

    @classmethod
    def resume(cls, path: str | os.PathLike, **provenance: Any) -> SimulationStore:
        """Open the store of the run described by ``provenance``, or create it if absent.

        Args:
            path: The store's directory; created if it does not exist or is an empty directory.
            **provenance: ``seed``, ``n``, ``chunk_size``, ``simulator`` and ``dim_theta``.

        Raises:
            ValueError: The store exists but was written by a different run (the message names
                the mismatching field), or is not a simulation store.
        """
        p = Path(path)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return cls.create(path, **provenance)
        store = cls.open(path, mode="r+")
        stored = store.provenance
        for key in IDENTITY:
            if stored.get(key) != provenance[key]:
                raise ValueError(
                    f"Store {store.path!r} was written with {key}={stored.get(key)!r}, but this "
                    f"call has {key}={provenance[key]!r}. Pass a new store path, or delete the "
                    "old store to start over."
                )
        return store

    @property
    def provenance(self) -> dict[str, Any]:
        """The group attributes: seed, n, chunk_size, simulator, dim_theta, x_shape, ..."""
        return self.group.attrs.asdict()

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        """Shape of one simulator output, or None before the first chunk is written."""
        shape = self.group.attrs.get("x_shape")
        return None if shape is None else tuple(shape)

    @property
    def done(self) -> np.ndarray:
        """(n_chunks,) bool: which chunks are finished."""
        return self.group["done"][:]

    def _rows(self, index: int) -> slice:
        chunk_size, n = self.group.attrs["chunk_size"], self.group.attrs["n"]
        return slice(index * chunk_size, min((index + 1) * chunk_size, n))

    def write_chunk(self, index: int, theta: np.ndarray, x: np.ndarray, valid: np.ndarray) -> None:
        """Write chunk ``index``'s rows, then mark it done.

        Args:
            index: Chunk index.
            theta: (B, D) parameters.
            x: (B, *x_shape) simulator outputs (NaN where the simulator raised).
            valid: (B,) whether each simulation is usable.
        """
        x_shape = tuple(x.shape[1:])
        if self.x_shape is None:
            chunks = (self.group.attrs["chunk_size"], *x_shape)
            shape = (self.group.attrs["n"], *x_shape)
            self.group.create_array(
                "x", shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan
            )
            self.group.attrs["x_shape"] = list(x_shape)
        elif x_shape != self.x_shape:
            raise ValueError(
                f"Simulator output shape {x_shape} differs from {self.x_shape} in store "
                f"{self.path!r}."
            )
        rows = self._rows(index)
        self.group["theta"][rows] = theta
        self.group["x"][rows] = x
        self.group["valid"][rows] = valid
        self.group["done"][index] = True

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunk ``index``'s rows: theta (B, D), x (B, *x_shape), valid (B,)."""
        rows = self._rows(index)
        return self.group["theta"][rows], self.group["x"][rows], self.group["valid"][rows]

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows, invalid ones included: theta (n, D), x (n, *x_shape), valid (n,).

        Raises:
            RuntimeError: Some chunks are not done yet; the message says how many are.
        """
        done = self.done
        if not done.all():
            a = self.provenance
            raise RuntimeError(
                f"Store {self.path!r} is incomplete: {int(done.sum())} of {len(done)} chunks "
                f"done. Resume it with sbiflow.simulate(<the same simulator>, n={a['n']}, "
                f"seed={a['seed']}, chunk_size={a['chunk_size']}, store={self.path!r})."
            )
        return self.group["theta"][:], self.group["x"][:], self.group["valid"][:]


def load_store(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Load the valid simulations of a finished store.

    Args:
        path: The store's directory, as given to ``simulate(..., store=path)``.

    Returns:
        theta (n_valid, D) and x (n_valid, *x_shape), float32.

    Raises:
        RuntimeError: The run has not finished (resume it with ``simulate``).
    """
    theta, x, valid = SimulationStore.open(path).read()
    return torch.from_numpy(theta[valid]), torch.from_numpy(x[valid])


def _version() -> str:
    return str(__version__)
