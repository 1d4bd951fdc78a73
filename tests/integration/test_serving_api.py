"""The real HTTP server over real DuckDB files: paid queries, refusals, replay, limits, the boundary."""

from __future__ import annotations

import io
import threading
import time
import uuid

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from eth_account import Account

from serving.auth import sign_request
from serving.client import PccClient
from serving.errors import (
    ForbiddenQueryError,
    InvalidQueryError,
    PaymentRequiredError,
    QueryTimeoutError,
    ResultTooLargeError,
)
from tests.fixtures.serving import (
    CONSUMER_KEY,
    POOR_KEY,
    RunningServer,
    make_events,
    publish_batch,
    vehicle_id,
    write_segment,
)

pytestmark = pytest.mark.integration
ONE_VEHICLE = f"SELECT event_id, event_time, odometer_km, source_id FROM vehicle_history WHERE vehicle = '{vehicle_id(3)}' ORDER BY event_time"


@pytest.fixture
def client(serving_service: RunningServer) -> PccClient:
    with PccClient(serving_service.url, CONSUMER_KEY) as c:
        yield c


def test_merged_view_has_every_event_once(client: PccClient) -> None:
    rows = client.query("SELECT event_id, layer FROM vehicle_history").rows
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 300
    assert ids and {str(uuid.UUID(int=k + 1)) for k in range(300)} == set(ids)
    layers = {r["layer"] for r in rows}
    assert layers == {"batch", "realtime"}


def test_paid_query_charges_exactly_the_quote_and_settles_it(
    client: PccClient, serving_service: RunningServer
) -> None:
    billing = serving_service.app.state.billing
    settler = serving_service.app.state.settler
    settler.settle_pending()  # earlier tests' receipts
    quote = client.quote(ONE_VEHICLE)
    assert quote["amount_cents"] > 0 and quote["rows"] == 30
    before = dict(billing.balances)
    result = client.query(ONE_VEHICLE, format="json")
    assert result.table.num_rows == 30
    assert result.price_cents == quote["amount_cents"] == result.receipt["amount_cents"]
    assert result.receipt["by_producer"] == quote["by_producer"]
    assert billing.balances == before  # nothing moves before settlement
    settler.settle_pending()
    after = billing.balances
    consumer = client.account.lower()
    assert before[consumer] - after[consumer] == quote["amount_cents"]
    gained = {k: after[k] - before.get(k, 0) for k in after if k != consumer and after[k] != before.get(k, 0)}
    assert sum(gained.values()) == quote["amount_cents"]
    assert set(gained) - {"treasury"} == {p for p, v in quote["by_producer"].items() if v["cents"] > 0}
    assert gained["treasury"] >= quote["fee_cents"]
    settled = {r["receipt_no"]: r for r in client.receipts()}
    assert settled[result.receipt["receipt_no"]]["settled_tx"] is not None
    settler.settle_pending()  # settling again charges nothing twice
    assert billing.balances == after


def test_receipts_are_signed_by_the_service(client: PccClient) -> None:
    from serving.market.receipts import verify_receipt

    client.query("SELECT count(*) FROM vehicle_history")
    signer = client.catalog()["receipt_signer"]
    receipts = client.receipts()
    assert receipts and all(verify_receipt(r) == signer for r in receipts)


def test_replayed_request_is_refused(serving_service: RunningServer) -> None:
    body = b'{"sql": "SELECT count(*) FROM vehicle_history"}'
    headers = sign_request(CONSUMER_KEY, "POST", "/v1/query", body)
    headers["Content-Type"] = "application/json"
    first = httpx.post(serving_service.url + "/v1/query", content=body, headers=headers)
    again = httpx.post(serving_service.url + "/v1/query", content=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and "replayed" in again.json()["message"]


def test_forged_and_unsigned_requests_are_refused(serving_service: RunningServer) -> None:
    body = b'{"sql": "SELECT count(*) FROM vehicle_history"}'
    headers = sign_request(CONSUMER_KEY, "POST", "/v1/query", body)
    headers["Content-Type"] = "application/json"
    tampered = httpx.post(
        serving_service.url + "/v1/query", content=body.replace(b"count(*)", b"*"), headers=headers
    )
    assert tampered.status_code == 401
    impostor = dict(headers, **{"X-PCC-Account": Account.from_key(POOR_KEY).address})
    assert httpx.post(serving_service.url + "/v1/query", content=body, headers=impostor).status_code == 401
    unsigned = httpx.post(
        serving_service.url + "/v1/query", content=body, headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 401 and "must be signed" in unsigned.json()["message"]


def test_unfunded_account_gets_402_before_any_work_and_no_receipt(serving_service: RunningServer) -> None:
    with PccClient(serving_service.url, POOR_KEY) as poor:
        with pytest.raises(PaymentRequiredError) as info:
            poor.query(ONE_VEHICLE)
        assert info.value.quote["available_cents"] == 0 and "no funds free" in str(info.value)
        with pytest.raises(PaymentRequiredError):
            poor.quote(ONE_VEHICLE)  # a dry run is engine work too
        assert poor.receipts() == []


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "no_table_functions"),
        ("COPY vehicle_history TO '/tmp/x.csv'", "select_only"),
        ("ATTACH '/tmp/x.duckdb'", "select_only"),
        ("SELECT 1; SELECT 2", "single_statement"),
        ("SELECT * FROM rt", "serving_views_only"),
    ],
)
def test_forbidden_sql_is_403_naming_the_rule_and_free(client: PccClient, sql: str, rule: str) -> None:
    before = len(client.receipts())
    with pytest.raises(ForbiddenQueryError) as info:
        client.query(sql)
    assert info.value.rule == rule and rule in str(info.value)
    assert len(client.receipts()) == before


