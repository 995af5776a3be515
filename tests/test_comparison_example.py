"""examples/model_selection_dwarf.py runs end to end in --quick mode (issue 12)."""

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_model_selection_dwarf_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    sys.modules.pop("model_selection_dwarf", None)
    import model_selection_dwarf

    out = tmp_path / "dwarf.png"
    report = model_selection_dwarf.main(["--quick", "--out", str(out)])
    assert out.is_file() and out.stat().st_size > 10_000
    assert 0 < report["p_cored"] < 1 and report["log_k_err"] > 0
    # the classifier and dynesty on the exact likelihoods agree within their errors
    # (quick budget: measured 0.16 ± 0.10 against 0.25 ± 0.36)
    assert report["tension_sigma"] < 3
    assert math.isfinite(report["nested_log_k"]) and 0 < report["nested_log_k_err"] < 1
    assert report["accuracy"] > 0.55  # better than a coin at 1,000 sets per model
    assert 0 < report["p_value_mock"] <= 1 and 0 < report["p_value_outsider"] <= 1
