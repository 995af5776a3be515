"""The diffusion-posterior examples run end to end in --quick mode (issue 11)."""

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, out: Path, monkeypatch, capsys) -> str:
    """Run ``examples/<script> --quick --out <out>`` in this process; return its stdout.

    In-process, not a subprocess: the run is the same, without a second interpreter
    importing torch and sbiflow (~5 s of the ~12 s each).
    """
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [script, "--quick", "--out", str(out)])
    capsys.readouterr()
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    return capsys.readouterr().out


def _table_rows(stdout: str) -> dict[str, list[float]]:
    """Markdown table rows (after the header) -> {first cell: numbers}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not line.startswith("|---") and cells[0] != "estimate":
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


@pytest.mark.parametrize(
    ("script", "names"),
    [
        (
            "denoise_galaxy_field.py",
            ["Wiener filter (exact covariance)", "diffusion posterior mean"],
        ),
        ("lensing_source.py", ["Wiener filter (training covariance)", "diffusion posterior mean"]),
    ],
)
def test_example_quick(tmp_path, monkeypatch, capsys, script, names):
    out = tmp_path / "figure.png"
    stdout = _run(script, out, monkeypatch, capsys)
    assert out.exists() and out.stat().st_size > 10_000  # a real picture, not an empty file
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _table_rows(stdout)
    assert sorted(rows) == sorted(names)
    for values in rows.values():
        mse, cov68, cov95, std = values
        assert 0 < mse < 10 and 0 < std < 100  # finite, positive, sane
        assert 0 <= cov68 <= cov95 <= 1
    # the Wiener filter's Gaussian posterior is calibrated on average: its 68% coverage of
    # 1,024 pixels cannot be far off (a unit error there breaks this)
    assert abs(rows[names[0]][1] - 0.68) < 0.2
    assert re.search(r"# figure: .*; total [0-9.]+ s", stdout)
