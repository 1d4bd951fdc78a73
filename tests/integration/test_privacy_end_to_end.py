"""Privacy end to end on the real broker and chain: producer SDK -> speed layer -> views -> HTTP API.

Events are sealed at the producer (contract version 2): the raw bytes of the
Kafka log segments (event topic and dead letters), the producer's spool, the
master and real-time Parquet, the serving files, receipts and every log hold
no protected value, before and after an erasure; only the vault does until
the erasure.  A grantee opens a protected field and verifies it against its
commitment, the leaf and the anchored root; a non-grantee's brute force over
10,000 candidate locations around the public region matches no commitment and
no leaf.  After a revocation the grantee cannot read what is written later; a
sale removes the previous owner's grants; ``pcc gdpr erase`` leaves no VIN,
owner or precise location anywhere, nothing opens, and every proof still
verifies against the chain.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from hashlib import sha256
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
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from infra.chain.node import NodeInfo
from ledger.client import LedgerClient
from ledger.grants import ChainGrantStore
from ledger.onboarding import deploy_consortium, register_source
from pipelines.access import (
    AccessService,
    ConsumerKeyPair,
    GranteeKeys,
    open_grant_store,
    open_held,
    public_envelope,
    row_aad,
    token_commitment,
    token_info,
    verify_opened_row,
    verify_public_row,
)
from pipelines.canonical import canonical_bytes, leaf_hash
from pipelines.dataset import master_files
from pipelines.errors import PccNotFoundError
from pipelines.events import format_time, new_event_id
from pipelines.events.commitments import commitment
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
PRICE, COST = 1_450_000, 18_990
SECRETS = [
    VIN,
    *ANA.values(),
    *BRUNO.values(),
    "48.856613",
    "2.352222",
    "41.157944",
    "8.629105",
    "1450000",
    "18990",
]
MARKER = 77_777_01  # the cost a misbehaving producer sends in clear (it never reaches a dead letter)
INSURER_KEY = "0x" + "33" * 32
OPERATOR_KEY = "0x" + "44" * 32
DAY = 86_400_000


class Platform:
    def __init__(self, broker: KafkaBroker, node: NodeInfo, data: Path) -> None:
        self.broker = broker
        self.logs: list[str] = []  # stdout and stderr of every command run
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
        self.logs.append(run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace"))
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        return run

    def kafka_files(self) -> list[Path]:
        """The broker's log segments (and indexes) of this test's topics, and the broker's own logs."""
        paths = self.broker.broker.paths
        topics = [d for d in paths.data.iterdir() if d.is_dir() and d.name.startswith(self.prefix)]
        return [f for d in topics for f in d.rglob("*") if f.is_file()] + [
            f for f in paths.logs.rglob("*") if f.is_file()
        ]

    def send_raw(self, topic: str, envelope: dict[str, Any]) -> None:
        """What a producer that bypasses the SDK sends."""
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        producer.send(self.prefix + topic, orjson.dumps(envelope)).get(timeout=30)
        producer.close()

    def dead_letters(self) -> list[Any]:
        consumer = KafkaConsumer(
            self.prefix + "deadletter", bootstrap_servers=self.broker.bootstrap,
            auto_offset_reset="earliest", consumer_timeout_ms=3000,
        )  # fmt: skip
        try:
            return list(consumer)
        finally:
            consumer.close()

    def speed(self) -> None:
        self.pcc("speed", "run", "--until-idle", "2", "--metrics-port", "0")


def sale(t: int, owner: dict[str, str], km: int) -> dict[str, Any]:
    payload = {"odometer_km": km, "new_owner": owner, "sale_price_cents": PRICE, "country": "PT"}
    return {"event_type": "ownership_change", "event_time": format_time(t), "payload": payload}


def service(t: int, km: int, place: dict[str, float]) -> dict[str, Any]:
    payload = {
        "odometer_km": km, "service_type": "oil_change", "in_network": True,
        "cost_cents": COST, "location": place,
    }  # fmt: skip
    return {"event_type": "maintenance", "event_time": format_time(t), "payload": payload}


