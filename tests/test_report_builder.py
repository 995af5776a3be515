"""The report builder without a browser: which sections a folder gets, ``sbiflow report``,
its errors, the new plots (traces, nested run), and an NLE run's report."""

import base64
import json
import re

import matplotlib.image
import numpy as np
import pytest
import torch

from sbiflow.cli import _predictive, main
from sbiflow.report import ReportError, build_report, write_report

RUN_SECTIONS = (
    "Summary",
    "Posterior",
    "Calibration",
    "Posterior predictive check",
    "Evidence (nested sampling)",
    "MCMC (emcee)",
    "Training",
    "Diffusion posterior",
)

BASE = {
    "simulator": "two_moons",
    "num_simulations": 1000,
    "num_valid_simulations": 990,
    "method": "npe",
    "estimator": "nsf",
    "epochs": 12,
    "best_epoch": 9,
    "best_validation_loss": -1.25,
    "seconds": {"simulate": 0.5, "train": 3.25, "sample": 0.1},
    "posterior": {
        "theta_1": {"mean": 0.125, "std": 0.5, "q05": -0.75, "q95": 0.875, "true": 0.25},
        "theta_2": {"mean": -0.5, "std": 0.25, "q05": -0.875, "q95": -0.125, "true": -0.375},
    },
}
NPE_EXTRAS = {
    "c2st_vs_reference": 0.5625,
    "calibration_check": {
        "levels": [0.5, 0.68, 0.95],
        "coverage": [0.41, 0.6, 0.9],
        "num_simulations": 500,
        "source": "validation simulations",
        "calibrated": False,
        "summary": "expected coverage ...: OVERCONFIDENT",
    },
    "coverage": {"0.5": 0.49, "0.68": 0.67, "0.95": 0.94},
    "posterior_predictive": {"draws": 100, "p_value": 0.01},
}
NLE_EXTRAS = {
    "method": "nle",
    "estimator": "maf",
    "mcmc": {
        "steps": 400,
        "walkers": 64,
        "autocorrelation_time": [5.5, 7.25],
        "burn_in": 22,
        "thin": 7,
        "acceptance_fraction": 0.375,
        "converged": True,
    },
    "evidence": {"log_z": -3.5, "log_z_err": 0.125, "information_nats": 1.5, "log_z_exact": -3.25},
}
COMPARISON = {
    "models": {
        "narrow": {"simulator": "gaussian_linear", "prior_var": 0.1},
        "wide": {"simulator": "gaussian_linear", "prior_var": 1.0},
    },
    "observation": "observation.values",
    "n_per_model": 1500,
    "loss": "cross_entropy",
    "ensemble": 2,
    "epochs": 30,
    "best_epoch": 27,
    "best_validation_loss": 0.625,
    "prior_probs": {"narrow": 0.5, "wide": 0.5},
    "probabilities": {"narrow": 0.6875, "wide": 0.3125},
    "log_bayes_factors": [{"a": "wide", "b": "narrow", "log_k": -0.75, "err": 0.0625}],
    "misspecification": {
        "score": 9.5,
        "p_value": 0.001,
        "p_values": {"narrow": 0.001, "wide": 0.002},
        "flagged_at_0.05": True,
    },
    "calibration": {
        "simulations_per_model": 300,
        "ece": {"narrow": 0.03, "wide": 0.04},
        "accuracy": 0.71,
    },
    "seconds": {"simulate_and_train": 12.5, "calibrate": 2.0, "crosscheck": 5.0},
    "crosscheck": {
        "log_evidence": {},
        "log_bayes_factors": [
            {
                "a": "wide",
                "b": "narrow",
                "classifier": -0.75,
                "classifier_err": 0.0625,
                "closed_form": {"log_k": -0.6411, "err": 0.0},
                "emulator": {"log_k": -0.5, "err": 0.125},
                "tension": 0.9,
            }
        ],
        "seconds": {},
    },
}


