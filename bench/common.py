"""What every benchmark shares: :func:`record` prints one result line and keeps it.

Results are merged by name into ``bench/results/latest.json`` (an object
``{name: {"figures": ..., "reference": ..., "ratio": ..., "recorded_at": ...,
"python": ..., "machine": ...}}``) and the file is rewritten atomically under
a lock, so benchmarks running side by side do not lose each other's lines.
``bench/results/latest.md`` is regenerated from it as a Markdown table.

Convention: ``figures`` are what was measured, ``reference`` the same-run
baseline it is compared to (e.g. raw hashlib on the same bytes), ``ratio`` the
figure divided by the reference (say how in a ``ratio_is`` key of ``figures``).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _fmt(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "-"
    parts = []
    for key, value in figures.items():
        parts.append(f"{key}={value:,.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def record(
    name: str,
    figures: dict[str, Any],
    reference: dict[str, Any] | None = None,
    ratio: float | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Print ``name: figures | reference | ratio`` and merge it into ``latest.json``; returns the entry."""
    entry = {
        "figures": figures,
        "reference": reference,
        "ratio": ratio,
        "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }
    ratio_text = f" | ratio {ratio:.3g}" if ratio is not None else ""
    print(f"{name}: {_fmt(figures)} | reference: {_fmt(reference)}{ratio_text}", flush=True)

    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = out_dir / "latest.json"
    with open(out_dir / "latest.lock.tmp", "w") as lock:  # *.tmp is git-ignored
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            results = json.loads(latest.read_text()) if latest.exists() else {}
        except json.JSONDecodeError:
            print(f"warning: {latest} was not valid JSON; starting it again", file=sys.stderr)
            results = {}
        results[name] = entry
        _write(latest, json.dumps(results, indent=2, sort_keys=True) + "\n")
        _write(out_dir / "latest.md", _markdown(results))
    return entry


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _markdown(results: dict[str, Any]) -> str:
    lines = ["| benchmark | figures | reference | ratio | recorded |", "|---|---|---|---|---|"]
    for name in sorted(results):
        e = results[name]
        ratio = "" if e.get("ratio") is None else f"{e['ratio']:.3g}"
        lines.append(
            f"| {name} | {_fmt(e.get('figures'))} | {_fmt(e.get('reference'))} | {ratio} | {e.get('recorded_at', '')} |"
        )
    return "\n".join(lines) + "\n"


def funded_serving_app(data: Path, access: Any, prices: dict[str, int], consumer_key: str) -> Any:
    """The serving API over ``data`` for one consumer key, funded, billing in memory, settling never.

    The consumer sends every query back to back: its per-account rate limit is lifted.
    """
    from eth_account import Account

    from serving.api import create_app
    from serving.config import ServingConfig
    from serving.market.pricing import InMemoryBilling

    billing = InMemoryBilling(prices, fee_bps=1000)
    billing.fund(Account.from_key(consumer_key).address, 10**12)
    config = ServingConfig(data_dir=data, settle_every_s=3600, rate_per_s=1e9, rate_burst=10**9)
    return create_app(config, billing, background=False, access=access)
