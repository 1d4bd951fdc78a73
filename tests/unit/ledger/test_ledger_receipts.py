"""Waiting for a transaction's receipt: soon on a node that mines at once, bounded on one that never does."""

from __future__ import annotations

from typing import Any

import pytest
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError, TransactionNotFound

from ledger import tx
from ledger.errors import LedgerRuleError, LedgerUnavailable

TX = HexBytes("0x" + "ab" * 32)


class _Node:
    """A JSON-RPC node whose receipt appears after ``misses`` looks (never, with None)."""

    def __init__(self, misses: int | None) -> None:
        self.misses = misses
        self.looks = 0
        self.eth = self

    def get_transaction_receipt(self, tx_hash: HexBytes) -> dict[str, Any]:
        self.looks += 1
        if self.misses is None or self.looks <= self.misses:
            raise TransactionNotFound(f"{tx_hash.hex()} not found")
        return {"status": 1, "transactionHash": tx_hash}


def _sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    clock = [0.0]

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    monkeypatch.setattr(tx.time, "sleep", sleep)
    monkeypatch.setattr(tx.time, "monotonic", lambda: clock[0])
    return slept


def test_a_receipt_mined_within_milliseconds_is_seen_within_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept = _sleeps(monkeypatch)
    receipt = tx.wait(_Node(misses=2), TX, "anchoring")  # type: ignore[arg-type]
    assert receipt["status"] == 1
    assert sum(slept) < 0.02  # web3's own wait would have slept 0.2 s


def test_polls_grow_to_at_most_half_a_second_and_the_wait_ends_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept = _sleeps(monkeypatch)
    node = _Node(misses=None)
    with pytest.raises(LedgerUnavailable, match="anchoring: no receipt in time"):
        tx.wait(node, TX, "anchoring", timeout_s=12.0)  # type: ignore[arg-type]
    assert (
        slept[:-1] == sorted(slept[:-1]) and slept[0] == tx.FIRST_POLL_S
    )  # growing; the last cut at the deadline
    assert max(slept) == tx.MAX_POLL_S and abs(sum(slept) - 12.0) < 1e-9
    assert node.looks < 40  # a chain with 12 s blocks is polled about 30 times, not 120


class _RevertingNode(_Node):
    """The transaction is mined after a few looks, and failed: replaying it names the revert."""

    def __init__(self, misses: int, reason: str | None) -> None:
        super().__init__(misses)
        self.reason = reason

    def get_transaction_receipt(self, tx_hash: HexBytes) -> dict[str, Any]:
        receipt = super().get_transaction_receipt(tx_hash)
        return {**receipt, "status": 0, "blockNumber": 7}

    def get_transaction(self, tx_hash: HexBytes) -> dict[str, Any]:
        return {"from": "0x" + "11" * 20, "to": "0x" + "22" * 20, "input": "0x", "gas": 90_000}

    def call(self, tx: Any, block: int) -> bytes:
        if self.reason is not None:
            raise ContractLogicError(f"execution reverted: {self.reason}")
        return b""


@pytest.mark.parametrize("reason", ["caller is not the source's anchorer", None])
def test_a_failed_transaction_found_by_the_polls_is_never_taken_for_a_success(
    monkeypatch: pytest.MonkeyPatch, reason: str | None
) -> None:
    """A producer anchoring a log that is not its own (or any reverted call): the wait names the failure."""
    _sleeps(monkeypatch)
    node = _RevertingNode(misses=3, reason=reason)
    with pytest.raises(LedgerRuleError, match=reason or "failed in block 7"):
        tx.wait(node, TX, "anchoring cc-aurora")  # type: ignore[arg-type]
