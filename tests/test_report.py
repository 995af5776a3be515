"""report.html of a real ``sbiflow run``, opened in headless Chromium.

The page must render, every inlined figure must decode (the report's own inline script
writes ``data-images-loaded="ok/total"`` on <body> once the page has loaded), and the
screenshot must not be blank. Negative controls: a report with one corrupted figure
reports it, and a blank page fails the screenshot check.

Skipped when no Chromium binary is found, unless SBIFLOW_REQUIRE_BROWSER=1 (CI), which
makes a missing browser a failure.
"""

import os
import re
import shutil
import subprocess

import matplotlib.image
import pytest

from sbiflow.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

TINY_RUN = """
[simulator]
name = "two_moons"

[simulation]
num_simulations = 1000
seed = 0

[estimator]
kind = "nsf"
hidden_features = 16
calibration = "check"

[training]
max_epochs = 4

[observation]
index = 1

[sampling]
num_samples = 300

[diagnostics]
c2st = false  # sbi's C2ST alone takes ~10 s here
coverage_tests = 30

[output]
directory = "{out}"
progress = false
"""

# A tiny run on purpose: few SBC tests and a flow that may be overconfident are expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*SBC:UserWarning"),
    pytest.mark.filterwarnings("ignore::sbiflow.inference.calibration.CalibrationWarning"),
]

#: Figures of an NPE run with coverage tests: corner, coverage, ranks, ppc, loss.
RUN_FIGURES = 5


@pytest.fixture(scope="module")
def chromium():
    """The path of a Chromium binary (skip, or fail under SBIFLOW_REQUIRE_BROWSER=1)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = (
        f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}): apt-get install chromium"
    )
    if os.environ.get("SBIFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SBIFLOW_REQUIRE_BROWSER=1 and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The output folder of a tiny NPE run (two moons, 10^3 simulations, ~8 s)."""
    tmp = tmp_path_factory.mktemp("report_run")
    config = tmp / "run.toml"
    config.write_text(TINY_RUN.format(out=tmp / "out"))
    assert main(["run", str(config)]) == 0
    return tmp / "out"


def browse(chromium, tmp_path, page, *flags):
    """Run headless Chromium on a local page; its stdout."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",  # no clash between test workers
        *flags,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def images_loaded(chromium, tmp_path, page):
    """``(ok, total)`` from the ``data-images-loaded`` the page's script sets on <body>."""
    dom = browse(chromium, tmp_path, page, "--virtual-time-budget=5000", "--dump-dom")
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', body.group(0))
    assert found is not None, f"the load script did not run: {body.group(0)}"
    return int(found.group(1)), int(found.group(2))


def screenshot(chromium, tmp_path, page, name):
    """A 1200 x 3000 screenshot of the page, as an (H, W, C) float array in [0, 1]."""
    png = tmp_path / name
    browse(chromium, tmp_path, page, f"--screenshot={png}", "--window-size=1200,3000")
    return matplotlib.image.imread(png)[..., :3]


def not_blank(pixels):
    """Whether a screenshot shows something: varied pixels, not nearly all white."""
    nonwhite = float((pixels.min(axis=-1) < 0.9).mean())
    return float(pixels.std()) > 0.05 and nonwhite > 0.02


def test_report_of_a_run_renders_with_every_figure_in_a_browser(chromium, run_dir, tmp_path):
    page = run_dir / "report.html"
    text = page.read_text()
    for title in ("Summary", "Posterior", "Calibration", "Posterior predictive check", "Training"):
        assert f"<h2>{title}</h2>" in text, title
    for title in ("MCMC (emcee)", "Evidence (nested sampling)", "Diffusion posterior"):
        assert f"<h2>{title}</h2>" not in text, title  # NPE: no sampler, no diffusion
    assert "<th>truth</th>" in text and "<h3>Check after training</h3>" in text
    # self-contained: every figure inlined, nothing fetched from anywhere
    sources = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert len(sources) == RUN_FIGURES
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"(https?:)?//|<link|@import|url\(", text)

    assert images_loaded(chromium, tmp_path, page) == (RUN_FIGURES, RUN_FIGURES)
    pixels = screenshot(chromium, tmp_path, page, "report.png")
    assert pixels.shape[:2] == (3000, 1200)
    assert not_blank(pixels), (pixels.std(), pixels.mean())


def test_the_browser_checks_catch_a_broken_figure_and_a_blank_page(chromium, run_dir, tmp_path):
    text = (run_dir / "report.html").read_text()
    marker = "data:image/png;base64,"
    corrupted = tmp_path / "corrupted.html"
    corrupted.write_text(text.replace(marker, marker + "AAAAbroken", 1))  # first figure only
    assert images_loaded(chromium, tmp_path, corrupted) == (RUN_FIGURES - 1, RUN_FIGURES)

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert not not_blank(screenshot(chromium, tmp_path, blank, "blank.png"))
