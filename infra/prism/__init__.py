"""Beam's Prism runner (the portable local runner of Beam, in Go), built from the Go module proxy on first use.

``ensure_prism()`` returns the path of the ``prism`` binary, building it with
``go install github.com/apache/beam/sdks/v2/go/cmd/prism@<PRISM_VERSION>``
into ``infra/prism/.cache/bin`` (git-ignored) the first time; ``make prism``
does the same.  The version follows the Beam Python SDK the speed layer uses.
The first build downloads and compiles a few hundred Go modules: about 15
minutes on the 2-core development machine under load, seconds afterwards
(Go's module and build caches).

    python -m infra.prism      # build if missing, print the path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.errors import PccError

PRISM_VERSION = "v2.77.0"
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
BIN_DIR = Path(__file__).resolve().parent / ".cache" / "bin"


class PrismBuildError(PccError, RuntimeError):
    """Prism could not be built (no Go toolchain, or the build failed)."""


def prism_path(bin_dir: Path = BIN_DIR) -> Path:
    return bin_dir / "prism"


def ensure_prism(bin_dir: Path = BIN_DIR, *, quiet: bool = True) -> Path:
    """The Prism binary, built on first use; a clear error if Go is missing or the build fails."""
    binary = prism_path(bin_dir)
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise PrismBuildError("Go (1.22 or newer) is needed to build Beam's Prism runner; none is on PATH")
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bin_dir)}
    done = subprocess.run(
        [go, "install", f"{PRISM_MODULE}@{PRISM_VERSION}"],
        env=env,
        capture_output=quiet,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not binary.is_file():
        tail = "\n".join(((done.stdout or "") + (done.stderr or "")).strip().splitlines()[-15:])
        raise PrismBuildError(f"building Prism {PRISM_VERSION} failed (exit {done.returncode}):\n{tail}")
    return binary


if __name__ == "__main__":  # pragma: no cover - `make prism`
    print(ensure_prism(quiet=False))
    sys.exit(0)
