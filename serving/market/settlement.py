"""Settlement: pending receipts go to the Marketplace contract in batches, each with its own outcome.

A receipt is marked settled only after the transaction is mined.  One the
Marketplace cannot settle (its producer is unknown or suspended, its consumer
cannot pay) is marked failed with the reason (``pcc market receipts --failed``)
and leaves the pending list, so it never holds back the receipts behind it.
Only a transient failure (the chain unreachable) leaves a batch pending for the
next round.  The Marketplace itself refuses a receipt number settled before, so
a retry after a crash between mining and marking cannot charge twice.

A billing that settles per receipt implements :class:`SettlesReceipts`
(:class:`serving.market.chain.ChainBilling`); any other :class:`Billing` settles all or
nothing, so it is given one receipt at a time (the in-memory billing of tests
and of ``pcc serve --offline-prices``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pipelines.errors import PccError, PccTransientError
from serving.errors import SettlementError
from serving.market.pricing import Billing
from serving.market.receipts import ReceiptStore

log = logging.getLogger(__name__)

#: (receipt number, reason, the producer or consumer at fault if known)
Failure = tuple[int, str, str | None]


@dataclass(frozen=True)
class SettlementOutcome:
    """What settling one batch did: ``tx`` ("" if nothing was sent), receipts settled and failed."""

    tx: str
    settled: tuple[int, ...]
    failed: tuple[Failure, ...] = ()


@runtime_checkable
class SettlesReceipts(Protocol):
    """A billing whose settlement has an outcome per receipt."""

    def settle_batch(self, receipts: Sequence[Mapping[str, Any]]) -> SettlementOutcome: ...


class Settler:
    """Moves pending receipts to the chain, ``batch_size`` at a time."""

    def __init__(self, receipts: ReceiptStore, billing: Billing, batch_size: int = 200) -> None:
        self.receipts = receipts
        self.billing = billing
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def settle_pending(self) -> list[str]:
        """Settle every pending receipt; returns the hashes of the transactions sent."""
        hashes: list[str] = []
        with self._lock:
            while batch := self.receipts.pending(self.batch_size):
                left = {int(r["receipt_no"]) for r in batch}
                for outcome in self._settle(batch):
                    if outcome.settled:
                        self.receipts.mark_settled(list(outcome.settled), outcome.tx)
                    if outcome.failed:
                        self.receipts.mark_failed(list(outcome.failed), outcome.tx or None)
                        for no, reason, party in outcome.failed:
                            log.warning("receipt %s did not settle: %s (%s)", no, reason, party or "-")
                    if outcome.tx.startswith("0x"):
                        hashes.append(outcome.tx)
                    left -= {*outcome.settled, *(f[0] for f in outcome.failed)}
                if left:  # never the same head batch again and again
                    raise SettlementError(f"settling left receipts {sorted(left)} without an outcome")
        return hashes

    def _settle(self, batch: Sequence[Mapping[str, Any]]) -> list[SettlementOutcome]:
        first, last = batch[0]["receipt_no"], batch[-1]["receipt_no"]
        try:
            if isinstance(self.billing, SettlesReceipts):
                return [self.billing.settle_batch(batch)]
            return self._one_by_one(batch)
        except SettlementError:
            raise
        except Exception as exc:
            # the chain is unreachable or the settler's own call is refused: the whole batch waits
            raise SettlementError(f"settling receipts {first}..{last} failed: {exc}") from exc

    def _one_by_one(self, batch: Sequence[Mapping[str, Any]]) -> list[SettlementOutcome]:
        """Settle through an all-or-nothing billing one receipt at a time: a receipt it refuses fails alone."""
        out = []
        for r in batch:
            no = int(r["receipt_no"])
            try:
                out.append(SettlementOutcome(self.billing.settle([r]), (no,)))
            except PccError as exc:
                if isinstance(exc, PccTransientError) and not isinstance(exc, SettlementError):
                    raise  # the chain, not the receipt: the rest waits for the next round
                out.append(SettlementOutcome("", (), ((no, exc.message, None),)))
        return out


class SettlementLoop:
    """Settles every ``interval_s`` seconds in a daemon thread."""

    def __init__(self, settler: Settler, interval_s: float) -> None:
        self.settler = settler
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pcc-settlement", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.settler.settle_pending()
            except SettlementError as exc:
                log.warning("%s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
