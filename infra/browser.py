"""A headless Chromium for the page tests: Debian's ``chromium`` driven by Playwright.

``ensure_chromium()`` installs the Debian package when ``/usr/bin/chromium``
is missing (``apt-get``, as root or through password-less ``sudo``) and
raises :class:`PccStateError` saying what to run when it cannot.  Playwright's
own browser download (``playwright install``) is never used: this machine
reaches package registries only.  ``python -m infra.browser`` is the
idempotent install step (``make`` calls it before the integration tests).

``launch(playwright, profile_dir)`` starts the browser headless with a fresh
profile and everything that would reach the network at start-up disabled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import PccStateError

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Playwright

CHROMIUM = Path("/usr/bin/chromium")
DEBIAN_PACKAGE = "chromium"
LAUNCH_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _apt(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise PccStateError(
                f"{CHROMIUM} is missing and this user cannot install it: run "
                f"'apt-get install -y {DEBIAN_PACKAGE}' as root"
            )
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        [*prefix, "apt-get", *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )


def ensure_chromium(timeout_s: float = 900.0) -> Path:
    """The Chromium executable, installing Debian's package first if it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise PccStateError(f"{CHROMIUM} is missing and apt-get is not available: install Chromium by hand")
    for args in (["update"], ["install", "-y", DEBIAN_PACKAGE]):
        proc = _apt(args, timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise PccStateError(f"'apt-get {' '.join(args)}' failed ({proc.returncode}): {' | '.join(tail)}")
    if not CHROMIUM.exists():
        raise PccStateError(f"apt-get installed {DEBIAN_PACKAGE} but {CHROMIUM} is still missing")
    return CHROMIUM


def launch(playwright: Playwright, profile_dir: Path) -> BrowserContext:
    """A headless Chromium with a fresh profile in ``profile_dir`` (one browser context)."""
    executable = ensure_chromium()
    profile_dir.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(profile_dir),
        executable_path=str(executable),
        headless=True,
        args=list(LAUNCH_ARGS),
        viewport={"width": 1280, "height": 900},
    )


def main() -> int:
    try:
        path = ensure_chromium()
    except PccStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"chromium: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
