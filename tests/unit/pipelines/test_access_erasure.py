"""GDPR: after erasure no store returns the VIN, the owner or a protected field; every proof still verifies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import merkle
from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    ParquetRows,
    SqliteGrantStore,
    erase_vehicle,
    export_subject,
    needed_keys,
    open_payload,
    row_aad,
    seal_payload,
    verify_row_inclusion,
)
from pipelines.canonical import leaf_hash
from pipelines.cli.main import main
from pipelines.dataset import MASTER_SCHEMA, region
from pipelines.errors import PccNotFoundError, PccStateError
from pipelines.events import new_event_id, parse_time_ms
from pipelines.vault import IdentityVault
from tests.fixtures.access_data import PAYLOAD

VIN = "1HGCM82633A004352"
OTHER_VIN = "1M8GDM9AXKP042788"
ANA = {"name": "Ana Lima", "id_number": "X1234567"}
SECRETS = ["INV-2026-0042", "CLM-77-1234", "48.856613", "2.352222", "18990", "1450000"]


class ServingCache:
    """A stand-in for a serving cache of opened rows: the kind of store that must forget on erasure."""

    name = "serving cache"

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def erase_vehicle(self, vehicle: str) -> int:
        gone = [k for k, r in self.rows.items() if r["vehicle"] == vehicle]
        for k in gone:
            del self.rows[k]
        return len(gone)


def producer_events(vehicle: str, owner: str) -> list[dict[str, Any]]:
    base = {
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vehicle": vehicle,
        "event_time": "2026-03-01T08:15:00.000Z",
        "ingestion_time": "2026-03-01T08:15:02.120Z",
    }
    payloads = [
        (
            "ownership_change",
            {"odometer_km": 40000, "new_owner": owner, "sale_price_cents": 1450000, "country": "PT"},
        ),
        ("maintenance", PAYLOAD),
        ("accident_declaration", {"severity": "minor", "claim_ref": "CLM-77-1234"}),
        ("odometer_reading", {"odometer_km": 41500}),
    ]
    return [{**base, "event_id": new_event_id(), "event_type": t, "payload": p} for t, p in payloads]


def master_row(
    env: dict[str, Any], sealed: dict[str, Any], index: int, leaves: list[bytes]
) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in MASTER_SCHEMA.names}
    row.update({k: env[k] for k in ("event_id", "event_type", "schema_version", "source_id", "vehicle")})
    row.update(
        event_time=parse_time_ms(env["event_time"]),
        ingestion_time=parse_time_ms(env["ingestion_time"]),
        processed_time=parse_time_ms(env["ingestion_time"]),
        odometer_km=env["payload"].get("odometer_km"),
        payload=orjson.dumps(sealed).decode(),
        leaf_hash=leaves[index].hex(),
        log_index=index,
        tree_size=len(leaves),
        root=merkle.root(leaves).hex(),
        verification="verified",
        quality=1.0,
        q_source=1.0,
        q_proof=1.0,
        q_consistency=1.0,
        q_timeliness=1.0,
        q_completeness=1.0,
        flags=[],
        topic="pcc.garage",
        partition=0,
        offset=index,
        event_date=env["event_time"][:10],
    )
    return row


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[dict[str, Any]]:
    vault = IdentityVault(tmp_path / "vault" / "identity.sqlite")
    grants = SqliteGrantStore(tmp_path / "vault" / "grants.sqlite")
    service = AccessService(vault, grants)
    vehicle = vault.pseudonymize_vehicle(VIN)
    owner = vault.pseudonymize_owner(ANA)
    vault.record_ownership(vehicle, owner, since_ms=1)
    neighbour = vault.pseudonymize_vehicle(OTHER_VIN)
    events = producer_events(vehicle, owner) + producer_events(neighbour, owner)[3:]
    leaves = [leaf_hash(e) for e in events]  # the producer's log, over plaintext envelopes
    rows = []
    for i, env in enumerate(events):
        sealed = seal_payload(
            env["event_type"],
            1,
            env["payload"],
            service.keys.key_for(env["vehicle"]),
            row_aad(env["vehicle"], env["event_id"]),
        )
        rows.append(master_row(env, sealed, i, leaves))
    table = pa.Table.from_pylist(rows, schema=MASTER_SCHEMA)
    for view in ("master/event_date=2026-03-01", "realtime"):
        (tmp_path / view).mkdir(parents=True)
        pq.write_table(table, tmp_path / view / "seg-1.parquet", compression="none")
    insurer = ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, vehicle, "commercial", 4_000_000_000)
    cache = ServingCache()
    cache.rows = {r["event_id"]: {**r, "payload": e["payload"]} for r, e in zip(rows, events, strict=True)}
    yield {
        "vault": vault,
        "grants": grants,
        "service": service,
        "vehicle": vehicle,
        "owner": owner,
        "events": events,
        "leaves": leaves,
        "cache": cache,
        "insurer": insurer,
        "views": [
            ParquetRows(tmp_path / "master", "master dataset"),
            ParquetRows(tmp_path / "realtime", "rt"),
        ],
    }
    vault.close()
    grants.close()


def every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_export_gives_the_subject_everything_in_plaintext(platform: dict[str, Any]) -> None:
    data = export_subject(VIN, platform["vault"], platform["views"])
    assert data["subject"]["vin"] == VIN
    assert data["subject"]["owners"][0]["identity"] == {"id_number": "X1234567", "name": "ana lima"}
    mine = [e for e in platform["events"] if e["vehicle"] == platform["vehicle"]]
    assert len(data["events"]) == 2 * len(mine)  # master dataset and real-time view
    by_id = {e["event_id"]: e["payload"] for e in mine}
    assert all(row["payload"] == by_id[row["event_id"]] for row in data["events"])
    assert platform["vault"].audit_entries(1)[0]["action"] == "export"


def test_after_erasure_no_store_returns_the_vin_owner_or_protected_fields(
    platform: dict[str, Any], tmp_path: Path
) -> None:
    vault, vehicle, owner = platform["vault"], platform["vehicle"], platform["owner"]
    plaintexts = [VIN, "Ana Lima", "ana lima", "X1234567", owner, *SECRETS]
    before = every_byte(tmp_path)
    assert all(p.encode() in before for p in [VIN, "ana lima", "X1234567"])  # in the vault
    assert [p for p in SECRETS if p.encode() in before] == []  # protected fields are sealed at rest
    assert "CLM-77-1234" in str(platform["cache"].rows)  # a cache of opened rows holds them in clear

    report = erase_vehicle(
        VIN, vault, [platform["grants"], platform["service"].keys, platform["cache"], *platform["views"]]
    )
    assert report.vehicle == vehicle
    assert report.stores["serving cache"] == 4 and report.stores["grants (sqlite)"] == 1
    assert report.stores["master dataset"] == 4

    after = every_byte(tmp_path)  # vault, grants, master dataset, real-time view: every file on disk
    assert [p for p in plaintexts if p.encode() in after] == []
    assert [p for p in [*plaintexts, vehicle] if p in str(platform["cache"].rows)] == []
    assert platform["grants"].grants(vehicle=vehicle) == []
    with pytest.raises(PccNotFoundError):
        export_subject(VIN, vault, platform["views"])

    # the sealed rows are still there, and nothing opens them any more
    rows = platform["views"][0].rows_for(vehicle)
    assert len(rows) == 4
    for row in [r for r in rows if needed_keys(r["event_type"], 1, orjson.loads(r["payload"]))]:
        with pytest.raises(AccessDenied, match="erased"):
            open_payload(
                row["event_type"],
                1,
                orjson.loads(row["payload"]),
                platform["service"].keys.key_lookup(vehicle),
                row_aad(vehicle, row["event_id"]),
            )
    with pytest.raises(AccessDenied, match="no grant"):
        platform["service"].wrapped_keys(platform["insurer"].public_key, vehicle, [("commercial", 0)])

    # every proof still verifies against the anchored roots
    leaves = platform["leaves"]
    for view in platform["views"]:
        for row in [*view.rows_for(vehicle), *view.rows_for(platform["events"][-1]["vehicle"])]:
            verify_row_inclusion(row, merkle.inclusion_proof(leaves, row["log_index"]))

    # the other car of the same owner is untouched
    assert export_subject(OTHER_VIN, vault, platform["views"])["events"][0]["payload"] == {
        "odometer_km": 41500
    }
    audit = vault.audit_entries()
    assert {"erase", "erase_stores"} <= {e["action"] for e in audit}
    assert all(p not in str(audit) for p in plaintexts)


def test_erasure_of_an_unknown_vin_is_refused_and_logged(platform: dict[str, Any]) -> None:
    vault = platform["vault"]
    with pytest.raises(PccNotFoundError, match="no such vehicle"):
        erase_vehicle("5YJ3E1EA2KF317000", vault, [])
    entry = vault.audit_entries(1)[0]
    assert entry["action"] == "erase_refused" and "5YJ3E1EA2KF317000" not in str(entry)
    with pytest.raises(ValueError, match="vin"):
        erase_vehicle("not a vin", vault, [])


def test_a_store_holding_plaintext_stops_the_erasure_before_the_vault(
    platform: dict[str, Any], tmp_path: Path
) -> None:
    vault, vehicle = platform["vault"], platform["vehicle"]
    leaky = [r for r in platform["views"][0].rows_for(vehicle) if r["event_type"] == "maintenance"]
    leaky[0]["lat"], leaky[0]["lon"] = 48.856613, 2.352222  # a writer that lifted the location in clear
    (tmp_path / "leaky").mkdir()
    pq.write_table(pa.Table.from_pylist(leaky, schema=MASTER_SCHEMA), tmp_path / "leaky" / "seg.parquet")
    with pytest.raises(PccStateError, match=r"1 of 1 rows .* plaintext"):
        erase_vehicle(VIN, vault, [ParquetRows(tmp_path / "leaky", "leaky view")])
    assert vault.find_vehicle(VIN) == vehicle  # untouched: the request can be repeated once fixed
    assert vault.audit_entries(1)[0]["action"] == "erase_incomplete"


def test_a_view_keeping_only_the_region_is_erasable(platform: dict[str, Any], tmp_path: Path) -> None:
    vault, vehicle = platform["vault"], platform["vehicle"]
    rows = platform["views"][0].rows_for(vehicle)
    for row in rows:
        row["lat"], row["lon"] = region(48.856613), region(2.352222)  # 48.9, 2.4: what the speed layer keeps
    (tmp_path / "regions").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=MASTER_SCHEMA), tmp_path / "regions" / "seg.parquet")
    report = erase_vehicle(VIN, vault, [ParquetRows(tmp_path / "regions", "region view")])
    assert report.stores == {"region view": len(rows)}
    assert vault.find_vehicle(VIN) is None


def test_cli_erase_export_and_grants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PCC__DATA_DIR", str(tmp_path))
    with IdentityVault(tmp_path / "vault" / "identity.sqlite") as vault:
        vehicle = vault.pseudonymize_vehicle(VIN)
        vault.record_ownership(vehicle, vault.pseudonymize_owner(ANA))
    assert main(["grant", "keygen", "--out", str(tmp_path / "insurer.key")]) == 0
    public = capsys.readouterr().out.strip()
    assert main(["grant", "create", "--vin", VIN, "--category", "commercial", "--grantee", public]) == 0
    assert orjson.loads(capsys.readouterr().out)["vehicle"] == vehicle
    assert main(["grant", "list", "--vin", VIN]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(g["grantee"], g["category"], g["grantor"]) for g in listed] == [(public, "commercial", "owner")]
    assert main(["grant", "create", "--vin", VIN, "--category", "mileage", "--grantee", public]) == 2
    assert "not protected" in capsys.readouterr().err
    assert main(["gdpr", "export", "--vin", VIN]) == 0
    assert orjson.loads(capsys.readouterr().out)["subject"]["vin"] == VIN
    assert main(["grant", "revoke", "--vin", VIN, "--category", "commercial", "--grantee", public]) == 0
    assert "epoch 1" in capsys.readouterr().out
    assert main(["gdpr", "erase", "--vin", VIN]) == 0
    assert orjson.loads(capsys.readouterr().out)["vehicle"] == vehicle
    assert main(["gdpr", "erase", "--vin", VIN]) == 3
    assert "no such vehicle" in capsys.readouterr().err
    assert main(["gdpr", "audit", "--limit", "3"]) == 0
    assert VIN not in capsys.readouterr().out
