"""On-disk simulation store (Zarr): chunk-wise writes, resume, provenance.

A store is a Zarr v3 group with four arrays, all chunked like the simulation chunks,

- ``theta`` (n, D) float32, the parameters;
- ``x`` (n, *x_shape) float32, the simulator outputs (created with the first chunk);
- ``valid`` (n,) bool, False where the simulator returned NaN/inf or raised;
- ``done`` (n_chunks,) bool, set once a chunk's rows are written,

and the provenance in the group attributes:

- what made it: ``simulator`` (its name), ``simulator_class`` (``module.QualName``),
  ``simulator_options`` (its public attributes of simple type: see :func:`simulator_options`),
  ``prior`` (a JSON description with its parameters: see :func:`describe`) and ``prior_repr``;
- how: ``seed``, ``n``, ``chunk_size``, ``dim_theta``, ``x_shape``, ``sbiflow_version``;
- when and how well: ``created`` and ``finished`` (UTC, ISO 8601; ``finished`` is None until
  every chunk is done), ``n_failed`` (simulations that returned NaN/inf or raised, counted
  when the run finishes) and ``first_error`` (the first exception a simulator raised, if any).

A chunk's rows are written before its ``done`` flag (Zarr replaces each file atomically), so
a run killed at any moment, even inside a write, resumes where it stopped: a chunk whose flag
is not set is simulated again and never read. A run refuses to resume a store made with
another simulator, prior, seed or chunking (the fields in :data:`IDENTITY`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sbiflow._version import __version__

if TYPE_CHECKING:
    import zarr


def _zarr() -> ModuleType:
    """The zarr module, imported on first use: it adds ~0.4 s to ``import sbiflow``."""
    import zarr

    return zarr


__all__ = ["SimulationStore", "load_store", "valid_rows"]

FORMAT = "sbiflow.simulations/1"
IDENTITY = (
    "seed",
    "n",
    "chunk_size",
    "dim_theta",
    "simulator",
    "simulator_class",
    "simulator_options",
    "prior",
)
"""Provenance fields that must match for a run to resume a store (in the order checked).

