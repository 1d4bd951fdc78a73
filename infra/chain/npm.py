"""Install a folder's pinned npm packages once (``npm ci`` from its package-lock.json).

Idempotent: a stamp inside ``node_modules`` records the hash of the lock file, so a
second call is free and a changed lock reinstalls.  Only the npm registry is used.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from pipelines.errors import PccStateError, PccTransientError

_STAMP = ".pcc-installed"


def ensure_npm_packages(folder: Path, *, timeout_s: float = 600.0) -> Path:
    """Make sure ``folder/node_modules`` matches ``folder/package-lock.json``; return it."""
    lock = folder / "package-lock.json"
    if not lock.is_file():
        raise PccStateError(f"{lock} is missing: the npm packages of {folder} are not pinned")
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    modules = folder / "node_modules"
    stamp = modules / _STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise PccStateError("npm is not installed: install Node.js 20+ (it provides npm) and retry")
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PccTransientError(f"npm ci in {folder} took more than {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PccTransientError(f"npm ci in {folder} failed (exit {proc.returncode}): " + " | ".join(tail))
    stamp.write_text(digest + "\n", encoding="utf-8")
    return modules
