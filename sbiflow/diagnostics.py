"""Diagnostics that tell whether to trust a posterior; built on sbi's implementations."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

__all__ = [
    "CoverageResult",
    "PredictiveCheck",
    "SBCResult",
    "c2st",
    "expected_coverage",
    "posterior_predictive",
    "sbc",
    "sbc_and_coverage",
    "tarp",
]


class Posterior(Protocol):
    """What the calibration diagnostics need: ``NPE`` (or anything alike)."""

    def sample(self, n: int, x: Tensor, *, seed: int | None = None) -> Tensor: ...

    def log_prob(self, theta: Tensor, x: Tensor, *, normalize: bool = True) -> Tensor: ...


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


#: The start of the warning NPE and NLE give for an observation past the training range.
_RANGE_WARNING = "The observation lies outside the range of the training simulations"


@contextmanager
def _among_test_simulations() -> Iterator[None]:
    """Silence the training-range warning while a diagnostic runs over test simulations.

    They come from the simulator, so one element of one of them past the training range is
    expected, not a sign of a wrong observation: a 32 x 32 map has 1,024 elements, each past
    the range of 50,000 training maps with probability ~1e-5, so ~200 test maps trip it a few
    times per run. The warning is for the user's own observation.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RANGE_WARNING)
        yield


class _SbiView:
    """Our posterior seen through the interface sbi's diagnostics call.

    It runs over test simulations: the training-range warning is silenced
    (``_among_test_simulations``).
    """

    def __init__(self, posterior: Posterior, seed: int, progress: bool) -> None:
        self.posterior, self.seed, self.progress = posterior, seed, progress

    def sample_batched(self, sample_shape: Sequence[int], x: Tensor, **_: Any) -> Tensor:
        from tqdm.auto import tqdm

        n = int(torch.Size(sample_shape).numel())
        with _among_test_simulations():
            draws = [
                self.posterior.sample(n, x=x_i, seed=self.seed + i)
                for i, x_i in enumerate(
                    tqdm(x, desc="posterior samples", disable=not self.progress)
                )
            ]
        return torch.stack(draws, dim=1)  # (n, B, D)

    def negative_log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        # The normalization is one constant per x: it cannot change a rank.
        with _among_test_simulations():
            return -self.posterior.log_prob(theta, x=x, normalize=False)


@dataclass
class SBCResult:
    """Simulation-based calibration of a posterior.

    Attributes:
        ranks: Rank of each true parameter among its posterior samples, ``(B, D)``.
        num_posterior_samples: Samples per test simulation (ranks lie in ``[0, this]``).
        ks_pvalues: Per-parameter p-values of a K-S test of uniform ranks, ``(D,)``.
        c2st_ranks: Per-parameter C2ST between the ranks and uniform ones (0.5 is ideal),
            ``(D,)``; ``None`` unless ``sbc(..., c2st_checks=True)`` asked for it.
        dap_samples: One posterior draw per test simulation, ``(B, D)`` (their law should
            be the prior's).
    """

    ranks: Tensor
    num_posterior_samples: int
    ks_pvalues: Tensor
    c2st_ranks: Tensor | None
    dap_samples: Tensor


def _test_pairs(theta: Tensor, x: Tensor) -> None:
    """Refuse test pairs that are not B parameters ``(B, D)`` with B simulations."""
    if theta.ndim != 2 or x.ndim < 2 or x.shape[0] != theta.shape[0] or theta.shape[0] == 0:
        raise ValueError(
            f"theta ({tuple(theta.shape)}) and x ({tuple(x.shape)}) must be B > 0 test pairs: "
            "theta shaped (B, D), x shaped (B, *x_shape)."
        )


def _levels(levels: Sequence[float]) -> Tensor:
    """Credibility levels ``(L,)``, each in (0, 1)."""
    levels_t = torch.as_tensor(list(levels), dtype=torch.float32)
    if levels_t.ndim != 1 or not bool(((levels_t > 0) & (levels_t < 1)).all()):
        raise ValueError(f"Credibility levels must lie in (0, 1), got {list(levels)}.")
    return levels_t