Stores written by sbiflow before a field existed are not checked on that field."""

#: Arrays up to this many elements are described by their values, larger ones by a hash.
MAX_LISTED = 64


class SimulationStore:
    """Simulations on disk, written chunk by chunk and read back as NumPy arrays.

    Open one with :meth:`open` (existing store) or :meth:`resume` (open or create for a run);
    :func:`sbiflow.simulate` does that for you when given ``store=``.

    Example:
        >>> import os, tempfile
        >>> from sbiflow.simulate import simulate
        >>> prior = torch.distributions.Independent(
        ...     torch.distributions.Uniform(-torch.ones(2), torch.ones(2)), 1
        ... )
        >>> path = os.path.join(tempfile.mkdtemp(), "gauss.zarr")
        >>> _ = simulate(lambda t: 2 * t, 30, prior=prior, chunk_size=10, store=path,
        ...              progress=False)
        >>> store = SimulationStore.open(path)
        >>> int(store.done.sum()), store.provenance["seed"]
        (3, 0)
        >>> theta, x, valid = store.read()
        >>> theta.shape, x.shape, bool(valid.all())
        ((30, 2), (30, 2), True)
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
            group = _zarr().open_group(path, mode=mode)
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
        **provenance: Any,
    ) -> SimulationStore:
        """Create an empty store for ``n`` simulations of ``dim_theta`` parameters.

        Args:
            path: The store's directory (must not exist, or be empty); built next to it and
                renamed into place, so it is complete or absent.
            seed: The run's seed.
            n: Number of simulations.
            chunk_size: Simulations per chunk.
            simulator: The simulator's name.
            dim_theta: Number of parameters D.
            **provenance: More JSON-serializable attributes to record: ``simulator_class``,
                ``simulator_options``, ``prior``, ``prior_repr``.
        """
        final = Path(path)
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            raise FileExistsError(f"{str(path)!r} exists and is not empty: not creating a store.")
        # Built aside, then renamed into place (atomic): a run killed while creating leaves no
        # half-made store at ``path``, only a hidden ``.<name>.creating-*`` folder.
        building = final.parent / f".{final.name}.creating-{uuid.uuid4().hex[:8]}"
        final.parent.mkdir(parents=True, exist_ok=True)
        group = _zarr().open_group(building, mode="w-")
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
            created=_now(),
            finished=None,
            n_failed=None,
            first_error=None,
            **provenance,
        )
        os.replace(building, final)  # onto nothing, or an empty directory
        return cls(_zarr().open_group(final, mode="r+"), path)

    @classmethod
    def resume(cls, path: str | os.PathLike, **provenance: Any) -> SimulationStore:
        """Open the store of the run described by ``provenance``, or create it if absent.

        Args:
            path: The store's directory; created if it does not exist or is an empty directory.
            **provenance: ``seed``, ``n``, ``chunk_size``, ``simulator`` and ``dim_theta``;
                optionally ``simulator_class``, ``simulator_options``, ``prior`` and
                ``prior_repr`` (see :meth:`create`).

        Raises:
            ValueError: The store exists but was made by a different run (the message names
                the field that differs, both values, and what to do), or is not a
                simulation store.
        """
        p = Path(path)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return cls.create(path, **provenance)
        store = cls.open(path, mode="r+")
        stored = store.provenance
        for key in IDENTITY:
            if key not in stored or key not in provenance:
                continue  # a store from an older sbiflow, or a caller that does not say
            old, new = stored[key], _roundtrip(provenance[key])
            if old != new:
                raise ValueError(_mismatch(store.path, key, old, new))
        return store

    def finish(self, first_error: str | None = None) -> None:
        """Record that every chunk is done: ``finished`` time, ``n_failed`` and ``first_error``.

        Args:
            first_error: The first exception a simulator raised in this run, if any (kept if
                an earlier run of the store already recorded one).

        Raises:
            RuntimeError: Some chunks are not done.
        """
        done = self.done
        if not done.all():
            raise RuntimeError(
                f"Store {self.path!r}: {int(done.sum())} of {len(done)} chunks done; "
                "finish() needs all of them."
            )
        attrs = self.group.attrs
        n_failed = int((~self.group["valid"][:]).sum())
        updates: dict[str, Any] = {"n_failed": n_failed}
        if attrs.get("finished") is None:
            updates["finished"] = _now()
        if attrs.get("first_error") is None and first_error is not None:
            updates["first_error"] = first_error
        if any(attrs.get(k) != v for k, v in updates.items()):
            attrs.update(updates)

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

    def chunk_rows(self, index: int) -> slice:
        """The rows of chunk ``index``: a slice of the store's arrays."""
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
            # overwrite: a run killed between creating x and recording x_shape left an x
            # with no chunk done (x_shape is recorded before any row is written)
            self.group.create_array(
                "x", shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan, overwrite=True
            )
            self.group.attrs["x_shape"] = list(x_shape)
        elif x_shape != self.x_shape:
            raise ValueError(
                f"Simulator output shape {x_shape} differs from {self.x_shape} in store "
                f"{self.path!r}."
            )
        rows = self.chunk_rows(index)
        self.group["theta"][rows] = theta
        self.group["x"][rows] = x
        self.group["valid"][rows] = valid
        self.group["done"][index] = True

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunk ``index``'s rows: theta (B, D), x (B, *x_shape), valid (B,)."""
        rows = self.chunk_rows(index)
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


def valid_rows(path: str | os.PathLike) -> int:
    """How many valid simulations a store holds (reads only its ``valid`` mask)."""
    return int(np.count_nonzero(SimulationStore.open(path).group["valid"][:]))


