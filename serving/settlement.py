"""Settlement: pending receipts go to the Marketplace contract in batches.

A receipt is marked settled only after the transaction is mined; if settling
fails the receipts stay pending and the next round retries them.  The
Marketplace itself refuses a receipt number settled before, so a retry after a
crash between mining and marking cannot charge twice.
"""

from __future__ import annotations

import logging
import threading

from serving.errors import ServingError, SettlementError
from serving.pricing import Billing
from serving.receipts import ReceiptStore

log = logging.getLogger(__name__)


class Settler:
    """Moves pending receipts to the chain, ``batch_size`` at a time."""

    def __init__(self, receipts: ReceiptStore, billing: Billing, batch_size: int = 200) -> None:
        self.receipts = receipts
        self.billing = billing
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def settle_pending(self) -> list[str]:
        """Settle every pending receipt; returns the transaction hashes."""
        hashes: list[str] = []
        with self._lock:
            while batch := self.receipts.pending(self.batch_size):
                try:
                    tx = self.billing.settle(batch)
                except ServingError:
                    raise
                except Exception as exc:
                    raise SettlementError(
                        f"settling receipts {batch[0]['receipt_no']}..{batch[-1]['receipt_no']} failed: {exc}"
                    ) from exc
                self.receipts.mark_settled([r["receipt_no"] for r in batch], tx)
                hashes.append(tx)
        return hashes


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
