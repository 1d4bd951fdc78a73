"""Proofs, malformed bodies and aggregates filtered on an alias, through the real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pyarrow as pa
import pytest
from eth_account import Account

from pipelines import merkle
from serving.api import create_app
from serving.auth import sign_request
from serving.client import PccClient
from serving.config import ServingConfig
from serving.market.pricing import InMemoryBilling
from serving.passport import InMemoryRoots
from serving.proof import check_proof
from tests.fixtures.serving import CONSUMER_KEY, PRICES, RunningServer, make_events, publish_batch

pytestmark = pytest.mark.integration
N = 40
LEAVES = [merkle.hash_leaf(f"event-{k}".encode()) for k in range(N)]


class LogPaths:
    """Audit paths from one producer's leaves (what ``LeafFilePaths`` reads from ``leaves.bin``)."""

    def audit_path(self, source_id: str, log_index: int, tree_size: int) -> list[bytes] | None:
        return merkle.inclusion_proof(LEAVES[:tree_size], log_index) if source_id == "cc-aurora" else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    events = make_events(N, vehicles=4)
    size = N  # every event anchored in the checkpoint of size N
    events = events.set_column(
        events.schema.get_field_index("source_id"), "source_id", pa.array(["cc-aurora"] * N)
    )
    events = events.set_column(
        events.schema.get_field_index("leaf_hash"), "leaf_hash", pa.array([h.hex() for h in LEAVES])
    )
    events = events.set_column(
        events.schema.get_field_index("tree_size"), "tree_size", pa.array([size] * N, pa.int64())
    )
    events = events.set_column(
        events.schema.get_field_index("root"), "root", pa.array([merkle.root(LEAVES).hex()] * N)
    )
    data = tmp_path_factory.mktemp("serving-proof")
    publish_batch(data, "v1", events)
    billing = InMemoryBilling(PRICES)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10_000_000)
    app = create_app(ServingConfig(data_dir=data, settle_every_s=3600), billing, audit_paths=LogPaths())
    with RunningServer(app) as running:
        yield running
    app.state.store.close()


def event_id(k: int) -> str:
    return str(make_events(1, start=k)["event_id"][0])


def test_an_event_proof_verifies_against_the_anchored_root(server: RunningServer):
    proof = httpx.get(f"{server.url}/v1/proof/{event_id(13)}").json()
    assert (proof["source_id"], proof["log_index"], proof["tree_size"]) == ("cc-aurora", 13, N)
    assert proof["leaf_hash"] == LEAVES[13].hex() and proof["path_from"] == "producer_log"
    check = check_proof(proof, InMemoryRoots({("cc-aurora", N): merkle.root(LEAVES)}))
    assert check.ok and check.anchored and check.inclusion is True


def test_a_proof_the_chain_does_not_back_fails(server: RunningServer):
    proof = httpx.get(f"{server.url}/v1/proof/{event_id(5)}").json()
    other = InMemoryRoots({("cc-aurora", N): merkle.root([*LEAVES[:-1], merkle.hash_leaf(b"x")])})
    assert not check_proof(proof, other).ok and not check_proof(proof, other).anchored
    assert not check_proof(proof, InMemoryRoots()).ok  # nothing anchored
    tampered = {**proof, "leaf_hash": merkle.hash_leaf(b"forged").hex()}
    check = check_proof(tampered, InMemoryRoots({("cc-aurora", N): merkle.root(LEAVES)}))
    assert check.anchored and check.inclusion is False and not check.ok


def test_unknown_event_is_404(server: RunningServer):
    response = httpx.get(f"{server.url}/v1/proof/no-such-event")
    assert response.status_code == 404 and "no-such-event" in response.json()["message"]


def test_a_malformed_body_is_400_after_the_signature_check(server: RunningServer):
    body = b'{"sql": "SELECT 1",'
    signed = httpx.post(
        f"{server.url}/v1/query", content=body, headers=sign_request(CONSUMER_KEY, "POST", "/v1/query", body)
    )
    assert signed.status_code == 400 and "malformed request body" in signed.json()["message"]
    wrong = b'{"sql": 42}'
    typed = httpx.post(
        f"{server.url}/v1/quote",
        content=wrong,
        headers=sign_request(CONSUMER_KEY, "POST", "/v1/quote", wrong),
    )
    assert typed.status_code == 400 and "sql" in typed.json()["message"]
    assert httpx.post(f"{server.url}/v1/query", content=body).status_code == 401


def test_an_aggregate_filtered_on_a_select_alias_is_never_charged_less_than_the_rows_it_counts(
    server: RunningServer,
):
    """A WHERE naming a select-list alias is not metered by a second query of the consumer's
    making: it pays every row of the view (docs/serving.md); the same filter on the column pays
    the rows it counts."""
    with PccClient(server.url, CONSUMER_KEY) as client:
        aliased = client.query(
            "SELECT event_type AS kind, count(*) AS n FROM vehicle_history WHERE kind = 'maintenance' GROUP BY 1",
            "json",
        )
        plain = client.query(
            "SELECT event_type AS kind, count(*) AS n FROM vehicle_history WHERE event_type = 'maintenance' GROUP BY 1",
            "json",
        )
        everything = client.quote("SELECT count(*) FROM vehicle_history")
    assert aliased.rows == plain.rows == [{"kind": "maintenance", "n": N // 4}]
    assert sum(p["rows"] for p in plain.receipt["by_producer"].values()) == N // 4
    assert aliased.price_cents == everything["amount_cents"] >= plain.price_cents > 0
