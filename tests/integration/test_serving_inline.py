"""An idle service answers fast query shapes in its event loop: same rows, same receipts, same price;
a run past the inline budget is stopped, finished by a worker thread and charged once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from serving.api import create_app
from serving.client import PccClient
from serving.config import ServingConfig
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import (
    CONSUMER_KEY,
    PRICES,
    RunningServer,
    make_events,
    publish_batch,
    vehicle_id,
    write_segment,
)

ONE = "SELECT * FROM vehicle_history WHERE vehicle = '{v}' ORDER BY event_time, event_id"
# the same shape whatever the pattern; ~9M pairs, each summed: tens of milliseconds
HEAVY = (
    "SELECT count(*) AS n, sum(a.odometer_km + b.odometer_km) AS km "
    "FROM vehicle_history a, vehicle_history b WHERE a.vehicle LIKE '{p}'"
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[RunningServer, Any, InMemoryBilling]]:
    events = make_events(3000, vehicles=10)
    publish_batch(tmp_path, "v1", events.slice(0, 2000))
    write_segment(tmp_path, events.slice(1500, 1500))
    config = ServingConfig(
        data_dir=tmp_path, query_timeout_s=60, settle_every_s=3600, inline_budget_ms=30_000
    )
    billing = InMemoryBilling(PRICES, fee_bps=1000)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10**12)
    app = create_app(config, billing)
    with RunningServer(app) as server:
        yield server, app, billing
    app.state.receipts.close()
    app.state.store.close()


def _direct(app: Any, sql: str) -> list[dict[str, Any]]:
    with app.state.store.pin() as (cur, _):
        rows: list[dict[str, Any]] = cur.sql(sql).to_arrow_table().to_pylist()
    return rows


def test_a_fast_shape_is_answered_inline_after_three_runs_with_the_same_rows_and_prices(service) -> None:
    server, app, _ = service
    gate = app.state.inline
    with PccClient(server.url, CONSUMER_KEY) as client:
        answers = []
        for k in range(6):
            sql = ONE.format(v=vehicle_id(k))
            quote = client.quote(sql)
            result = client.query(sql)
            answers.append(result)
            assert result.price_cents == quote["amount_cents"] > 0
            assert [{c: r[c] for c in r if c != "layer"} for r in result.rows] == [
                {c: r[c] for c in r if c != "layer"} for r in _direct(app, sql)
            ]
            assert gate.inline_answers == max(0, k - 2)  # runs 1-3 qualify the shape, 4-6 are inline
        receipts = client.receipts()
    assert sorted(r.receipt["receipt_no"] for r in answers) == sorted(r["receipt_no"] for r in receipts)
    assert len({r["receipt_no"] for r in receipts}) == 6
    assert gate.over_budget == 0


def test_a_run_past_the_inline_budget_is_finished_by_a_worker_and_charged_once(service) -> None:
    server, app, billing = service
    gate = app.state.inline
    consumer = Account.from_key(CONSUMER_KEY).address
    with PccClient(server.url, CONSUMER_KEY) as client:
        for _ in range(3):  # qualifies the shape (each run well within fast_s)
            client.query(HEAVY.format(p="v-%"))
        assert gate.eligible(gate.shape_of(HEAVY.format(p="x"), "arrow"))
        pending = app.state.receipts.pending_cents(consumer)
        gate.budget_s = 0.002  # the next inline run is stopped after 2 ms (each run takes ~10 ms or more)
        result = client.query(HEAVY.format(p="v-%"))
        expected = _direct(app, HEAVY.format(p="v-%"))
        assert result.rows == expected and expected[0]["n"] > 1_000_000
        assert gate.over_budget == 1 and gate.inline_answers == 0
        assert app.state.receipts.pending_cents(consumer) - pending == result.price_cents > 0  # once
        assert len(client.receipts()) == 4
        # the shape must qualify again before the loop tries it once more
        client.query(HEAVY.format(p="v-%"))
        assert gate.over_budget == 1 and gate.inline_answers == 0
    assert billing.available(consumer) == 10**12  # settled nothing yet: only pending receipts


def test_inline_answers_are_off_with_a_zero_budget(tmp_path: Path) -> None:
    publish_batch(tmp_path, "v1", make_events(50, vehicles=2))
    config = ServingConfig(data_dir=tmp_path, settle_every_s=3600, inline_budget_ms=0)
    billing = InMemoryBilling(PRICES)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10**9)
    app = create_app(config, billing)
    with RunningServer(app) as server, PccClient(server.url, CONSUMER_KEY) as client:
        for _ in range(5):
            assert client.query(ONE.format(v=vehicle_id(0))).table.num_rows == 25
    assert not app.state.inline.enabled and app.state.inline.inline_answers == 0
    app.state.receipts.close()
    app.state.store.close()
