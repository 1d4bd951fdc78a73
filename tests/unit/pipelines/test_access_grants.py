"""Grants: a grantee reads, a revoked or expired one does not, an ownership change ends the old owner's grants."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    Grant,
    GranteeKeys,
    GrantStore,
    InMemoryGrantStore,
    SqliteGrantStore,
    TamperedCiphertext,
    grant_message,
    needed_keys,
    open_payload,
    producer_grantor,
    revoke_message,
    row_aad,
    seal_payload,
    unwrap_key,
)
from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.vault import IdentityVault
from tests.fixtures.access_data import ANA, BRUNO, NOW, PAYLOAD, VIN, Clock
from tests.fixtures.grant_store import GrantStoreContract


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[IdentityVault]:
    with IdentityVault(tmp_path / "identity.sqlite") as v:
        yield v


GARAGE = Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def service(vault: IdentityVault, clock: Clock) -> AccessService:
    return AccessService(
        vault, InMemoryGrantStore(), producers={"garage-net-03": raw_public(GARAGE)}, clock=clock
    )


@pytest.fixture
def car(vault: IdentityVault) -> str:
    vehicle = vault.pseudonymize_vehicle(VIN)
    vault.record_ownership(vehicle, vault.pseudonymize_owner(ANA), since_ms=1)
    return vehicle


def write_event(service: AccessService, vehicle: str, event_id: str) -> dict:
    """What the speed layer stores: the payload sealed under the current keys."""
    sealed = seal_payload(
        "maintenance", 1, PAYLOAD, service.keys.key_for(vehicle), row_aad(vehicle, event_id)
    )
    return {"event_id": event_id, "payload": sealed}


def read_event(service: AccessService, consumer: ConsumerKeyPair, vehicle: str, row: dict, **kw) -> dict:
    """What a consumer does: ask for wrapped keys, unwrap them locally, open the row."""
    wrapped = service.wrapped_keys(
        consumer.public_key, vehicle, needed_keys("maintenance", 1, row["payload"]), **kw
    )
    keys = GranteeKeys(consumer, vehicle)
    keys.add_all(wrapped)
    return open_payload("maintenance", 1, row["payload"], keys, row_aad(vehicle, row["event_id"]))


def test_a_grantee_reads_protected_fields(service: AccessService, car: str, clock: Clock) -> None:
    insurer = ConsumerKeyPair.generate()
    row = write_event(service, car, "e1")
    for category in ("commercial", "precise_location"):
        service.grant_as_owner(insurer.public_key, car, category, NOW + 3600)
    assert read_event(service, insurer, car, row) == PAYLOAD
    stranger = ConsumerKeyPair.generate()
    with pytest.raises(AccessDenied, match="holds no grant"):
        read_event(service, stranger, car, row)


def test_a_grantee_of_one_category_reads_only_that_one(service: AccessService, car: str) -> None:
    insurer = ConsumerKeyPair.generate()
    row = write_event(service, car, "e1")
    service.grant_as_owner(insurer.public_key, car, "commercial", NOW + 3600)
    with pytest.raises(AccessDenied, match="precise_location"):
        read_event(service, insurer, car, row)
    wrapped = service.wrapped_keys(
        insurer.public_key, car, needed_keys("maintenance", 1, row["payload"]), strict=False
    )
    assert set(wrapped) == {"commercial"}
    keys = GranteeKeys(insurer, car)
    keys.add_all(wrapped)
    opened = open_payload(
        "maintenance", 1, row["payload"], keys, row_aad(car, "e1"), categories={"commercial"}
    )
    assert opened["cost_cents"] == 18990 and opened["location"] == row["payload"]["location"]


def test_after_revocation_data_written_later_is_unreadable(service: AccessService, car: str) -> None:
    revoked, kept = ConsumerKeyPair.generate(), ConsumerKeyPair.generate()
    for consumer in (revoked, kept):
        service.grant_as_owner(consumer.public_key, car, "commercial", NOW + 3600)
        service.grant_as_owner(consumer.public_key, car, "precise_location", NOW + 3600)
    before = write_event(service, car, "e1")
    old_keys = GranteeKeys(revoked, car)
    old_keys.add_all(
        service.wrapped_keys(revoked.public_key, car, needed_keys("maintenance", 1, before["payload"]))
    )

    assert service.revoke_as_owner(revoked.public_key, car, "commercial") == 1
    after = write_event(service, car, "e2")
    assert ("commercial", 1) in needed_keys("maintenance", 1, after["payload"])
    with pytest.raises(AccessDenied, match="no grant"):
        read_event(service, revoked, car, after)
    with pytest.raises(AccessDenied, match="commercial epoch 1"):  # the keys it holds do not open it
        open_payload("maintenance", 1, after["payload"], old_keys, row_aad(car, "e2"))
    assert read_event(service, kept, car, after) == PAYLOAD  # re-keyed for the consumers that remain
    audit = [e["action"] for e in service.vault.audit_entries()]
    assert "revoke" in audit and "key_release_refused" in audit


def test_an_expired_grant_is_refused_and_logged(service: AccessService, car: str, clock: Clock) -> None:
    insurer = ConsumerKeyPair.generate()
    row = write_event(service, car, "e1")
    service.grant_as_owner(insurer.public_key, car, "commercial", NOW + 60)
    service.grant_as_owner(insurer.public_key, car, "precise_location", NOW + 60)
    clock.now += 61
    with pytest.raises(AccessDenied, match="expired"):
        read_event(service, insurer, car, row)
    entry = service.vault.audit_entries(1)[0]
    assert entry["action"] == "key_release_refused" and "expired" in entry["detail"]
    with pytest.raises(PccValueError, match="not in the future"):
        service.grant_as_owner(insurer.public_key, car, "commercial", NOW)


def test_an_ownership_change_removes_the_old_owners_grants(
    service: AccessService, car: str, vault: IdentityVault
) -> None:
    insurer = ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, car, "commercial", NOW + 3600)
    service.grant_as_owner(insurer.public_key, car, "precise_location", NOW + 3600)
    before = write_event(service, car, "e1")

    vault.record_ownership(car, vault.pseudonymize_owner(BRUNO), since_ms=2)
    revoked = service.ownership_changed(car)
    assert {g.category for g in revoked} == {"commercial", "precise_location"}
    assert service.grants(vehicle=car) == []
    with pytest.raises(AccessDenied, match="no grant"):
        read_event(service, insurer, car, before)

    # the new owner's grantee reads what is written from now on, not the previous owner's data
    dealer = ConsumerKeyPair.generate()
    service.grant_as_owner(dealer.public_key, car, "commercial", NOW + 3600)
    service.grant_as_owner(dealer.public_key, car, "precise_location", NOW + 3600)
    after = write_event(service, car, "e2")
    assert read_event(service, dealer, car, after) == PAYLOAD
    with pytest.raises(AccessDenied, match="sealed before the grant"):
        read_event(service, dealer, car, before)


def test_grants_of_a_previous_owner_are_refused_even_if_nobody_reported_the_sale(
    service: AccessService, car: str, vault: IdentityVault
) -> None:
    insurer = ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, car, "commercial", NOW + 3600)
    vault.record_ownership(car, vault.pseudonymize_owner(BRUNO), since_ms=2)
    with pytest.raises(AccessDenied, match="previous owner"):
        service.wrapped_keys(insurer.public_key, car, [("commercial", 0)])
    assert service.grants(vehicle=car) == []


def test_a_grant_signed_by_someone_else_than_the_owner_or_producer_is_refused(
    service: AccessService, car: str, vault: IdentityVault
) -> None:
    insurer = ConsumerKeyPair.generate()
    ana, bruno = vault.pseudonymize_owner(ANA), vault.pseudonymize_owner(BRUNO)
    message = grant_message(insurer.public_key, car, "commercial", NOW + 3600, 0, f"owner:{bruno}")
    with pytest.raises(AccessDenied, match="not the current owner"):  # Bruno owns no part of this car
        service.grant(
            insurer.public_key,
            car,
            "commercial",
            NOW + 3600,
            f"owner:{bruno}",
            vault.sign_as_owner(bruno, message),
        )
    message = grant_message(insurer.public_key, car, "commercial", NOW + 3600, 0, f"owner:{ana}")
    forged = Ed25519PrivateKey.generate().sign(message)  # claims to be Ana, signed with another key
    with pytest.raises(AccessDenied, match="does not verify"):
        service.grant(insurer.public_key, car, "commercial", NOW + 3600, f"owner:{ana}", forged)
    garage = producer_grantor("garage-net-03")
    message = grant_message(insurer.public_key, car, "precise_location", NOW + 3600, 0, garage)
    with pytest.raises(AccessDenied, match="may not grant precise_location"):
        service.grant(insurer.public_key, car, "precise_location", NOW + 3600, garage, GARAGE.sign(message))
    unknown = producer_grantor("garage-ind-99")
    message = grant_message(insurer.public_key, car, "commercial", NOW + 3600, 0, unknown)
    with pytest.raises(AccessDenied, match="not a known producer"):
        service.grant(insurer.public_key, car, "commercial", NOW + 3600, unknown, GARAGE.sign(message))
    assert service.grants(vehicle=car) == []
    refusals = [e for e in vault.audit_entries() if e["action"] == "grant_refused"]
    assert len(refusals) == 4
    assert all(ana not in str(e) and bruno not in str(e) and VIN not in str(e) for e in vault.audit_entries())


def test_a_producer_grants_commercial_data_and_cannot_replay_after_revocation(
    service: AccessService, car: str
) -> None:
    insurer = ConsumerKeyPair.generate()
    garage = producer_grantor("garage-net-03")
    message = grant_message(insurer.public_key, car, "commercial", NOW + 3600, 0, garage)
    signature = GARAGE.sign(message)
    grant = service.grant(insurer.public_key, car, "commercial", NOW + 3600, garage, signature)
    assert grant.epoch == 0 and grant.grantor == garage
    revocation = GARAGE.sign(revoke_message(insurer.public_key, car, "commercial", 0, garage))
    assert service.revoke(insurer.public_key, car, "commercial", garage, revocation) == 1
    with pytest.raises(AccessDenied, match="does not verify"):  # the old grant signature names epoch 0
        service.grant(insurer.public_key, car, "commercial", NOW + 3600, garage, signature)
    with pytest.raises(AccessDenied):
        service.revoke(insurer.public_key, car, "commercial", garage, revocation)


def test_public_categories_and_unknown_vehicles_need_no_and_get_no_grant(
    service: AccessService, car: str
) -> None:
    insurer = ConsumerKeyPair.generate()
    with pytest.raises(PccValueError, match="not protected"):
        service.grant_as_owner(insurer.public_key, car, "mileage", NOW + 3600)
    with pytest.raises(PccNotFoundError, match="unknown vehicle"):
        service.grant_as_owner(insurer.public_key, "v-" + "0" * 32, "commercial", NOW + 3600)
    with pytest.raises(PccValueError, match="64 lower-case hex"):
        service.grant_as_owner("not-a-key", car, "commercial", NOW + 3600)


def test_a_wrapped_key_opens_only_for_its_consumer_vehicle_and_epoch(
    service: AccessService, car: str
) -> None:
    insurer, other = ConsumerKeyPair.generate(), ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, car, "commercial", NOW + 3600)
    wrapped = service.wrapped_keys(insurer.public_key, car, [("commercial", 0)])["commercial"][0]
    assert unwrap_key(wrapped, insurer, car, "commercial", 0) == service.keys.key(car, "commercial", 0)
    for keys, vehicle, epoch in ((other, car, 0), (insurer, "v-" + "1" * 32, 0), (insurer, car, 1)):
        with pytest.raises(TamperedCiphertext):
            unwrap_key(wrapped, keys, vehicle, "commercial", epoch)
    with pytest.raises(TamperedCiphertext):
        unwrap_key(wrapped[:-3] + "AAA", insurer, car, "commercial", 0)


def test_consumer_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    keys = ConsumerKeyPair.generate()
    path = keys.save(tmp_path / "consumer.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ConsumerKeyPair.load(path).public_key == keys.public_key
    with pytest.raises(PccValueError, match="exists"):
        ConsumerKeyPair.generate().save(path)


# --- the grant store contract (tests/fixtures/grant_store.py), for every implementation ------------


class TestInMemoryGrantStore(GrantStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> GrantStore:
        return InMemoryGrantStore()


class TestSqliteGrantStore(GrantStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[GrantStore]:
        with SqliteGrantStore(tmp_path / "grants.sqlite") as s:
            yield s

    def test_grants_survive_a_restart(self, tmp_path: Path) -> None:
        with SqliteGrantStore(tmp_path / "g.sqlite") as s:
            s.put(self.grant(b"\x03" * 32))
            s.bump("v-" + "a" * 32, "commercial")
        with SqliteGrantStore(tmp_path / "g.sqlite") as s:
            assert [g.grantee for g in s.grants()] == [b"\x03" * 32]
            assert s.epoch("v-" + "a" * 32, "commercial") == 1


# --- as an attacker: a revoked consumer who kept its old signed grant --------------------------------


def test_a_revoked_consumer_cannot_replay_its_old_signed_grant(service: AccessService, car: str) -> None:
    """The grant's signature covers the key epoch: after the revocation started the next epoch, the very
    same signed grant is refused by the service, and a store handed it directly refuses it too."""
    ex = ConsumerKeyPair.generate()
    old = service.grant_as_owner(ex.public_key, car, "commercial", NOW + 3600)
    service.revoke_as_owner(ex.public_key, car, "commercial")
    with pytest.raises(AccessDenied, match="does not verify"):
        service.grant(ex.public_key, car, "commercial", old.expiry_s, old.grantor, old.signature)
    with pytest.raises(PccValueError, match="epoch"):  # straight to the store: the race the service lost
        service.store.put(old)
    assert service.store.get(car, "commercial", ex.public_key) is None
    after = write_event(service, car, "e2")
    with pytest.raises(AccessDenied, match="no grant"):
        read_event(service, ex, car, after)


_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "revoke", "bump"]), st.integers(0, 2), st.integers(-1, 1)),
    max_size=30,
)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_no_sequence_of_grants_and_revocations_stores_a_grant_off_its_epoch(
    kind: str, ops: list[tuple[str, int, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Generated put / revoke / bump sequences over three grantees: a grant signed at any epoch but the
    current one is refused and changes nothing; what the store holds is always at the epoch it was made."""
    store: GrantStore = (
        InMemoryGrantStore()
        if kind == "memory"
        else SqliteGrantStore(tmp_path_factory.mktemp("grants") / "g.sqlite")
    )
    car, held = "v-" + "c" * 32, {}
    for op, who, offset in ops:
        grantee = bytes([who + 1]) * 32
        current = store.epoch(car, "commercial")
        if op == "put":
            grant = Grant(grantee, car, "commercial", NOW + 60, current + offset, "owner:o-" + "0" * 32, b"s")
            if offset:
                with pytest.raises(PccValueError, match="epoch"):
                    store.put(grant)
            else:
                held[grantee] = store.put(grant)
        elif op == "revoke" and grantee in held:
            assert store.revoke(car, "commercial", grantee) == current + 1
            del held[grantee]
        elif op == "bump":
            store.bump(car, "commercial")
        assert {g.grantee: g for g in store.grants(vehicle=car)} == held
