"""On-chain billing reads a consumer's funds at most every ``funds_cache_s``; never refuses on a stale read."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from ledger.errors import LedgerNotFoundError
from serving.errors import ProducerUnavailableError
from serving.market.chain import ChainBilling


class _Chain:
    """The reads ChainBilling makes, counted (the ledger client's boundary)."""

    def __init__(self) -> None:
        self.spendable_ = 300
        self.reads = 0
        self.producers: dict[str, SimpleNamespace] = {
            "cc-aurora": SimpleNamespace(account="0xa1", active=True),
            "garage-net-03": SimpleNamespace(account="0xa2", active=False),
        }
        self.market = SimpleNamespace(
            address="0xmarket",
            spendable=self._spendable,
            is_settled=lambda _n: False,
            encode=lambda _receipts: None,
            settle_receipts=lambda todo: SimpleNamespace(
                tx_hash="0x" + "01" * 32, settled=tuple(r.receipt_no for r in todo), failed=()
            ),
        )
        self.sources = SimpleNamespace(get=self._source)

    def _spendable(self, _c: str) -> int:
        self.reads += 1
        return self.spendable_

    def _source(self, source_id: str) -> SimpleNamespace:
        self.reads += 1
        if source_id not in self.producers:
            raise LedgerNotFoundError(f"source {source_id} is not registered", "UnknownSource")
        return self.producers[source_id]


@pytest.fixture
def chain() -> _Chain:
    return _Chain()


def test_funds_are_read_once_per_window_and_again_when_asked_fresh(chain: _Chain) -> None:
    billing = ChainBilling(chain, funds_cache_s=60)
    assert billing.available("0xAbC") == 300  # the deposit not asked back
    assert billing.available("0xabc") == 300 and chain.reads == 1  # one consumer, whatever the case
    chain.spendable_ = 1000
    assert billing.available("0xabc") == 300  # cached
    assert billing.available("0xabc", fresh=True) == 1000 and chain.reads == 2


def test_a_settlement_drops_the_cached_funds(chain: _Chain) -> None:
    billing = ChainBilling(chain, funds_cache_s=60)
    billing.available("0xabc")
    chain.spendable_ = 100
    billing.settle(
        [
            {
                "receipt_no": 1,
                "by_producer": {"cc-aurora": {"cents": 5}},
                "consumer": "0xabc",
                "amount_cents": 5,
            }
        ]
    )
    assert billing.available("0xabc") == 100


def test_producers_must_be_registered_and_active_and_are_read_once_per_window(chain: _Chain) -> None:
    billing = ChainBilling(chain, producers_cache_s=60)
    assert not billing.producers_ready(["cc-aurora"])
    billing.require_active_producers(["cc-aurora", "pcc-consortium"])  # the consortium is always paid
    assert billing.producers_ready(["cc-aurora", "pcc-consortium"])
    with pytest.raises(
        ProducerUnavailableError, match=r"garage-net-03 \(suspended\), ins-nobody \(not registered\)"
    ):
        billing.require_active_producers(["cc-aurora", "ins-nobody", "garage-net-03"])
    assert chain.reads == 3  # cc-aurora was read once
    chain.producers["garage-net-03"].active = True
    assert billing.producer_problems(["garage-net-03"]) == {"garage-net-03": "suspended"}  # cached
    billing.producers_cache_s = 0
    assert billing.producer_problems(["garage-net-03"]) == {}


def test_a_receipt_of_an_unknown_producer_fails_without_being_sent(chain: _Chain) -> None:
    billing = ChainBilling(chain)
    receipts = [
        {"receipt_no": 1, "by_producer": {"cc-aurora": {"cents": 5}}, "consumer": "0xabc", "amount_cents": 5},
        {
            "receipt_no": 2,
            "by_producer": {"ins-nobody": {"cents": 5}},
            "consumer": "0xabc",
            "amount_cents": 5,
        },
    ]
    outcome = billing.settle_batch(receipts)
    assert outcome.settled == (1,) and outcome.failed == ((2, "unknown_producer", "ins-nobody"),)
    assert outcome.tx == "0x" + "01" * 32


def test_ready_only_while_prices_fee_and_funds_are_all_cached(chain: _Chain, monkeypatch: Any) -> None:
    billing = ChainBilling(chain, cache_s=60, funds_cache_s=0.3)
    monkeypatch.setattr(billing, "_read_prices", lambda: {"odometer": 2})
    monkeypatch.setattr(billing, "_read_fee_bps", lambda: 1000)
    assert not billing.ready("0xabc")
    billing.prices(), billing.fee_bps()
    assert not billing.ready("0xabc")  # funds not read yet
    billing.available("0xabc")
    assert billing.ready("0xabc", for_s=0.1)
    time.sleep(0.25)
    assert not billing.ready("0xabc", for_s=0.1)  # would expire within the next 0.1 s