def folder_with(tmp_path, summary, figures=()):
    """A run folder holding ``summary.json`` and tiny, distinct PNG figures."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    for i, name in enumerate(figures):
        pixels = np.full((6, 8, 3), 0.1 * (i % 10))
        pixels[0, 0] = 1.0
        matplotlib.image.imsave(tmp_path / name, pixels)
    return tmp_path


def build(folder):
    """The report, with text cells' alignment class dropped (the cells are what is checked)."""
    return build_report(folder).replace('<td class="text">', "<td>")


def sections(html):
    return re.findall(r"<h2>([^<]*)</h2>", html)


def test_a_bare_summary_gets_only_the_sections_it_has(tmp_path):
    html = build(folder_with(tmp_path, BASE, ["corner.png", "loss.png"]))
    assert sections(html) == ["Summary", "Posterior", "Training"]
    assert "sbiflow run: two_moons, nsf posterior" in html
    assert "990 / 1,000" in html and "12 (9)" in html  # valid / run; epochs (best)
    # the parameter table, truth first
    row = re.search(r"<tr><td>theta_1</td>(.*?)</tr>", html).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["0.25", "0.125", "0.5", "-0.75", "0.875"]
    assert "C2ST" not in html and "<img" in html
    assert html.count("<img") == 2 and "<script" in html and "data-images-loaded" in html


