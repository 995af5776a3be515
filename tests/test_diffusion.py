"""Diffusion posterior: exactness on linear-Gaussian problems, negative controls, errors, I/O."""

from __future__ import annotations

import math

import pytest
import torch

import sbiflow
from sbiflow.diffusion import (
    DiffusionPosterior,
    EigenCovariance,
    FourierCovariance,
    GaussianScorePrior,
    LinearGaussianLikelihood,
    LogLikelihood,
    ScorePrior,
    as_operator,
    gaussian_posterior,
    wiener_filter,
)
from sbiflow.diffusion.networks import UNet
from sbiflow.diffusion.solve import conjugate_gradient

D, M, NOISE = 16, 12, 0.1


def _smooth_cov(d: int, length: float = 2.0) -> torch.Tensor:
    x = torch.arange(d, dtype=torch.float64)
    return torch.exp(-0.5 * (x[:, None] - x[None]) ** 2 / length**2) + 1e-3 * torch.eye(d)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    cov = _smooth_cov(D)
    a = torch.randn(M, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    z0 = torch.linalg.cholesky(cov) @ torch.randn(D, generator=g, dtype=torch.float64)
    y = a @ z0 + NOISE * torch.randn(M, generator=g, dtype=torch.float64)
    mean, post_cov = gaussian_posterior(y, a, NOISE, cov)
    return {"cov": cov, "A": a, "y": y, "z0": z0, "mean": mean, "std": post_cov.diagonal().sqrt()}


def _errors(samples, problem):
    mean_err = ((samples.mean(0) - problem["mean"]) / problem["std"]).pow(2).mean().sqrt()
    ratio = samples.std(0) / problem["std"]
    return float(mean_err), ratio


def _sample(prior, problem, n=3000, A=None, noise=NOISE, **options):  # noqa: N803
    lik = LinearGaussianLikelihood(problem["A"] if A is None else A, noise)
    post = DiffusionPosterior(prior, lik, progress=False, cg_iterations=64, cg_tol=1e-8, **options)
    return post.sample(n, y=problem["y"], seed=1).double()


def test_mmps_with_a_gaussian_prior_is_the_exact_posterior(problem):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    mean_err, ratio = _errors(_sample(prior, problem), problem)
    # 3,000 draws: Monte Carlo errors of 0.018 (mean, in posterior stds) and 1.3% (std).
    assert mean_err < 0.05
    assert ratio.min() > 0.94 and ratio.max() < 1.06


def test_a_torch_multivariate_normal_prior_is_accepted_as_exact(problem):
    mvn = torch.distributions.MultivariateNormal(torch.zeros(D), problem["cov"].float())
    mean_err, ratio = _errors(_sample(mvn, problem), problem)
    assert mean_err < 0.05 and 0.94 < ratio.min() and ratio.max() < 1.06


@pytest.mark.parametrize("wrong", ["noise", "operator"])
def test_negative_controls_a_wrong_noise_or_operator_fails_the_same_checks(problem, wrong):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    if wrong == "noise":
        samples = _sample(prior, problem, noise=3 * NOISE)
    else:
        g = torch.Generator().manual_seed(5)
        other = problem["A"] + 0.3 * torch.randn(M, D, generator=g, dtype=torch.float64) / 4
        samples = _sample(prior, problem, A=other)
    mean_err, ratio = _errors(samples, problem)
    assert mean_err > 0.2 or ratio.max() > 1.15


def test_sparse_matrix_and_function_operators_give_the_same_samples(problem):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    dense = _sample(prior, problem, n=200)
    sparse = _sample(prior, problem, n=200, A=problem["A"].to_sparse())
    a = problem["A"]
    function = as_operator(lambda z: z @ a.T.to(z), in_features=D, out_features=M)  # adjoint: VJP
    by_function = _sample(prior, problem, n=200, A=function)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(by_function, dense, rtol=1e-6, atol=1e-6)


def test_noise_as_a_vector_or_a_covariance_matches_the_scalar(problem):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    scalar = _sample(prior, problem, n=100)
    vector = _sample(prior, problem, n=100, noise=torch.full((M,), NOISE))
    matrix = _sample(prior, problem, n=100, noise=NOISE**2 * torch.eye(M))
    torch.testing.assert_close(vector, scalar)
    torch.testing.assert_close(matrix, scalar, rtol=1e-6, atol=1e-6)


def test_convolved_guidance_errs_on_the_wide_side_and_dps_runs(problem):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    _, ratio = _errors(_sample(prior, problem, n=1000, guidance="convolved"), problem)
    assert ratio.median() > 1.0
    dps = _sample(prior, problem, n=200, guidance="dps")
    assert torch.isfinite(dps).all()


def test_a_gaussian_log_likelihood_function_gives_the_exact_posterior_by_laplace_mmps(problem):
    a, noise2 = problem["A"], NOISE**2

    def log_lik(z, y):
        return -0.5 * ((y.to(z) - z @ a.T.to(z)) ** 2).sum(-1) / noise2

    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    post = DiffusionPosterior(prior, LogLikelihood(log_lik), progress=False)
    samples = post.sample(2000, y=problem["y"], seed=0).double()
    mean_err, ratio = _errors(samples, problem)
    assert mean_err < 0.06 and 0.93 < ratio.min() and ratio.max() < 1.07


def test_wiener_filter_is_the_posterior_mean(problem):
    wf = wiener_filter(problem["y"], problem["A"], NOISE, problem["cov"])
    torch.testing.assert_close(wf, problem["mean"])
    # Information form: (Σ⁻¹ + AᵀA/σ²)⁻¹ Aᵀy/σ²
    a, cov = problem["A"], problem["cov"]
    precision = torch.linalg.inv(cov) + a.T @ a / NOISE**2
    torch.testing.assert_close(wf, torch.linalg.solve(precision, a.T @ problem["y"] / NOISE**2))


def test_conjugate_gradient_solves_each_row():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, 8, generator=g, dtype=torch.float64)
    q = torch.randn(8, 8, generator=g, dtype=torch.float64)
    k = q @ q.T + 0.5 * torch.eye(8, dtype=torch.float64)
    v = conjugate_gradient(lambda p: p @ k, b, iterations=50, tol=1e-12)
    torch.testing.assert_close(v, torch.linalg.solve(k, b.T).T)


