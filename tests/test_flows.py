"""Property tests over every flow estimator: a new flow joins FLOWS and gets every check."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from sbiflow.estimators import FlowEstimator
from sbiflow.estimators.flows import FLOW_KINDS

#: Every flow, every flow behind the context-dependent affine layer, and every flow with the
#: least-squares linear start of that layer (NLE's default for the MAF).
VARIANTS = (
    *FLOW_KINDS,
    *(f"{kind}+{extra}" for kind in FLOW_KINDS for extra in ("affine", "linear")),
)
FLOWS = [(kind, dim) for kind in VARIANTS for dim in (1, 3)]
CONTEXT_DIM = 4


def build(variant: str, dim: int, **options) -> FlowEstimator:
    kind, _, extra = variant.partition("+")
    return FlowEstimator(
        kind,
        (dim,),
        (CONTEXT_DIM,),
        conditional_affine=bool(extra),
        linear_start=extra == "linear",
        **options,
    )


def make_flow(kind: str, dim: int, seed: int = 0) -> FlowEstimator:
    torch.manual_seed(seed)
    flow = build(kind, dim, hidden_features=16, num_transforms=3)
    # Leave the near-identity initialization, so the checks see a non-trivial map, and give
    # the standardization non-trivial values.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.standardize_from(2.0 + 3.0 * torch.randn(100, dim), torch.randn(100, CONTEXT_DIM))
    return flow.eval()


def make_flow64(kind: str, dim: int) -> FlowEstimator:
    """The same flow in float64, so exactness checks are not limited by float32 rounding."""
    return make_flow(kind, dim).double()


def transform_fn(flow: FlowEstimator, context: torch.Tensor):
    embedded = flow.flow._embedding_net(context)
    return lambda z: flow.flow._transform(z, context=embedded)


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_inverse_of_forward_is_identity(kind, dim):
    flow = make_flow64(kind, dim)
    a = torch.randn(64, dim, dtype=torch.float64)
    context = torch.randn(64, CONTEXT_DIM, dtype=torch.float64)
    forward = transform_fn(flow, context)
    embedded = flow.flow._embedding_net(context)
    z, _ = forward(a)
    back, _ = flow.flow._transform.inverse(z, context=embedded)
    assert torch.allclose(back, a, atol=1e-9)


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_log_det_matches_autograd_jacobian(kind, dim):
    flow = make_flow64(kind, dim)
    a = torch.randn(5, dim, dtype=torch.float64)
    context = torch.randn(5, CONTEXT_DIM, dtype=torch.float64)
    _, logdet = transform_fn(flow, context)(a)
    for i in range(5):
        one = transform_fn(flow, context[i : i + 1])
        jac = jacobian(lambda v, f=one: f(v.unsqueeze(0))[0][0], a[i])  # (dim, dim)
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, logdet[i], atol=1e-9)


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_shapes_batched_and_single_condition(kind, dim):
    flow = make_flow(kind, dim)
    assert flow.log_prob(torch.randn(7, dim), torch.randn(7, CONTEXT_DIM)).shape == (7,)
    assert flow.sample(11, torch.randn(CONTEXT_DIM)).shape == (11, dim)
    assert flow.sample(11, torch.randn(1, CONTEXT_DIM)).shape == (11, dim)
    samples, logq = flow.sample_and_log_prob(6, torch.randn(CONTEXT_DIM))
    assert samples.shape == (6, dim) and logq.shape == (6,)


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_sample_and_log_prob_agree_with_log_prob(kind, dim):
    flow = make_flow(kind, dim)
    context = torch.randn(CONTEXT_DIM)
    with torch.no_grad():
        samples, logq = flow.sample_and_log_prob(20, context)
        direct = flow.log_prob(samples, context.expand(20, CONTEXT_DIM))
    assert torch.allclose(logq, direct, atol=1e-3)


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_every_parameter_gets_a_gradient(kind, dim):
    flow = make_flow(kind, dim)
    flow.loss(torch.randn(32, dim), torch.randn(32, CONTEXT_DIM)).mean().backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("kind,dim", FLOWS)
def test_state_dict_round_trip(kind, dim):
    flow = make_flow(kind, dim)
    clone = FlowEstimator(**{**flow.config(), "a_shape": (dim,), "b_shape": (CONTEXT_DIM,)})
    clone.load_state_dict(flow.state_dict())
    a, b = torch.randn(9, dim), torch.randn(9, CONTEXT_DIM)
    assert torch.equal(flow.log_prob(a, b), clone.eval().log_prob(a, b))


@pytest.mark.parametrize("kind", VARIANTS)
def test_density_integrates_to_one_in_1d(kind):
    flow = make_flow(kind, 1)
    context = torch.randn(CONTEXT_DIM)
    grid = torch.linspace(-60, 60, 40_001).unsqueeze(1)
    with torch.no_grad():
        density = flow.log_prob(grid, context.expand(grid.shape[0], CONTEXT_DIM)).exp()
    integral = torch.trapezoid(density, grid[:, 0])
    assert math.isclose(float(integral), 1.0, abs_tol=0.01)


@pytest.mark.parametrize("kind", VARIANTS)
def test_density_integrates_to_one_in_2d(kind):
    torch.manual_seed(1)
    flow = build(kind, 2, hidden_features=16, num_transforms=2)
    flow.standardize_from(torch.randn(100, 2), torch.randn(100, CONTEXT_DIM))
    axis = torch.linspace(-12, 12, 601)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = flow.eval().log_prob(grid, torch.zeros(grid.shape[0], CONTEXT_DIM)).exp()
    cell = float(axis[1] - axis[0]) ** 2
    assert math.isclose(float(density.sum()) * cell, 1.0, abs_tol=0.02)


def test_unknown_flow_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="Unknown flow"):
        FlowEstimator("glow", (2,), (3,))
    with pytest.raises(ValueError, match="a_shape must be"):
        FlowEstimator("nsf", (2, 2), (3,))


def test_affine_layer_starts_as_the_identity():
    torch.manual_seed(0)
    plain = FlowEstimator("maf", (3,), (CONTEXT_DIM,), hidden_features=16)
    torch.manual_seed(0)
    affine = FlowEstimator("maf", (3,), (CONTEXT_DIM,), hidden_features=16, conditional_affine=True)
    affine.flow._transform._transforms[1:].load_state_dict(
        plain.flow._transform._transforms.state_dict()
    )
    a, b = torch.randn(9, 3), torch.randn(9, CONTEXT_DIM)
    with torch.no_grad():
        assert torch.allclose(affine.log_prob(a, b), plain.log_prob(a, b), atol=1e-6)


def linear_gaussian_data(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """a = b W + c + noise with a different noise scale per feature."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, CONTEXT_DIM, generator=gen)
    weight = torch.randn(CONTEXT_DIM, dim, generator=gen)
    noise = torch.linspace(0.2, 1.0, dim) * torch.randn(n, dim, generator=gen)
    return b @ weight + 1.5 + noise, b


