import json
import re
from pathlib import Path

import numpy as np
import pytest

from sbiflow.cli import main
from sbiflow.config import ConfigError, load_config

SMALL_RUN = """
[simulator]
name = "two_moons"

[simulation]
num_simulations = 600
seed = 0
store = "sims.zarr"

[estimator]
kind = "nsf"
hidden_features = 16

[training]
max_epochs = 3

[observation]
index = 1

[sampling]
num_samples = 200

[diagnostics]
c2st = true
coverage_tests = 40

[output]
directory = "{out}"
progress = false
"""


NLE_RUN = """
[simulator]
name = "gaussian_linear"
dim = 2

[simulation]
num_simulations = 3000

[inference]
method = "nle"

[observation]
values = [0.1, -0.2]

[sampling]
num_samples = 2000
evidence = true
nlive = 250

[output]
directory = "{out}"
progress = false
"""


#: SMALL_RUN's diagnostics (C2ST and coverage), left out where a test checks something else
DIAGNOSTICS = """[diagnostics]
c2st = true
coverage_tests = 40
"""


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_run_writes_samples_plots_model_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    config = write(tmp_path, SMALL_RUN.format(out=out))
    assert main(["run", str(config)]) == 0
    for name in (
        "posterior_samples.npz",
        "corner.png",
        "loss.png",
        "model.pt",
        "summary.json",
        "summary.txt",
        "coverage.png",
        "ranks.png",
    ):
        assert (out / name).is_file(), name
    samples = np.load(out / "posterior_samples.npz")["samples"]
    assert samples.shape == (200, 2) and np.all(np.abs(samples) <= 1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_valid_simulations"] == 600
    assert set(summary["posterior"]) == {"theta_1", "theta_2"}
    assert 0.5 <= summary["c2st_vs_reference"] <= 1.0
    assert set(summary["coverage"]) == {"0.5", "0.68", "0.95"}
    assert "theta_1" in capsys.readouterr().out
    assert (out / "sims.zarr").is_dir()


@pytest.mark.parametrize(
    "edit, message",
    [
        (("[training]", "[training]\nlearning_rte = 0.1"), "Unknown key training.learning_rte"),
        (("[output]", "[outputs]"), r"unknown section\(s\) \['outputs'\]"),
        (
            ("num_simulations = 600", "num_simulations = 'many'"),
            "simulation.num_simulations must be of type int",
        ),
        (("max_epochs = 3", "max_epochs = true"), "training.max_epochs must be of type int"),
        (("index = 1", ""), r"\[observation\] needs index"),
        (('name = "two_moons"', 'name = "three_moons"'), "three_moons"),
        (("[sampling]", "[sampling"), "not valid TOML"),
        (("[sampling]", "[sampling]\nsampler = 'nested'"), "apply to a likelihood emulator"),
        (("[sampling]", "[sampling]\nnlive = 100"), "sampling.nlive apply to a likelihood"),
        (("[sampling]", "[sampling]\nnlive = 5"), "sampling.nlive must be at least 10"),
        (("[estimator]", "[inference]\nmethod = 'abc'\n[estimator]"), "inference.method"),
        (
            ("[estimator]", "[inference]\nmethod = 'nle'\n[estimator]"),
            "coverage_tests needs inference.method",
        ),
        (('kind = "nsf"', 'kind = "glow"'), "estimator.kind must be one of"),
    ],
)
def test_config_errors_name_the_bad_key(tmp_path, edit, message, capsys):
    text = SMALL_RUN.format(out=tmp_path / "out").replace(*edit)
    config = write(tmp_path, text)
    if "three_moons" in message:  # found when the simulator is resolved
        assert main(["run", str(config)]) == 2
        assert message in capsys.readouterr().err
        return
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    assert main(["run", str(config)]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_config_sets_an_embedding_and_its_options(tmp_path, capsys):
    import sbiflow

    out = tmp_path / "out"
    text = (
        SMALL_RUN.format(out=out)
        .replace(
            "hidden_features = 16",
            'hidden_features = 16\nembedding_net = { type = "mlp", hidden_features = 8 }',
        )
        .replace(DIAGNOSTICS, "")  # the embedding is what is checked here
    )
    assert main(["run", str(write(tmp_path, text))]) == 0
    spec = sbiflow.load(out / "model.pt").embedding_net.spec
    assert spec["type"] == "mlp" and spec["hidden_features"] == 8
    # a wrong option fails before anything is simulated, with the option's name
    bad = text.replace("hidden_features = 8 }", "width = 8 }").replace(
        str(out), str(tmp_path / "b")
    )
    assert main(["run", str(write(tmp_path, bad, "bad.toml"))]) == 2
    assert "Unknown option(s) ['width'] of the 'mlp' embedding" in capsys.readouterr().err
    assert not (tmp_path / "b" / "sims.zarr").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="No configuration file"):
        load_config(tmp_path / "nope.toml")


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "examples/configs").glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_example_config_is_valid(name):
    from sbiflow.cli import _model, _resolve_simulator

    config = load_config(Path(__file__).parents[1] / f"examples/configs/{name}.toml")
    assert name.startswith(config.simulator.name) and config.observation.index == 1
    # its simulator resolves and its [estimator] builds (embedding spec and all)
    model = _model(config, _resolve_simulator(config))
    assert model.estimator_kind == (config.estimator.kind or model.estimator_kind)


