"""Embedding nets: shapes, invariances, the automatic choice, set standardization, files."""

import pytest
import torch

import sbiflow
from sbiflow.embeddings import (
    CNNEmbedding,
    DeepSetEmbedding,
    KinematicSetEmbedding,
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


def test_distinct_shells_separate_wave_vectors_that_integer_shells_merge():
    net = PowerSpectrumEmbedding((32, 32), out_features=3, shells="distinct")
    assert net.num_shells == 134  # distinct kx^2 + ky^2 of the half plane, k = 0 left out
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    # |k|^2 = 25 and 26 share the integer shell |k| = 5 and have distinct shells here
    waves = torch.stack(
        [
            torch.cos(2 * torch.pi * (3 * i + 4 * j) / 32),
            torch.cos(2 * torch.pi * (1 * i + 5 * j) / 32),
        ]
    )
    distinct = net.power(waves)[:, 0]
    assert int(distinct[0].argmax()) != int(distinct[1].argmax())
    integer = PowerSpectrumEmbedding((32, 32), out_features=3).power(waves)[:, 0]
    assert int(integer[0].argmax()) == int(integer[1].argmax()) == 4
    # white noise: unit power in every shell, within the errors of its few modes
    white = torch.randn(400, 32, 32, generator=torch.Generator().manual_seed(0))
    power = net.power(white)[:, 0]
    assert ((power.mean(dim=0) - 1.0).abs() < 4.0 * power.std(dim=0) / 400**0.5).all()
    assert net.spec["shells"] == "distinct"
    with pytest.raises(ValueError, match="shells must be"):
        PowerSpectrumEmbedding((32, 32), shells="log")


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
        KinematicSetEmbedding((5, 4), num_profiles=3, velocity_column=0),
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


# -- the kinematic set embedding ---------------------------------------------------------
def star_sets(sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Sets of 3..N_MAX stars (R, v, dv, mask): v ~ N(0, sigma^2 (1 + R)), padded."""
    g = torch.Generator().manual_seed(seed)
    b = sigma.shape[0]
    sizes = torch.randint(3, N_MAX + 1, (b,), generator=g)
    radius = torch.rand(b, N_MAX, generator=g)
    dv = 0.1 + torch.rand(b, N_MAX, generator=g)
    v = sigma[:, None] * (1 + radius).sqrt() * torch.randn(b, N_MAX, generator=g)
    mask = (torch.arange(N_MAX)[None, :] < sizes[:, None]).float()
    return torch.stack([radius, v, dv, torch.ones_like(v)], dim=-1) * mask[..., None]


def test_kinematic_set_is_invariant_to_order_padding_and_the_sign_of_v():
    torch.manual_seed(0)
    net = KinematicSetEmbedding((N_MAX, 4), out_features=4, num_profiles=5)
    x = star_sets(torch.ones(6))
    assert net(x).shape == (6, 4)
    assert torch.allclose(net(x), net(x[:, torch.randperm(N_MAX)]), atol=1e-6)
    garbage = x.clone()
    garbage[..., :3] += 100.0 * (1 - x[..., 3:])  # padding rows only
    assert torch.allclose(net(x), net(garbage), atol=1e-6)
    flipped = x.clone()
    flipped[..., 1] *= -1  # a rest-frame velocity enters as v^2
    assert torch.allclose(net(x), net(flipped), atol=1e-6)
    # negative controls: a larger |v|, or the same v at another radius, changes the embedding
    faster, elsewhere = x.clone(), x.clone()
    faster[:, 0, 1] *= 3.0
    elsewhere[:, 0, 0] += 0.5
    assert not torch.allclose(net(x), net(faster), atol=1e-4)
    assert not torch.allclose(net(x), net(elsewhere), atol=1e-4)


def test_kinematic_set_pools_weighted_mean_squares():
    torch.manual_seed(1)
    net = KinematicSetEmbedding((N_MAX, 4), out_features=3, num_profiles=4)
    x = star_sets(torch.rand(5) + 0.5, seed=3)
    expected = []
    for one in x:
        stars = one[one[:, -1] == 1]
        w = torch.nn.functional.softplus(net.weights(stars[:, [0, 2]])) + 1e-4  # (n, K)
        profile = torch.log((w * stars[:, 1:2] ** 2).sum(0) / w.sum(0) + 1e-6)
        coverage = torch.log(w.sum(0) / len(stars))
        count = torch.tensor([float(len(stars))])
        expected.append(net.rho(torch.cat([profile, coverage, torch.log1p(count)])))
    torch.testing.assert_close(net(x), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_kinematic_set_fourth_moments_pool_the_log_kurtosis_and_see_outliers():
    torch.manual_seed(2)
    net = KinematicSetEmbedding((N_MAX, 4), out_features=3, num_profiles=4, fourth_moments=True)
    assert net.spec["fourth_moments"] is True
    assert "fourth_moments" not in KinematicSetEmbedding((N_MAX, 4)).spec  # old specs load
    x = star_sets(torch.rand(5) + 0.5, seed=4)
    expected = []
    for one in x:
        stars = one[one[:, -1] == 1]
        w = torch.nn.functional.softplus(net.weights(stars[:, [0, 2]])) + 1e-4  # (n, K)
        second = (w * stars[:, 1:2] ** 2).sum(0) / w.sum(0)
        fourth = (w * stars[:, 1:2] ** 4).sum(0) / w.sum(0)
        kurtosis = torch.log(fourth + 1e-12) - 2 * torch.log(second + 1e-6)
        pooled = [torch.log(second + 1e-6), kurtosis, torch.log(w.sum(0) / len(stars))]
        count = torch.tensor([float(len(stars))])
        expected.append(net.rho(torch.cat([*pooled, torch.log1p(count)])))
    torch.testing.assert_close(net(x), torch.stack(expected), atol=1e-5, rtol=1e-5)
    # the same second moment, heavier tails: the plain embedding cannot tell, this one can
    plain = KinematicSetEmbedding((N_MAX, 4), out_features=3, num_profiles=1)
    one = KinematicSetEmbedding((N_MAX, 4), out_features=3, num_profiles=1, fourth_moments=True)
    for embedding in (plain, one):  # a constant weight: one profile over every star
        torch.nn.init.zeros_(embedding.weights[-1].weight)
    y = star_sets(torch.ones(1), seed=5)
    n = int(y[0, :, -1].sum())
    gaussian, tailed = y.clone(), y.clone()
    gaussian[0, :n, 1] = torch.tensor([1.0, -1.0]).repeat(n)[:n]  # every |v| = 1
    tailed[0, :n, 1] = 0.0
    tailed[0, 0, 1] = n**0.5  # one star holds all of Σ v² = n
    assert torch.allclose(plain(gaussian), plain(tailed), atol=1e-5)
    assert not torch.allclose(one(gaussian), one(tailed), atol=1e-3)


def test_kinematic_set_refuses_shapes_without_a_velocity_and_a_covariate():
    with pytest.raises(ValueError, match="kinematic set"):
        KinematicSetEmbedding((10, 2))
    with pytest.raises(ValueError, match="velocity_column"):
        KinematicSetEmbedding((10, 4), velocity_column=3)


@pytest.mark.slow  # ~20 s of training; the tests above check the embedding itself
def test_kinematic_set_npe_learns_a_velocity_dispersion():
    """log sigma ~ U(-1, 1), stars with v ~ N(0, sigma^2 (1 + R)): the posterior narrows on sigma.

    The exact posterior of log sigma given a set is known up to a constant on a grid; NPE's
    mean must follow it, and a net that ignores the data (negative control: the prior) not.
    """
    torch.manual_seed(0)
    prior = sbiflow.BoxUniform(-torch.ones(1), torch.ones(1))
    theta = prior.sample((3000,))
    x = star_sets(theta[:, 0].exp(), seed=4)
    # one flow (calibration="check"): this tests what the embedding learns, not calibration
    npe = sbiflow.NPE(
        prior, embedding_net={"type": "kinematic_set", "num_profiles": 4}, calibration="check"
    )
    npe.fit(theta, x, progress=False, seed=0, max_epochs=60)
    assert isinstance(npe.embedding_net, KinematicSetEmbedding)
    grid = torch.linspace(-1, 1, 801)
    errors, prior_errors = [], []
    for i, truth in enumerate((-0.6, 0.0, 0.7)):
        x_o = star_sets(torch.tensor([truth]).exp(), seed=10 + i)[0]
        stars = x_o[x_o[:, -1] == 1]
        var = grid.exp()[:, None] ** 2 * (1 + stars[:, 0])  # (G, n)
        log_l = (-0.5 * stars[:, 1] ** 2 / var - 0.5 * var.log()).sum(1)
        weights = torch.softmax(log_l, 0)
        exact_mean = float((weights * grid).sum())
        exact_std = float((weights * (grid - exact_mean) ** 2).sum().sqrt())
        samples = npe.sample(4000, x=x_o, seed=i)[:, 0]
        errors.append(abs(float(samples.mean()) - exact_mean) / exact_std)
        prior_errors.append(abs(0.0 - exact_mean) / exact_std)
    assert max(errors) < 0.5, errors
    assert max(prior_errors) > 1.0, prior_errors  # the data move the posterior far


def test_npe_takes_an_embedding_spec_with_options(box_prior, tmp_path):
    theta = box_prior.sample((300,))
    x = padded_sets(theta[:, :2])
    npe = sbiflow.NPE(box_prior, embedding_net={"type": "deepset", "hidden_features": 8})
    npe.fit(theta, x, max_epochs=1, progress=False)
    assert npe.embedding_net.spec["hidden_features"] == 8
    assert npe.embedding_net.phi[0].out_features == 8
    sbiflow.save(npe, tmp_path / "spec.pt")
    assert sbiflow.load(tmp_path / "spec.pt").embedding_net.spec == npe.embedding_net.spec
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['width'\] of the 'deepset'"):
        sbiflow.NPE(box_prior, embedding_net={"type": "deepset", "width": 8})
    with pytest.raises(ValueError, match="embedding_net must be"):
        sbiflow.NPE(box_prior, embedding_net={"hidden_features": 8})


# -- embeddings a simulator declares ----------------------------------------------------------
class _DeclaresKinematicSet:
    """A simulator-like object that declares the embedding for its x."""

    embedding_net = {"type": "kinematic_set", "num_profiles": 4}


def test_auto_takes_the_embedding_a_simulator_declares():
    from sbiflow.embeddings import KinematicSetEmbedding, declared_embedding

    prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
    torch.manual_seed(0)
    theta = prior.sample((200,))
    x = torch.zeros(200, 6, 4)
    x[:, :, 0] = torch.rand(200, 6)
    x[:, :, 1] = theta[:, :1] * torch.randn(200, 6)
    x[:, :, 2] = 1.0
    x[:, :, 3] = 1.0
    x[:100, 4:] = 0.0
    declared = sbiflow.NPE(prior, simulator=_DeclaresKinematicSet(), calibration="off")
    declared.fit(theta, x, max_epochs=1, progress=False)
    assert isinstance(declared.embedding_net, KinematicSetEmbedding)
    assert declared.embedding_net.spec["num_profiles"] == 4
    # without the simulator, "auto" guesses a DeepSet from the padded set
    guessed = sbiflow.NPE(prior, calibration="off").fit(theta, x, max_epochs=1, progress=False)
    assert isinstance(guessed.embedding_net, DeepSetEmbedding)
    # an explicit choice wins over the declaration
    explicit = sbiflow.NPE(
        prior, embedding_net="deepset", simulator=_DeclaresKinematicSet(), calibration="off"
    )
    assert explicit.embedding_spec == {"type": "deepset"}
    assert declared_embedding(object()) is None


def test_a_bad_declaration_names_the_simulator():
    from sbiflow.embeddings import declared_embedding

    class Bad:
        embedding_net = "transformer"

    with pytest.raises(ValueError, match="Bad.embedding_net = 'transformer' names no embedding"):
        declared_embedding(Bad())


def test_physics_simulators_declare_their_embeddings():
    import simulators
    from sbiflow.embeddings import declared_embedding

    assert declared_embedding(simulators.get("dwarf")) == {"type": "kinematic_set"}
    assert declared_embedding(simulators.get("galaxy_field")) == {"type": "power_spectrum"}
    assert declared_embedding(simulators.get("two_moons")) is None
