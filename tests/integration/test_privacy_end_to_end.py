"""Privacy end to end on the real broker and chain: producer SDK -> speed layer -> views -> HTTP API.

A grantee reads a protected field; after a revocation it cannot read what is
written later; a sale removes the previous owner's grants; ``pcc gdpr erase``
leaves no VIN, owner or precise location in any store, and every proof still
verifies against the chain.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

from eth_account import Account
from kafka.admin import KafkaAdminClient, NewTopic

from infra.chain.node import NodeInfo
from ledger.client import LedgerClient
from ledger.grants import ChainGrantStore
from ledger.onboarding import deploy_consortium, register_source
from pipelines.access import AccessService, ConsumerKeyPair, open_grant_store, token_info
from pipelines.errors import PccNotFoundError
from pipelines.events import format_time
from pipelines.producer import Producer, load_anchor
from pipelines.producer.kafka import KafkaPublisher
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from serving.proof import check_proof
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.serving import PRICES, RunningServer, publish_batch

pytestmark = pytest.mark.integration

PCC = [sys.executable, "-c", "import sys; from pipelines.cli.main import main; sys.exit(main())"]
VIN = "WVWZZZ1JZXW000001"
ANA = {"name": "Ana Marques Silva", "id_number": "PT-12345678"}
BRUNO = {"name": "Bruno Teixeira Costa", "id_number": "PT-87654321"}
PARIS = {"lat": 48.856613, "lon": 2.352222}
PORTO = {"lat": 41.157944, "lon": -8.629105}
SECRETS = [VIN, *ANA.values(), *BRUNO.values(), "48.856613", "2.352222", "41.157944", "8.629105"]
INSURER_KEY = "0x" + "33" * 32
OPERATOR_KEY = "0x" + "44" * 32
DAY = 86_400_000


class Platform:
    def __init__(self, broker: KafkaBroker, node: NodeInfo, data: Path) -> None:
        self.prefix = "p" + uuid.uuid4().hex[:8] + "."
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics(
            [NewTopic(self.prefix + t, 4, 1) for t in ("telemetry", "garage", "insurer")]
            + [NewTopic(self.prefix + "deadletter", 1, 1)]
        )
        admin.close()
        self.data = data
        self.settings = Settings(
            data_dir=data,
            kafka={**broker.settings.kafka.model_dump(), "topic_prefix": self.prefix},
            ledger={"rpc_url": node.url, "chain": "anvil"},
            producer={"checkpoint_every": 64, "checkpoint_seconds": 3600},
            access={"cache_s": 0.0},  # this process reads grants the CLI and the producer just wrote
        )
        deploy_consortium(self.settings)
        self.source = f"garage-net-{uuid.uuid4().hex[:6]}"
        register_source(self.settings, self.source, "garage", 2)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
        self.env.update(
            PCC__DATA_DIR=str(data),
            PCC__KAFKA__BOOTSTRAP=broker.bootstrap,
            PCC__KAFKA__TOPIC_PREFIX=self.prefix,
            PCC__LEDGER__RPC_URL=node.url,
            PCC__LEDGER__CHAIN="anvil",
        )

    def produce(self, events: list[dict[str, Any]]) -> None:
        with IdentityVault(self.settings) as vault, Producer(
            self.settings, source_id=self.source, source_kind="garage", anchor=load_anchor(self.settings),
            publisher=KafkaPublisher(self.settings.kafka.bootstrap), vault=vault,
        ) as producer:  # fmt: skip
            for event in events:
                producer.submit({"schema_version": 1, "source_id": self.source, "vin": VIN, **event})

    def pcc(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        run = subprocess.run([*PCC, *args], env=self.env, capture_output=True, timeout=180)
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        return run

    def speed(self) -> None:
        self.pcc("speed", "run", "--until-idle", "2", "--metrics-port", "0")


def sale(t: int, owner: dict[str, str], km: int) -> dict[str, Any]:
    payload = {"odometer_km": km, "new_owner": owner, "sale_price_cents": 1_450_000, "country": "PT"}
    return {"event_type": "ownership_change", "event_time": format_time(t), "payload": payload}


def service(t: int, km: int, place: dict[str, float]) -> dict[str, Any]:
    payload = {
        "odometer_km": km, "service_type": "oil_change", "in_network": True,
        "cost_cents": 18_990, "location": place,
    }  # fmt: skip
    return {"event_type": "maintenance", "event_time": format_time(t), "payload": payload}


def master_table(data: Path) -> pa.Table:
    return pa.concat_tables(
        [pq.read_table(f) for f in sorted((data / "master").glob("event_date=*/*.parquet"))]
    )


def decoded_text(path: Path) -> str:
    """What a file holds, readable: Parquet and DuckDB decoded, SQLite dumped, anything else raw."""
    raw = path.read_bytes().decode("latin-1")
    if path.suffix == ".parquet":
        return raw + json.dumps(pq.read_table(path).to_pylist(), default=str)
    if path.suffix == ".duckdb":
        con = duckdb.connect(str(path), read_only=True)
        try:
            tables = [
                r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            ]
            return raw + "".join(json.dumps(con.execute(f'SELECT * FROM "{t}"').fetchall(), default=str)
                                 for t in tables)  # fmt: skip
        finally:
            con.close()
    if path.suffix in (".sqlite", ".db"):
        con = sqlite3.connect(path)
        try:
            return raw + "\n".join(con.iterdump())
        finally:
            con.close()
    return raw


def leaks(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "kafka" not in p.parts):
        text = decoded_text(path)
        hits = [s for s in SECRETS if s in text]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture
def platform(kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path: Path) -> Iterator[Platform]:
    yield Platform(kafka_broker, anvil_node, tmp_path)


def test_grant_revoke_sale_and_erasure_end_to_end(platform: Platform) -> None:
    from serving.api import create_app
    from serving.client import PccClient
    from serving.config import ServingConfig
    from serving.pricing import InMemoryBilling

    now = int(time.time() * 1000)
    platform.produce([sale(now - 30 * DAY, ANA, 40_000), service(now - 20 * DAY, 41_300, PARIS)])
    platform.speed()
    master = master_table(platform.data).to_pylist()
    publish_batch(platform.data, "v1", master_table(platform.data))  # the batch layer's part

    vault = IdentityVault(platform.settings)
    grants = open_grant_store(platform.settings)  # a ledger is deployed: the AccessRegistry
    assert isinstance(grants, ChainGrantStore)
    chain = LedgerClient.from_settings(platform.settings)
    access = AccessService(vault, grants)
    vehicle = vault.find_vehicle(VIN)
    assert vehicle is not None and {r["vehicle"] for r in master} == {vehicle}
    operator, insurer_account = Account.from_key(OPERATOR_KEY).address, Account.from_key(INSURER_KEY).address
    billing = InMemoryBilling(PRICES, fee_bps=1000)
    billing.fund(insurer_account, 10_000_000)
    config = ServingConfig(
        data_dir=platform.data, refresh_s=0.05, settle_every_s=3600, gdpr_operators=(operator,)
    )
    insurer = ConsumerKeyPair.generate()
    sql = f"SELECT * FROM vehicle_history WHERE vehicle = '{vehicle}' ORDER BY event_time"

    def maintenance_rows(client: PccClient) -> list[dict[str, Any]]:
        return [r for r in client.query(sql).opened if r["event_type"] == "maintenance"]

    with RunningServer(create_app(config, billing, access=access)) as server, PccClient(
        server.url, OPERATOR_KEY
    ) as op, PccClient(server.url, INSURER_KEY, grant_keys=insurer) as client:  # fmt: skip
        # 1. a grantee reads a protected field (opened on its side)
        for category in ("precise_location", "commercial"):
            op.owner("owner/grants", {"vehicle": vehicle, "category": category,
                                      "grantee": insurer.public_key.hex(), "expiry_s": 4_000_000_000})  # fmt: skip
        assert chain.access.check(vehicle, "precise_location", insurer.public_key).allowed
        (first,) = maintenance_rows(client)
        assert first["payload"]["location"] == PARIS and first["payload"]["cost_cents"] == 18_990
        assert (first["lat"], first["lon"]) == (48.9, 2.4)  # the public region
        with PccClient(server.url, INSURER_KEY) as no_key:  # the same consumer without its grant key
            assert no_key.query(sql).opened[-1]["payload"]["location"].startswith("enc:v1:precise_location:")

        # 2. revoked: what is written later stays sealed
        op.owner("owner/revoke", {"vehicle": vehicle, "category": "precise_location",
                                  "grantee": insurer.public_key.hex()})  # fmt: skip
        platform.produce([service(now - 10 * DAY, 42_100, PORTO)])
        platform.speed()
        deadline = time.monotonic() + 10
        while len(rows := maintenance_rows(client)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chain.access.epoch(vehicle, "precise_location") == 2  # the speed process seals under it
        later = rows[-1]["payload"]
        assert (
            isinstance(later["location"], str) and token_info(later["location"])[1] == 2
        )  # epoch after revoke
        assert later["cost_cents"] == 18_990  # commercial is still granted

        # 3. a sale through the producer SDK removes the previous owner's grants
        assert {g.category for g in grants.grants(vehicle=vehicle)} == {"commercial"}
        platform.produce([sale(now - 5 * DAY, BRUNO, 42_500)])
        assert grants.grants(vehicle=vehicle) == []
        assert chain.access.grant_of(vehicle, "commercial", insurer.public_key) is None
        assert all(isinstance(r["payload"]["cost_cents"], str) for r in maintenance_rows(client))

        # 4. erasure: nothing left anywhere, every proof still verifies against the chain
        platform.speed()
        event_ids = [r["event_id"] for r in master_table(platform.data).to_pylist()]
        assert len(event_ids) == 4
        assert leaks(platform.data) != {}  # before erasure the vault holds them (the search finds things)
        report = json.loads(platform.pcc("gdpr", "erase", "--vin", VIN).stdout)
        assert report["stores"]["master dataset"] == 4
        assert leaks(platform.data) == {}
        for event_id in event_ids:
            proof = client.proof(event_id)
            assert proof["path_from"] == "dataset"
            check = check_proof(proof, chain.anchors)
            assert check.ok and check.inclusion, check.detail
        assert all(isinstance(r["payload"]["location"], str) for r in maintenance_rows(client))
        export = httpx.post(f"{op.base_url}/v1/gdpr/export", content=orjson.dumps({"vin": VIN}))
        assert export.status_code in (401, 404)  # unsigned: 401; signed, below: 404
        with pytest.raises(PccNotFoundError, match="no such vehicle"):
            op.owner("gdpr/export", {"vin": VIN})
    vault.close()
    grants.close()