def _coverage(hpd: Tensor, levels: Tensor) -> CoverageResult:
    """Coverage at each level ``(L,)`` from the HPD level of every test parameter ``(B,)``."""
    coverage = (hpd[None, :] < levels[:, None]).float().mean(dim=1)
    return CoverageResult(levels, coverage, hpd)


def sbc(
    posterior: Posterior,
    theta: Tensor,
    x: Tensor,
    num_posterior_samples: int = 1_000,
    seed: int = 0,
    progress: bool = True,
    c2st_checks: bool = False,
) -> SBCResult:
    """Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788), run by sbi.

    Args:
        posterior: A trained posterior (e.g. ``NPE``).
        theta: Test parameters drawn from the prior, ``(B, D)``.
        x: Their simulations, ``(B, *x_shape)``.
        num_posterior_samples: Posterior samples per test simulation.
        seed: Seed of the posterior samples.
        progress: Show progress bars.
        c2st_checks: Also run sbi's C2ST of the ranks against uniform ones
            (``check_sbc``): a classifier per parameter, which doubles the cost of
            ``sbc`` (6.0 s against 2.9 s for 100 tests of a small two_moons NPE,
            ``examples/benchmarks/diagnostics_cost.py``); the K-S p-values are always
            computed.

    Returns:
        Ranks and sbi's checks of their uniformity.
    """
    from sbi.diagnostics import run_sbc
    from sbi.diagnostics.sbc import check_sbc, check_uniformity_frequentist

    _test_pairs(theta, x)
    view = _SbiView(posterior, seed, progress)
    ranks, dap = run_sbc(theta, x, view, num_posterior_samples, show_progress_bar=progress)
    if c2st_checks:
        checks = check_sbc(ranks, theta, dap, num_posterior_samples=num_posterior_samples)
        ks_pvalues, c2st_ranks = checks["ks_pvals"], checks["c2st_ranks"]
    else:
        ks_pvalues = check_uniformity_frequentist(ranks, num_posterior_samples)
        c2st_ranks = None
    return SBCResult(ranks, num_posterior_samples, ks_pvalues, c2st_ranks, dap)


@dataclass
class CoverageResult:
    """Expected coverage of highest-posterior-density regions.

    Attributes:
        levels: Credibility levels asked for, ``(L,)``.
        coverage: Share of test parameters inside their HPD region of each level, ``(L,)``.
        hpd_levels: For each test simulation, the smallest HPD level containing the true
            parameter, ``(B,)``; uniform on [0, 1] for a calibrated posterior.
    """

    levels: Tensor
    coverage: Tensor
    hpd_levels: Tensor

    def as_dict(self) -> dict[str, float]:
        """``{"0.68": 0.67, ...}``: nominal level → measured coverage."""
        return {f"{float(a):g}": float(c) for a, c in zip(self.levels, self.coverage, strict=True)}


def expected_coverage(
    posterior: Posterior,
    theta: Tensor,
    x: Tensor,
    levels: Sequence[float] = (0.5, 0.68, 0.95),
    num_posterior_samples: int = 1_000,
    seed: int = 0,
    progress: bool = True,
) -> CoverageResult:
    """Expected coverage of HPD regions over test simulations, computed by sbi's ``run_sbc``.

    For each test pair (θ*, x*), the share of posterior samples with a higher density than
    θ* is the smallest HPD level containing θ*. A calibrated posterior covers θ* with
    probability α at level α; below α it is overconfident, above it conservative.

    Args:
        posterior: A trained posterior with ``sample`` and ``log_prob`` (e.g. ``NPE``).
        theta: Test parameters drawn from the prior, ``(B, D)``.
        x: Their simulations, ``(B, *x_shape)``.
        levels: Credibility levels.
        num_posterior_samples: Posterior samples per test simulation.
        seed: Seed of the posterior samples.
        progress: Show progress bars.

    Returns:
        Levels, coverage per level, and the HPD level of every test parameter.
    """
    from sbi.diagnostics import run_sbc

    _test_pairs(theta, x)
    levels_t = _levels(levels)
    view = _SbiView(posterior, seed, progress)
    ranks, _ = run_sbc(
        theta,
        x,
        view,
        num_posterior_samples,
        reduce_fns=view.negative_log_prob,
        show_progress_bar=progress,
    )
    return _coverage(ranks[:, 0] / num_posterior_samples, levels_t)


