"""HTML pieces of a self-contained report: page, sections, tables, inlined figures.

Everything a page needs is in the file: CSS inline, figures as base64 ``data:`` URIs,
system fonts, no request to the network. One small inline script runs on ``load`` and
writes ``data-images-loaded="ok/total"`` on ``<body>`` (and outlines any broken figure in
red), so a browser, or a test that drives one, can tell that every figure decoded.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["figure", "fmt", "key_values", "note", "page", "row", "section", "table"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 1.5rem 2rem 4rem; color: #1b1f24;
       background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin: 0 0 0.2rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem;
     border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1rem; margin: 1rem 0 0.4rem; }
.row { display: flex; flex-wrap: wrap; gap: 0 1.5rem; align-items: flex-start; }
.meta { color: #57606a; margin: 0 0 1rem; }
table { border-collapse: collapse; margin: 0.4rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.7rem; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; }
table.kv td:last-child, td.text { text-align: left; }
figure { margin: 0.6rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.88rem; margin-top: 0.3rem; }
img.broken { outline: 3px solid #cf222e; }
.note { color: #57606a; font-style: italic; }
.bad { color: #cf222e; font-weight: 600; }
.good { color: #1a7f37; font-weight: 600; }
"""

#: Counts the figures that decoded (``complete`` with a width) once the page has loaded.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
    else { images[i].classList.add("broken"); }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
});
"""


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (integers whole); anything else as text."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "") -> str:
    """An HTML table; cells are escaped and numbers formatted with :func:`fmt`.

    Args:
        header: Column titles, length ``C``.
        rows: Rows of ``C`` cells each.
        css: Class of the table.
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    """A ``<td>``: numbers right-aligned (the default), text left-aligned."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    css = "" if number or value is None else ' class="text"'
    return f"<td{css}>{html.escape(fmt(value))}</td>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of ``(what, value)`` pairs."""
    rows = [(key, value) for key, value in pairs]
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(fmt(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def note(text: str, css: str = "note") -> str:
    """A paragraph of (escaped) text."""
    return f'<p class="{css}">{html.escape(text)}</p>'


def figure(folder: str, name: str, caption: str) -> str | None:
    """The PNG ``folder/name`` inlined as a base64 ``data:`` URI, or ``None`` if absent.

    Args:
        folder: The run folder.
        name: File name of the figure, e.g. ``"corner.png"``.
        caption: What the figure shows.
    """
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}: {html.escape(caption)}</figcaption></figure>"
    )


def row(parts: Iterable[str | None]) -> str | None:
    """The parts that exist side by side (wrapping on narrow screens), or ``None``."""
    body = [part for part in parts if part]
    return '<div class="row">' + "".join(body) + "</div>" if body else None


def section(title: str, parts: Iterable[str | None]) -> str | None:
    """An ``<h2>`` section of the parts that exist, or ``None`` when none does."""
    body = [part for part in parts if part]
    if not body:
        return None
    anchor = "".join(c if c.isalnum() else "-" for c in title.lower())
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>' + "".join(body) + "</section>"


def page(title: str, meta: str, sections: Iterable[str | None]) -> str:
    """The whole HTML document: title, a line under it, and the sections that exist."""
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script>{IMAGE_CHECK}</script></head>\n"
        f'<body><h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>\n'
        f"{body}\n</body></html>\n"
    )
