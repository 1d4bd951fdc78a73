"""The passport's 'verify' link: good events verify, tampered ones do not, and the routes say why."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from pipelines import canonical, merkle
from pipelines.errors import PccTransientError
from pipelines.vault import IdentityVault
from serving.passport import (
    InMemoryPassportSource,
    InMemoryRoots,
    LeafFilePaths,
    VaultOwnerAccess,
    passport_router,
)
from serving.passport.access import token_digest
from serving.passport.errors import ChainUnavailableError
from serving.passport.verify import verify_event
from tests.fixtures.passport_history import OTHER, UNANCHORED_SOURCES, VEHICLE, History, build_history

VIN = "1HGCM82633A004352"


@pytest.fixture(scope="module")
def history() -> History:
    return build_history()


@pytest.fixture
def paths(history: History, tmp_path: Path) -> LeafFilePaths:
    return LeafFilePaths(history.write_leaf_files(tmp_path / "logs"))


def _anchored(history: History) -> list[dict[str, Any]]:
    return [r for r in history.of_vehicle() if r["source_id"] not in UNANCHORED_SOURCES]


def test_every_anchored_event_verifies(history: History, paths: LeafFilePaths) -> None:
    rows = _anchored(history)
    assert {r["event_type"] for r in rows} == {
        "odometer_reading",
        "maintenance",
        "inspection",
        "accident_declaration",
    }
    for row in rows:
        result = verify_event(row, history.roots, paths)
        assert result.status == "verified", (row["event_type"], result.checks)
        assert [c.ok for c in result.checks] == [True, True, True]
        assert result.anchored_root == row["root"]


def test_audit_path_from_the_leaf_file_is_the_logs_own(history: History, paths: LeafFilePaths) -> None:
    leaves = history.leaves["cc-aurora"]
    for index in (0, 7, len(leaves) - 1):
        assert paths.audit_path("cc-aurora", index, len(leaves)) == merkle.inclusion_proof(leaves, index)
    assert paths.audit_path("cc-aurora", 3, len(leaves) + 1) is None  # the log is not that long
    assert paths.audit_path("garage-ind-99", 0, 1) is None


def test_a_changed_payload_is_tampered(history: History, paths: LeafFilePaths) -> None:
    row = dict(history.row("maintenance"))
    row["payload"] = row["payload"].replace("17530", "7530")
    result = verify_event(row, history.roots, paths)
    assert result.status == "tampered"
    assert result.checks[0].name == "content" and result.checks[0].ok is False
    assert "not to its logged leaf" in result.checks[0].detail


def test_a_changed_leaf_hash_with_a_matching_payload_fails_inclusion(
    history: History, paths: LeafFilePaths
) -> None:
    # a forger rewrites the event and its leaf hash consistently: the anchored tree does not contain it
    row = dict(history.row("inspection"))
    forged_payload = {"odometer_km": 9_000, "result": "pass"}
    row["payload"] = canonical.canonical_bytes(forged_payload).decode()
    env = {k: row[k] for k in ("event_id", "event_type", "schema_version", "source_id", "vehicle")}
    env |= {
        "event_time": history.row("inspection")["event_time"]
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "ingestion_time": row["ingestion_time"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "payload": forged_payload,
    }
    row["leaf_hash"] = canonical.leaf_hash(env).hex()
    result = verify_event(row, history.roots, paths)
    assert result.status == "tampered"
    assert [(c.name, c.ok) for c in result.checks] == [
        ("content", True),
        ("anchor", True),
        ("inclusion", False),
    ]


def test_a_forged_path_or_root_is_tampered(history: History) -> None:
    row = dict(history.readings()[-1])
    leaves = history.leaves[row["source_id"]]
    path = merkle.inclusion_proof(leaves, row["log_index"])
    assert verify_event({**row, "path": [h.hex() for h in path]}, history.roots).status == "verified"
    bad = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
    assert verify_event({**row, "path": [h.hex() for h in bad]}, history.roots).status == "tampered"
    other_root = InMemoryRoots({(row["source_id"], row["tree_size"]): bytes(32)})
    result = verify_event({**row, "path": [h.hex() for h in path]}, other_root)
    assert result.status == "tampered" and "another root" in result.checks[1].detail


def test_unanchored_and_pathless_events_say_so(history: History, paths: LeafFilePaths) -> None:
    manual = next(r for r in history.of_vehicle() if r["source_id"] in UNANCHORED_SOURCES)
    result = verify_event(manual, history.roots, paths)
    assert result.status == "unanchored" and result.checks[-1].ok is None
    assert verify_event(history.row("maintenance"), history.roots, None).status == "no_proof"


def test_an_unreachable_ledger_is_transient(history: History) -> None:
    class Down:
        def root_at(self, source_id: str, tree_size: int) -> bytes | None:
            raise PccTransientError("rpc node 127.0.0.1:8545 refused the connection")

    with pytest.raises(ChainUnavailableError, match="refused"):
        verify_event(history.row("maintenance"), Down())


class Client:
    """Requests straight into the ASGI app (no server, no network)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://passport.test") as client:
                return await client.get(url, headers=headers)

        return asyncio.run(go())


def _client(history: History, paths: LeafFilePaths | None = None, **kwargs: Any) -> Client:
    app = FastAPI()
    source = InMemoryPassportSource(history.rows, history.fraud)
    app.include_router(passport_router(source, history.roots, paths, **kwargs))
    return Client(app)


