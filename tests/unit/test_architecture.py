"""Dependencies point one way: what every layer shares (pipelines/) imports no layer,
and the serving layer never pulls in the heavy engines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("batch", "speed", "serving", "ledger", "infra")


def imported_modules(package: str) -> list[tuple[str, str]]:
    """(file, top-level module) for every import in a package."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name.split(".")[0]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_the_shared_package_imports_no_layer():
    offenders = [(f, m) for f, m in imported_modules("pipelines") if m in LAYERS]
    assert offenders == []


@pytest.mark.parametrize("engine", ["pyspark", "apache_beam"])
def test_the_serving_layer_never_imports_a_heavy_engine(engine):
    offenders = [(f, m) for f, m in imported_modules("serving") if m == engine]
    assert offenders == []


def test_the_speed_and_batch_layers_do_not_import_each_other():
    assert [(f, m) for f, m in imported_modules("speed") if m == "batch"] == []
    assert [(f, m) for f, m in imported_modules("batch") if m == "speed"] == []


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("serving.client", ("fastapi", "starlette", "uvicorn", "duckdb")),  # a consumer installs neither
        ("serving.paid", ("fastapi", "starlette", "uvicorn")),  # the paid path knows no web framework
        ("serving.sealed", ("fastapi", "starlette", "duckdb")),
    ],
)
def test_what_a_module_pulls_in_at_import(module: str, absent: tuple[str, ...]) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("package", ("pipelines", *LAYERS))
def test_no_shipped_package_imports_the_tests(package: str) -> None:
    """Test helpers live under tests/: what ships never needs them."""
    assert [(f, m) for f, m in imported_modules(package) if m == "tests"] == []
