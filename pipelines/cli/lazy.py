"""The help line of a layer's command, read from its source without importing it.

``pcc --help`` lists every layer mounted under the ``pcc.commands`` entry
points.  Importing them all to read one line each would import their packages
too (a package's ``__init__`` may pull in DuckDB, Arrow or the settings model),
and cost seconds.  The line is in the source: the ``help=`` of the layer's
``typer.Typer(...)``, or the docstring of its command function.  When it is not
there as a literal, :func:`help_from_source` returns ``None`` and the root
imports the layer as before.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import EntryPoint
from pathlib import Path


def module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found from its top package alone (no parent package imported)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level package: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        base = Path(location).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def help_from_source(ep: EntryPoint) -> str | None:
    """The help text ``ep`` would show in ``pcc --help``, or ``None`` when it is not a literal in the source."""
    module, _, attr = ep.value.partition(":")
    path = module_file(module.strip())
    if path is None or not attr:
        return None
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    name = attr.strip()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_docstring(node)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            call = node.value
            if isinstance(call, ast.Call):
                for keyword in call.keywords:
                    if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                        value = keyword.value.value
                        return value if isinstance(value, str) else None
            return None
    return None
