"""The identity vault: stable, unguessable pseudonyms; authorised disclosure; erasure that really erases."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
from pathlib import Path

import pytest

from pipelines.cli.main import main
from pipelines.errors import PccNotFoundError, PccPermissionError, PccValueError
from pipelines.events import OWNER_PSEUDONYM, VEHICLE_PSEUDONYM
from pipelines.settings import load_settings
from pipelines.vault import IdentityVault

VIN = "1HGCM82633A004352"
OTHER_VIN = "1M8GDM9AXKP042788"
ANA = {"name": "Ana Lima", "id_number": "X1234567"}


@pytest.fixture
def vault(tmp_path: Path) -> IdentityVault:
    with IdentityVault(tmp_path / "identity.sqlite") as v:
        yield v  # type: ignore[misc]


def raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


def test_pseudonyms_are_stable_and_shaped(vault: IdentityVault, tmp_path: Path) -> None:
    p = vault.pseudonymize_vehicle(VIN)
    assert VEHICLE_PSEUDONYM.match(p)
    assert vault.pseudonymize_vehicle(VIN.lower()) == p
    assert vault.pseudonymize_vehicle(OTHER_VIN) != p
    with IdentityVault(tmp_path / "identity.sqlite") as reopened:  # another process, same files
        assert reopened.pseudonymize_vehicle(VIN) == p


def test_the_key_file_is_created_private(vault: IdentityVault, tmp_path: Path) -> None:
    mode = stat.S_IMODE((tmp_path / "vault.key").stat().st_mode)
    assert mode == 0o600


def test_pseudonyms_cannot_be_recomputed_without_the_vault(vault: IdentityVault, tmp_path: Path) -> None:
    p = vault.pseudonymize_vehicle(VIN)
    secret = bytes.fromhex((tmp_path / "vault.key").read_text().strip())
    naive = {
        hashlib.sha256(VIN.encode()).hexdigest()[:32],
        hmac.new(secret, VIN.encode(), hashlib.sha256).hexdigest()[:32],
    }
    assert p[2:] not in naive  # a per-vehicle random salt is mixed in
    with IdentityVault(tmp_path / "other.sqlite", os.urandom(32)) as other:  # another vault, another secret
        assert other.pseudonymize_vehicle(VIN) != p


def test_bad_vins_are_refused_without_echo(vault: IdentityVault) -> None:
    with pytest.raises(PccValueError) as info:
        vault.pseudonymize_vehicle("1HGCM82623A004352")
    assert "1HGCM82623A004352" not in str(info.value)


def test_owner_pseudonyms_ignore_spelling_and_record_ownership(vault: IdentityVault) -> None:
    ana = vault.pseudonymize_owner(ANA)
    assert OWNER_PSEUDONYM.match(ana)
    assert vault.pseudonymize_owner({"name": " ana  LIMA", "id_number": "x-123 4567"}) == ana
    bo = vault.pseudonymize_owner({"name": "Bo Berg", "id_number": "Y7654321"})
    car = vault.pseudonymize_vehicle(VIN)
    assert vault.current_owner(car) is None
    vault.record_ownership(car, ana, since_ms=1000)
    vault.record_ownership(car, bo, since_ms=2000)
    assert vault.current_owner(car) == bo
    with pytest.raises(PccNotFoundError):
        vault.current_owner("v-" + "0" * 32)
    with pytest.raises(PccValueError, match="name"):
        vault.pseudonymize_owner({"id_number": "1"})


def test_resolve_needs_an_authorised_role_and_is_audited(vault: IdentityVault) -> None:
    car = vault.pseudonymize_vehicle(VIN)
    with pytest.raises(PccPermissionError, match="role 'analyst' may not resolve"):
        vault.resolve(car, caller="analyst")
    assert vault.resolve(car, caller="vault-admin") == VIN
    entries = vault.audit_entries()
    assert [(e["action"], e["subject"], e["actor"]) for e in entries] == [
        ("resolve", car, "vault-admin"),
        ("resolve_denied", car, "analyst"),
    ]
    with pytest.raises(PccNotFoundError):
        vault.resolve("v-" + "0" * 32, caller="vault-admin")


def test_data_keys_are_stable_per_vehicle_category_epoch(vault: IdentityVault) -> None:
    car = vault.pseudonymize_vehicle(VIN)
    key = vault.data_key(car, "precise_location", 0)
    assert len(key) == 32
    assert vault.data_key(car, "precise_location", 0) == key
    assert vault.data_key(car, "precise_location", 1) != key
    assert vault.data_key(car, "commercial", 0) != key
    with pytest.raises(PccValueError, match="category"):
        vault.data_key(car, "colour", 0)


def test_erase_removes_the_vin_owner_and_keys_from_the_file(vault: IdentityVault) -> None:
    car = vault.pseudonymize_vehicle(VIN)
    other = vault.pseudonymize_vehicle(OTHER_VIN)
    ana = vault.pseudonymize_owner(ANA)
    vault.record_ownership(car, ana)
    key = vault.data_key(car, "owner_identity", 0)
    assert VIN.encode() in raw_bytes(vault.path)  # the test can see plaintext when it is there
    assert b"ana lima" in raw_bytes(vault.path)

    assert vault.erase(VIN) == car

    on_disk = raw_bytes(vault.path)
    assert VIN.encode() not in on_disk
    assert b"ana lima" not in on_disk and b"X1234567" not in on_disk
    assert key not in on_disk
    assert OTHER_VIN.encode() in on_disk  # other vehicles are untouched
    assert vault.pseudonymize_vehicle(OTHER_VIN) == other
    with pytest.raises(PccNotFoundError):
        vault.resolve(car, caller="vault-admin")
    with pytest.raises(PccNotFoundError):
        vault.data_key(car, "owner_identity", 0)
    assert vault.audit_entries(1)[0]["action"] == "erase"
    assert VIN.encode() not in repr(vault.audit_entries()).encode()


def test_after_erasure_the_same_vin_gets_an_unlinkable_pseudonym(vault: IdentityVault) -> None:
    before = vault.pseudonymize_vehicle(VIN)
    vault.erase(before)  # by pseudonym
    after = vault.pseudonymize_vehicle(VIN)
    assert after != before
    assert vault.pseudonymize_vehicle(VIN) == after


def test_erasure_elsewhere_invalidates_a_producers_cache(tmp_path: Path) -> None:
    producer = IdentityVault(tmp_path / "identity.sqlite", cache_check_s=0.0)
    before = producer.pseudonymize_vehicle(VIN)
    with IdentityVault(tmp_path / "identity.sqlite") as admin:
        admin.erase(VIN)
    assert producer.pseudonymize_vehicle(VIN) != before
    producer.close()


def test_erasing_an_unknown_vin_is_not_found(vault: IdentityVault) -> None:
    with pytest.raises(PccNotFoundError, match="no such vehicle"):
        vault.erase(VIN)
    vault.pseudonymize_vehicle(VIN)
    vault.erase(VIN)
    with pytest.raises(PccNotFoundError):
        vault.erase(VIN)


def test_owners_of_other_vehicles_survive_a_vehicle_erasure(vault: IdentityVault) -> None:
    ana = vault.pseudonymize_owner(ANA)
    car, other = vault.pseudonymize_vehicle(VIN), vault.pseudonymize_vehicle(OTHER_VIN)
    vault.record_ownership(car, ana)
    vault.record_ownership(other, ana)
    vault.erase(car)
    assert vault.current_owner(other) == ana
    assert vault.erase_owner(ANA) == ana
    assert vault.current_owner(other) is None
    assert b"ana lima" not in raw_bytes(vault.path)


def test_threads_share_one_vault(vault: IdentityVault) -> None:
    vins = ["1HGCM82633A004352", "1M8GDM9AXKP042788", "WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"]
    results: list[list[str]] = []

    def work() -> None:
        results.append([vault.pseudonymize_vehicle(v) for v in vins * 5])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert len(set(results[0])) == 4


def test_cli_pseudonym_and_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PCC__DATA_DIR", str(tmp_path))
    assert main(["vault", "pseudonym", "--vin", VIN]) == 0
    pseudonym = capsys.readouterr().out.strip()
    with IdentityVault(load_settings()) as v:
        assert v.pseudonymize_vehicle(VIN) == pseudonym
    assert main(["vault", "erase", "--vin", VIN]) == 0
    assert pseudonym in capsys.readouterr().out
    assert main(["vault", "erase", "--vin", VIN]) == 3
    assert "no such vehicle" in capsys.readouterr().err
    assert VIN.encode() not in raw_bytes(tmp_path / "vault" / "identity.sqlite")


def test_cli_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "show", "repair"]) == 0
    assert '"$id": "urn:pcc:schema:repair.v2"' in capsys.readouterr().out  # the latest: commitments
    assert main(["schemas", "show", "repair", "--version", "1"]) == 0
    assert '"$id": "urn:pcc:schema:repair.v1"' in capsys.readouterr().out
    assert main(["schemas", "list"]) == 0
    assert "ownership_change_input" in capsys.readouterr().out
    assert main(["schemas", "show", "tuning"]) == 3


def test_sealing_keys_read_from_memory_are_dropped_by_an_erasure_here_or_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "vault" / "identity.sqlite"
    sealer = IdentityVault(path, cache_check_s=0.0)  # a producer's vault object
    other = IdentityVault(path)  # the operator's `pcc gdpr erase`, say
    vehicle = sealer.pseudonymize_vehicle(VIN)
    key = sealer.data_key(vehicle, "commercial", 0, cached=True)
    assert sealer.data_key(vehicle, "commercial", 0, cached=True) == key == other.data_key(vehicle, "commercial")
    other.erase(VIN)
    with pytest.raises(PccNotFoundError):  # the erasure elsewhere is noticed (within cache_check_s)
        sealer.data_key(vehicle, "commercial", 0, cached=True)
    again = sealer.pseudonymize_vehicle(VIN)
    sealer.data_key(again, "commercial", 0, cached=True)
    sealer.erase(VIN)
    with pytest.raises(PccNotFoundError):  # and an erasure by the same object at once
        sealer.data_key(again, "commercial", 0, cached=True)
    sealer.close()
    other.close()
