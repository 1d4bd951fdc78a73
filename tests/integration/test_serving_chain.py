"""A paid query settles on a real chain: the session anvil node, the real ledger contracts
(deployed and governed through ``ledger.client``), the real HTTP server over DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.chain import node
from ledger.chain import connect_url
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import GovernanceParams, deploy
from ledger.keys import address_of, category_key
from ledger.tx import Signer
from serving.api import create_app
from serving.client import PccClient
from serving.config import ServingConfig
from serving.market.chain import CATEGORIES, ChainBilling
from tests.fixtures.serving import (
    SOURCES,
    RunningServer,
    make_events,
    publish_batch,
    vehicle_id,
    write_segment,
)

pytestmark = pytest.mark.integration

OP, MEMBER, CONSUMER = DEV_KEYS[0], DEV_KEYS[1], DEV_KEYS[5]
PRODUCER_KEYS = dict(zip(SOURCES, (DEV_KEYS[2], DEV_KEYS[3], DEV_KEYS[4]), strict=True))
KINDS = {"cc-aurora": "connected_car", "garage-net-03": "garage", "ins-mutua": "insurer"}
FEE_BPS = 1_500
PRICES = {category: 3 + i for i, category in enumerate(CATEGORIES)}  # set by a governance vote
FUNDS = 50_000


@dataclass
class Market:
    client: LedgerClient
    billing: ChainBilling
    server: RunningServer
    app: object

    def balances(self) -> dict[str, int]:
        """What a user checks: the consumer's tokens and deposit, each producer's credit, the treasury's tokens."""
        c = self.client
        out = {"consumer": c.tokens.balance(address_of(CONSUMER)) + c.market.deposit_of(address_of(CONSUMER))}
        out |= {src: c.market.credit(address_of(key)) for src, key in PRODUCER_KEYS.items()}
        out["treasury"] = c.tokens.balance(c.deployment.address("PCCGold"))
        return out