def sbc_and_coverage(
    posterior: Posterior,
    theta: Tensor,
    x: Tensor,
    levels: Sequence[float] = (0.5, 0.68, 0.95),
    num_posterior_samples: int = 1_000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SBCResult, CoverageResult]:
    """:func:`sbc` and :func:`expected_coverage` from one set of posterior draws.

    sbi's ``run_sbc`` ranks θ* by each marginal and by the negative log density over the
    same draws, so the two diagnostics cost one sampling pass instead of two; the results
    are those of the two functions with the same ``seed`` (``c2st_checks`` off).

    Args:
        posterior: A trained posterior with ``sample`` and ``log_prob`` (e.g. ``NPE``).
        theta: Test parameters drawn from the prior, ``(B, D)``.
        x: Their simulations, ``(B, *x_shape)``.
        levels: Credibility levels of the coverage.
        num_posterior_samples: Posterior samples per test simulation.
        seed: Seed of the posterior samples.
        progress: Show progress bars.

    Returns:
        ``(sbc_result, coverage_result)``.
    """
    from sbi.diagnostics import run_sbc
    from sbi.diagnostics.sbc import check_uniformity_frequentist

    _test_pairs(theta, x)
    levels_t = _levels(levels)
    view = _SbiView(posterior, seed, progress)
    dim = int(theta.shape[1])
    marginals = [lambda t, _x, i=i: t[:, i] for i in range(dim)]
    ranks, dap = run_sbc(
        theta,
        x,
        view,
        num_posterior_samples,
        reduce_fns=[*marginals, view.negative_log_prob],
        show_progress_bar=progress,
    )
    marginal_ranks = ranks[:, :dim]
    ks_pvalues = check_uniformity_frequentist(marginal_ranks, num_posterior_samples)
    sbc_result = SBCResult(marginal_ranks, num_posterior_samples, ks_pvalues, None, dap)
    return sbc_result, _coverage(ranks[:, dim] / num_posterior_samples, levels_t)


def tarp(
    posterior: Posterior,
    theta: Tensor,
    x: Tensor,
    num_posterior_samples: int = 1_000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, float, float]:
    """TARP expected coverage (Lemos et al. 2023, arXiv:2302.03026), run by sbi.

    Returns:
        ``(ecp, alpha, atc, ks_pvalue)``: expected coverage probability per credibility
        level ``alpha``, the area to curve (0 for a calibrated posterior) and the K-S p-value
        of ecp against alpha, as sbi's ``run_tarp`` and ``check_tarp`` give them.
    """
    from sbi.diagnostics import check_tarp, run_tarp

    view = _SbiView(posterior, seed, progress)
    ecp, alpha = run_tarp(
        theta, x, view, num_posterior_samples=num_posterior_samples, show_progress_bar=progress
    )
    atc, ks_pvalue = check_tarp(ecp, alpha)
    return ecp, alpha, float(atc), float(ks_pvalue)


@dataclass
class PredictiveCheck:
    """Posterior predictive check: simulations at posterior draws, against the observation.

    Attributes:
        x_o: The observation, ``x_shape``.
        simulated: Real-simulator draws at posterior samples, ``(n, *x_shape)``.
        emulated: Emulator draws at the same samples, ``(n, *x_shape)``, or ``None``.
        percentiles: Share of simulated draws below ``x_o``, per element, ``x_shape``;
            values near 0 or 1 flag elements the model does not reproduce.
        p_value: Share of simulated draws farther from the predictive mean than ``x_o``
            (Mahalanobis distance with the Ledoit–Wolf covariance of the other half of the
            draws, so that ``x_o`` and the draws compared with it are both out of sample;
            ``(1 + count) / (1 + draws)``): small means the observation is atypical of the
            fitted model.
        emulator_p_value: The same distance test of the emulated draws against the
            held-out simulated ones (a two-sample K-S test of their distances), or ``None``.
    """

    x_o: Tensor
    simulated: Tensor
    emulated: Tensor | None
    percentiles: Tensor
    p_value: float
    emulator_p_value: float | None