def test_preconditioned_conjugate_gradient_solves_each_row_in_fewer_iterations():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, 8, generator=g, dtype=torch.float64)
    scales = torch.logspace(-3, 1, 8, dtype=torch.float64)  # condition number 1e4
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    k = q @ torch.diag(scales) @ q.T
    exact = torch.linalg.solve(k, b.T).T
    # P K has two distinct eigenvalues (1 and 1/2): preconditioned CG is exact in two steps.
    near = scales.clone()
    near[0] *= 2.0
    near_inverse = q @ torch.diag(1.0 / near) @ q.T
    v = conjugate_gradient(
        lambda p: p @ k, b, iterations=2, precondition=lambda r: r @ near_inverse
    )
    torch.testing.assert_close(v, exact, rtol=1e-6, atol=1e-6)
    plain = conjugate_gradient(lambda p: p @ k, b, iterations=2)
    assert (plain - exact).norm() > 0.1 * exact.norm()  # unpreconditioned: far off


@pytest.mark.parametrize("precondition", [None, False])
def test_one_preconditioned_iteration_solves_a_gaussian_prior_exactly(problem, precondition):
    """The baseline preconditioner is the system itself for a Gaussian prior: one CG step.

    Negative control: without it one CG iteration (a steepest-descent step) is far off.
    """
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    lik = LinearGaussianLikelihood(problem["A"], 0.01)  # informative data: ill-conditioned
    post = DiffusionPosterior(
        prior, lik, cg_iterations=1, precondition=precondition, progress=False
    )
    samples = post.sample(2000, y=problem["y"], seed=1).double()
    mean, cov = gaussian_posterior(problem["y"], problem["A"], 0.01, problem["cov"])
    mean_err, ratio = _errors(samples, {"mean": mean, "std": cov.diagonal().sqrt()})
    exact = mean_err < 0.06 and 0.93 < ratio.min() and ratio.max() < 1.07
    assert exact if precondition is None else not exact


def test_fourier_covariance_equals_the_dense_circulant_matrix():
    h, w = 6, 8
    g = torch.Generator().manual_seed(0)
    fields = torch.randn(4000, h, w, generator=g, dtype=torch.float64)
    fields = fields + 0.5 * fields.roll(1, dims=1) + 0.3 * fields.roll(1, dims=2)  # stationary
    centred = (fields - fields.mean()).reshape(4000, -1)
    from sbiflow.diffusion.covariance import fit_covariance

    fourier = fit_covariance("fourier", centred, (h, w))
    assert isinstance(fourier, FourierCovariance)
    dense = fourier.matmul(torch.eye(h * w, dtype=torch.float64))
    torch.testing.assert_close(dense, dense.T)
    # Its first column is the circular autocovariance averaged over positions.
    maps = fields - fields.mean()
    column = dense[:, 0].reshape(h, w)
    for dy in range(h):
        for dx in range(w):
            value = (maps * maps.roll((dy, dx), dims=(1, 2))).mean() * 4000 / 3999
            assert abs(float(column[dy, dx]) - float(value)) < 1e-6


