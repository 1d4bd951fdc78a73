"""The key service: a producer in another organisation seals with current keys wrapped to it, no vault copy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    SqliteGrantStore,
    TamperedCiphertext,
    open_payload,
    row_aad,
    stored_payload,
)
from pipelines.access.keyservice import KeyService, RegisteredProducer, RemoteKeys, sign_request
from pipelines.access.wrap import unwrap_key
from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from tests.unit.producer.test_producer_sealing import SECRETS, service

SOURCE = "garage-ext-01"


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Platform:
    def __init__(self, tmp: Path) -> None:
        self.vault = IdentityVault(tmp / "vault" / "identity.sqlite")
        self.access = AccessService(self.vault, SqliteGrantStore(tmp / "vault" / "grants.sqlite"))
        self.signing = Ed25519PrivateKey.generate()
        self.wrapping = ConsumerKeyPair.generate()
        producer = RegisteredProducer(SOURCE, raw_public(self.signing), self.wrapping.public_key)
        self.service = KeyService(self.access.keys, {SOURCE: producer})

    def audit(self) -> list[tuple[Any, ...]]:
        return self.vault._conn().execute("SELECT action, subject, actor, detail FROM audit_log").fetchall()


class Pseudonyms:
    """The producer's side of a pseudonym service: asks the platform, keeps no vault."""

    def __init__(self, vault: IdentityVault) -> None:
        self._vault = vault

    def pseudonymize_vehicle(self, vin: str) -> str:
        return self._vault.pseudonymize_vehicle(vin)

    def pseudonymize_owner(self, identity: Mapping[str, Any]) -> str:
        return self._vault.pseudonymize_owner(identity)

    def record_ownership(self, vehicle: str, owner: str) -> None:
        self._vault.record_ownership(vehicle, owner)


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    p = Platform(tmp_path)
    yield p
    p.vault.close()


def test_a_producer_elsewhere_seals_with_keys_the_service_wrapped_to_it(
    platform: Platform, tmp_path: Path
) -> None:
    calls: list[bytes] = []

    def fetch(signed: dict[str, Any]) -> Any:  # the HTTP hop: only JSON crosses it
        calls.append(orjson.dumps(signed))
        answer = platform.service.current_keys(orjson.loads(calls[-1]))
        calls.append(orjson.dumps(answer))
        return orjson.loads(calls[-1])

    keys = RemoteKeys(fetch, SOURCE, platform.signing, platform.wrapping)
    settings = Settings(data_dir=tmp_path / "elsewhere", producer={"checkpoint_every": 1})
    pub = MemoryPublisher()
    with Producer(settings, source_id=SOURCE, source_kind="garage", anchor=MemoryAnchor(), publisher=pub,
                  vault=Pseudonyms(platform.vault), keys=keys) as producer:  # fmt: skip
        producer.submit({**service(), "source_id": SOURCE})
        producer.submit({**service(), "source_id": SOURCE})
    assert len(calls) == 2  # one round trip for both events (cached 1 s), every category at once
    assert not [s for s in SECRETS if any(s in c for c in calls)]
    assert b"wk:v1:" in calls[1] and not (tmp_path / "elsewhere" / "vault").exists()  # no vault there
    wire = orjson.loads(pub.sent[0].value)
    aad = row_aad(wire["vehicle"], wire["event_id"])
    opened = open_payload(
        "maintenance", 2, stored_payload(wire), platform.access.keys.key_lookup(wire["vehicle"]), aad
    )
    assert opened["cost_cents"] == 18_990
    (release,) = [a for a in platform.audit() if a[0] == "key_service_release"]
    assert release[2] == f"producer:{SOURCE}" and "commercial@0" in release[3]


def _request(platform: Platform, vehicle: str, **change: Any) -> dict[str, Any]:
    signed = sign_request(platform.signing, SOURCE, vehicle, ["commercial"], int(time.time() * 1000))
    signed["request"].update(change)
    if change:  # re-sign what was changed, unless the test wants a bad signature
        signed = sign_request(platform.signing, signed["request"]["source_id"], signed["request"]["vehicle"],
                              signed["request"]["categories"], signed["request"]["issued_ms"])  # fmt: skip
    return signed


def test_refusals_are_named_and_audited_without_any_key(platform: Platform) -> None:
    vehicle = platform.vault.pseudonymize_vehicle("1HGCM82633A004352")
    service = platform.service
    forged = _request(platform, vehicle)
    forged["signature"] = Ed25519PrivateKey.generate().sign(b"x").hex()
    with pytest.raises(AccessDenied, match="bad signature"):
        service.current_keys(forged)
    stranger = sign_request(
        Ed25519PrivateKey.generate(), "garage-unknown", vehicle, ["commercial"], int(time.time() * 1000)
    )
    with pytest.raises(AccessDenied, match="not a registered"):
        service.current_keys(stranger)
    with pytest.raises(AccessDenied, match="not issued within"):
        service.current_keys(_request(platform, vehicle, issued_ms=int(time.time() * 1000) - 3_600_000))
    with pytest.raises(AccessDenied, match="protected"):
        service.current_keys(_request(platform, vehicle, categories=["mileage"]))
    with pytest.raises(AccessDenied, match="unknown or erased"):
        service.current_keys(_request(platform, "v-" + "0" * 32))
    once = _request(platform, vehicle)
    service.current_keys(once)
    with pytest.raises(AccessDenied, match="replayed"):
        service.current_keys(once)
    refusals = [a for a in platform.audit() if a[0] == "key_service_refused"]
    assert len(refusals) == 6
    platform.vault.erase("1HGCM82633A004352")
    with pytest.raises(AccessDenied, match="unknown or erased"):
        service.current_keys(_request(platform, vehicle))


def test_a_wrapped_key_opens_only_for_the_registered_producer_key(platform: Platform) -> None:
    vehicle = platform.vault.pseudonymize_vehicle("1HGCM82633A004352")
    answer = platform.service.current_keys(_request(platform, vehicle))
    item = answer["commercial"]
    assert (
        unwrap_key(item["wrapped"], platform.wrapping, vehicle, "commercial", item["epoch"])
        == (platform.access.keys.current(vehicle, "commercial")[1])
    )
    with pytest.raises(TamperedCiphertext):
        unwrap_key(item["wrapped"], ConsumerKeyPair.generate(), vehicle, "commercial", item["epoch"])