@pytest.fixture(scope="module")
def market(anvil_node: node.NodeInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    w3 = connect_url(anvil_node.url)
    op = Signer(w3, OP)
    params = GovernanceParams(
        voting_delay_blocks=1, voting_period_blocks=3, quorum_percent=10, fee_bps=FEE_BPS
    )
    client = LedgerClient(w3, deploy(w3, op, {address_of(MEMBER): 10**18}, params), op)
    for source, key in PRODUCER_KEYS.items():
        client.sources.register(source, KINDS[source], address_of(key), 1)
    client.tokens.delegate(address_of(MEMBER), MEMBER)
    actions = [
        client.governance.call_data("Parameters", "setPrice", category_key(c), p) for c, p in PRICES.items()
    ]
    assert client.governance.enact(actions, "Prices of every serving category", [MEMBER]) == "Executed"
    client.tokens.mint(address_of(CONSUMER), FUNDS, "SEPA-serving-consumer")
    client.tokens.approve(client.market.address, 20_000, CONSUMER)
    client.market.deposit(20_000, CONSUMER)  # 20,000 escrowed + 30,000 held, 0 more approved

    data: Path = tmp_path_factory.mktemp("serving-chain")
    events = make_events(120, vehicles=4)
    publish_batch(data, "v1", events.slice(0, 100))
    write_segment(data, events.slice(100, 20))
    config = ServingConfig(data_dir=data, settle_every_s=3600, signing_key="0x" + "42" * 32)
    billing = ChainBilling(client)
    app = create_app(config, billing, background=False)
    with RunningServer(app) as server:
        yield Market(client, billing, server, app)
    app.state.store.close()


def test_governance_prices_and_fee_are_what_the_service_charges(market: Market):
    assert market.billing.prices() == PRICES
    assert market.billing.fee_bps() == FEE_BPS
    with PccClient(market.server.url, CONSUMER) as consumer:
        quote = consumer.quote("SELECT count(*) FROM vehicle_history")
    assert quote["fee_bps"] == FEE_BPS
    # the 20,000 deposited; the 30,000 held in the wallet do not count
    assert quote["available_cents"] == 20_000


def test_a_paid_query_settles_exactly_its_quote_on_the_marketplace(market: Market):
    sql = f"SELECT event_time, event_type, odometer_km, source_id FROM vehicle_history WHERE vehicle = '{vehicle_id(1)}'"
    with PccClient(market.server.url, CONSUMER) as consumer:
        quote = consumer.quote(sql)
        result = consumer.query(sql, format="json")
    receipt = result.receipt
    assert result.table.num_rows == 30  # batch rows and real-time rows of that vehicle
    assert receipt["amount_cents"] == quote["amount_cents"] == result.price_cents > 0
    assert receipt["by_producer"] == quote["by_producer"]
    before = market.balances()

    hashes = market.app.state.settler.settle_pending()  # type: ignore[attr-defined]

    assert len(hashes) == 1
    after = market.balances()
    amount = receipt["amount_cents"]
    assert before["consumer"] - after["consumer"] == amount
    fee = amount * FEE_BPS // 10_000
    weights = {src: p["cents"] for src, p in receipt["by_producer"].items()}
    earned = {src: (amount - fee) * w // sum(weights.values()) for src, w in weights.items()}
    for src in SOURCES:
        assert after[src] - before[src] == earned.get(src, 0)
    assert after["treasury"] - before["treasury"] == amount - sum(earned.values())
    assert market.client.market.is_settled(receipt["receipt_no"])
    with PccClient(market.server.url, CONSUMER) as consumer:
        listed = {r["receipt_no"]: r for r in consumer.receipts()}
    assert listed[receipt["receipt_no"]]["settled_tx"] == hashes[0]

    # settling again moves nothing: no receipt is pending, and the Marketplace refuses it anyway
    assert market.app.state.settler.settle_pending() == []  # type: ignore[attr-defined]
    assert market.billing.settle([receipt]) == "already-settled"
    assert market.balances() == after

    producer = max(earned, key=lambda s: earned[s])
    assert market.client.market.withdraw(PRODUCER_KEYS[producer]) == after[producer]
    assert market.client.market.credit(address_of(PRODUCER_KEYS[producer])) == 0


def test_a_consumer_cannot_spend_more_than_the_marketplace_can_collect(market: Market):
    from serving.errors import PaymentRequiredError

    with (
        PccClient(market.server.url, DEV_KEYS[6]) as stranger,  # gas, but no PCC_token
        pytest.raises(PaymentRequiredError, match="0 cents on chain"),
    ):
        stranger.query("SELECT * FROM vehicle_history")


def test_only_a_deposit_pays_and_a_consumer_asking_it_back_is_refused_at_once(
    market: Market, monkeypatch: pytest.MonkeyPatch
):
    """Funds are cached between reads, but a refusal always reads the chain again first; an allowance
    is not spendable (the consumer could lower it under its receipts), the deposit not asked back is."""
    from serving.errors import PaymentRequiredError

    late = DEV_KEYS[7]
    sql = f"SELECT * FROM vehicle_history WHERE vehicle = '{vehicle_id(1)}'"
    with PccClient(market.server.url, late) as consumer:
        with pytest.raises(PaymentRequiredError):
            consumer.query(sql)
        market.client.tokens.mint(address_of(late), 10_000, "SEPA-late-consumer")
        market.client.tokens.approve(market.client.market.address, 10_000, late)
        with pytest.raises(PaymentRequiredError):  # approved, not deposited
            consumer.query(sql)
        market.client.market.deposit(10_000, late)
        paid = consumer.query(sql)  # within the cache window of the refused read
        assert paid.price_cents > 0
        market.client.market.request_withdrawal(10_000, late)  # the consumer asks its deposit back
        # the cached funds may still allow what they allowed a moment ago, never more; once the cache
        # window passes, the chain says nothing is spendable: refused, though the deposit is still there
        monkeypatch.setattr(market.billing, "funds_cache_s", 0)
        with pytest.raises(PaymentRequiredError):
            consumer.query(sql)
        assert market.client.market.deposit_of(address_of(late)) == 10_000  # reserved for its receipt
