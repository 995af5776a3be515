"""Save and load trained models as weights + configuration (no pickled objects)."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from sbiflow._version import __version__
from sbiflow.comparison.model_comparison import ModelComparison
from sbiflow.diffusion.score_prior import ScorePrior
from sbiflow.inference.base import NeuralInference
from sbiflow.inference.nle import NLE
from sbiflow.inference.npe import NPE
from sbiflow.priors import prior_from_spec, prior_to_spec

__all__ = ["ModelFileError", "load", "save"]

FORMAT = "sbiflow"
#: 2: NSF layers as ``sbiflow.estimators.coupling`` (one context projection for all layers).
FORMAT_VERSION = 2
_CLASSES: dict[str, type] = {
    "NLE": NLE,
    "NPE": NPE,
    "ModelComparison": ModelComparison,
    "ScorePrior": ScorePrior,
}
#: Models with no prior over θ to store.
_PRIORLESS = (ModelComparison, ScorePrior)


class ModelFileError(ValueError):
    """A file is not a readable sbiflow model (corrupted, truncated or foreign)."""


def save(model: NeuralInference | ModelComparison | ScorePrior, path: str | os.PathLike) -> None:
    """Write a trained model to ``path``: weights, configuration, standardization, prior.

    The file loads with ``torch.load(weights_only=True)``: it holds tensors and plain types
    only, so loading never runs code. Priors of known types (box uniform, normal, multivariate
    normal) are stored; any other prior must be passed again to :func:`load`.

    Args:
        model: A trained NPE, NLE, ModelComparison or ScorePrior.
        path: Output file, e.g. ``"npe.pt"``.
    """
    name = type(model).__name__
    if name not in _CLASSES:
        raise TypeError(f"Cannot save a {name}; known: {sorted(_CLASSES)}.")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sbiflow_version": __version__,
        "class": name,
        # a model comparison has one prior per model, none needed after training
        "prior": prior_to_spec(model.prior) if isinstance(model, NeuralInference) else None,
        "model": model.state(),
    }
    torch.save(payload, os.fspath(path))


def load(
    path: str | os.PathLike,
    *,
    prior: Distribution | None = None,
    embedding_net: nn.Module | None = None,
    device: str = "cpu",
) -> NeuralInference | ModelComparison | ScorePrior:
    """Load a model written by :func:`save`.

    Args:
        path: The file.
        prior: The prior, required if the saved prior's type could not be stored;
            overrides the stored one otherwise.
        embedding_net: A freshly built instance of your own embedding network, if the
            model was trained with one.
        device: Where to put the weights.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ModelFileError: If the file is corrupted, truncated, or not an sbiflow model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        detail = str(err) or f"{type(err).__name__} ({os.path.getsize(path)} bytes)"
        raise ModelFileError(
            f"{path!r} is not a readable sbiflow model file (corrupted, truncated, or written "
            f"by another program): {detail}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{path!r} is a torch file but not an sbiflow model (no sbiflow header). "
            "Save models with sbiflow.save(model, path)."
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} was written by a newer sbiflow ({payload.get('sbiflow_version')}, format "
            f"{payload['format_version']}); upgrade sbiflow to load it."
        )
    if payload.get("format_version", 0) < FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} was written by an older sbiflow ({payload.get('sbiflow_version')}, "
            f"format {payload.get('format_version')}) whose network layout this version does "
            "not read; retrain the model (the simulations are in your store) and save it again."
        )
    cls = _CLASSES.get(payload.get("class", ""))
    if cls is None:
        raise ModelFileError(f"{path!r} holds an unknown model class {payload.get('class')!r}.")
    if prior is None and cls not in _PRIORLESS:
        if payload.get("prior") is None:
            raise ValueError(
                f"{path!r} was saved with a prior of a type sbiflow cannot store: pass it, "
                "sbiflow.load(path, prior=my_prior)."
            )
        prior = prior_from_spec(payload["prior"])
    try:
        return cls.from_state(payload["model"], prior, embedding_net=embedding_net, device=device)
    except (KeyError, RuntimeError, TypeError) as err:
        raise ModelFileError(f"{path!r} holds an incomplete or mismatched model: {err}") from err
