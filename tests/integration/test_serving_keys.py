"""The key service on a real chain node through the real HTTP server: a garage of another organisation,
registered on the SourceRegistry, registers its X25519 key and seals events with keys wrapped to it; the
platform opens them with its vault. Another source's name, a replayed request and a suspended source are
refused by status, each with its reason."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from infra.chain.node import NodeInfo
from ledger.client import LedgerClient
from ledger.config import LedgerConfig
from ledger.keys import dev_source_key
from ledger.onboarding import deploy_consortium, register_source
from pipelines.access import (
    AccessService,
    ConsumerKeyPair,
    KeyClient,
    open_grant_store,
    open_payload,
    row_aad,
    stored_payload,
)
from pipelines.access.keyservice import CURRENT_PATH
from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import LedgerSettings, Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from serving.api import create_app
from serving.auth import RequestDomain, sign_request
from serving.client import PccClient
from serving.config import ServingConfig
from serving.errors import NotSourceKeyError
from serving.ingest.sources import ChainSources
from serving.market.chain import ChainBilling
from tests.fixtures.serving import RunningServer, make_events, publish_batch

pytestmark = pytest.mark.integration

VIN = with_check_digit("WVWZZZ1KZ00000417")


@dataclass
class Platform:
    settings: Settings
    ledger: LedgerClient
    access: AccessService
    server: RunningServer

    def source(self) -> tuple[str, str]:
        """A freshly registered garage and its account key (dev chain: derived from the deployer's)."""
        source_id = f"garage-{uuid.uuid4().hex[:8]}"
        register_source(self.settings, source_id, "garage", 2, client=self.ledger)
        deployer = LedgerConfig.from_settings(self.settings).deployer_key.get_secret_value()
        return source_id, dev_source_key(deployer, source_id)


@pytest.fixture(scope="module")
def platform(anvil_node: NodeInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("keys"), ledger=LedgerSettings(rpc_url=anvil_node.url, chain="anvil")
    )
    deploy_consortium(settings)
    ledger = LedgerClient.from_settings(settings)
    publish_batch(settings.data_dir, "v1", make_events(4, vehicles=1))
    vault = IdentityVault(settings)
    access = AccessService(vault, open_grant_store(settings), key_cache_s=1.0)
    config = ServingConfig(data_dir=settings.data_dir, settle_every_s=3600, signing_key="0x" + "43" * 32)
    app = create_app(
        config, ChainBilling(ledger), background=False, access=access,
        producers=ChainSources(ledger, cache_s=0.0),  # a suspension is seen at the next request
    )  # fmt: skip
    with RunningServer(app) as server:
        yield Platform(settings, ledger, access, server)
    app.state.store.close()
    vault.close()


def maintenance(source_id: str) -> dict[str, Any]:
    return {
        "event_type": "maintenance", "schema_version": 2, "source_id": source_id, "vin": VIN,
        "event_time": "2026-01-01T00:00:00.000Z",
        "payload": {"odometer_km": 41_300, "service_type": "oil_change", "in_network": True, "cost_cents": 18_990,
                    "invoice_ref": "INV-2026-0417", "location": {"lat": 48.856613, "lon": 2.352222}},
    }  # fmt: skip


def test_a_garage_elsewhere_seals_with_keys_from_the_service_and_the_platform_opens_them(
    platform: Platform, tmp_path
) -> None:
    source_id, account_key = platform.source()
    pair = ConsumerKeyPair.generate()
    with PccClient(platform.server.url, account_key) as client:
        keys = KeyClient(client.post, source_id, pair)
        assert keys.register()["fingerprint"] == pair.fingerprint
        pub = MemoryPublisher()
        settings = Settings(data_dir=tmp_path / "garage", producer={"checkpoint_every": 1})
        with Producer(settings, source_id=source_id, source_kind="garage", anchor=MemoryAnchor(), publisher=pub,
                      vault=keys, keys=keys) as producer:  # fmt: skip
            producer.submit(maintenance(source_id))
    wire = pub.sent[0].value
    assert b"INV-2026-0417" not in wire and b"48.856613" not in wire and VIN.encode() not in wire
    sent = orjson.loads(wire)
    assert sent["vehicle"] == platform.access.vault.find_vehicle(VIN)
    opened = open_payload(
        "maintenance", 2, stored_payload(sent), platform.access.keys.key_lookup(sent["vehicle"]),
        row_aad(sent["vehicle"], sent["event_id"]),
    )  # fmt: skip
    assert opened["invoice_ref"] == "INV-2026-0417"
    release = [a for a in platform.access.vault.audit_entries(50) if a["action"] == "key_service_release"]
    assert release[0]["actor"] == f"producer:{source_id}" and pair.fingerprint in release[0]["detail"]


def test_another_sources_name_a_replay_and_a_suspended_source_are_refused(platform: Platform) -> None:
    mine, my_key = platform.source()
    theirs, their_key = platform.source()
    for source_id, key in ((mine, my_key), (theirs, their_key)):
        with PccClient(platform.server.url, key) as client:
            KeyClient(client.post, source_id, ConsumerKeyPair.generate()).register()
    domain = RequestDomain.from_document(httpx.get(platform.server.url + "/v1/domain").json())
    assert domain.chain_id == platform.ledger.deployment.chain_id

    def post(body: dict[str, Any], key: str, headers: dict[str, str] | None = None) -> httpx.Response:
        raw = orjson.dumps(body)
        headers = headers or sign_request(key, "POST", CURRENT_PATH, raw, domain=domain)
        return httpx.post(platform.server.url + CURRENT_PATH, content=raw, headers=headers, timeout=30)

    as_them = post({"source_id": theirs, "vin": VIN}, my_key)
    assert as_them.status_code == 403 and f"not the registered key of source {theirs}" in as_them.text
    body = {"source_id": mine, "vin": VIN, "categories": ["commercial"]}
    headers = sign_request(my_key, "POST", CURRENT_PATH, orjson.dumps(body), domain=domain)
    assert post(body, my_key, headers).status_code == 200
    replayed = post(body, my_key, headers)
    assert replayed.status_code == 401 and "replayed" in replayed.json()["message"]
    platform.ledger.sources.set_active(mine, False)
    with (
        PccClient(platform.server.url, my_key) as client,
        pytest.raises(NotSourceKeyError, match="suspended"),
    ):
        KeyClient(client.post, mine, ConsumerKeyPair.generate()).pseudonymize_vehicle(VIN)
