"""Onboarding many producers: one process for the fleet against one process per source.

Figures (``python -m bench --only onboarding [--scale F]``), against an anvil
node started for the run:

- ``pcc ledger register-sources FILE`` for 121 sources (scale 1; the held-out
  fleet of issue 19) in one process, against the same number registered one
  ``pcc ledger register-source`` process at a time, measured on a sample of
  processes and scaled up (the reference).

How fast ``pcc`` itself starts is measured by ``bench/bench_cli.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import record
from infra.chain import node
from ledger.onboarding import deploy_consortium
from pipelines.settings import LedgerSettings, Settings

PCC = str(Path(sys.executable).with_name("pcc"))


def _run(args: list[str], config: Path | None = None) -> float:
    started = time.perf_counter()
    cmd = [PCC, *(["--config", str(config)] if config else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    sources = max(8, int(121 * args.scale))
    sample = max(3, min(8, sources // 10))
    with tempfile.TemporaryDirectory(prefix="pcc-bench-onboarding-") as tmp:
        root = Path(tmp)
        state = root / "anvil"
        info = node.start("anvil", node.free_port(), state)
        try:
            config = root / "pcc.toml"
            config.write_text(f'data_dir = "{root}"\n[ledger]\nrpc_url = "{info.url}"\nchain = "anvil"\n')
            deploy_consortium(Settings(data_dir=root, ledger=LedgerSettings(rpc_url=info.url, chain="anvil")))
            csv_file = root / "sources.csv"
            rows = [f"bulk-{i:04d},garage,{1 + i % 4}" for i in range(sources)]
            csv_file.write_text("source_id,kind,tier\n" + "\n".join(rows) + "\n")
            bulk_s = _run(["ledger", "register-sources", str(csv_file)], config)
            one_s = [
                _run(["ledger", "register-source", f"single-{i:04d}", "--kind", "garage"], config)
                for i in range(sample)
            ]
        finally:
            node.stop(state)
    per_process = statistics.median(one_s)
    reference_s = per_process * sources
    record(
        "ledger_register_sources",
        {
            "sources": sources,
            "one_process_s": round(bulk_s, 2),
            "per_source_ms": round(1000 * bulk_s / sources, 1),
        },
        {
            "one_process_per_source_s": round(per_process, 2),
            "sampled_processes": sample,
            "all_sources_one_by_one_s": round(reference_s, 1),
        },
        ratio=reference_s / bulk_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
