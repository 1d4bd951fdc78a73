"""On-chain billing reads a consumer's funds at most every ``funds_cache_s``; never refuses on a stale read."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from serving.chain import ChainBilling


class _Chain:
    """The three reads ``available`` makes, counted (the ledger client's boundary)."""

    def __init__(self) -> None:
        self.deposit, self.allowance_, self.balance_ = 0, 500, 300
        self.reads = 0
        self.market = SimpleNamespace(
            address="0xmarket",
            deposit_of=self._deposit,
            is_settled=lambda _n: False,
            settle=lambda _todo: {"transactionHash": b"\x01" * 32},
        )
        self.tokens = SimpleNamespace(allowance=self._allowance, balance=self._balance)

    def _deposit(self, _c: str) -> int:
        self.reads += 1
        return self.deposit

    def _allowance(self, _c: str, _m: str) -> int:
        self.reads += 1
        return self.allowance_

    def _balance(self, _c: str) -> int:
        self.reads += 1
        return self.balance_


@pytest.fixture
def chain() -> _Chain:
    return _Chain()


def test_funds_are_read_once_per_window_and_again_when_asked_fresh(chain: _Chain) -> None:
    billing = ChainBilling(chain, funds_cache_s=60)
    assert billing.available("0xAbC") == 300  # min(allowance, balance) + deposit
    assert billing.available("0xabc") == 300 and chain.reads == 3  # one consumer, whatever the case
    chain.deposit = 1000
    assert billing.available("0xabc") == 300  # cached
    assert billing.available("0xabc", fresh=True) == 1300 and chain.reads == 6


def test_a_settlement_drops_the_cached_funds(chain: _Chain) -> None:
    billing = ChainBilling(chain, funds_cache_s=60)
    billing.available("0xabc")
    chain.balance_ = 100
    billing.settle([{"receipt_no": 1, "by_producer": {}, "consumer": "0xabc", "amount_cents": 5}])
    assert billing.available("0xabc") == 100


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
