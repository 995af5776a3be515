"""The branch-free spline against nflows' reference implementation, and its own properties."""

import pytest
import torch
from nflows.transforms.splines import unconstrained_rational_quadratic_spline

from sbiflow.estimators.splines import rational_quadratic_spline


def _inputs(seed: int, shape=(300, 4), bins: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = 2.5 * torch.randn(*shape, generator=g, dtype=torch.float64)  # some beyond +-3
    params = 2.0 * torch.randn(*shape, 3 * bins - 1, generator=g, dtype=torch.float64)
    return x, params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]


@pytest.mark.parametrize("inverse", [False, True])
def test_matches_nflows(inverse):
    x, w, h, d = _inputs(0)
    ours = rational_quadratic_spline(x, w, h, d, inverse=inverse, tail_bound=3.0)
    ref = unconstrained_rational_quadratic_spline(
        x, w, h, d, inverse=inverse, tails="linear", tail_bound=3.0
    )
    assert torch.allclose(ours[0], ref[0], atol=1e-10)
    assert torch.allclose(ours[1], ref[1], atol=1e-10)


def test_negative_control_other_parameters_differ_from_nflows():
    x, w, h, d = _inputs(0)
    ours, _ = rational_quadratic_spline(x, w, h, d + 1.0, tail_bound=3.0)
    ref, _ = unconstrained_rational_quadratic_spline(x, w, h, d, tails="linear", tail_bound=3.0)
    assert not torch.allclose(ours, ref, atol=1e-6)


def test_inverse_round_trip_and_identity_tails():
    x, w, h, d = _inputs(1)
    y, logdet = rational_quadratic_spline(x, w, h, d)
    back, inv_logdet = rational_quadratic_spline(y, w, h, d, inverse=True)
    assert torch.allclose(back, x, atol=1e-9)
    assert torch.allclose(logdet, -inv_logdet, atol=1e-9)
    outside = x.abs() > 3.0
    assert outside.any()
    assert torch.equal(y[outside], x[outside]) and torch.all(logdet[outside] == 0)


def test_log_det_matches_finite_difference_and_gradients_are_finite():
    x, w, h, d = _inputs(2, shape=(200,))
    eps = 1e-6
    y_hi, _ = rational_quadratic_spline(x + eps, w, h, d)
    y_lo, _ = rational_quadratic_spline(x - eps, w, h, d)
    _, logdet = rational_quadratic_spline(x, w, h, d)
    inside = x.abs() < 3.0 - 2 * eps
    slope = (y_hi - y_lo) / (2 * eps)
    assert torch.allclose(slope.log()[inside], logdet[inside], atol=1e-6)
    w.requires_grad_(True)
    y, logdet = rational_quadratic_spline(x, w, h, d)
    (y.sum() + logdet.sum()).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
