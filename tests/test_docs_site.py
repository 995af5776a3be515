"""The documentation: the site builds strictly, the config reference is complete, the
docstring examples run, and the public API documents its arguments and shapes."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import typing

import pytest
import torch

import sbiflow
import simulators
from sbiflow import config as schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_reference():
    """``docs/config_reference.py``, the MkDocs hook that renders the config reference."""
    path = os.path.join(ROOT, "docs", "config_reference.py")
    spec = importlib.util.spec_from_file_location("config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_keys() -> list[tuple[str, str]]:
    return [(s, f.name) for s, cls in schema._SECTIONS.items() for f in dataclasses.fields(cls)]


# ---- the site -------------------------------------------------------------------------


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: no broken link, anchor or reference; the hook ran."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner, not a warning
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    configs = (site / "configs" / "index.html").read_text()
    assert "config-reference" not in configs  # the marker was replaced
    for section, key in _schema_keys():
        assert f"<code>{key}</code>" in configs, f"{section}.{key} missing from the built page"
    api = (site / "api" / "index.html").read_text()
    for name in sbiflow.__all__:
        if name != "__version__":
            assert f'id="sbiflow.{name}"' in api, f"sbiflow.{name} has no API entry"
    assert 'id="simulators.Simulator"' in (site / "api_simulators" / "index.html").read_text()
    for page in ("collider", "dwarf", "galaxy_field", "lensing"):  # each shows its figure
        assert f"figures/{page}.png" in (site / page / "index.html").read_text()
        assert (site / "figures" / f"{page}.png").stat().st_size > 10_000
    assert (site / "results" / "npe_vs_sbi.json").exists()  # benchmarks.md links resolve


# ---- the configuration reference ------------------------------------------------------


def _section_blocks(markdown: str) -> dict[str, str]:
    parts = re.split(r"^### `\[(\w+)\]`$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_config_reference_lists_every_key_with_help():
    markdown = _config_reference().render()
    blocks = _section_blocks(markdown)
    assert set(blocks) == {*schema._SECTIONS, "models"}
    for section, key in _schema_keys():
        rows = [line for line in blocks[section].splitlines() if line.startswith(f"| `{key}` |")]
        assert len(rows) == 1, f"{section}.{key}: {len(rows)} rows in its table"
        cls = schema._SECTIONS[section]
        field = {f.name: f for f in dataclasses.fields(cls)}[key]
        assert field.metadata.get("help"), f"{section}.{key} has no help text in config.py"
        default = field.default_factory() if callable(field.default_factory) else field.default
        assert f"`{_config_reference()._toml(default)}`" in rows[0]
    for key in schema._MODEL_KEYS:
        assert f"`{key}`" in blocks["models"]


def test_config_reference_gives_the_allowed_values():
    blocks = _section_blocks(_config_reference().render())
    method = next(line for line in blocks["inference"].splitlines() if "| `method` |" in line)
    assert all(f'`"{m}"`' in method for m in schema.METHODS)
    kind = next(line for line in blocks["estimator"].splitlines() if "| `kind` |" in line)
    assert all(f'`"{k}"`' in kind for k in sbiflow.estimators.ESTIMATORS)
    loss = next(line for line in blocks["comparison"].splitlines() if "| `loss` |" in line)
    assert '`"cross_entropy"`' in loss and '`"exponential"`' in loss


def test_config_reference_hook_needs_its_marker():
    hook = _config_reference()

    class Page:
        class file:  # noqa: N801 - mimics mkdocs.structure.pages.Page.file
            src_uri = "configs.md"

    with pytest.raises(ValueError, match="marker"):
        hook.on_page_markdown("# Configuration files\n", Page, None, None)
    out = hook.on_page_markdown(f"intro\n\n{hook.MARKER}\n", Page, None, None)
    assert "### `[training]`" in out and hook.MARKER not in out


# ---- docstring examples ---------------------------------------------------------------


def _modules() -> list[str]:
    names = []
    for package in (sbiflow, simulators):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    """Every ``Example:`` block of the package runs as a doctest and prints what it says."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    failures = []
    torch.manual_seed(0)
    for test in finder.find(module, name, globs=vars(module).copy()):
        if test.examples:
            result = runner.run(test, out=failures.append)
            assert result.failed == 0, f"{test.name}:\n" + "".join(failures)
    for obj_name, docstring in _docstrings(module):
        if re.search(r"^\s*Examples?:\s*$", docstring, flags=re.MULTILINE):
            assert ">>>" in docstring, f"{obj_name}: an Example section without doctest lines"


def _docstrings(module) -> list[tuple[str, str]]:
    found = [(module.__name__, module.__doc__ or "")]
    for attr, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        found.append((f"{module.__name__}.{attr}", inspect.getdoc(obj) or ""))
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                value = getattr(value, "__func__", value)
                if inspect.isfunction(value):
                    found.append((f"{module.__name__}.{attr}.{member}", value.__doc__ or ""))
    return found


# ---- the public API documents arguments, returns and shapes ---------------------------

SECTION = re.compile(r"^\s*(Args|Returns|Yields|Attributes):\s*$", re.MULTILINE)
#: A shape as the docstrings write them: ``(N, D)``, ``(B,)``, ``(N_m, *x_shape)``, or the word.
SHAPE = re.compile(r"\(\*?\w+(?:, ?\*?\w+)+,?\)|\(\*?\w+,\)|\bshape\b|\b[a-z]_shape\b")


def _public_api() -> list[tuple[str, object]]:
    """Every callable in ``sbiflow.__all__`` and ``sbiflow.samplers.__all__``, and the
    public methods (own and inherited from sbiflow classes) of its classes."""
    names = [(n, getattr(sbiflow, n)) for n in sbiflow.__all__]
    names += [(f"samplers.{n}", getattr(sbiflow.samplers, n)) for n in sbiflow.samplers.__all__]
    api = []
    for name, obj in names:
        if inspect.ismodule(obj) or not callable(obj):
            continue
        api.append((name, obj))
        if inspect.isclass(obj) and not issubclass(obj, Exception):
            for attr in dir(obj):
                if attr.startswith("_"):
                    continue
                raw = inspect.getattr_static(obj, attr)
                raw = getattr(raw, "__func__", raw)
                if inspect.isfunction(raw) and raw.__module__.startswith("sbiflow"):
                    api.append((f"{name}.{attr}", raw))
    return api


def _takes_or_returns_tensor(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: read it as written
        hints = getattr(target, "__annotations__", {})
    return any("Tensor" in str(h) for h in hints.values())


@pytest.mark.parametrize("name,obj", _public_api(), ids=[n for n, _ in _public_api()])
def test_public_api_documents_arguments_and_shapes(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return  # an exception takes a message: its docstring says when it is raised
    assert SECTION.search(doc), f"{name}: no Args/Returns section in its docstring"
    if _takes_or_returns_tensor(obj):
        assert SHAPE.search(doc), f"{name} takes or returns tensors but states no shape"
