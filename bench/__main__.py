"""Run every benchmark module ``bench/bench_*.py``: ``python -m bench [--scale F] [--only NAME ...]``.

Each module exposes ``main(argv=None)`` and accepts ``--scale`` (1.0 = the
documented target size).  A failing module is reported and the others still
run; the exit code is the number of failures.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def modules() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="workload size factor passed to every module"
    )
    parser.add_argument("--only", nargs="*", default=None, help="module names (bench_merkle or merkle)")
    args = parser.parse_args(argv)
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only} if args.only else None
    if wanted is not None and (unknown := wanted - set(modules())):
        parser.error(f"no benchmark module {', '.join(sorted(unknown))}; have {', '.join(modules())}")
    failures = 0
    for name in modules():
        if wanted is not None and name not in wanted:
            continue
        print(f"== {name} (scale {args.scale})", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            code = module.main(["--scale", str(args.scale)])
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            failures += 1
            print(f"!! {name} failed (exit {code})", file=sys.stderr, flush=True)
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
