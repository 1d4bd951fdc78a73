"""Grants on the AccessRegistry: ChainGrantStore on the in-process EVM, and AccessService over it.

The chain is the authority: a second store opened on the same deployment (an
empty index, rebuilt from the registry's events) sees the same grants and epochs.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from ledger.chain import in_process_web3
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import deploy
from ledger.errors import LedgerPermissionError, LedgerRuleError
from ledger.grants import ChainGrantStore
from ledger.tx import Signer
from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    Grant,
    GranteeKeys,
    SqliteGrantStore,
    grant_message,
    grant_store_kind,
    needed_keys,
    open_grant_store,
    open_payload,
    producer_grantor,
    row_aad,
    seal_payload,
)
from pipelines.errors import PccNotFoundError
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from tests.fixtures.access_data import ANA, BRUNO, PAYLOAD, VIN, Clock
from tests.fixtures.grant_store import GrantStoreContract

OP, OUTSIDER = DEV_KEYS[0], DEV_KEYS[6]
CAR = "v-" + "a1" * 16


@pytest.fixture
def client() -> LedgerClient:
    w3: Web3 = in_process_web3()
    op = Signer(w3, OP)
    return LedgerClient(w3, deploy(w3, op), op)


@pytest.fixture
def store(client: LedgerClient, tmp_path: Path) -> Iterator[ChainGrantStore]:
    with ChainGrantStore(client, tmp_path / "vault" / "grant-details.sqlite", refresh_s=0.0) as s:
        yield s


def later(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def grant(grantee: bytes, *, expiry: int | None = None, epoch: int = 0, vehicle: str = CAR) -> Grant:
    return Grant(
        grantee, vehicle, "commercial", expiry or later(), epoch, producer_grantor("garage-net-03"), b"s" * 64
    )


def chain_text(client: LedgerClient) -> bytes:
    """Every transaction input and log the chain holds, as bytes (what any member can read)."""
    out = bytearray()
    for n in range(client.block_number + 1):
        block = client.w3.eth.get_block(n, full_transactions=True)
        for tx in block["transactions"]:
            out += bytes(tx["input"] if "input" in tx else tx["data"])  # type: ignore[index, operator]
            for log in client.w3.eth.get_transaction_receipt(tx["hash"])["logs"]:  # type: ignore[index]
                out += bytes(log["data"]) + b"".join(bytes(t) for t in log["topics"])
    return bytes(out)


# --- the store on chain -------------------------------------------------------------------


class TestChainGrantStoreContract(GrantStoreContract):
    """The AccessRegistry-backed store keeps the contract every grant store keeps."""

    @pytest.fixture
    def store(self, client: LedgerClient, tmp_path: Path) -> Iterator[ChainGrantStore]:
        with ChainGrantStore(client, tmp_path / "vault" / "grant-details.sqlite", refresh_s=0.0) as s:
            yield s

    def grant(self, grantee: bytes, category: str = "commercial", vehicle: str = "v-" + "a" * 32) -> Grant:
        return Grant(grantee, vehicle, category, later(), 0, producer_grantor("garage-net-03"), b"s" * 64)


def test_a_grant_is_recorded_on_chain_with_expiry_epoch_kind_and_message_hash(
    store: ChainGrantStore, client: LedgerClient, tmp_path: Path
) -> None:
    g = grant(b"\x01" * 32, expiry=later(7200))
    assert not client.access.is_vehicle(CAR)
    assert store.put(g) == g
    assert client.access.is_vehicle(CAR)  # registered on the first grant
    on_chain = client.access.grant_of(CAR, "commercial", g.grantee)
    message = grant_message(g.grantee, CAR, "commercial", g.expiry_s, 0, g.grantor)
    assert on_chain is not None
    assert (on_chain.expiry, on_chain.epoch, on_chain.grantor_kind) == (g.expiry_s, 0, "producer")
    assert on_chain.grant_hash == hashlib.sha256(message).digest()
    assert store.get(CAR, "commercial", g.grantee) == g
    assert client.access.check(CAR, "commercial", g.grantee).allowed
    # a second node with the same grant details rebuilds everything from the chain's events
    with ChainGrantStore(client, tmp_path / "vault" / "grant-details.sqlite") as other:
        assert other.grants() == [g]
    (event,) = store.history(CAR)
    assert (event.event, event.category, event.epoch, event.grantor_kind) == (
        "granted",
        "commercial",
        0,
        "producer",
    )
    # the chain holds hashes: neither the pseudonym nor the grantor's id appear in any input or log
    seen = chain_text(client)
    assert CAR.encode() not in seen and b"garage-net-03" not in seen


def test_revoke_bumps_the_epoch_on_chain(
    store: ChainGrantStore, client: LedgerClient, tmp_path: Path
) -> None:
    a, b = grant(b"\x01" * 32), grant(b"\x02" * 32)
    store.put(a)
    store.put(b)
    assert store.revoke(CAR, "commercial", a.grantee) == 1
    assert client.access.epoch(CAR, "commercial") == 1
    assert store.get(CAR, "commercial", a.grantee) is None
    assert [x.grantee for x in store.grants(vehicle=CAR)] == [b.grantee]
    assert store.epoch(CAR, "commercial") == 1 and store.epoch(CAR, "precise_location") == 0
    with pytest.raises(PccNotFoundError, match=r"no grant of category .* \[NoSuchGrant\]"):
        store.revoke(CAR, "commercial", a.grantee)
    # a grant signed at the old epoch is refused: its grantor must sign the current one
    with pytest.raises(LedgerRuleError, match="signed at key epoch 0, the current epoch is 1") as info:
        store.put(a)
    assert info.value.error_name == "StaleEpoch"
    assert store.get(CAR, "commercial", a.grantee) is None
    with ChainGrantStore(client, tmp_path / "fresh.sqlite") as other:
        assert other.epoch(CAR, "commercial") == 1


def test_rotate_starts_an_epoch_without_a_grant(store: ChainGrantStore, client: LedgerClient) -> None:
    other = "v-" + "b2" * 16
    assert store.bump(other, "precise_location") == 1  # registers the pseudonym first
    assert store.bump(other, "precise_location") == 2
    assert client.access.epoch(other, "precise_location") == 2
    assert client.access.epoch(other, "commercial") == 0
    assert [(e.event, e.category, e.epoch) for e in store.history(other)] == [
        ("rotated", "precise_location", 1),
        ("rotated", "precise_location", 2),
    ]


def test_an_account_without_the_grantor_role_is_refused(client: LedgerClient, tmp_path: Path) -> None:
    with ChainGrantStore(client, tmp_path / "d.sqlite", refresh_s=0.0) as owner_node:
        owner_node.bump(CAR, "commercial")  # registered (and epoch 1) by the operator
    with ChainGrantStore(client, tmp_path / "d.sqlite", refresh_s=0.0, as_=OUTSIDER) as outsider:
        with pytest.raises(LedgerPermissionError, match="lacks the role GRANTOR_ROLE") as info:
            outsider.put(grant(b"\x01" * 32, epoch=1))
        assert info.value.error_name == "AccessControlUnauthorizedAccount"
        with pytest.raises(LedgerPermissionError, match="GRANTOR_ROLE"):
            outsider.bump(CAR, "commercial")
        assert outsider.grants() == [] and outsider.epoch(CAR, "commercial") == 1
    assert client.access.grant_of(CAR, "commercial", b"\x01" * 32) is None


def test_an_expiry_in_the_past_is_refused(store: ChainGrantStore, client: LedgerClient) -> None:
    with pytest.raises(LedgerRuleError, match="grant expiry 1000 is not after now") as info:
        store.put(grant(b"\x01" * 32, expiry=1_000))
    assert info.value.error_name == "ExpiryInPast"
    assert store.grants() == [] and not client.access.check(CAR, "commercial", b"\x01" * 32).allowed


def test_reads_are_cached_for_refresh_s_then_follow_the_chain(client: LedgerClient, tmp_path: Path) -> None:
    clock = Clock(0.0)
    g = grant(b"\x01" * 32)
    with ChainGrantStore(client, tmp_path / "d.sqlite", refresh_s=1.0, clock=clock) as reader, ChainGrantStore(
        client, tmp_path / "d.sqlite", refresh_s=0.0
    ) as writer:  # fmt: skip
        writer.put(g)
        assert reader.get(CAR, "commercial", g.grantee) == g
        head = client.block_number
        writer.revoke(CAR, "commercial", g.grantee)  # another process revokes
        assert client.block_number > head
        clock.now = 0.5  # within refresh_s: the index is not refreshed (no RPC on the hot path)
        assert reader.epoch(CAR, "commercial") == 0 and reader.get(CAR, "commercial", g.grantee) == g
        clock.now = 1.0
        assert reader.epoch(CAR, "commercial") == 1 and reader.get(CAR, "commercial", g.grantee) is None


def test_a_grant_whose_details_were_altered_is_not_honoured(store: ChainGrantStore, tmp_path: Path) -> None:
    g = grant(b"\x01" * 32)
    store.put(g)
    with sqlite3.connect(tmp_path / "vault" / "grant-details.sqlite") as con:
        con.execute("UPDATE grant_details SET grantor = 'producer:garage-other-1'")
    with ChainGrantStore(store.client, tmp_path / "vault" / "grant-details.sqlite") as other:
        assert other.get(CAR, "commercial", g.grantee) is None and other.grants() == []


# --- AccessService on the chain ------------------------------------------------------------


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[IdentityVault]:
    with IdentityVault(tmp_path / "vault" / "identity.sqlite") as v:
        yield v


@pytest.fixture
def anas_car(store: ChainGrantStore, vault: IdentityVault) -> tuple[AccessService, str]:
    """The access service over the chain store, and a car Ana owns."""
    service = AccessService(vault, store)
    car = vault.pseudonymize_vehicle(VIN)
    vault.record_ownership(car, vault.pseudonymize_owner(ANA), since_ms=1)
    return service, car


def test_access_service_grants_revokes_and_ownership_change_on_chain(
    anas_car: tuple[AccessService, str], store: ChainGrantStore, client: LedgerClient, vault: IdentityVault
) -> None:
    service, car = anas_car
    insurer = ConsumerKeyPair.generate()

    def write(event_id: str) -> dict:
        sealed = seal_payload("maintenance", 1, PAYLOAD, service.keys.key_for(car), row_aad(car, event_id))
        return {"event_id": event_id, "payload": sealed}

    def read(row: dict) -> dict:
        keys = GranteeKeys(insurer, car)
        keys.add_all(
            service.wrapped_keys(insurer.public_key, car, needed_keys("maintenance", 1, row["payload"]))
        )
        return open_payload("maintenance", 1, row["payload"], keys, row_aad(car, row["event_id"]))

    for category in ("commercial", "precise_location"):
        service.grant_as_owner(insurer.public_key, car, category, later())
    assert client.access.grant_of(car, "commercial", insurer.public_key).grantor_kind == "owner"  # type: ignore[union-attr]
    before = write("e1")
    assert read(before) == PAYLOAD

    assert service.revoke_as_owner(insurer.public_key, car, "precise_location") == 1
    assert client.access.epoch(car, "precise_location") == 1
    after = write("e2")
    with pytest.raises(AccessDenied, match="holds no grant of precise_location"):
        read(after)
    later_keys = service.wrapped_keys(
        insurer.public_key, car, needed_keys("maintenance", 1, after["payload"]), strict=False
    )
    assert set(later_keys) == {"commercial"}  # still granted: only precise_location is refused

    vault.record_ownership(car, vault.pseudonymize_owner(BRUNO), since_ms=2)
    revoked = service.ownership_changed(car)
    assert [g.category for g in revoked] == ["commercial"]
    assert client.access.grant_of(car, "commercial", insurer.public_key) is None
    assert client.access.epoch(car, "commercial") == 1 and client.access.epoch(car, "owner_identity") == 1
    assert store.grants(vehicle=car) == []
    # the owner's pseudonym never went on chain either
    assert vault.current_owner(car).encode() not in chain_text(client)  # type: ignore[union-attr]


def test_a_sale_rotates_every_protected_category_in_one_transaction(
    anas_car: tuple[AccessService, str], store: ChainGrantStore, client: LedgerClient, vault: IdentityVault
) -> None:
    service, car = anas_car
    service.keys.rotate(car, "commercial")  # registered on chain, epoch 1
    sent = client.w3.eth.get_transaction_count(client.signer.address)
    vault.record_ownership(car, vault.pseudonymize_owner(BRUNO), since_ms=2)
    assert service.ownership_changed(car) == []
    assert client.w3.eth.get_transaction_count(client.signer.address) == sent + 1
    assert {c: client.access.epoch(car, c) for c in ("commercial", "owner_identity", "precise_location")} == {
        "commercial": 2,
        "owner_identity": 1,
        "precise_location": 1,
    }
    assert {c: store.epoch(car, c) for c in ("commercial", "owner_identity", "precise_location")} == {
        "commercial": 2,
        "owner_identity": 1,
        "precise_location": 1,
    }


def test_erasure_revokes_the_vehicles_grants_on_chain(
    store: ChainGrantStore, client: LedgerClient, tmp_path: Path
) -> None:
    g = grant(b"\x01" * 32)
    store.put(g)
    store.put(grant(b"\x02" * 32, vehicle="v-" + "c3" * 16))
    assert store.erase_vehicle(CAR) == 1
    assert client.access.grant_of(CAR, "commercial", g.grantee) is None
    assert [x.vehicle for x in store.grants()] == ["v-" + "c3" * 16]
    with sqlite3.connect(tmp_path / "vault" / "grant-details.sqlite") as con:
        assert con.execute("SELECT count(*) FROM grant_details WHERE vehicle = ?", (CAR,)).fetchone() == (0,)


# --- choosing the store --------------------------------------------------------------------


def test_the_grant_store_is_the_chain_once_a_ledger_is_deployed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert grant_store_kind(settings) == "sqlite"
    with open_grant_store(settings) as s:
        assert isinstance(s, SqliteGrantStore) and s.path == tmp_path / "vault" / "grants.sqlite"
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "deployment.json").write_text("{}")
    assert grant_store_kind(settings) == "chain"
    assert grant_store_kind(Settings(data_dir=tmp_path, access={"grant_store": "sqlite"})) == "sqlite"
    assert (
        grant_store_kind(Settings(data_dir=tmp_path / "x", ledger={"manifest": tmp_path / "m.json"}))
        == "chain"
    )
