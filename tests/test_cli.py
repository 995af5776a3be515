import json
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
coverage_tests = 100

[output]
directory = "{out}"
progress = false
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


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="No configuration file"):
        load_config(tmp_path / "nope.toml")


def test_shipped_example_config_is_valid():
    config = load_config(Path(__file__).parents[1] / "examples/configs/two_moons.toml")
    assert config.simulator.name == "two_moons" and config.observation.index == 1