def master_table(data: Path) -> pa.Table:
    return pa.concat_tables(
        [pq.read_table(f) for f in master_files(data / "master")]
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


def leaks(root: Path, secrets: list[str], files: list[Path] | None = None) -> dict[str, list[str]]:
    """Which files hold which secrets (decoded where a format hides text, raw bytes always)."""
    found: dict[str, list[str]] = {}
    for path in sorted(files if files is not None else (p for p in root.rglob("*") if p.is_file())):
        text = decoded_text(path)
        hits = [s for s in secrets if s in text]
        if hits:
            found[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = hits
    return found


def outside_vault(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {path: hits for path, hits in found.items() if not path.startswith("vault/")}


def brute_force(row: dict[str, Any], candidates: list[dict[str, float]]) -> list[int]:
    """A non-grantee's search: each candidate location hashed every way it could have been committed.

    As a value in clear in the hashed envelope (what version 1 allowed), as an
    unsalted or zero-salted commitment, against the row's location commitment
    and its leaf hash.  Returns the indexes of the candidates that matched.
    """
    stored = orjson.loads(row["payload"])
    target = token_commitment(stored["location"])
    public = public_envelope(row)
    hits = []
    for i, place in enumerate(candidates):
        guesses = {"cm:" + sha256(canonical_bytes(place)).hexdigest(), commitment(bytes(16), place)}
        if target in guesses:
            hits.append(i)
            continue
        for guess in (place, *guesses):
            env = {**public, "payload": {**public["payload"], "location": guess}}
            if leaf_hash(env).hex() == row["leaf_hash"]:
                hits.append(i)
    return hits


def around(region: tuple[float, float], n: int = 10_000) -> list[dict[str, float]]:
    """``n`` candidate places in the 0.1 degree region, the true one among them (the attacker guessed right)."""
    side = int(n**0.5)
    grid = [
        {
            "lat": round(region[0] - 0.05 + 0.1 * i / side, 6),
            "lon": round(region[1] - 0.05 + 0.1 * j / side, 6),
        }
        for i in range(side)
        for j in range(side)
    ]
    return [PARIS, *grid[: n - 1]]


@pytest.fixture
def platform(kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path: Path) -> Iterator[Platform]:
    yield Platform(kafka_broker, anvil_node, tmp_path)


def test_grant_revoke_sale_and_erasure_end_to_end(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    from serving.api import create_app
    from serving.client import PccClient
    from serving.config import ServingConfig
    from serving.market.pricing import InMemoryBilling

    caplog.set_level(logging.INFO)
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
    assert {r["schema_version"] for r in master} == {2}  # sealed at the producer
    secrets = [*SECRETS, str(vault.current_owner(vehicle))]  # the owner pseudonym is owner_identity too
    # a producer that bypasses the SDK sends a cost in clear on version 2: refused, and not kept
    bad = {"event_id": new_event_id(), "event_type": "maintenance", "schema_version": 2,
           "source_id": platform.source, "vehicle": vehicle, "event_time": format_time(now - DAY),
           "ingestion_time": format_time(now - DAY),
           "payload": {"odometer_km": 41_000, "service_type": "other", "in_network": False, "cost_cents": MARKER},
           "proof": {"log_index": 0, "tree_size": 1, "root": "0" * 64, "path": [], "leaf": "0" * 64}}  # fmt: skip
    platform.send_raw("garage", bad)
    platform.speed()
    (letter,) = platform.dead_letters()
    headers = dict(letter.headers)
    assert headers["pcc-reason"] == b"bad_schema" and b"$.payload.cost_cents" in headers["pcc-detail"]
    assert (
        str(MARKER).encode() not in letter.value
        and orjson.loads(letter.value)["payload"]["cost_cents"] == "redacted"
    )
    in_kafka = leaks(platform.data, [*secrets, str(MARKER)], platform.kafka_files())
    assert list(in_kafka.values()) == [[str(MARKER)]]  # only where the misbehaving producer wrote it
    assert "garage" in next(iter(in_kafka)) and "deadletter" not in next(iter(in_kafka))
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
        assert first["payload"]["location"] == PARIS and first["payload"]["cost_cents"] == COST
        assert (first["lat"], first["lon"]) == (48.9, 2.4)  # the public region
        # the grantee checks what it opened: commitments from the salts, the leaf, the anchored root
        answer = client.query(sql)
        (raw,) = [r for r in answer.rows if r["event_type"] == "maintenance"]
        ring = GranteeKeys(insurer, vehicle)
        ring.add_all(answer.wrapped_keys[vehicle])
        salts: dict[str, bytes] = {}
        opened = open_held("maintenance", 2, orjson.loads(raw["payload"]), ring.ciphers,
                           row_aad(vehicle, raw["event_id"]), salts=salts)  # fmt: skip
        assert opened["location"] == PARIS
        verify_opened_row(raw, opened, raw["proof_path"], salts=salts)
        assert chain.anchors.root_at(platform.source, raw["tree_size"]).hex() == raw["root"]
        # a non-grantee: 10,000 candidate places around the public region, the right one among them
        candidates = around((raw["lat"], raw["lon"]))
        assert len(candidates) == 10_000 and brute_force(raw, candidates) == []
        # (with the salt, that one search finds the place: the commitment hides it, nothing else)
        assert commitment(salts["$.payload.location"], candidates[0]) == token_commitment(
            orjson.loads(raw["payload"])["location"]
        )
        with PccClient(server.url, INSURER_KEY) as no_key:  # the same consumer without its grant key
            assert no_key.query(sql).opened[-1]["payload"]["location"].startswith("enc:v2:precise_location:")
        # the proof endpoint: what the public view shows, and the leaf rebuilt from public fields + commitments
        proof = client.proof(raw["event_id"])
        assert set(proof) <= set(raw) | {"path", "path_from"} and proof["leaf_hash"] == raw["leaf_hash"]
        assert leaf_hash(public_envelope(raw)).hex() == proof["leaf_hash"]
        assert not [s for s in secrets if s in json.dumps(proof)]

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
        assert later["cost_cents"] == COST  # commercial is still granted

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
        before = leaks(platform.data, secrets)
        assert (
            before != {} and outside_vault(before) == {}
        )  # only the vault holds them (the search finds them)
        assert leaks(platform.data, secrets, platform.kafka_files()) == {}
        report = json.loads(platform.pcc("gdpr", "erase", "--vin", VIN).stdout)
        assert report["stores"]["master dataset"] == 4
        assert leaks(platform.data, secrets) == {}
        assert leaks(platform.data, secrets, platform.kafka_files()) == {}
        for event_id in event_ids:
            proof = client.proof(event_id)
            assert proof["path_from"] == "dataset"
            check = check_proof(proof, chain.anchors)
            assert check.ok and check.inclusion, check.detail
        after = client.query(sql)
        assert after.wrapped_keys == {}  # the keys, and the salts sealed under them, are gone
        for row in after.rows:  # anyone still checks every row's public fields and commitments
            verify_public_row(row, row["proof_path"])
        assert brute_force(next(r for r in after.rows if r["event_type"] == "maintenance"), candidates) == []
        assert all(isinstance(r["payload"]["location"], str) for r in maintenance_rows(client))
        export = httpx.post(f"{op.base_url}/v1/gdpr/export", content=orjson.dumps({"vin": VIN}))
        assert export.status_code in (401, 404)  # unsigned: 401; signed, below: 404
        with pytest.raises(PccNotFoundError, match="no such vehicle"):
            op.owner("gdpr/export", {"vin": VIN})
    vault.close()
    grants.close()
    logged = "\n".join([*platform.logs, caplog.text])
    assert not [s for s in secrets if s in logged]