def test_a_full_npe_summary_shows_checks_coverage_and_the_predictive_check(tmp_path):
    figures = ["corner.png", "loss.png", "coverage.png", "ranks.png", "ppc.png"]
    html = build(folder_with(tmp_path, {**BASE, **NPE_EXTRAS}, figures))
    assert sections(html) == [
        "Summary",
        "Posterior",
        "Calibration",
        "Posterior predictive check",
        "Training",
    ]
    assert "<td>C2ST vs reference (0.5: same)</td><td>0.5625</td>" in html
    assert "OVERCONFIDENT, on 500 validation simulations" in html
    assert "atypical of the fitted model" in html  # p-value 0.01
    assert html.count("<img") == len(figures)
    # each figure is the file itself, base64 inlined
    data = base64.b64encode((tmp_path / "ppc.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{data}"' in html


def test_an_nle_summary_shows_the_sampler_sections_and_a_stale_figure_does_not(tmp_path):
    figures = ["corner.png", "loss.png", "traces.png", "nested_run.png"]
    html = build(folder_with(tmp_path / "nle", {**BASE, **NLE_EXTRAS}, figures))
    assert sections(html) == [
        "Summary",
        "Posterior",
        "Evidence (nested sampling)",
        "MCMC (emcee)",
        "Training",
    ]
    assert "likelihood emulator" in html and "-3.5 ± 0.12" in html
    assert "<td>log Z (exact)</td><td>-3.25</td>" in html
    assert "<td>difference (dynesty errors)</td><td>-2</td>" in html
    assert "<td>walkers x steps</td><td>64 x 400</td>" in html and "7.25" in html
    assert html.count("<img") == 4
    # traces.png left in the folder by an earlier NLE run: an NPE summary does not show it
    stale = build(folder_with(tmp_path / "npe", BASE, ["traces.png", "nested_run.png"]))
    assert sections(stale) == ["Summary"] and "<img" not in stale


def test_predictive_check_skipped_and_diffusion_result_and_escaping(tmp_path):
    summary = {
        **BASE,
        "simulator": "<script>alert(1)</script>",
        "posterior_predictive": {"skipped": "the observation holds 5 iid trials"},
        "diffusion": {"guidance": "mmps", "samples": 1000, "pixel_residual_rms": 0.0625},
    }
    html = build(folder_with(tmp_path, summary, ["diffusion.png"]))
    assert sections(html) == ["Summary", "Posterior predictive check", "Diffusion posterior"]
    assert "Not run: the observation holds 5 iid trials" in html
    assert "<td>guidance</td><td>mmps</td>" in html and "0.0625" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html


def test_a_comparison_folder_gets_the_comparison_report(tmp_path):
    html = build(folder_with(tmp_path, COMPARISON, ["calibration.png", "loss.png"]))
    assert sections(html) == [
        "Summary",
        "Model probabilities and Bayes factors",
        "Misspecification",
        "Calibration",
        "Nested-sampling cross-check",
        "Training",
    ]
    assert "sbiflow compare: narrow, wide" in html
    assert '<td class="text">gaussian_linear</td>' in build_report(tmp_path)  # text: left
    assert "<td>narrow</td><td>0.5</td><td>0.6875</td>" in html
    assert "<td>wide / narrow</td><td>-0.75</td><td>0.0625</td><td>0.4724</td>" in html
    assert "FLAGGED at the 5% level" in html
    assert "<td>ECE, wide</td><td>0.04</td>" in html
    assert "<th>closed form</th><th>emulator</th>" in html and "<th>exact</th>" not in html
    assert "-0.6411 ± 0" in html and "-0.75 ± 0.062" in html
    assert html.count("<img") == 2
    no_check = {k: v for k, v in COMPARISON.items() if k != "crosscheck"}
    html = build(folder_with(tmp_path / "plain", no_check))
    assert "Nested-sampling cross-check" not in sections(html) and "<img" not in html


def test_sbiflow_report_rebuilds_a_folder_and_names_a_missing_summary(tmp_path, capsys):
    run = folder_with(tmp_path / "run", {**BASE, **NPE_EXTRAS}, ["corner.png", "ppc.png"])
    assert main(["report", str(run)]) == 0
    assert f"Report written to {run / 'report.html'}" in capsys.readouterr().out
    assert (run / "report.html").read_text() == build_report(run)
    assert write_report(run) == str(run / "report.html")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"No summary.json in {empty}" in err and not (empty / "report.html").exists()
    with pytest.raises(ReportError, match="No run folder at .*nowhere"):
        build_report(tmp_path / "nowhere")
    (empty / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="Cannot read .*summary.json"):
        build_report(empty)


def test_trace_plot_draws_every_parameter_and_shades_the_burn_in(tmp_path):
    from sbiflow.plots import trace_plot

    chain = np.random.default_rng(0).normal(size=(120, 40, 3))  # (steps, walkers, D)
    figure = trace_plot(chain, labels=["a", "b", "c"], burn_in=20, path=tmp_path / "t.png")
    assert (tmp_path / "t.png").is_file()
    axes = figure.axes
    assert [a.get_ylabel() for a in axes] == ["a", "b", "c"]
    assert all(len(a.lines) == 32 for a in axes)  # max_walkers of the 40
    assert all(len(a.patches) == 1 for a in axes)  # the burn-in span
    assert "32 of 40 walkers, 120 steps" in axes[0].get_title()


def test_nested_run_plot_marks_the_exact_evidence(tmp_path):
    from torch.distributions import Normal

    from sbiflow.plots import nested_run_plot
    from sbiflow.priors import BoxUniform
    from sbiflow.samplers import nested

    prior = BoxUniform(-torch.ones(2) * 5, torch.ones(2) * 5)

    def log_likelihood(theta):
        return Normal(0.0, 1.0).log_prob(theta).sum(-1)

    result = nested(log_likelihood, prior, nlive=50, dlogz=0.5, progress=False)
    log_z = float(np.log(1 / 100))  # the likelihood integrates to ~1 over the box of area 100
    figure = nested_run_plot(result.result, log_z_exact=log_z, path=tmp_path / "n.png")
    assert (tmp_path / "n.png").is_file() and len(figure.axes) == 4
    evidence = figure.axes[3]
    assert any(np.allclose(line.get_ydata(), np.exp(log_z)) for line in evidence.lines)


def test_predictive_check_is_skipped_for_iid_trials(tmp_path):
    class Model:
        x_shape = (2,)

    done = _predictive(None, Model(), torch.zeros(50, 2), torch.zeros(5, 2), 0, str(tmp_path))
    assert done == {"skipped": "the observation holds 5 iid trials"}
    assert not (tmp_path / "ppc.png").exists()
