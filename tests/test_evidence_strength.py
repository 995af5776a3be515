"""The words a comparison summary puts beside a log Bayes factor (Kass & Raftery scale)."""

import pytest

from sbiflow.summary_text import comparison_text, evidence_strength


@pytest.mark.parametrize(
    ("log_k", "expected"),
    [
        (0.4, "not worth more than a bare mention"),
        (-0.9, "not worth more than a bare mention"),
        (2.0, "positive for a"),
        (-2.0, "positive for b"),
        (4.0, "strong for a"),
        (-4.9, "strong for b"),
        (5.5, "very strong for a"),
        (-300.0, "very strong for b"),
    ],
)
def test_scale_and_direction(log_k, expected):
    assert evidence_strength(log_k, "a", "b") == expected


def test_nan_log_k_is_not_read_as_evidence():
    assert evidence_strength(float("nan"), "a", "b", err=0.1) == "undefined (log K is NaN)"
    # A NaN error (one member) leaves the reading alone and flags nothing.
    assert evidence_strength(3.1, "a", "b", err=float("nan")) == "strong for a"


def test_error_bar_reaching_the_threshold_is_said():
    unsettled = "within 2 errors of |log K| = 3: not settled"
    assert evidence_strength(3.4, "a", "b", err=0.25).endswith(unsettled)
    assert evidence_strength(-2.7, "a", "b", err=0.16).endswith(unsettled)
    # Negative control: the same values with the threshold more than two errors away.
    assert evidence_strength(3.4, "a", "b", err=0.19) == "strong for a"
    assert evidence_strength(-2.7, "a", "b", err=0.14) == "positive for b"


def test_comparison_summary_prints_the_words():
    summary = {
        "models": {"cored": {"simulator": "dwarf"}, "cusped": {"simulator": "dwarf"}},
        "seconds": {"simulate": 1, "train": 2},
        "loss": "cross_entropy",
        "ensemble": 5,
        "resampling": "jackknife",
        "n_per_model": 100,
        "epochs": 3,
        "best_validation_loss": 0.6,
        "observation": "x.npy",
        "prior_probs": {"cored": 0.5, "cusped": 0.5},
        "probabilities": {"cored": 0.03, "cusped": 0.97},
        "log_bayes_factors": [{"a": "cusped", "b": "cored", "log_k": 3.52, "err": 0.3}],
        "misspecification": {"p_value": 0.4, "score": 1.0, "flagged_at_0.05": False},
        "calibration": {"simulations_per_model": 10, "accuracy": 0.8, "ece": {"cored": 0.02}},
    }
    text = comparison_text(summary)
    assert (
        "log K(cusped / cored) = 3.520 ± 0.300 (jackknife error): strong for cusped; "
        "within 2 errors of |log K| = 3: not settled" in text
    )
