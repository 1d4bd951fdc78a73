"""The settler: a receipt that cannot settle is recorded as failed with its reason, the others settle,
and the same batch is never tried again and again."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_account")

from pipelines.errors import PccTransientError
from serving.errors import SettlementError
from serving.market.pricing import InMemoryBilling, Quote
from serving.market.receipts import FAILED, ReceiptStore, read_failed_receipts
from serving.market.settlement import SettlementOutcome, Settler, SettlesReceipts

SERVICE = "0x" + "44" * 32
PAYS, BROKE = "0x" + "aa" * 20, "0x" + "bb" * 20


def quote(cents: int, producer: str = "cc-aurora") -> Quote:
    return Quote(cents, 1000, {producer: {"rows": cents, "cents": cents}}, "rows", "v1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReceiptStore]:
    s = ReceiptStore(tmp_path / "receipts.sqlite", SERVICE)
    yield s
    s.close()


def issue(store: ReceiptStore, consumer: str, cents: int, producer: str = "cc-aurora") -> int:
    issued = store.issue(
        consumer, f"nonce-{store.pending_cents(consumer)}-{cents}", "ab" * 32, quote(cents, producer)
    )
    return int(issued["receipt_no"])


def test_an_all_or_nothing_billing_settles_around_the_receipt_it_refuses(store: ReceiptStore, tmp_path: Path):
    billing = InMemoryBilling({"mileage": 1})
    billing.fund(PAYS, 100)
    first, refused, last = issue(store, PAYS, 30), issue(store, BROKE, 20), issue(store, PAYS, 40)

    hashes = Settler(store, billing, batch_size=10).settle_pending()

    assert hashes and billing.settled == {first, last}
    assert store.pending() == [] and store.pending_cents(BROKE) == 0
    [failed] = store.failed()
    assert (failed["receipt_no"], failed["consumer"], failed["amount_cents"]) == (refused, BROKE, 20)
    assert "cannot pay" in failed["reason"]
    assert store.for_consumer(BROKE)[0]["settled_tx"] == FAILED
    # the operator reads it while the service holds the file
    assert read_failed_receipts(tmp_path / "receipts.sqlite") == store.failed()
    assert Settler(store, billing).settle_pending() == []  # nothing is tried again


class PerReceipt:
    """A billing that settles receipt by receipt, like the chain: failures are given by number."""

    def __init__(self, failures: Mapping[int, tuple[str, str]]) -> None:
        self.failures = failures
        self.batches: list[list[int]] = []

    def settle_batch(self, receipts: Sequence[Mapping[str, Any]]) -> SettlementOutcome:
        nos = [int(r["receipt_no"]) for r in receipts]
        self.batches.append(nos)
        failed = tuple((n, *self.failures[n]) for n in nos if n in self.failures)
        return SettlementOutcome("0x" + "0f" * 32, tuple(n for n in nos if n not in self.failures), failed)

    def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
        raise AssertionError("a per-receipt billing is asked for outcomes")


def test_failed_receipts_leave_the_queue_with_their_reason_and_the_batches_behind_them_settle(
    store: ReceiptStore,
):
    nos = [issue(store, PAYS, 10), issue(store, PAYS, 10, "garage-net-03"), issue(store, BROKE, 10)]
    nos += [issue(store, PAYS, 10) for _ in range(3)]
    billing = PerReceipt({nos[1]: ("suspended_producer", "0xa2"), nos[2]: ("consumer_funds", BROKE)})
    assert isinstance(billing, SettlesReceipts)

    hashes = Settler(store, billing, batch_size=3).settle_pending()  # type: ignore[arg-type]

    # PAYS's receipts first (a batch collects from each consumer once), then BROKE's
    assert billing.batches == [[nos[0], nos[1], nos[3]], [nos[4], nos[5], nos[2]]] and len(hashes) == 2
    assert store.pending() == [] and store.pending_cents(PAYS) == 0
    reasons = {f["receipt_no"]: (f["reason"], f["party"], f["tx"]) for f in store.failed()}
    assert reasons == {
        nos[1]: ("suspended_producer", "0xa2", "0x" + "0f" * 32),
        nos[2]: ("consumer_funds", BROKE, "0x" + "0f" * 32),
    }


def test_an_unreachable_chain_leaves_every_receipt_pending(store: ReceiptStore):
    class Down(InMemoryBilling):
        def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
            raise PccTransientError("the JSON-RPC node is unreachable")

    no = issue(store, PAYS, 10)
    with pytest.raises(SettlementError, match="unreachable"):
        Settler(store, Down({})).settle_pending()
    assert [r["receipt_no"] for r in store.pending()] == [no] and store.failed() == []


def test_an_outcome_that_forgets_a_receipt_stops_the_round_instead_of_looping(store: ReceiptStore):
    class Forgetful(PerReceipt):
        def settle_batch(self, receipts: Sequence[Mapping[str, Any]]) -> SettlementOutcome:
            return SettlementOutcome("0x" + "0f" * 32, ())

    no = issue(store, PAYS, 10)
    with pytest.raises(SettlementError, match=f"left receipts \\[{no}\\] without an outcome"):
        Settler(store, Forgetful({})).settle_pending()  # type: ignore[arg-type]
