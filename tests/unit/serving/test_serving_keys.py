"""The key service over the serving API: signed like every request (EIP-712), the signer checked against the
source's registered account (a directory standing for the ledger's SourceRegistry), refusals by status."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("eth_account")

from pipelines.access import AccessService, ConsumerKeyPair, KeyClient, SqliteGrantStore, unwrap_key
from pipelines.access.keyservice import CURRENT_PATH, REGISTER_PATH
from pipelines.vault import IdentityVault
from serving.api import create_app
from serving.auth import RequestDomain, sign_request
from serving.client import PccClient
from serving.config import ServingConfig
from serving.eip191 import Signer
from serving.ingest.sources import MemorySources, RegisteredSource
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import PRICES, make_events, publish_batch
from tests.unit.pipelines.producer.test_producer import vin

with warnings.catch_warnings():  # Starlette asks for its httpx fork; the pinned httpx works as is
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

GARAGE_KEY = "0x" + "31" * 32
OTHER_KEY = "0x" + "32" * 32
SUSPENDED_KEY = "0x" + "33" * 32
VIN = vin(3)


@dataclass
class Service:
    http: TestClient
    vault: IdentityVault
    access: AccessService
    domain: RequestDomain

    def post(self, path: str, body: Any, key: str = GARAGE_KEY, **sign: Any) -> Any:
        raw = orjson.dumps(body)
        headers = sign_request(key, "POST", path, raw, domain=sign.pop("domain", self.domain), **sign)
        return self.http.post(path, content=raw, headers=headers)


def _service(tmp_path: Path, **config: Any) -> tuple[Service, Any]:
    publish_batch(tmp_path, "v1", make_events(4, vehicles=1))
    vault = IdentityVault(tmp_path / "vault" / "identity.sqlite")
    access = AccessService(vault, SqliteGrantStore(tmp_path / "vault" / "grants.sqlite"))
    sources = MemorySources()
    sources.add(RegisteredSource("garage-ext-01", "garage", Signer(GARAGE_KEY).address))
    sources.add(RegisteredSource("garage-ext-02", "garage", Signer(OTHER_KEY).address))
    sources.add(RegisteredSource("garage-gone", "garage", Signer(SUSPENDED_KEY).address, active=False))
    app = create_app(
        ServingConfig(data_dir=tmp_path, **config), InMemoryBilling(PRICES), background=False, access=access,
        producers=sources,
    )  # fmt: skip
    http = TestClient(app)
    return Service(http, vault, access, RequestDomain.from_document(http.get("/v1/domain").json())), app


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    service, app = _service(tmp_path)
    yield service
    app.state.receipts.close()
    app.state.store.close()
    service.vault.close()


def register(svc: Service, source: str = "garage-ext-01", key: str = GARAGE_KEY) -> ConsumerKeyPair:
    pair = ConsumerKeyPair.generate()
    answer = svc.post(REGISTER_PATH, {"source_id": source, "public_key": pair.public_key.hex()}, key)
    assert answer.status_code == 200, answer.text
    return pair


def test_a_producer_elsewhere_registers_then_seals_with_the_keys_it_gets(svc: Service) -> None:
    pair = ConsumerKeyPair.generate()
    client = PccClient("http://testserver", GARAGE_KEY, http=svc.http)
    keys = KeyClient(client.post, "garage-ext-01", pair)
    assert keys.register() == {
        "source_id": "garage-ext-01",
        "fingerprint": pair.fingerprint,
        "replaced": None,
    }
    vehicle = keys.pseudonymize_vehicle(VIN)
    assert vehicle == svc.vault.find_vehicle(VIN)
    for category in ("owner_identity", "precise_location", "commercial"):
        assert keys(vehicle)(category) == svc.access.keys.current(vehicle, category)


def test_the_answer_is_wrapped_to_the_registered_key_only(svc: Service) -> None:
    pair = register(svc)
    answer = svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": VIN, "categories": ["commercial"]})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body["keys"]) == {"commercial"} and body["wrapped_to"] == pair.fingerprint
    item = body["keys"]["commercial"]
    assert (
        unwrap_key(item["wrapped"], pair, body["vehicle"], "commercial", item["epoch"])
        == (svc.access.keys.current(body["vehicle"], "commercial")[1])
    )
    # naming a key of one's choosing in the request is refused: answers go to the registered key
    mine = ConsumerKeyPair.generate().public_key.hex()
    named = svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": VIN, "wrapping_key": mine})
    assert named.status_code == 400 and "wrapping_key" in named.json()["message"]


def test_unsigned_stale_replayed_or_another_deployments_requests_are_401(svc: Service) -> None:
    register(svc)
    body = {"source_id": "garage-ext-01", "vin": VIN}
    unsigned = svc.http.post(CURRENT_PATH, content=orjson.dumps(body))
    assert unsigned.status_code == 401 and "must be signed" in unsigned.json()["message"]
    stale = svc.post(CURRENT_PATH, body, ttl_s=-5)
    assert stale.status_code == 401 and "expired" in stale.json()["message"]
    raw = orjson.dumps(body)
    headers = sign_request(GARAGE_KEY, "POST", CURRENT_PATH, raw, domain=svc.domain)
    assert svc.http.post(CURRENT_PATH, content=raw, headers=headers).status_code == 200
    replayed = svc.http.post(CURRENT_PATH, content=raw, headers=headers)
    assert replayed.status_code == 401 and "replayed" in replayed.json()["message"]
    other_chain = RequestDomain(1, svc.domain.verifying_contract, svc.domain.host)
    elsewhere = svc.post(CURRENT_PATH, body, domain=other_chain)
    assert elsewhere.status_code == 401 and "chain id 1" in elsewhere.json()["message"]
    other_host = RequestDomain(svc.domain.chain_id, svc.domain.verifying_contract, "keys.example")
    assert svc.post(CURRENT_PATH, body, domain=other_host).status_code == 401
    tampered = dict(headers, **{"X-PCC-Nonce": "a-fresh-nonce-1"})  # a signature over another nonce
    assert svc.http.post(CURRENT_PATH, content=raw, headers=tampered).status_code == 401


def test_a_source_cannot_act_as_another_or_while_unregistered_or_suspended(svc: Service) -> None:
    register(svc, "garage-ext-02", OTHER_KEY)
    # garage-ext-01's account asking for garage-ext-02's keys (or registering a key in its name)
    as_other = svc.post(CURRENT_PATH, {"source_id": "garage-ext-02", "vin": VIN})
    assert as_other.status_code == 403 and "not the registered key of source garage-ext-02" in as_other.text
    pair = ConsumerKeyPair.generate().public_key.hex()
    hijack = svc.post(REGISTER_PATH, {"source_id": "garage-ext-02", "public_key": pair})
    assert hijack.status_code == 403
    unknown = svc.post(CURRENT_PATH, {"source_id": "garage-nobody", "vin": VIN}, "0x" + "34" * 32)
    assert unknown.status_code == 403 and "not registered" in unknown.json()["message"]
    suspended = svc.post(CURRENT_PATH, {"source_id": "garage-gone", "vin": VIN}, SUSPENDED_KEY)
    assert suspended.status_code == 403 and "suspended" in suspended.json()["message"]
    assert svc.vault.find_vehicle(VIN) is None  # nothing refused created a pseudonym or a key


def test_unknown_categories_and_missing_wrapping_key_are_named(svc: Service) -> None:
    missing = svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": VIN})
    assert missing.status_code == 403 and missing.json()["error"] == "NoProducerKey"
    assert REGISTER_PATH in missing.json()["message"]
    register(svc)
    wrong = svc.post(
        CURRENT_PATH, {"source_id": "garage-ext-01", "vin": VIN, "categories": ["mileage", "gps"]}
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "UnknownCategory"
    assert "['gps', 'mileage']" in wrong.json()["message"]
    bad_vin = svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": "WVW"})
    assert bad_vin.status_code == 400 and bad_vin.json()["message"] == "vin: must have 17 characters, got 3"
    not_json = svc.http.post(
        CURRENT_PATH,
        content=b"{",
        headers=sign_request(GARAGE_KEY, "POST", CURRENT_PATH, b"{", domain=svc.domain),
    )
    assert not_json.status_code == 400


def test_a_source_past_its_request_rate_is_429_before_anything_is_created(tmp_path: Path) -> None:
    svc, app = _service(tmp_path, rate_per_s=0.01, rate_burst=2)
    register(svc)
    assert svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": vin(4)}).status_code == 200
    flood = svc.post(CURRENT_PATH, {"source_id": "garage-ext-01", "vin": vin(5)})
    assert flood.status_code == 429 and "Retry-After" in flood.headers
    assert svc.vault.find_vehicle(vin(5)) is None
    app.state.receipts.close()
    app.state.store.close()
    svc.vault.close()


def test_the_key_service_is_described_in_the_openapi_document(svc: Service) -> None:
    paths = svc.http.get("/openapi.json").json()["paths"]
    current = paths[CURRENT_PATH]["post"]
    body = current["requestBody"]["content"]["application/json"]["schema"]
    assert (
        set(body["properties"]) == {"source_id", "vin", "categories"}
        and body["additionalProperties"] is False
    )
    assert {"400", "401", "403", "429"} <= set(current["responses"])
    assert REGISTER_PATH in paths