def test_invalid_sql_is_400_with_duckdb_message(client: PccClient) -> None:
    with pytest.raises(InvalidQueryError, match=r"Parser Error|syntax error"):
        client.query("SELEC 1")


def test_too_large_is_413_and_too_slow_is_408_and_free(client: PccClient) -> None:
    before = len(client.receipts())
    with pytest.raises(ResultTooLargeError):
        client.query("SELECT a.event_id FROM vehicle_history a, vehicle_history b")
    with pytest.raises(QueryTimeoutError):
        client.query(
            "SELECT count(*) FROM vehicle_history a, vehicle_history b, vehicle_history c, vehicle_history d "
            "WHERE hash(a.event_id || b.event_id || c.event_id || d.event_id) = 0"
        )
    assert len(client.receipts()) == before


def test_formats_json_csv_arrow_agree(client: PccClient) -> None:
    arrow = client.query(ONE_VEHICLE, format="arrow").table
    csv = client.query_raw(ONE_VEHICLE, "csv")
    as_csv = pacsv.read_csv(io.BytesIO(csv.content))
    as_json = client.query(ONE_VEHICLE, format="json").table
    assert arrow.column("event_id").to_pylist() == as_csv.column("event_id").to_pylist()
    assert as_json.column("odometer_km").to_pylist() == arrow.column("odometer_km").to_pylist()
    assert isinstance(arrow.schema.field("event_time").type, pa.TimestampType)


def test_catalog_lists_views_columns_categories_prices(client: PccClient) -> None:
    catalog = client.catalog()
    views = {v["name"]: v for v in catalog["views"]}
    assert {"vehicle_history", "mileage_timeline"} <= set(views)
    history = views["vehicle_history"]
    assert "vehicle" in [c["name"] for c in history["columns"]]
    assert history["price_cents_per_row"]["mileage"] == 2
    assert catalog["batch_version"] == "v1"


def test_boundary_swap_under_concurrent_queries(tmp_path) -> None:
    """Versions are published while 4 clients query: never a gap, never a duplicate."""
    from serving.api import create_app
    from serving.config import ServingConfig
    from serving.market.pricing import InMemoryBilling
    from tests.fixtures.serving import PRICES

    n = 2000
    events = make_events(n, vehicles=20)
    for start in range(0, n, 250):
        write_segment(tmp_path, events.slice(start, 250))
    publish_batch(tmp_path, "v0", events.slice(0, 100))
    # four clients in a loop from one account: well over the per-account rate a consumer is allowed
    config = ServingConfig(
        data_dir=tmp_path, refresh_s=0.02, settle_every_s=3600, rate_per_s=100_000, rate_burst=100_000
    )
    billing = InMemoryBilling(PRICES)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10**12)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def consumer() -> None:
        with PccClient(server.url, CONSUMER_KEY) as c:
            while not stop.is_set():
                try:
                    t = c.query("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM vehicle_history")
                    results.append((t.rows[0]["n"], t.rows[0]["d"]))
                except BaseException as exc:
                    errors.append(exc)
                    return

    with RunningServer(create_app(config, billing)) as server:
        threads = [threading.Thread(target=consumer) for _ in range(4)]
        for t in threads:
            t.start()
        versions = []
        for i, covered in enumerate(range(300, n + 1, 300)):
            publish_batch(tmp_path, f"v{i + 1}", events.slice(0, covered))
            versions.append(f"v{i + 1}")
            deadline = time.monotonic() + 20
            while server.app.state.store.version != versions[-1]:
                assert time.monotonic() < deadline, "version never published"
                time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(results) > 20
    assert all(total == distinct == n for total, distinct in results), set(results)