@pytest.mark.parametrize("dim", [1, 3])
def test_linear_start_is_the_least_squares_gaussian(dim):
    a, b = linear_gaussian_data(2_000, dim)
    design = torch.cat([b, torch.ones(len(b), 1)], dim=1).double()  # (N, C + 1)
    coef = torch.linalg.lstsq(design, a.double()).solution  # (C + 1, D)
    residual_std = (a.double() - design @ coef).std(dim=0)  # (D,)
    expected = torch.distributions.Normal(design @ coef, residual_std).log_prob(a.double()).sum(-1)
    for linear_start, should_match in ((True, True), (False, False)):  # False: negative control
        torch.manual_seed(0)
        flow = FlowEstimator(
            "maf", (dim,), (CONTEXT_DIM,), conditional_affine=True, linear_start=linear_start
        )
        flow.standardize_from(a, b)
        with torch.no_grad():
            error = (flow.log_prob(a, b).double() - expected).abs().max()
        assert (error < 1e-3) == should_match, float(error)


def test_linear_start_needs_the_affine_layer_and_stays_out_of_old_configs():
    with pytest.raises(ValueError, match="linear_start=True needs conditional_affine"):
        FlowEstimator("maf", (2,), (3,), linear_start=True)
    assert "linear_start" not in FlowEstimator("maf", (2,), (3,), conditional_affine=True).config()
