"""HTTP ingest bridge throughput against the producer SDK sending the same events directly.

The same ``--events`` producer-input readings (garage maintenance records, 2,000 cars), the same real
Kafka broker, the same in-memory anchor on both sides (anchoring on a chain costs both sides the same
transaction per batch; it is measured by bench_producer):

* reference: the producer SDK in this process (validate, pseudonymise, log, checkpoint every 1,024,
  publish), events/s until Kafka acknowledged the last one;
* figure: ``pcc ingest serve`` (uvicorn, real HTTP on loopback) and a client POSTing signed JSON Lines
  batches of 1,000 one after the other, events/s until the last batch is answered (anchored, published).

Ratio: bridge / SDK (target ≥ 0.7).  ``python -m bench.bench_ingest [--scale F]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import record
from bench.stack import bench_settings, running_broker

SOURCE_KEY = "0x" + "a7" * 32


def _records(source_id: str, n: int) -> list[dict[str, Any]]:
    from pipelines.events import new_event_id
    from pipelines.vin import with_check_digit

    return [
        {
            "event_id": new_event_id(),
            "event_type": "maintenance",
            "schema_version": 1,
            "source_id": source_id,
            "vin": with_check_digit(f"WVWZZZ1KZ{i % 2000:08d}"),
            "event_time": f"2026-02-{1 + i % 28:02d}T09:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "payload": {"odometer_km": 20_000 + i, "service_type": "oil_change", "in_network": True},
        }
        for i in range(n)
    ]


def sdk(settings: Any, n: int) -> float:
    from pipelines.producer import MemoryAnchor, Producer
    from pipelines.producer.kafka import publisher_for
    from pipelines.vault import IdentityVault

    source = "garage-sdk-" + uuid.uuid4().hex[:6]
    records = _records(source, n)
    vault = IdentityVault(settings)
    producer = Producer(
        settings, source_id=source, source_kind="garage", anchor=MemoryAnchor(),
        publisher=publisher_for(settings), vault=vault,
    )  # fmt: skip
    t0 = time.perf_counter()
    producer.submit_many(enumerate(records, start=1))
    producer.flush()
    report = producer.close()
    elapsed = time.perf_counter() - t0
    vault.close()
    if report.published != n:
        raise RuntimeError(f"the SDK published {report.published} of {n}")
    return n / elapsed


def bridge(settings: Any, n: int, batch: int = 1000) -> float:
    import httpx
    import uvicorn

    from infra.procs import free_ports
    from pipelines.producer import MemoryAnchor
    from pipelines.producer.kafka import publisher_for
    from pipelines.vault import IdentityVault
    from serving.auth import RequestDomain, sign_request
    from serving.eip191 import Signer
    from serving.ingest import (
        IngestBridge,
        IngestConfig,
        MemorySources,
        RegisteredSource,
        create_ingest_app,
        request_authenticator,
    )

    source = "garage-http-" + uuid.uuid4().hex[:6]
    (port,) = free_ports(1)
    config = IngestConfig(data_dir=settings.data_dir, port=port)
    vault = IdentityVault(settings)
    sources = MemorySources({source: RegisteredSource(source, "garage", Signer(SOURCE_KEY).address)})
    ingest = IngestBridge(
        settings, config, sources=sources, anchor=MemoryAnchor(),
        publisher=publisher_for(settings, client_id="pcc-ingest"), vault=vault,
    )  # fmt: skip
    domain = RequestDomain.local(host=config.request_host)
    auth = request_authenticator(config, domain)
    server = uvicorn.Server(
        uvicorn.Config(
            create_ingest_app(config, ingest, auth), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    records = _records(source, n)
    bodies = [b"".join(orjson.dumps(r) + b"\n" for r in records[i : i + batch]) for i in range(0, n, batch)]
    path = f"/v1/events/{source}"
    accepted = 0
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False) as client:
            t0 = time.perf_counter()
            for body in bodies:
                headers = sign_request(SOURCE_KEY, "POST", path, body, domain=domain)
                answer = client.post(
                    path, content=body, headers={**headers, "content-type": "application/x-ndjson"}
                )
                answer.raise_for_status()
                accepted += answer.json()["accepted"]
            elapsed = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        vault.close()
    if accepted != n:
        raise RuntimeError(f"the bridge accepted {accepted} of {n}")
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ingest", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(2000, int(20_000 * args.scale))
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        settings = bench_settings(work / "stack")
        with running_broker(settings):
            from infra.kafka import ensure_topics

            ensure_topics(settings)
            sdk(settings, 1000)  # warm-up: imports, connections
            bridge(settings, 1000)
            direct = sdk(settings, n)
            over_http = bridge(settings, n)
        record(
            "ingest_bridge_throughput",
            {"events": n, "batch_lines": 1000, "bridge_events_per_s": round(over_http),
             "ratio_is": "bridge / producer SDK, same events, same broker, same run (target >= 0.7)"},
            {"sdk_events_per_s": round(direct)},
            over_http / direct,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
