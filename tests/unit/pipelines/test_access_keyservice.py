"""The key service's decision (after authentication): keys of a car a producer knows, wrapped to the key it
registered, audited; a producer elsewhere seals with them through the producer SDK, without a vault."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    KeyClient,
    KeyService,
    NoProducerKey,
    SqliteGrantStore,
    SqliteProducerKeys,
    TamperedCiphertext,
    UnknownCategory,
    open_payload,
    row_aad,
    stored_payload,
)
from pipelines.access.keyservice import CURRENT_PATH, REGISTER_PATH
from pipelines.access.wrap import unwrap_key
from pipelines.errors import PccValueError
from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from tests.unit.pipelines.producer.test_producer_sealing import SECRETS, service, vin

SOURCE = "garage-ext-01"
VIN = vin(0)


class Platform:
    def __init__(self, tmp: Path) -> None:
        self.vault = IdentityVault(tmp / "vault" / "identity.sqlite")
        self.access = AccessService(self.vault, SqliteGrantStore(tmp / "vault" / "grants.sqlite"))
        self.producer_keys = SqliteProducerKeys(tmp / "serving" / "producer-keys.sqlite")
        self.service = KeyService(self.access.keys, self.producer_keys)
        self.wrapping = ConsumerKeyPair.generate()

    def audit(self) -> list[tuple[Any, ...]]:
        entries = reversed(self.vault.audit_entries(limit=10_000))
        return [(e["action"], e["subject"], e["actor"], e["detail"]) for e in entries]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path)
    yield p
    p.producer_keys.close()
    p.vault.close()


def test_a_producer_elsewhere_seals_with_keys_wrapped_to_it_and_no_vault(
    platform: Platform, tmp_path: Path
) -> None:
    wire: list[bytes] = []

    def post(path: str, body: Mapping[str, Any]) -> Any:  # the HTTP hop: only JSON crosses it
        wire.append(orjson.dumps(body))
        if path == REGISTER_PATH:
            answer = platform.service.register(body["source_id"], body["public_key"])
        else:
            assert path == CURRENT_PATH
            answer = platform.service.current_keys(body["source_id"], body["vin"], body["categories"])
        wire.append(orjson.dumps(answer))
        return orjson.loads(wire[-1])

    keys = KeyClient(post, SOURCE, platform.wrapping, clock=lambda: 0.0)  # the cache never ages here
    assert keys.register()["fingerprint"] == platform.wrapping.fingerprint
    settings = Settings(data_dir=tmp_path / "elsewhere", producer={"checkpoint_every": 1})
    pub = MemoryPublisher()
    with Producer(settings, source_id=SOURCE, source_kind="garage", anchor=MemoryAnchor(), publisher=pub,
                  vault=keys, keys=keys) as producer:  # fmt: skip
        producer.submit({**service(), "source_id": SOURCE})
        producer.submit({**service(), "source_id": SOURCE})
    assert keys.round_trips == 1  # one round trip for both events (cached 1 s), every category at once
    assert not [s for s in SECRETS if any(s in w for w in wire)]  # the service never sees a value
    assert not (tmp_path / "elsewhere" / "vault").exists()  # no vault on the producer's side
    sent = orjson.loads(pub.sent[0].value)
    assert sent["vehicle"] == platform.vault.find_vehicle(VIN)
    opened = open_payload(
        "maintenance", 2, stored_payload(sent), platform.access.keys.key_lookup(sent["vehicle"]),
        row_aad(sent["vehicle"], sent["event_id"]),
    )  # fmt: skip
    assert opened["cost_cents"] == 18_990 and opened["location"]["lat"] == 48.856613
    (release,) = [a for a in platform.audit() if a[0] == "key_service_release"]
    assert release[1:3] == (sent["vehicle"], f"producer:{SOURCE}")
    assert "commercial@0" in release[3] and platform.wrapping.fingerprint in release[3]
    assert VIN not in repr(platform.audit())  # the audit names pseudonyms, never the VIN


def test_answers_open_only_with_the_registered_key_for_that_car_category_and_epoch(
    platform: Platform,
) -> None:
    platform.service.register(SOURCE, platform.wrapping.public_key.hex())
    answer = platform.service.current_keys(SOURCE, VIN, ["commercial", "precise_location"])
    vehicle, item = answer["vehicle"], answer["keys"]["commercial"]
    assert (
        unwrap_key(item["wrapped"], platform.wrapping, vehicle, "commercial", item["epoch"])
        == (platform.access.keys.current(vehicle, "commercial")[1])
    )
    with pytest.raises(TamperedCiphertext):  # a key it does not hold opens nothing
        unwrap_key(item["wrapped"], ConsumerKeyPair.generate(), vehicle, "commercial", item["epoch"])
    with pytest.raises(TamperedCiphertext):  # nor as another category's or another car's key
        unwrap_key(item["wrapped"], platform.wrapping, vehicle, "precise_location", item["epoch"])
    other = platform.vault.pseudonymize_vehicle(vin(1))
    with pytest.raises(TamperedCiphertext):
        unwrap_key(item["wrapped"], platform.wrapping, other, "commercial", item["epoch"])


def test_a_revocation_gives_the_producer_the_new_epoch_after_its_cache(platform: Platform) -> None:
    platform.service.register(SOURCE, platform.wrapping.public_key.hex())
    now = [0.0]

    def post(path: str, body: Mapping[str, Any]) -> Any:
        return platform.service.current_keys(body["source_id"], body["vin"], body["categories"])

    keys = KeyClient(post, SOURCE, platform.wrapping, clock=lambda: now[0])
    vehicle = keys.pseudonymize_vehicle(VIN)
    assert keys(vehicle)("commercial")[0] == 0
    platform.access.keys.rotate(vehicle, "commercial")
    assert keys(vehicle)("commercial")[0] == 0  # within the 1 s cache
    now[0] = 1.5
    epoch, key = keys(vehicle)("commercial")
    assert epoch == 1 and key == platform.access.keys.key(vehicle, "commercial", 1)


def test_refusals_name_the_problem_and_are_audited_without_a_key(platform: Platform) -> None:
    service = platform.service
    with pytest.raises(NoProducerKey, match="registered no X25519 key"):
        service.current_keys(SOURCE, VIN)
    service.register(SOURCE, platform.wrapping.public_key.hex())
    with pytest.raises(UnknownCategory, match=r"\['mileage', 'salary'\].*protected"):
        service.current_keys(SOURCE, VIN, ["commercial", "mileage", "salary"])
    with pytest.raises(PccValueError, match="vin"):
        service.current_keys(SOURCE, "not-a-vin")
    with pytest.raises(PccValueError, match="X25519"):
        service.register(SOURCE, "00" * 32)
    # a low-order point: nothing can be wrapped to it
    with pytest.raises(PccValueError, match="usable X25519"):
        service.register(SOURCE, "01" + "00" * 31)
    (refusal,) = [a for a in platform.audit() if a[0] == "key_service_refused"]
    assert refusal[2:] == (f"producer:{SOURCE}", "no registered wrapping key")
    assert not [a for a in platform.audit() if a[0] == "key_service_release"]


def test_a_new_registered_key_replaces_the_old_one_and_the_audit_says_so(platform: Platform) -> None:
    platform.service.register(SOURCE, platform.wrapping.public_key.hex())
    newer = ConsumerKeyPair.generate()
    answer = platform.service.register(SOURCE, newer.public_key.hex())
    assert answer["replaced"] == platform.wrapping.fingerprint
    keys = platform.service.current_keys(SOURCE, VIN, ["commercial"])
    assert keys["wrapped_to"] == newer.fingerprint
    item = keys["keys"]["commercial"]
    with pytest.raises(TamperedCiphertext):
        unwrap_key(item["wrapped"], platform.wrapping, keys["vehicle"], "commercial", item["epoch"])
    changes = [a[3] for a in platform.audit() if a[0] == "key_service_producer_key"]
    assert changes[-1] == f"wrapping key {newer.fingerprint} replaces {platform.wrapping.fingerprint}"


def test_a_client_refuses_keys_wrapped_to_another_key(platform: Platform) -> None:
    platform.service.register(SOURCE, ConsumerKeyPair.generate().public_key.hex())  # not the client's key

    def post(path: str, body: Mapping[str, Any]) -> Any:
        return platform.service.current_keys(body["source_id"], body["vin"], body["categories"])

    with pytest.raises(AccessDenied, match="register it again"):
        KeyClient(post, SOURCE, platform.wrapping).pseudonymize_vehicle(VIN)


def test_after_erasure_a_vin_gets_a_new_pseudonym_and_keys_that_open_nothing_old(platform: Platform) -> None:
    platform.service.register(SOURCE, platform.wrapping.public_key.hex())
    before = platform.service.current_keys(SOURCE, VIN, ["commercial"])
    platform.access.keys.erase_vehicle(before["vehicle"])
    platform.vault.erase(VIN)
    after = platform.service.current_keys(SOURCE, VIN, ["commercial"])
    assert after["vehicle"] != before["vehicle"]
    with pytest.raises(AccessDenied):
        platform.access.keys.key(before["vehicle"], "commercial", 0)


def test_after_an_erasure_the_producer_seals_the_next_event_under_the_new_pseudonym(
    platform: Platform,
) -> None:
    platform.service.register(SOURCE, platform.wrapping.public_key.hex())
    now = [0.0]

    def post(path: str, body: Mapping[str, Any]) -> Any:
        return platform.service.current_keys(body["source_id"], body["vin"], body["categories"])

    keys = KeyClient(post, SOURCE, platform.wrapping, clock=lambda: now[0])
    erased = keys.pseudonymize_vehicle(VIN)
    platform.access.keys.erase_vehicle(erased)
    platform.vault.erase(VIN)
    now[0] = 1.5  # past the cache: the producer asks again
    with pytest.raises(AccessDenied, match="was erased"):  # an event prepared with the old pseudonym
        keys(erased)("commercial")
    renewed = keys.pseudonymize_vehicle(VIN)
    assert renewed != erased and renewed == platform.vault.find_vehicle(VIN)
    assert keys(renewed)("commercial") == platform.access.keys.current(renewed, "commercial")
