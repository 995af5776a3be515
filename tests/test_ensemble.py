"""The ensemble estimator: the mixture's density and samples, independent members, save/load."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import sbiflow
from sbiflow.embeddings import DeepSetEmbedding
from sbiflow.estimators.ensemble import EnsembleEstimator
from sbiflow.training import TrainingConfig, train

CONTEXT_DIM = 3


def make_ensemble(dim: int = 2, seed: int = 0, num_members: int = 3, **options):
    """A small ensemble whose members differ visibly (weights jittered), in eval mode."""
    torch.manual_seed(seed)
    options = {"hidden_features": 16, "num_transforms": 2, **options}
    model = EnsembleEstimator((dim,), (CONTEXT_DIM,), num_members=num_members, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.standardize_from(1.0 + 2.0 * torch.randn(200, dim), torch.randn(200, CONTEXT_DIM))
    return model.eval()


# -- interface ------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 3])
def test_shapes(dim):
    model = make_ensemble(dim)
    a, b = torch.randn(7, dim), torch.randn(7, CONTEXT_DIM)
    assert model.log_prob(a, b).shape == (7,)
    assert model.loss(a, b).shape == (7,)
    assert model.member_log_probs(a, b).shape == (3, 7)
    assert model.sample(11, torch.randn(CONTEXT_DIM)).shape == (11, dim)
    assert model.sample(11, torch.randn(1, CONTEXT_DIM)).shape == (11, dim)
    assert model.sample_each(b).shape == (7, dim)


def test_bad_options():
    with pytest.raises(ValueError, match="num_members"):
        EnsembleEstimator((2,), (3,), num_members=0)
    with pytest.raises(ValueError, match="cannot be ensembles"):
        EnsembleEstimator((2,), (3,), member="ensemble")


def test_log_prob_is_the_equal_weight_mixture():
    model = make_ensemble(2, num_members=4)
    a, b = torch.randn(50, 2), torch.randn(50, CONTEXT_DIM)
    densities = torch.stack([m.log_prob(a, b).exp() for m in model.members])  # (K, B)
    mixture = densities.mean(dim=0).log()
    assert torch.allclose(model.log_prob(a, b), mixture, atol=1e-5)
    # one member is that member
    single = make_ensemble(2, num_members=1)
    assert torch.allclose(single.log_prob(a, b), single.members[0].log_prob(a, b))


def test_members_start_different_embeddings_included():
    torch.manual_seed(0)
    net = DeepSetEmbedding((6, 3), out_features=4, hidden_features=8)
    model = EnsembleEstimator((2,), (6, 3), embedding_net=net, num_members=3, hidden_features=8)
    assert model.embedding_net is net
    first = [p.flatten() for p in model.members[0].parameters()]
    for member in model.members[1:]:
        assert member.embedding_net is not net
        other = [p.flatten() for p in member.parameters()]
        assert len(other) == len(first)
        assert not torch.equal(torch.cat(first), torch.cat(other))


def test_each_member_gets_only_its_own_gradient():
    model = make_ensemble(2, num_members=3).train()
    a, b = torch.randn(32, 2), torch.randn(32, CONTEXT_DIM)
    model.loss(a, b).mean().backward()
    ensemble_grads = [[p.grad.clone() for p in m.parameters()] for m in model.members]
    for k, member in enumerate(model.members):
        model.zero_grad()
        (member.loss(a, b).mean() / model.num_members).backward()
        for g_ens, p in zip(ensemble_grads[k], member.parameters(), strict=True):
            assert p.grad is not None and p.grad.any()
            assert torch.allclose(g_ens, p.grad, atol=1e-6)


# -- the mixture's density and samples agree --------------------------------------------------
def _cdf_on_grid(model, b, grid):
    """Numerical CDF of a 1-D model given b, by the trapezoid rule on ``grid``."""
    with torch.no_grad():
        density = model.log_prob(grid[:, None], b.expand(len(grid), -1)).exp()
    steps = 0.5 * (density[1:] + density[:-1]) * grid.diff()
    return torch.cat([torch.zeros(1), steps.cumsum(0)])


@torch.no_grad()
def test_density_integrates_to_one_and_samples_follow_it():
    model = make_ensemble(1, num_members=3)
    b = torch.randn(1, CONTEXT_DIM)
    grid = torch.linspace(-30.0, 30.0, 60_001)
    cdf = _cdf_on_grid(model, b, grid)
    assert abs(float(cdf[-1]) - 1.0) < 2e-3
    torch.manual_seed(1)
    samples = model.sample(4000, b[0]).flatten()

    def model_cdf(v):
        return np.interp(v, grid.numpy(), cdf.numpy())

    assert stats.kstest(samples.numpy(), model_cdf).pvalue > 0.01
    each = torch.cat([model.sample_each(b.expand(1000, -1)) for _ in range(4)]).flatten()
    assert stats.kstest(each.numpy(), model_cdf).pvalue > 0.01
    # negative control: one member's samples are not the mixture's
    lone = model.members[0].sample(4000, b[0]).flatten()
    assert stats.kstest(lone.numpy(), model_cdf).pvalue < 1e-4


def test_a_temperature_widens_every_member_and_keeps_the_mixture_normalized():
    model = make_ensemble(1, num_members=3)
    b = torch.randn(1, CONTEXT_DIM)
    grid = torch.linspace(-30.0, 30.0, 60_001)
    torch.manual_seed(2)
    with torch.no_grad():
        plain = model.sample(4000, b[0]).flatten()
    model.set_temperature(1.5)
    assert model.temperature == 1.5 and model.config()["temperature"] == 1.5
    cdf = _cdf_on_grid(model, b, grid)
    assert abs(float(cdf[-1]) - 1.0) < 2e-3  # still a density
    # the vectorized mixture is the mixture of the tempered members
    a, bb = torch.randn(50, 1), torch.randn(50, CONTEXT_DIM)
    members = torch.stack([m.log_prob(a, bb) for m in model.members])
    mixture = torch.logsumexp(members, dim=0) - math.log(3)
    assert torch.allclose(model.log_prob(a, bb), mixture, atol=1e-5)
    torch.manual_seed(2)
    with torch.no_grad():
        wide = model.sample(4000, b[0]).flatten()

    def model_cdf(v):
        return np.interp(v, grid.numpy(), cdf.numpy())

    assert stats.kstest(wide.numpy(), model_cdf).pvalue > 0.01  # samples follow the density
    assert float(wide.std() / plain.std()) > 1.2  # wider, not only shifted
    model.set_temperature(1.0)
    assert "temperature" not in model.config()
    with pytest.raises(ValueError, match=">= 1"):
        model.set_temperature(0.9)
    cvae = EnsembleEstimator((2,), (CONTEXT_DIM,), num_members=2, member="cvae")
    with pytest.raises(TypeError, match="'cvae' have no temperature"):
        cvae.set_temperature(1.2)


# -- save / load ------------------------------------------------------------------------------
def test_rebuilt_from_config_and_state_dict():
    model = make_ensemble(2, num_members=3)
    config = model.config()
    assert config["kind"] == "ensemble" and config["num_members"] == 3
    config.pop("kind")
    a_shape, b_shape = tuple(config.pop("a_shape")), tuple(config.pop("b_shape"))
    rebuilt = EnsembleEstimator(a_shape, b_shape, **config)
    rebuilt.load_state_dict(model.state_dict())
    a, b = torch.randn(20, 2), torch.randn(20, CONTEXT_DIM)
    assert torch.equal(rebuilt.eval().log_prob(a, b), model.log_prob(a, b))
    # a tempered ensemble is rebuilt tempered
    model.set_temperature(1.2)
    config = model.config()
    config.pop("kind"), config.pop("a_shape"), config.pop("b_shape")
    rebuilt = EnsembleEstimator(a_shape, b_shape, **config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.temperature == 1.2
    assert torch.equal(rebuilt.eval().log_prob(a, b), model.log_prob(a, b))


def test_npe_round_trip_with_a_set_embedding(tmp_path):
    torch.manual_seed(0)
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((300,))
    x = torch.zeros(300, 5, 3)
    x[:, :, :2] = theta[:, None, :] + 0.1 * torch.randn(300, 5, 2)
    x[:, :, 2] = 1.0
    x[:150, 3:] = 0.0  # smaller sets, padded
    npe = sbiflow.NPE(prior, estimator="ensemble", num_members=2, hidden_features=8)
    npe.fit(theta, x, max_epochs=2, progress=False)
    assert isinstance(npe.estimator, EnsembleEstimator)
    path = tmp_path / "ensemble.pt"
    sbiflow.save(npe, path)
    loaded = sbiflow.load(path, prior=prior)
    assert isinstance(loaded.estimator.members[1].embedding_net, DeepSetEmbedding)
    logp = npe.log_prob(theta[:10], x=x[0], normalize=False)
    assert torch.equal(loaded.log_prob(theta[:10], x=x[0], normalize=False), logp)


# -- it learns --------------------------------------------------------------------------------
def test_learns_a_conditional_gaussian():
    """a | b ~ N(b, 0.5² I): the trained mixture's mean and std at b = (1, 1) are right."""
    torch.manual_seed(0)
    b = torch.randn(2000, 2)
    a = b + 0.5 * torch.randn(2000, 2)
    model = EnsembleEstimator((2,), (2,), num_members=2, hidden_features=16, num_transforms=2)
    model.standardize_from(a, b)
    condition = torch.ones(2)

    def error() -> float:
        with torch.no_grad():
            samples = model.eval().sample(20_000, condition)  # (20_000, 2)
        return float(torch.cat([samples.mean(0) - 1.0, samples.std(0) - 0.5]).abs().max())

    untrained = error()
    history = train(model, a, b, TrainingConfig(max_epochs=30, progress=False, seed=0))
    # the best validation loss is near the true conditional entropy, 2 (0.5 log(2 pi 0.25) + 0.5)
    assert min(history.val_loss) < 2 * (0.5 * math.log(2 * math.pi * 0.25) + 0.5) + 0.15
    assert error() < 0.1
    assert untrained > 0.1  # negative control: the same check fails before training