def test_unet_is_translation_equivariant_with_periodic_padding():
    torch.manual_seed(0)
    net = UNet((8, 16), periodic=True)
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 16, 16)
    out = net(x, torch.tensor(0.3))
    shifted = net(x.roll((4, 8), dims=(1, 2)), torch.tensor(0.3))
    torch.testing.assert_close(shifted, out.roll((4, 8), dims=(1, 2)), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def learned(problem):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    draws = (
        torch.linalg.cholesky(problem["cov"])
        @ torch.randn(D, 20000, generator=g, dtype=torch.float64)
    ).T
    return ScorePrior((D,), hidden_features=64).fit(draws.float(), max_epochs=15, progress=False)


def test_a_learned_prior_is_within_twice_the_exact_tolerances(problem, learned):
    lik = LinearGaussianLikelihood(problem["A"], NOISE)
    post = DiffusionPosterior(learned, lik, progress=False, cg_iterations=16)
    mean_err, ratio = _errors(post.sample(2000, y=problem["y"], seed=0).double(), problem)
    assert mean_err < 0.2 and 0.8 < ratio.min() and ratio.max() < 1.2


def test_score_prior_save_load_round_trip(tmp_path, learned):
    path = tmp_path / "prior.pt"
    learned.save(path)
    loaded = ScorePrior.load(path)
    u = torch.randn(7, D)
    torch.testing.assert_close(
        loaded.denoise(u, torch.tensor(0.2)), learned.denoise(u, torch.tensor(0.2))
    )
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(sbiflow.ModelFileError, match="not a readable sbiflow model"):
        ScorePrior.load(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(sbiflow.ModelFileError, match="not an sbiflow model"):
        ScorePrior.load(tmp_path / "foreign.pt")
    via_package = sbiflow.load(path)
    assert isinstance(via_package, ScorePrior) and via_package.z_shape == (D,)
    with pytest.raises(FileNotFoundError):
        ScorePrior.load(tmp_path / "missing.pt")


def test_score_prior_on_maps_picks_a_unet_and_a_fourier_baseline():
    prior = ScorePrior((8, 8), periodic=True, channels=(8, 16))
    assert isinstance(prior.net, UNet)
    assert prior.options["covariance"] == "fourier"
    assert ScorePrior((8, 8)).options["covariance"] == "full"
    fields = torch.randn(300, 8, 8)
    prior.fit(fields, max_epochs=1, progress=False)
    assert prior.sample(3, steps=3, seed=0).shape == (3, 8, 8)


def test_clear_errors_for_bad_inputs(problem):
    prior = GaussianScorePrior(torch.zeros(D), problem["cov"])
    lik = LinearGaussianLikelihood(problem["A"], NOISE)
    post = DiffusionPosterior(prior, lik, progress=False, steps=2)
    with pytest.raises(ValueError, match="produces 12"):
        post.sample(2, y=torch.zeros(5))
    with pytest.raises(ValueError, match="NaN or inf"):
        post.sample(2, y=torch.full((M,), math.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        LinearGaussianLikelihood(torch.full((M, D), math.inf), NOISE)
    with pytest.raises(ValueError, match=r"\(M, D\) matrix"):
        LinearGaussianLikelihood(torch.zeros(M, D, 2), NOISE)
    with pytest.raises(ValueError, match="positive"):
        LinearGaussianLikelihood(problem["A"], -1.0)
    with pytest.raises(ValueError, match="scalar std"):
        LinearGaussianLikelihood(problem["A"], torch.ones(3))
    with pytest.raises(ValueError, match="positive definite"):
        LinearGaussianLikelihood(problem["A"], -torch.eye(M))
    with pytest.raises(ValueError, match="needs its sizes"):
        LinearGaussianLikelihood(lambda z: z, NOISE)
    wrong_dim = LinearGaussianLikelihood(torch.zeros(M, D + 1), NOISE)
    with pytest.raises(ValueError, match="acts on 17 numbers"):
        DiffusionPosterior(prior, wrong_dim, progress=False).sample(2, y=torch.zeros(M))
    with pytest.raises(ValueError, match="Unknown guidance"):
        DiffusionPosterior(prior, lik, guidance="magic")
    with pytest.raises(ValueError, match="needs a LinearGaussianLikelihood"):
        DiffusionPosterior(prior, lambda z, y: z.sum(-1), guidance="convolved").sample(
            2, y=torch.zeros(1)
        )
    big = GaussianScorePrior(torch.zeros(100), torch.eye(100))
    with pytest.raises(ValueError, match="guidance='dps'"):
        DiffusionPosterior(big, lambda z, y: z.sum(-1)).sample(2, y=torch.zeros(1))
    with pytest.raises(RuntimeError, match="not fitted"):
        DiffusionPosterior(ScorePrior((4,)), lik)
    with pytest.raises(ValueError, match="NaN/inf"):
        ScorePrior((4,)).fit(torch.full((100, 4), math.nan))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        ScorePrior((4,)).fit(torch.zeros(100, 5))
    with pytest.raises(TypeError, match="MultivariateNormal"):
        DiffusionPosterior(torch.distributions.Uniform(0, 1), lik)
    with pytest.raises(ValueError, match="precondition=True needs a LinearGaussianLikelihood"):
        DiffusionPosterior(prior, lambda z, y: z.sum(-1), precondition=True).sample(
            2, y=torch.zeros(1)
        )


def test_top_level_names_are_the_module_classes():
    assert sbiflow.ScorePrior is ScorePrior
    assert sbiflow.DiffusionPosterior is DiffusionPosterior
    assert isinstance(GaussianScorePrior(torch.zeros(3), torch.eye(3)).covariance, EigenCovariance)