def _simulate(simulator: Any, theta: Tensor, seed: int) -> Tensor:
    if hasattr(simulator, "simulate"):  # the simulator protocol: simulate(theta, rng)
        return torch.as_tensor(simulator.simulate(theta, np.random.default_rng(seed)))
    return torch.as_tensor(simulator(theta))


def _split_halves(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``(n, K)`` cut into a first and a second half (at least one row each)."""
    if rows.shape[0] < 4:
        raise ValueError(f"A predictive check needs at least 4 draws, got {rows.shape[0]}.")
    half = rows.shape[0] // 2
    return rows[:half], rows[half:]


def _mahalanobis(reference: Tensor) -> Callable[[Tensor], Tensor]:
    """Squared Mahalanobis distance to ``reference`` rows ``(n, K)``, Ledoit–Wolf covariance.

    The shrunk covariance stays well conditioned when x has more elements than there are
    draws (a field, a star set): the plain sample covariance is singular there, and every
    draw it was fitted on sits at the same distance while any other point looks far away.
    """
    from sklearn.covariance import LedoitWolf

    fitted = LedoitWolf().fit(reference.numpy())
    mean = torch.as_tensor(fitted.location_, dtype=torch.float64)
    precision = torch.as_tensor(fitted.precision_, dtype=torch.float64)

    def distance(rows: Tensor) -> Tensor:
        d = rows.flatten(start_dim=1).double() - mean
        return torch.einsum("ni,ij,nj->n", d, precision, d)

    return distance


def posterior_predictive(
    samples: Tensor,
    simulator: Any | Callable[[Tensor], Tensor],
    x_o: Tensor,
    emulator: Any | None = None,
    num_draws: int = 1_000,
    seed: int = 0,
) -> PredictiveCheck:
    """Simulate at posterior draws with the real simulator (and an emulator), compare to x_o.

    Args:
        samples: Posterior samples, ``(N, D)``; ``num_draws`` of them are used.
        simulator: The simulator (an object with ``simulate(theta, rng)``) or a batched
            function ``theta -> x``.
        x_o: The observation, ``x_shape``.
        emulator: Optionally a trained ``NLE`` (its ``simulate``) to check the emulator too.
        num_draws: Posterior draws to simulate at.
        seed: Seed of the draws and simulations.

    Returns:
        The draws, per-element percentiles of x_o, and p-values.
    """
    from scipy import stats

    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(samples.shape[0], generator=gen)[:num_draws]
    theta = samples[pick]
    x_o = torch.as_tensor(x_o, dtype=torch.float32)
    simulated = _simulate(simulator, theta, seed).to(torch.float32).reshape(-1, *x_o.shape)
    emulated = None
    if emulator is not None:
        emulated = emulator.simulate(theta, seed=seed).to(torch.float32).reshape(simulated.shape)
    percentiles = (simulated < x_o).float().mean(dim=0)

    reference, held_out = _split_halves(simulated.flatten(start_dim=1).double())
    distance = _mahalanobis(reference)
    d_held_out = distance(held_out)
    # x_o and the held-out draws are alike under the model: neither entered the covariance
    exceed = int((d_held_out >= distance(x_o.reshape(1, -1).double())[0]).sum())
    p_value = (1 + exceed) / (1 + d_held_out.shape[0])
    emulator_p = None
    if emulated is not None:
        d_emulated = distance(emulated.flatten(start_dim=1).double())
        emulator_p = float(stats.ks_2samp(d_held_out, d_emulated).pvalue)
    return PredictiveCheck(x_o, simulated, emulated, percentiles, p_value, emulator_p)
