"""Embedding nets: shapes, invariances, the automatic choice, set standardization, files."""

import pytest
import torch

import sbiflow
from sbiflow.embeddings import (
    CNNEmbedding,
    DeepSetEmbedding,
    MLPEmbedding,
    PowerSpectrumEmbedding,
    build_embedding,
    default_embedding,
    is_masked_set,
)
from sbiflow.estimators.base import Standardizer

N_MAX = 12


def padded_sets(theta: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Sets of 3..N_MAX points around θ (2 features), padded, mask in the last column."""
    g = torch.Generator().manual_seed(seed)
    b = theta.shape[0]
    sizes = torch.randint(3, N_MAX + 1, (b,), generator=g)
    points = theta[:, None, :] + 0.3 * torch.randn(b, N_MAX, 2, generator=g)
    mask = (torch.arange(N_MAX)[None, :] < sizes[:, None]).float()  # (B, N_MAX)
    return torch.cat([points * mask[..., None], mask[..., None]], dim=-1)


def test_deepset_is_permutation_invariant_and_ignores_padding():
    torch.manual_seed(0)
    net = DeepSetEmbedding((N_MAX, 3), out_features=4)
    x = padded_sets(torch.zeros(5, 2))
    perm = torch.randperm(N_MAX)
    assert torch.allclose(net(x), net(x[:, perm]), atol=1e-6)
    garbage = x.clone()
    garbage[..., :2] += 100.0 * (1 - x[..., 2:])  # change padding rows only
    assert torch.allclose(net(x), net(garbage), atol=1e-6)
    # negative control: changing a present element changes the embedding
    moved = x.clone()
    moved[:, 0, 0] += 1.0
    assert not torch.allclose(net(x), net(moved), atol=1e-4)


def test_deepset_pools_the_mean_of_phi_over_each_set():
    torch.manual_seed(1)
    net = DeepSetEmbedding((N_MAX, 3), out_features=4)
    x = padded_sets(torch.randn(6, 2), seed=2)
    x[1] = x[1, torch.randperm(N_MAX)]  # padding rows anywhere in the set
    x[2] = 0.0  # an empty set
    expected = []
    for one in x:
        present = one[one[:, -1] == 1][:, :-1]
        pooled = net.phi(present).mean(dim=0) if len(present) else torch.zeros(64)
        count = torch.tensor([float(len(present))])
        expected.append(net.rho(torch.cat([pooled, torch.log1p(count)])))
    torch.testing.assert_close(net(x), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_power_spectrum_embedding_measures_the_power_in_shells():
    net = PowerSpectrumEmbedding((32, 32), out_features=3)
    assert net.num_shells == 23  # |k| rounded: 1 .. round(16 sqrt 2)
    g = torch.Generator().manual_seed(0)
    white = torch.randn(400, 32, 32, generator=g)
    power = net.power(white)  # white noise: unit power in every shell
    assert power.shape == (400, 1, 23)
    error = power.std(dim=0) / 400**0.5  # few modes in the outer shells: larger errors
    assert ((power.mean(dim=0) - 1.0).abs() < 4.0 * error).all()
    assert float(error.max()) < 0.1  # the check has teeth
    # a plane wave of wave number (3, 4): all of its power in the shell |k| = 5
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    wave = torch.cos(2 * torch.pi * (3 * i + 4 * j) / 32)[None]
    shells = net.power(wave)[0, 0]
    assert int(shells.argmax()) == 4 and float(shells.sum() - shells[4]) < 1e-6
    # a periodic shift leaves the output unchanged; a rescaled field does not
    torch.testing.assert_close(net(torch.roll(white[:3], (5, 7), (1, 2))), net(white[:3]))
    assert not torch.allclose(net(2.0 * white[:3]), net(white[:3]), atol=1e-3)
    channels = PowerSpectrumEmbedding((2, 16, 16), out_features=3)
    assert channels(torch.randn(5, 2, 16, 16)).shape == (5, 3)
    with pytest.raises(ValueError, match="shape"):
        PowerSpectrumEmbedding((16,))


def test_cnn_shapes_and_circular_padding_equivariance():
    torch.manual_seed(0)
    net = CNNEmbedding((16, 16), out_features=5, channels=(4,), circular=True)
    x = torch.randn(3, 16, 16)
    assert net(x).shape == (3, 5)
    assert CNNEmbedding((2, 16, 16), out_features=5)(torch.randn(3, 2, 16, 16)).shape == (3, 5)
    # circular convolution commutes with a periodic shift by the pooling stride
    shifted = torch.roll(x, shifts=(2, 4), dims=(1, 2))
    fmap, fmap_shifted = net.features(x[:, None]), net.features(shifted[:, None])
    assert torch.allclose(torch.roll(fmap, shifts=(1, 2), dims=(2, 3)), fmap_shifted, atol=1e-5)
    with pytest.raises(ValueError, match="too many"):
        CNNEmbedding((4, 4), channels=(8, 8, 8))


def test_default_embedding_choice():
    sets = padded_sets(torch.zeros(50, 2))
    assert is_masked_set(sets)
    assert isinstance(default_embedding(sets), DeepSetEmbedding)
    assert isinstance(default_embedding(torch.randn(10, 16, 16)), CNNEmbedding)
    assert default_embedding(torch.randn(10, 5)) is None
    assert default_embedding(torch.randn(10, 4, 3)) is None  # small 2-d: flattened
    unpadded = sets.clone()
    unpadded[..., -1] = 0.5  # not a 0/1 mask: not a set
    assert not is_masked_set(unpadded)


def test_set_standardization_uses_present_elements_and_keeps_the_mask():
    theta = torch.full((400, 2), 3.0)
    sets = padded_sets(theta)
    standardizer = Standardizer((N_MAX, 3))
    standardizer.fit(sets)
    assert torch.allclose(standardizer.mean[:, :2], torch.full((N_MAX, 2), 3.0), atol=0.05)
    assert torch.allclose(standardizer.std[:, :2], torch.full((N_MAX, 2), 0.3), atol=0.03)
    z = standardizer(sets)
    assert torch.equal(z[..., 2], sets[..., 2])  # the mask survives
    assert not standardizer.outside_range(sets).any()  # padding zeros are in range


def test_npe_picks_deepset_and_round_trips(tmp_path):
    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((600,))
    x = padded_sets(theta)
    npe = sbiflow.NPE(prior).fit(theta, x, max_epochs=3, progress=False)
    assert isinstance(npe.embedding_net, DeepSetEmbedding)
    x_o = padded_sets(torch.zeros(1, 2), seed=5)[0]
    sbiflow.save(npe, tmp_path / "set.pt")
    loaded = sbiflow.load(tmp_path / "set.pt")
    assert isinstance(loaded.embedding_net, DeepSetEmbedding)
    theta_test = prior.sample((5,))
    assert torch.allclose(loaded.log_prob(theta_test, x_o), npe.log_prob(theta_test, x_o))
    assert (
        sbiflow.NPE(prior, embedding_net=None)
        .fit(theta, x, max_epochs=1, progress=False)
        .embedding_net
        is None
    )


def test_build_embedding_from_spec():
    nets = (
        MLPEmbedding((6,)),
        DeepSetEmbedding((5, 3)),
        CNNEmbedding((8, 8), channels=(4,)),
        PowerSpectrumEmbedding((8, 8)),
    )
    for net in nets:
        rebuilt = build_embedding(net.spec, net.x_shape)
        assert type(rebuilt) is type(net) and rebuilt.spec == net.spec
        rebuilt.load_state_dict(net.state_dict())
        x = torch.randn(2, *net.x_shape)
        torch.testing.assert_close(rebuilt(x), net(x))


def test_npe_takes_an_embedding_by_name_and_refuses_unknown_names(box_prior, tmp_path):
    maps = torch.randn(200, 8, 8)
    theta = box_prior.sample((200,))
    npe = sbiflow.NPE(box_prior, embedding_net="power_spectrum")
    npe.fit(theta, maps, max_epochs=1, progress=False)
    assert type(npe.embedding_net).__name__ == "PowerSpectrumEmbedding"
    sbiflow.save(npe, tmp_path / "ps.pt")
    assert type(sbiflow.load(tmp_path / "ps.pt").embedding_net).__name__ == (
        "PowerSpectrumEmbedding"
    )
    with pytest.raises(ValueError, match="embedding_net must be"):
        sbiflow.NPE(box_prior, embedding_net="fourier")
