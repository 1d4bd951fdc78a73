"""The fraud rules as they were at a past commit, loaded from git history for a same-run comparison.

``rules_at(commit)`` reads the modules of ``pipelines/rules/`` at ``commit``
(``git ls-tree``, ``git show``), writes them into a temporary package whose
imports point at itself instead of ``pipelines.rules``, and imports it.  The
benchmark then times the rules now and then on the same events in the same
run, with no copy of the old rules in the tree.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

#: The rules before issue 22 (the parent of the commit that added odometer chains).
RULES_BEFORE_ISSUE_22 = "228aa597105c7414d00e8ab27dcf680df191269a"
REPO = Path(__file__).resolve().parent.parent


class RulesUnavailableError(RuntimeError):
    """The commit is not in this clone's history (a shallow clone, or a source archive)."""


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RulesUnavailableError(
            f"git {' '.join(args)}: not in this clone's history: {detail.strip()}"
        ) from None


def rules_at(commit: str = RULES_BEFORE_ISSUE_22, repo: Path = REPO) -> ModuleType:
    """``pipelines.rules.fraud`` as it was at ``commit``, imported as a package of its own."""
    package = f"rules_at_{commit[:12]}"
    if f"{package}.fraud" in sys.modules:
        return sys.modules[f"{package}.fraud"]
    root = Path(tempfile.mkdtemp(prefix="pcc-rules-"))
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for name in _git(repo, "ls-tree", "--name-only", commit, "pipelines/rules/").split():
        if name.endswith(".py") and not name.endswith("__init__.py"):
            text = _git(repo, "show", f"{commit}:{name}")
            (root / package / Path(name).name).write_text(
                re.sub(r"\bpipelines\.rules\.", f"{package}.", text)
            )
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"{package}.fraud")
    finally:
        sys.path.remove(str(root))
        shutil.rmtree(root, ignore_errors=True)  # the modules are loaded: the files are no longer needed
