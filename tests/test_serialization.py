import pytest
import torch
from torch import nn

import sbiflow
from sbiflow.embeddings import MLPEmbedding


def test_round_trip_keeps_density_samples_and_history(quick_npe, tmp_path):
    path = tmp_path / "npe.pt"
    sbiflow.save(quick_npe, path)
    loaded = sbiflow.load(path)
    theta, x_o = torch.rand(20, 2) * 2 - 1, torch.tensor([0.2, -0.3])
    assert torch.allclose(loaded.log_prob(theta, x=x_o), quick_npe.log_prob(theta, x=x_o))
    assert torch.equal(loaded.sample(30, x=x_o, seed=1), quick_npe.sample(30, x=x_o, seed=1))
    assert loaded.history.val_loss == quick_npe.history.val_loss
    assert isinstance(loaded.prior, sbiflow.BoxUniform)
    assert (
        repr(loaded)
        == repr(quick_npe)
        == "NPE(nsf, theta (2,), x (2,), trained on 1,000 simulations, 5 epochs)"
    )


def test_file_loads_with_weights_only(quick_npe, tmp_path):
    path = tmp_path / "npe.pt"
    sbiflow.save(quick_npe, path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "sbiflow" and payload["class"] == "NPE"


def test_round_trip_with_builtin_embedding_and_gaussian_prior(tmp_path):
    prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((300,))
    x = torch.cat([theta, theta**2], dim=1) + 0.1 * torch.randn(300, 4)
    npe = sbiflow.NPE(prior, estimator="maf", embedding_net=MLPEmbedding((4,), 8))
    npe.fit(theta, x, max_epochs=2, progress=False)
    sbiflow.save(npe, tmp_path / "m.pt")
    loaded = sbiflow.load(tmp_path / "m.pt")
    x_o = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(loaded.log_prob(theta[:5], x=x_o), npe.log_prob(theta[:5], x=x_o))


class Own(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 3)

    def forward(self, x):
        return self.layer(x)


def test_own_embedding_and_own_prior_must_be_passed_again(box_prior, toy_data, tmp_path):
    theta, x = toy_data
    beta = torch.distributions.Beta(torch.ones(2), torch.ones(2))
    prior = torch.distributions.Independent(beta, 1)
    npe = sbiflow.NPE(prior, embedding_net=Own()).fit(
        (theta + 1) / 2, x, max_epochs=1, progress=False
    )
    sbiflow.save(npe, tmp_path / "own.pt")
    with pytest.raises(ValueError, match="pass it, sbiflow.load"):
        sbiflow.load(tmp_path / "own.pt")
    with pytest.raises(ValueError, match="embedding_net=MyNet"):
        sbiflow.load(tmp_path / "own.pt", prior=prior)
    loaded = sbiflow.load(tmp_path / "own.pt", prior=prior, embedding_net=Own())
    x_o = torch.tensor([0.1, 0.2])
    assert torch.allclose(
        loaded.log_prob(torch.full((2, 2), 0.5), x=x_o),
        npe.log_prob(torch.full((2, 2), 0.5), x=x_o),
    )


def test_corrupted_truncated_and_foreign_files_give_clear_errors(quick_npe, tmp_path):
    path = tmp_path / "npe.pt"
    sbiflow.save(quick_npe, path)
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    corrupted = bytearray(data)
    corrupted[100:400] = b"\x00" * 300
    (tmp_path / "corrupted.pt").write_bytes(bytes(corrupted))
    (tmp_path / "text.pt").write_text("not a model")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "state_dict.pt")
    for name in ("truncated.pt", "corrupted.pt", "text.pt"):
        with pytest.raises(sbiflow.ModelFileError, match="not a readable sbiflow model"):
            sbiflow.load(tmp_path / name)
    for name in ("foreign.pt", "state_dict.pt"):
        with pytest.raises(sbiflow.ModelFileError, match="not an sbiflow model"):
            sbiflow.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No model file"):
        sbiflow.load(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(sbiflow.ModelFileError, match=r"model file \(.*\): EOFError \(0 bytes\)"):
        sbiflow.load(tmp_path / "empty.pt")


def test_newer_format_is_refused(quick_npe, tmp_path):
    path = tmp_path / "npe.pt"
    sbiflow.save(quick_npe, path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(sbiflow.ModelFileError, match="newer sbiflow"):
        sbiflow.load(path)


def test_older_format_is_refused_with_advice(quick_npe, tmp_path):
    path = tmp_path / "npe.pt"
    sbiflow.save(quick_npe, path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    torch.save(payload, path)
    with pytest.raises(sbiflow.ModelFileError, match="older sbiflow.*retrain"):
        sbiflow.load(path)


def test_untrained_model_cannot_be_saved(box_prior, tmp_path):
    with pytest.raises(sbiflow.NotFittedError):
        sbiflow.save(sbiflow.NPE(box_prior), tmp_path / "x.pt")
