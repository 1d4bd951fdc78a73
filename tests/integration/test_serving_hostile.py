"""A hostile consumer against a real serving API over HTTP: every forbidden statement is refused with
a 4xx naming its rule and costs nothing; unsigned, oversized and too frequent requests are refused
before any work; concurrent queries never spend more than the account holds."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from serving.client import PccClient
from serving.errors import PaymentRequiredError
from tests.corpus.hostile_sql import corpus
from tests.fixtures.serving import (
    CONSUMER_KEY,
    PRICES,
    RunningServer,
    make_events,
    publish_batch,
    write_segment,
)

pytestmark = pytest.mark.integration

CORPUS = corpus()
THRIFTY_KEY = "0x" + "33" * 32


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from serving.api import create_app
    from serving.config import ServingConfig
    from serving.market.pricing import InMemoryBilling

    data: Path = tmp_path_factory.mktemp("hostile")
    events = make_events(120, vehicles=6)
    publish_batch(data, "v1", events.slice(0, 80))
    write_segment(data, events.slice(80, 40))
    config = ServingConfig(
        data_dir=data,
        max_rows=1000,
        query_timeout_s=2.0,
        settle_every_s=3600,
        rate_per_s=10_000,
        rate_burst=10_000,
    )
    billing = InMemoryBilling(PRICES, fee_bps=1000)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10_000_000)
    billing.fund(Account.from_key(THRIFTY_KEY).address, 100)
    app = create_app(config, billing)
    with RunningServer(app) as server:
        yield server


def test_the_corpus_covers_every_class_in_many_forms() -> None:
    rules = {rule for _, rule in CORPUS}
    assert len(CORPUS) >= 150
    assert {"cte_shadowing", "serving_views_only", "no_table_functions", "allowed_functions"} <= rules
    assert {"select_only", "single_statement", "reserved_name", "no_metadata"} <= rules


def test_every_hostile_statement_is_refused_naming_its_rule_and_free(service: RunningServer) -> None:
    app = service.app
    consumer = Account.from_key(CONSUMER_KEY).address
    wrong: list[str] = []
    with PccClient(service.url, CONSUMER_KEY) as client:
        for sql, rule in CORPUS:
            answer = client.query_raw(sql, "json", check=False)
            detail = answer.json()
            if answer.status_code != 403 or detail.get("rule") != rule:
                wrong.append(f"{answer.status_code} {detail.get('rule')} (want {rule}): {sql}")
    assert wrong == []
    assert app.state.receipts.for_consumer(consumer, 10) == []
    assert app.state.receipts.pending_cents(consumer) == 0


def test_a_list_column_as_csv_is_answered_then_charged(service: RunningServer) -> None:
    with PccClient(service.url, CONSUMER_KEY) as client:
        answer = client.query_raw("SELECT event_id, flags FROM vehicle_history LIMIT 3", "csv")
        assert answer.status_code == 200, answer.text
        assert answer.text.splitlines()[1].endswith(',"[]"') and int(answer.headers["X-PCC-Price-Cents"]) > 0


def test_unsigned_and_oversized_requests_are_refused_before_any_parsing(service: RunningServer) -> None:
    url = service.url + "/v1/query"
    huge = b'{"sql": "SELECT 1 ' + b" " * (70 * 1024) + b'"}'
    assert httpx.post(url, content=huge).status_code == 413
    assert httpx.post(url, content=b"not even json").status_code == 401
    assert httpx.post(service.url + "/v1/quote", content=huge).status_code == 413


def test_concurrent_queries_never_spend_more_than_the_account_holds(service: RunningServer) -> None:
    app = service.app
    thrifty = Account.from_key(THRIFTY_KEY).address
    sql = "SELECT vehicle, odometer_km FROM vehicle_history LIMIT 10"  # ~20-30 cents each

    def one(_: int) -> int:
        with PccClient(service.url, THRIFTY_KEY) as client:
            try:
                return client.query(sql).price_cents
            except PaymentRequiredError:
                return 0

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # max_in_flight: a 5th would get 429
        paid = list(pool.map(one, range(16)))
    assert 0 < sum(paid) <= 100
    assert app.state.receipts.pending_cents(thrifty) == sum(paid)
    assert 100 - sum(paid) < max(paid), paid  # what is left pays for no further query of this shape


def test_a_consumer_past_its_rate_gets_429_with_retry_after(service: RunningServer) -> None:
    reservations = service.app.state.paid.reservations
    rate, burst = reservations.rate_per_s, reservations.burst
    reservations.rate_per_s, reservations.burst = 0.5, 2
    try:
        with PccClient(service.url, "0x" + "44" * 32) as client:
            statuses = [client.query_raw("SELECT 1", "json", check=False) for _ in range(4)]
        assert [s.status_code for s in statuses][-1] == 429
        assert int(statuses[-1].headers["Retry-After"]) >= 1
    finally:
        reservations.rate_per_s, reservations.burst = rate, burst
