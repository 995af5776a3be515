"""``sbiflow compare`` / ``sbiflow run`` with a [models] section: model comparison from a config."""

import json
import math
from pathlib import Path

import pytest
import torch

import sbiflow
from sbiflow.cli import _resolve, main
from sbiflow.config import ConfigError, load_config

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/configs/compare_tiny.toml"
EXACT_LOG_K = -0.6411  # log K(wide / narrow) of the tiny config's observation, closed form


def tiny(tmp_path, *edits, name="compare.toml"):
    text = TINY.read_text().replace('"runs/compare_tiny"', f'"{tmp_path / "out"}"')
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_compare_writes_probabilities_bayes_factor_calibration_and_crosscheck(tmp_path, capsys):
    assert main(["compare", str(tiny(tmp_path))]) == 0
    out = tmp_path / "out"
    for name in ("calibration.png", "loss.png", "model.pt", "summary.json", "summary.txt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    p = summary["probabilities"]
    assert set(p) == {"narrow", "wide"} and math.isclose(sum(p.values()), 1, rel_tol=1e-6)
    (pair,) = summary["log_bayes_factors"]
    assert (pair["a"], pair["b"]) == ("wide", "narrow") and pair["err"] > 0
    assert abs(pair["log_k"] - EXACT_LOG_K) < 0.3  # measured -0.60
    assert math.isclose(p["wide"], 1 / (1 + math.exp(-pair["log_k"])), rel_tol=1e-4)
    assert 0 < summary["misspecification"]["p_value"] <= 1
    assert not summary["misspecification"]["flagged_at_0.05"]
    assert max(summary["calibration"]["ece"].values()) < 0.1  # 300 datasets per model
    check = summary["crosscheck"]["log_bayes_factors"][0]
    assert check["closed_form"]["log_k"] == pytest.approx(EXACT_LOG_K, abs=1e-3)
    for source in ("exact", "emulator"):
        assert abs(check[source]["log_k"] - EXACT_LOG_K) < 3 * check[source]["err"], source
    assert check["exact"]["err"] < 0.03  # refined by importance sampling (dynesty's: ~0.2)
    # the saved classifier gives the reported Bayes factor
    loaded = sbiflow.load(out / "model.pt")
    x_o = torch.tensor([0.6, -0.4])
    assert loaded.log_bayes_factor(x_o, "wide", "narrow") == pytest.approx(pair["log_k"])
    text = (out / "summary.txt").read_text()
    assert "log K(wide / narrow)" in text and "nested-sampling cross-check" in text
    assert "posterior model probabilities" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, message",
    [
        (("[comparison]", "[comparison]\nn_per_modle = 10"), "Unknown key comparison.n_per_modle"),
        (("ensemble = 2", "ensemble = 'two'"), "comparison.ensemble must be of type int"),
        (("ensemble = 2", "loss = 'hinge'"), "comparison.loss must be one of"),
        (("ensemble = 2", "ensemble = 2\nresampling = 'jack'"), "comparison.resampling must be"),
        (("ensemble = 2", "ensemble = 2\npenalty = -0.1"), "comparison.penalty must be at least 0"),
        (("ensemble = 2", "ensemble = 2\nquadratic = 'cubic'"), "comparison.quadratic must be"),
        (("wide = { prior_var = 1.0 }", ""), "at least two models"),
        (("[simulation]", "[estimator]\nkind = 'nsf'\n[simulation]"), r"\['estimator'\] apply"),
        (("seed = 0", "num_simulations = 100"), "use comparison.n_per_model"),
        (("max_epochs = 30", "seed = 3"), "training.seed does not apply"),
        (("narrow = { prior_var = 0.1 }", "narrow = 3"), r"\[models\] must hold one table"),
        (("[observation]", "[observation]\nmodel = 'medium'"), "observation.model must be one"),
        (('name = "gaussian_linear"\n', ""), "models.narrow names no simulator"),
        (("n_per_model = 1500", "n_per_model = 50"), "n_per_model must be at least 100"),
        (
            ("crosscheck_importance = 4000", "crosscheck_importance = -1"),
            "crosscheck_importance must be at least 0",
        ),
    ],
)
def test_config_errors_name_the_bad_key(tmp_path, edit, message, capsys):
    path = tiny(tmp_path, edit)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["compare", str(path)]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_errors_found_when_the_models_are_built(tmp_path, capsys):
    bad_model = tiny(tmp_path, ("{ prior_var = 1.0 }", '{ simulator = "three_moons" }'))
    assert main(["run", str(bad_model)]) == 2
    assert "models.wide.simulator = 'three_moons'" in capsys.readouterr().err
    bad_option = tiny(tmp_path, ("{ prior_var = 1.0 }", "{ width = 1.0 }"), name="b.toml")
    assert main(["run", str(bad_option)]) == 2
    assert "width" in capsys.readouterr().err
    bad_x = tiny(tmp_path, ("[0.6, -0.4]", "[0.6, -0.4, 0.1]"), name="c.toml")
    assert main(["run", str(bad_x)]) == 2
    assert "the models simulate x shaped (2,)" in capsys.readouterr().err
    nan_x = tiny(tmp_path, ("[0.6, -0.4]", "[0.6, nan]"), name="d.toml")
    assert main(["run", str(nan_x)]) == 2
    assert "the observation holds NaN" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.pt").exists()  # every error came before training


def test_compare_needs_models_and_a_plain_run_rejects_comparison_keys(tmp_path, capsys):
    plain = ROOT / "examples/configs/two_moons.toml"
    assert main(["compare", str(plain)]) == 2
    assert "needs a [models] section" in capsys.readouterr().err
    text = plain.read_text() + "\n[comparison]\nensemble = 2\n"
    path = tmp_path / "plain.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="add a \\[models\\] section"):
        load_config(path)


def test_shipped_dwarf_comparison_config_is_valid():
    config = load_config(ROOT / "examples/configs/dwarf_cored_vs_cusped.toml")
    assert list(config.models) == ["cored", "cusped"]
    sims = {name: _resolve(m, config.base_dir, name) for name, m in config.models.items()}
    assert [s.names for s in sims.values()] == [["log10_rho_s", "log10_r_s", "beta"]] * 2
    assert sims["cored"].gamma == 0.0 and sims["cusped"].gamma == 1.0
    assert config.comparison.ensemble >= 2  # the Bayes factor gets an error bar
