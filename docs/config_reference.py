"""The configuration reference, rendered from ``sbiflow/config.py`` so that it cannot drift.

Every section of the TOML schema is a dataclass in ``sbiflow.config``; every key is one of
its fields, with its type, default, help text and allowed values in the field's metadata.
:func:`render` turns them into Markdown. As a MkDocs hook (``hooks:`` in ``mkdocs.yml``),
:func:`on_page_markdown` puts that Markdown into ``configs.md`` where the marker
``<!-- config-reference -->`` stands. ``tests/test_docs_site.py`` checks that every key of
the schema is on the page.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from sbiflow import config as schema

MARKER = "<!-- config-reference -->"


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (a factory's product for ``dict``/``list`` defaults)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _toml(value: Any) -> str:
    """A Python value as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        items = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return "{ " + items + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    return repr(value)


def _choices(f: dataclasses.Field) -> str:
    """The allowed values of a key, or an empty string when any value of its type goes."""
    choices = f.metadata.get("choices")
    if choices is None:
        return ""
    if callable(choices):
        choices = choices()
    return ", ".join(f"`{_toml(c)}`" for c in choices)


def _cell(text: str) -> str:
    """Text that is safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(name: str, cls: type) -> str:
    """One ``[section]``: its docstring, then a table of its keys.

    Args:
        name: The section's name in the TOML file.
        cls: Its dataclass in ``sbiflow.config``.

    Returns:
        Markdown: a level-3 heading, the docstring and one table row per key.
    """
    lines = [f"### `[{name}]`", "", inspect.cleandoc(cls.__doc__ or ""), ""]
    lines += ["| key | type | default | allowed values | what it does |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        lines.append(
            f"| `{f.name}` | `{_cell(str(f.type))}` | `{_cell(_toml(_default(f)))}` "
            f"| {_cell(_choices(f))} | {_cell(help_text)} |"
        )
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference: every section of the schema, then the ``[models]`` table.

    Returns:
        Markdown for ``docs/configs.md``.
    """
    run_only = ", ".join(f"`[{s}]`" for s in schema._RUN_ONLY)
    parts = [
        "Sections in the order `sbiflow.config` checks them. Every key is optional; a key "
        "left out takes its default. A key that is not in these tables stops the run before "
        "any work (except in `[simulator]` and `[estimator]`, whose other keys are passed on "
        "as options). The types are checked as written: an `int` key does not take `2.5` or "
        "`true`.",
        "",
    ]
    for name, cls in schema._SECTIONS.items():
        parts.append(section_markdown(name, cls))
    model_keys = ", ".join(f"`{k}`" for k in schema._MODEL_KEYS)
    parts.append(
        "### `[models]`\n\n"
        "A model comparison (`sbiflow run` or `sbiflow compare`): one table per model, "
        "`name = { ... }`, at least two. In each, "
        f"{model_keys} say which simulator, as in `[simulator]` (whose keys are the shared "
        "defaults); every other key is an option of that model's simulator:\n\n"
        "```toml\n[models]\n"
        'cored = { simulator = "dwarf", model = "cored" }\n'
        'cusped = { simulator = "dwarf", model = "cusped" }\n```\n\n'
        f"With `[models]`, the sections {run_only} do not apply (a run of one simulator "
        "uses them) and `[comparison]` does; `simulation.num_simulations`, `simulation.store`, "
        "`simulation.scheduler` and `training.seed` are replaced by `comparison.n_per_model`, "
        "in-memory simulations, local workers and `simulation.seed`.\n"
    )
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: replace the marker in ``configs.md`` by :func:`render`'s Markdown.

    Args:
        markdown: The page's Markdown source.
        page: The MkDocs page.
        config: The MkDocs configuration (unused).
        files: The site's files (unused).

    Returns:
        The Markdown, with the reference in place of the marker.
    """
    if page.file.src_uri != "configs.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/configs.md lost its marker {MARKER!r}: the reference goes there.")
    return markdown.replace(MARKER, render())