def test_verify_route(history: History, paths: LeafFilePaths) -> None:
    client = _client(history, paths)
    service = history.row("maintenance")
    body = client.get(f"/passport/{VEHICLE}/verify/{service['event_id']}").json()
    assert body["status"] == "verified" and body["event_id"] == service["event_id"]
    assert [c["name"] for c in body["checks"]] == ["content", "anchor", "inclusion"]
    # an event of another vehicle is not reachable through this vehicle's page
    foreign = history.readings(OTHER)[0]
    response = client.get(f"/passport/{VEHICLE}/verify/{foreign['event_id']}")
    assert response.status_code == 404 and foreign["event_id"] in response.json()["message"]


def test_routes_refuse_bad_identifiers_and_vins_without_owner_access(history: History) -> None:
    client = _client(history)
    assert client.get("/passport/not-a-car/data.json").status_code == 400
    response = client.get(f"/passport/{VIN}/data.json")
    assert response.status_code == 403 and "not enabled" in response.json()["message"]
    # a pseudonym alone opens nothing: the page is sold or shared (tests/unit/serving/test_passport_sales.py)
    data = client.get(f"/passport/{VEHICLE}/data.json")
    assert data.status_code == 401 and "share link" in data.json()["message"]


def test_owner_opens_the_passport_by_vin(history: History, tmp_path: Path) -> None:
    with IdentityVault(tmp_path / "identity.sqlite") as vault:
        pseudonym = vault.pseudonymize_vehicle(VIN)
        owner = vault.pseudonymize_owner({"name": "Ada Example", "id_number": "X1234567"})
        stranger = vault.pseudonymize_owner({"name": "Bob Example", "id_number": "Y7654321"})
        vault.record_ownership(pseudonym, owner)
        rows = [dict(r, vehicle=pseudonym) for r in history.of_vehicle()]
        app = FastAPI()
        access = VaultOwnerAccess(
            vault, {token_digest("owner-token"): owner, token_digest("other"): stranger}
        )
        app.include_router(passport_router(InMemoryPassportSource(rows), history.roots, owners=access))
        client = Client(app)

        page = client.get(f"/passport/{VIN}", headers={"Authorization": "Bearer owner-token"})
        assert page.status_code == 200
        assert pseudonym in page.text and VIN not in page.text
        assert client.get(f"/passport/{VIN}", headers={"Authorization": "Bearer other"}).status_code == 403
        assert client.get(f"/passport/{VIN}", headers={"Authorization": "Bearer guessed"}).status_code == 403
        assert client.get(f"/passport/{VIN}").status_code == 403
        assert client.get(f"/passport/{pseudonym}/data.json").status_code == 401  # not the owner's view


def _sealed_rows() -> tuple[dict[str, Any], dict[str, Any], InMemoryRoots]:
    """A version 2 and a version 1 maintenance event with sealed fields, in one anchored log of two."""
    import orjson

    from pipelines.access import row_aad, seal_event, seal_payload, stored_payload

    key = bytes(range(32))
    clear = {
        "event_id": "019c0000-0000-7000-8000-000000000001", "event_type": "maintenance", "schema_version": 1,
        "source_id": "garage-net-03", "vehicle": VEHICLE, "event_time": "2026-01-01T00:00:00.000Z",
        "ingestion_time": "2026-01-01T00:00:01.000Z",
        "payload": {"odometer_km": 41_300, "service_type": "oil_change", "in_network": True,
                    "cost_cents": 18_990, "location": {"lat": 48.856613, "lon": 2.352222}},
    }  # fmt: skip
    v2 = seal_event(clear, lambda category: (0, key))
    v1 = {**clear, "event_id": "019c0000-0000-7000-8000-000000000002"}
    leaves = [canonical.leaf_hash(v2), canonical.leaf_hash(v1)]
    v1_payload = seal_payload(
        "maintenance", 1, v1["payload"], lambda c: (0, key), row_aad(VEHICLE, v1["event_id"])
    )
    rows = []
    for i, (env, payload) in enumerate(((v2, stored_payload(v2)), (v1, v1_payload))):
        row = {k: v for k, v in env.items() if k not in ("payload", "sealed")}
        row.update(payload=orjson.dumps(payload).decode(), leaf_hash=leaves[i].hex(), log_index=i, tree_size=2,
                   root=merkle.root(leaves).hex(), path=[h.hex() for h in merkle.inclusion_proof(leaves, i)])  # fmt: skip
        rows.append(row)
    return rows[0], rows[1], InMemoryRoots({("garage-net-03", 2): merkle.root(leaves)})


def test_sealed_rows_verify_by_what_their_leaf_commits_to() -> None:
    v2, v1, roots = _sealed_rows()
    assert "48.856613" not in v2["payload"] and "18990" not in v2["payload"]
    result = verify_event(v2, roots)
    assert result.status == "verified" and [c.ok for c in result.checks] == [True, True, True]
    assert "salted commitments" in result.checks[0].detail and "plaintext" not in result.checks[0].detail
    result = verify_event(v1, roots)  # version 1: the leaf hashed the clear values, only a grantee re-hashes
    assert result.status == "verified" and [c.ok for c in result.checks] == [None, True, True]
    assert "version 1" in result.checks[0].detail and "clear values" in result.checks[0].detail


def test_a_v2_row_whose_public_field_or_commitment_changed_is_tampered() -> None:
    import orjson

    from pipelines.access import token_commitment

    v2, _, roots = _sealed_rows()
    payload = orjson.loads(v2["payload"])
    moved = {**v2, "payload": orjson.dumps({**payload, "odometer_km": 31_300}).decode()}
    result = verify_event(moved, roots)
    assert result.status == "tampered" and "not to its logged leaf" in result.checks[0].detail
    token = payload["cost_cents"]
    assert token_commitment(token)  # the token carries the commitment the leaf covers
    swapped = {**v2, "payload": orjson.dumps({**payload, "cost_cents": payload["location"]}).decode()}
    assert verify_event(swapped, roots).status == "tampered"
