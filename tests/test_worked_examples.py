"""The worked examples of docs/examples.md run end to end in --quick mode (issue 13)."""

import math
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, out: Path, monkeypatch) -> dict:
    """``examples/<name>.py``'s ``main(["--quick", "--out", out])``, imported afresh."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    sys.modules.pop(name, None)
    module = __import__(name)
    return module.main(["--quick", "--out", str(out)])


def assert_png(path: Path) -> None:
    """A readable PNG of real size: signature, IHDR dimensions, some kilobytes of pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200, (width, height)
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes"


def test_posterior_in_analysis_quick(tmp_path, monkeypatch):
    report = run_example("posterior_in_analysis", tmp_path, monkeypatch)
    assert_png(tmp_path / "posterior_in_analysis.png")
    assert (tmp_path / "dwarf_npe.pt").is_file()
    # the reloaded model is the same function: equal samples and log-probabilities
    assert report["reload_same_samples"] is True
    assert report["reload_log_prob_max_diff"] <= 1e-5
    for level in ("0.5", "0.68", "0.95"):
        assert 0.0 <= report[f"coverage_{level}"] <= 1.0
        assert 0.0 <= report[f"calibration_{level}"] <= 1.0
    # coverage grows with the level (every 50% region lies inside the 95% region)
    assert report["coverage_0.5"] <= report["coverage_0.68"] <= report["coverage_0.95"]
    assert report["coverage_0.95"] > 0.5  # 500 simulations: rough, but not hopeless
    assert report["num_coverage"] >= 50
    # amortization: one more posterior costs less than one exact-likelihood MCMC run
    # (measured in quick mode, 128 walkers: 33 ms against 2.2 s; a margin of 70 against load)
    assert 0 < report["seconds_50_posteriors"] / 50 < report["seconds_exact_one_dwarf"]
    assert report["exact_calls"] > 0


def test_emulator_mcmc_quick(tmp_path, monkeypatch):
    report = run_example("emulator_mcmc", tmp_path, monkeypatch)
    assert_png(tmp_path / "emulator_mcmc.png")
    for key in ("log_z_emulator", "log_z_exact", "log_z_emulator_err", "log_z_exact_err"):
        assert math.isfinite(report[key]), key
    assert 0 < report["log_z_exact_err"] < 2 and 0 < report["log_z_emulator_err"] < 2
    # a Poisson log-likelihood of 30 bins: the exact evidence of observation 1 is near -80
    assert -120 < report["log_z_exact"] < -60
    # even a 2,000-simulation emulator puts the evidence within a few nats of the truth
    assert abs(report["log_z_emulator"] - report["log_z_exact"]) < 10
    assert 0.45 <= report["c2st"] <= 1.0
    assert report["us_per_row_emulator"] > 0 and report["us_per_row_exact"] > 0
    for sampler in ("mcmc", "nested"):
        for kind in ("emulator", "exact"):
            calls = report[f"{sampler}_calls_{kind}"]
            assert 0 < calls <= report[f"{sampler}_points_{kind}"]


@pytest.mark.parametrize("name", ["posterior_in_analysis", "emulator_mcmc"])
def test_quick_mode_never_writes_the_docs_figure(name, monkeypatch):
    """Only a full-size run writes docs/figures; --quick defaults to a folder in the cwd."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop(name, None)
    module = __import__(name)
    assert module.output_dir(None, quick=False) == ROOT / "docs" / "figures"
    assert module.output_dir(None, quick=True) == Path(f"{name}_quick")
    assert module.output_dir("elsewhere", quick=False) == Path("elsewhere")
