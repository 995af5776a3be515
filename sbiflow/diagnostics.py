"""Diagnostics that tell whether to trust a posterior; built on sbi's implementations."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

__all__ = ["c2st"]


def c2st(reference: Tensor, samples: Tensor, seed: int = 1, n_folds: int = 5) -> float:
    """Classifier two-sample test accuracy between ``reference`` and ``samples``.

    The definition of the SBI benchmark (Lueckmann et al. 2021, arXiv:2101.04653): an
    sklearn MLP with two hidden layers of ``10 * D`` ReLU units, 5-fold cross-validated
    accuracy, both sets z-scored with the reference's mean and std. 0.5 means the two sets
    cannot be told apart; 1.0 means they are fully separable. Computed by ``sbi``.

    Args:
        reference: Samples of the reference distribution, shape ``(N, D)``.
        samples: Samples to test, shape ``(M, D)``.
        seed: Seed of the classifier and of the folds.
        n_folds: Number of cross-validation folds.

    Returns:
        The mean accuracy over folds.
    """
    from sbi.utils.metrics import c2st as sbi_c2st

    reference = torch.as_tensor(reference, dtype=torch.float32)
    samples = torch.as_tensor(samples, dtype=torch.float32)
    if reference.ndim != 2 or samples.ndim != 2 or reference.shape[1] != samples.shape[1]:
        raise ValueError(
            f"c2st needs two (N, D) sample sets of the same D, got {tuple(reference.shape)} "
            f"and {tuple(samples.shape)}."
        )
    dim = reference.shape[1]
    mlp = {
        "activation": "relu",
        "hidden_layer_sizes": (10 * dim, 10 * dim),
        "max_iter": 10_000,
        "solver": "adam",
    }
    # One BLAS thread: the MLP's small matrix products run many times slower with more
    # threads whenever cores are shared (measured here: 70 s instead of 3.4 s).
    with threadpool_limits(1):
        score = sbi_c2st(
            reference, samples, seed=seed, n_folds=n_folds, classifier="mlp", classifier_kwargs=mlp
        )
    return float(score)
