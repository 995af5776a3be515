"""One self-contained ``report.html`` per run folder.

``sbiflow run`` and ``sbiflow compare`` write it at the end; ``sbiflow report RUN_DIR``
rebuilds it from the folder alone (``summary.json`` and the PNGs beside it), running
nothing. The page holds everything: CSS inline and figures as base64 ``data:`` URIs, so it
can be mailed or archived and opens offline.

What a run folder can show, each only where it applies: the summary table; ``corner.png``
(over the reference posterior); the post-fit calibration check, ``coverage.png`` and
``ranks.png``; the posterior predictive check ``ppc.png``; the evidence and dynesty's
``nested_run.png``; emcee's ``traces.png``; ``loss.png``; and a diffusion-posterior result
(a flat ``"diffusion"`` entry of ``summary.json`` and/or ``diffusion.png``). A model
comparison's folder (its summary has ``"probabilities"``) shows the model probabilities,
Bayes factors, misspecification, ``calibration.png``, the cross-check and ``loss.png``.

Example:
    >>> import json, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> summary = {"simulator": "toy", "method": "npe", "estimator": "nsf",
    ...            "posterior": {"a": {"mean": 0.1, "std": 1.0, "q05": -1.5, "q95": 1.7}}}
    >>> _ = open(f"{folder}/summary.json", "w").write(json.dumps(summary))
    >>> path = write_report(folder)
    >>> "<h2>Summary</h2>" in open(path).read()
    True
"""

from __future__ import annotations

import json
import os

from sbiflow._version import __version__
from sbiflow.report.comparison import comparison_sections, comparison_title
from sbiflow.report.html import page
from sbiflow.report.run import run_sections, run_title

__all__ = ["ReportError", "build_report", "write_report"]


class ReportError(ValueError):
    """A run folder a report cannot be built from (no folder, no or a broken summary.json)."""


def build_report(folder: str | os.PathLike) -> str:
    """The HTML of the report of a run (or model-comparison) folder.

    Args:
        folder: A folder that ``sbiflow run`` or ``sbiflow compare`` wrote.

    Returns:
        The self-contained HTML document.

    Raises:
        ReportError: When the folder or its ``summary.json`` is missing or unreadable.
    """
    folder = os.path.abspath(os.fspath(folder))
    path = os.path.join(folder, "summary.json")
    if not os.path.isdir(folder):
        raise ReportError(f"No run folder at {folder}.")
    if not os.path.isfile(path):
        raise ReportError(
            f"No summary.json in {folder}: a report is built from the summary.json (and the "
            "PNGs) that sbiflow run or sbiflow compare wrote there. Is this the output folder?"
        )
    try:
        with open(path) as handle:
            summary = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"Cannot read {path}: {err}") from err
    if not isinstance(summary, dict):
        raise ReportError(f"{path} holds a {type(summary).__name__}, not a run summary.")
    if "probabilities" in summary:
        title, sections = comparison_title(summary), comparison_sections(summary, folder)
    else:
        title, sections = run_title(summary), run_sections(summary, folder)
    return page(title, f"{folder} · sbiflow {__version__}", sections)


def write_report(folder: str | os.PathLike) -> str:
    """Write ``report.html`` into a run folder (see :func:`build_report`).

    Returns:
        The path of ``report.html``.
    """
    document = build_report(folder)
    path = os.path.join(os.path.abspath(os.fspath(folder)), "report.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(document)
    return path