def describe(value: Any, depth: int = 4) -> Any:
    """A JSON description of ``value`` that two equal objects share, for provenance.

    Scalars are kept; tensors and arrays become their shape, dtype and values (a SHA-256 of
    their bytes past :data:`MAX_LISTED` elements); other objects their class path and the
    description of their public attributes, ``depth`` levels down.

    Example:
        >>> describe(torch.distributions.Normal(torch.zeros(1), 2.0))["scale"]["values"]
        [2.0]
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else repr(float(value))
    if isinstance(value, (Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, Tensor) else value
        out: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        if array.size <= MAX_LISTED and array.dtype.kind in "biuf":
            out["values"] = [describe(v) for v in array.ravel().tolist()]
        else:
            out["sha256"] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        return out
    if isinstance(value, (list, tuple)):
        if len(value) <= MAX_LISTED:
            return [describe(v, depth - 1) for v in value]
        text = json.dumps([describe(v, depth - 1) for v in value], sort_keys=True)
        return {"length": len(value), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    if isinstance(value, dict):
        return {str(k): describe(v, depth - 1) for k, v in value.items()}
    out = {"class": class_path(value)}
    if depth > 0 and hasattr(value, "__dict__"):
        public = {k: v for k, v in vars(value).items() if not k.startswith("_") and not callable(v)}
        out.update({k: describe(public[k], depth - 1) for k in sorted(public)})
    return out


def simulator_options(simulator: Any) -> dict[str, Any]:
    """The options that identify a simulator's configuration, for provenance.

    Its public instance attributes of simple type (bool, int, float, str, None, and short
    lists of them), e.g. ``model="cored"``, ``n_mean=100.0``; the prior is recorded apart,
    and ``names`` and ``labels`` (for plots) do not count.
    Arrays and objects are left out: they are usually derived from the options, and the
    last bits of derived floats may differ between machines. Keep a simulator's state
    (counters, caches) in private attributes (``_calls``) so it does not count as an option.
    For a ``functools.partial``, its keyword arguments.
    """
    attrs = getattr(simulator, "keywords", None)
    if not isinstance(attrs, dict):
        attrs = vars(simulator) if hasattr(simulator, "__dict__") else {}
    options = {}
    for key in sorted(attrs):
        value = attrs[key]
        if key.startswith("_") or key in _NOT_OPTIONS or not _simple(value):
            continue
        options[key] = describe(value)
    return options


_NOT_OPTIONS = ("prior", "names", "labels")  # recorded apart / plot metadata only


def class_path(obj: Any) -> str:
    """``module.QualName`` of a class, of a function, or of an object's class."""
    obj = getattr(obj, "func", obj)  # functools.partial
    target = (
        obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else None
    )
    target = target if target is not None else type(obj)
    return f"{target.__module__}.{target.__qualname__}"


def _simple(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return True
    return (
        isinstance(value, (list, tuple))
        and len(value) <= MAX_LISTED
        and all(
            v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating))
            for v in value
        )
    )


def _roundtrip(value: Any) -> Any:
    """``value`` as it reads back from the JSON attributes (tuples become lists)."""
    return json.loads(json.dumps(value))


def _first_difference(old: Any, new: Any, where: str) -> str:
    """Where two JSON descriptions first differ, e.g. ``prior.high: [1.0] ... [2.0] ...``."""
    if _is_array(old) and _is_array(new) and old.get("shape") == new.get("shape"):
        old, new = _brief(old), _brief(new)
    elif isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                return _first_difference(
                    old.get(key, "<absent>"), new.get(key, "<absent>"), f"{where}.{key}"
                )
    text = f"{where}: {old!r} in the store, {new!r} in this call"
    return text if len(text) < 300 else text[:297] + "..."


def _is_array(value: Any) -> bool:
    return isinstance(value, dict) and "shape" in value and ("values" in value or "sha256" in value)


def _brief(value: Any) -> Any:
    """An array's values (or ``sha256:<first 12 hex digits>``); other things as they are."""
    if not _is_array(value):
        return value
    if "values" in value:
        return value["values"]
    return f"sha256:{value['sha256'][:12]}"


def _summary(description: Any) -> str:
    """One line for a prior's description, e.g. ``box_uniform(low=[-1.0], high=[1.0])``."""
    if not isinstance(description, dict):
        return repr(description)
    kind = description.get("type") or description.get("class", "?")
    args = ", ".join(
        f"{k}={_brief(v)}" for k, v in description.items() if k not in ("type", "class")
    )
    text = f"{kind}({args})"
    return text if len(text) < 200 else text[:197] + "..."


def _mismatch(path: str, key: str, old: Any, new: Any) -> str:
    if key in ("prior", "simulator_options", "simulator_class"):
        what = {"prior": "prior", "simulator_options": "simulator options"}.get(
            key, "simulator class"
        )
        head = f"Store {path!r} was made with another {what} ({_first_difference(old, new, key)})"
        if key == "prior":
            head += f"; the store's prior is {_summary(old)}"
    else:
        head = f"Store {path!r} was made with {key}={old!r}, but this call has {key}={new!r}"
    return (
        f"{head}. To resume it, call simulate with the simulator, prior, seed, n and "
        "chunk_size it was made with; otherwise pass a new store path, or delete the old "
        "store to start over."
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version() -> str:
    return str(__version__)
