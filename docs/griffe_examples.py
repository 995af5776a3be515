"""A Griffe extension: read a Google ``Example:`` section as examples, like ``Examples:``.

sbiflow's docstrings head their doctests ``Example:`` (the habit of zuko and of the style
guide); Griffe reads the singular as a titled admonition, whose ``>>>`` lines would render
as Markdown quotes. Renaming the heading when the docstring is loaded renders them as code,
for every docstring written either way, with no change to the source files.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the heading of ``obj``'s docstring before it is parsed.

        Args:
            obj: The module, class, function or attribute Griffe has just loaded.
            **kwargs: The rest of the event (node, agent), unused.
        """
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
