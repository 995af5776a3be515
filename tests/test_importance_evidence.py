"""The evidence by importance sampling: closed-form targets, a negative control, bad inputs."""

import math
import warnings

import numpy as np
import pytest
import torch

from sbiflow.comparison import ModelComparison, nested_regressions
from sbiflow.priors import BoxUniform
from sbiflow.samplers import importance_evidence, nested

# A correlated Gaussian likelihood well inside a box prior: Z = N-normalization / volume.
COVARIANCE = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
BOX = BoxUniform(-6 * torch.ones(2), 6 * torch.ones(2))
EXACT_LOG_Z = 0.5 * math.log(float(torch.det(2 * math.pi * COVARIANCE))) - math.log(144.0)


def gaussian_log_likelihood(theta: torch.Tensor) -> torch.Tensor:
    return -0.5 * (theta @ torch.linalg.inv(COVARIANCE) * theta).sum(-1)


def posterior_draws(n: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(COVARIANCE)
    return torch.randn(n, 2, generator=generator) @ chol.T + shift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_z_of_a_correlated_gaussian_within_its_error(seed):
    res = importance_evidence(gaussian_log_likelihood, BOX, posterior_draws(1000), seed=seed)
    assert res.num_samples == 20_000
    assert res.effective_samples > 0.5 * res.num_samples  # a good proposal
    assert 0 < res.log_evidence_err < 0.01
    assert abs(res.log_evidence - EXACT_LOG_Z) < 4 * res.log_evidence_err


def test_errors_are_calibrated_over_seeds():
    # 30 small runs: the spread of the estimates matches the reported error (within 30%).
    runs = [
        importance_evidence(
            gaussian_log_likelihood, BOX, posterior_draws(1000), num_samples=2000, seed=s
        )
        for s in range(30)
    ]
    estimates = np.array([r.log_evidence for r in runs])
    reported = np.mean([r.log_evidence_err for r in runs])
    assert 0.7 < estimates.std(ddof=1) / reported < 1.3
    assert abs(estimates.mean() - EXACT_LOG_Z) < 4 * reported / math.sqrt(len(runs))


def test_refines_nested_sampling_on_a_linear_gaussian_model():
    # Nested regression with a Gaussian prior (unbounded support) and a closed-form evidence:
    # dynesty at 100 live points is ~0.1-0.2 nats off; the refinement ~0.003.
    model = nested_regressions(10, [3])["poly_3"]
    x = model.simulate(model.prior.sample((1,)), np.random.default_rng(1))[0]
    exact = float(model.log_evidence(x))
    likelihood = lambda theta: model.log_likelihood(theta, x)  # noqa: E731
    rough = nested(likelihood, model.prior, nlive=100, progress=False, seed=0)
    refined = importance_evidence(likelihood, model.prior, rough.samples, seed=0)
    assert refined.log_evidence_err < 0.1 * rough.log_evidence_err
    assert abs(refined.log_evidence - exact) < 4 * refined.log_evidence_err


def test_negative_control_a_proposal_that_misses_the_posterior_is_flagged():
    # Samples of another posterior, 3 units away, and little prior in the mixture: the
    # weights collapse onto a handful of prior draws and the result says so.
    narrow = lambda theta: -0.5 * (theta**2).sum(-1) / 0.05**2  # noqa: E731
    wrong = 0.05 * posterior_draws(2000) + 3.0
    with pytest.warns(UserWarning, match="misses the posterior"):
        res = importance_evidence(narrow, BOX, wrong, num_samples=4000, defensive=0.05)
    assert res.effective_samples < 100
    # and the same call with the right samples is fine and silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = 0.05 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
        good = importance_evidence(narrow, BOX, right, num_samples=4000)
    exact = math.log(2 * math.pi * 0.05**2 / 144.0)
    assert abs(good.log_evidence - exact) < 4 * good.log_evidence_err


def test_zero_likelihood_everywhere_gives_minus_infinity_with_a_warning():
    nowhere = lambda theta: torch.full((len(theta),), -math.inf)  # noqa: E731
    with pytest.warns(UserWarning, match="zero likelihood"):
        res = importance_evidence(nowhere, BOX, posterior_draws(100), num_samples=100)
    assert res.log_evidence == -math.inf and res.effective_samples == 0


@pytest.mark.parametrize(
    ("samples", "options", "match"),
    [
        (torch.zeros(100, 3), {}, r"must be \(N, 2\)"),
        (torch.full((100, 2), math.nan), {}, "NaN or inf"),
        (torch.zeros(3, 2), {}, "too few"),
        (torch.ones(100, 2), {}, "vary in every parameter"),
        (posterior_draws(100), {"defensive": 0.0}, r"defensive must lie in \(0, 1\]"),
        (posterior_draws(100), {"num_samples": 1}, "at least 2"),
    ],
)
def test_bad_inputs_say_what_is_wrong(samples, options, match):
    with pytest.raises(ValueError, match=match):
        importance_evidence(gaussian_log_likelihood, BOX, samples, **options)


def test_crosscheck_refines_the_exact_evidences():
    models = nested_regressions(6, [2, 3])
    mc = ModelComparison(models).fit(500, max_epochs=2, progress=False)
    x_o = models["poly_3"].simulate(models["poly_3"].prior.sample((1,)), np.random.default_rng(2))[
        0
    ]
    check = mc.evidence_crosscheck(
        x_o, emulator=False, nested_options={"nlive": 100}, importance_samples=5000
    )
    for name, model in models.items():
        refined = check.evidences["exact"][name]
        assert 0 < refined.err < 0.02  # dynesty alone at 100 live points: ~0.15-0.25
        assert abs(refined.log_z - float(model.log_evidence(x_o))) < 4 * refined.err