def test_every_physics_config_ships():
    assert {"collider", "galaxy_field", "dwarf"} <= set(SHIPPED)


def test_nle_run_samples_with_emcee_and_reports_the_evidence(tmp_path):
    """An NLE run end to end: emcee posterior, dynesty evidence, and the report's sections."""
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, NLE_RUN.format(out=out)))]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "nle" and summary["estimator"] == "maf"
    assert summary["mcmc"]["converged"]
    evidence = summary["evidence"]
    assert evidence["nlive"] == 250
    assert abs(evidence["log_z"] - evidence["log_z_exact"]) < 0.3
    # analytic posterior: N(x σp²/(σp²+σ²), σp²σ²/(σp²+σ²)) per dimension, σp² = σ² = 0.1
    samples = np.load(out / "posterior_samples.npz")["samples"]
    assert samples.shape == (2000, 2)
    assert np.allclose(samples.mean(axis=0), [0.05, -0.1], atol=0.03)
    assert np.allclose(samples.std(axis=0), np.sqrt(0.05), rtol=0.1)
    assert "dynesty: log Z" in (out / "summary.txt").read_text()
    # the report of an NLE run: emcee traces, the nested run, the predictive check
    for name in ("traces.png", "nested_run.png", "ppc.png", "report.html"):
        assert (out / name).is_file(), name
    assert summary["posterior_predictive"]["draws"] == 100
    assert 0 <= summary["posterior_predictive"]["p_value"] <= 1
    html = (out / "report.html").read_text()
    assert re.findall(r"<h2>([^<]*)</h2>", html) == [
        "Summary",
        "Posterior",
        "Posterior predictive check",
        "Evidence (nested sampling)",
        "MCMC (emcee)",
        "Training",
    ]
    assert html.count('<img src="data:image/png;base64,') == 5
    assert f"{evidence['log_z_exact']:.4g}" in html


def test_version_and_simulator_listing(capsys):
    from sbiflow import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sbiflow {__version__}"
    assert main(["simulators"]) == 0
    out = capsys.readouterr().out
    assert "dwarf             (150, 4)      log10_rho_s, log10_r_s, gamma, beta" in out
    assert "two_moons         (2,)          theta_1, theta_2" in out
    assert main(["simulators", "--module", "no_such_registry"]) == 2
    assert "Cannot import the simulator registry 'no_such_registry'" in capsys.readouterr().err


def test_simulate_fills_the_store_and_run_resumes_from_it(tmp_path, capsys):
    out = tmp_path / "out"
    config = write(tmp_path, SMALL_RUN.format(out=out).replace(DIAGNOSTICS, ""))
    assert main(["simulate", str(config)]) == 0
    assert "600 simulations in" in capsys.readouterr().out
    assert (out / "sims.zarr").is_dir() and not (out / "model.pt").exists()
    from sbiflow import load_store

    theta, x = load_store(out / "sims.zarr")
    assert theta.shape == (600, 2)
    assert main(["run", str(config)]) == 0  # trains on the same 600, simulating nothing new
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_valid_simulations"] == 600
    again, _ = load_store(out / "sims.zarr")
    assert bool((again == theta).all())
    no_store = write(tmp_path, NLE_RUN.format(out=out), name="nle.toml")
    assert main(["simulate", str(no_store)]) == 2
    assert "needs [simulation] store" in capsys.readouterr().err
