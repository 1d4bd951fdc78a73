"""Billing on the chain, through ``ledger.client``'s public API only.

* prices: ``Parameters.pricePerCategory(keccak256(category))`` and ``feeBps()``,
  read at most every ``cache_s`` seconds (not nine calls per query);
* what a consumer can pay: the part of its Marketplace deposit it has not asked
  back (``Marketplace.spendable``), read at most every ``funds_cache_s`` seconds
  per consumer; a stale read never refuses anyone (the service reads again
  before a 402), and a settlement drops the cache (the chain's funds moved).
  Only the deposit counts: it is reserved on chain for the withdrawal delay
  (longer than the settlement period), so a consumer cannot pull funds from
  under the receipts it was issued, as it could by lowering an allowance;
* producers: :meth:`ChainBilling.require_active_producers` says whether every
  producer whose rows an answer uses is registered and active in the
  SourceRegistry (read at most every ``producers_cache_s`` seconds each), for
  the paid path to call before it issues a receipt;
* settlement: ``MarketApi.settle_receipts`` with each receipt's per-producer
  cents as the share weights, producers resolved from ``source_id`` to their
  account in the SourceRegistry, an outcome per receipt
  (:meth:`ChainBilling.settle_batch`).  Receipts the Marketplace already marks
  settled are skipped, so a retry after a crash between mining and marking
  charges nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pipelines.alerts import ALERT_KINDS
from pipelines.errors import PccStateError
from pipelines.settings import Settings
from serving.errors import ProducerUnavailableError
from serving.market.pricing import (
    CONSORTIUM,
    EVENT_CATEGORY,
    LOCATION_CATEGORY,
    PASSPORT_REPORT_CATEGORY,
    VIEW_CATEGORY,
    Billing,
    alert_category,
)
from serving.market.settlement import Failure, SettlementOutcome

#: Every category the serving layer prices: a serving view's rows, a passport report, an alert of each kind.
CATEGORIES: tuple[str, ...] = tuple(
    sorted(
        {
            *EVENT_CATEGORY.values(),
            LOCATION_CATEGORY,
            *VIEW_CATEGORY.values(),
            PASSPORT_REPORT_CATEGORY,
            *(alert_category(kind) for kind in ALERT_KINDS),
        }
    )
)


#: consumers whose funds are cached (the cache starts over beyond it)
_MAX_CACHED_CONSUMERS = 100_000


class ChainBilling:
    """A :class:`Billing` over a deployed PCC ledger."""

    def __init__(
        self, client: Any, cache_s: float = 5.0, funds_cache_s: float = 2.0, producers_cache_s: float = 5.0
    ) -> None:  # ledger.client.LedgerClient
        self.client = client
        self.cache_s = cache_s
        self.funds_cache_s = funds_cache_s
        self.producers_cache_s = producers_cache_s
        #: consumer (lowercase) → (monotonic time read, cents)
        self._funds: dict[str, tuple[float, int]] = {}
        self._accounts: dict[str, str] = {}
        #: source id → (monotonic time read, why its rows cannot be sold or None)
        self._producers: dict[str, tuple[float, str | None]] = {}
        self._cached: dict[str, tuple[float, Any]] = {}

    def _fresh(self, name: str, read: Callable[[], Any]) -> Any:
        """A governance parameter, read from the chain at most every ``cache_s`` seconds."""
        hit = self._cached.get(name)
        now = time.monotonic()
        if hit is None or now - hit[0] > self.cache_s:
            hit = self._cached[name] = (now, read())
        return hit[1]

    def prices(self) -> dict[str, int]:
        return dict(self._fresh("prices", self._read_prices))

    def fee_bps(self) -> int:
        return int(self._fresh("fee_bps", self._read_fee_bps))

    def _read_prices(self) -> dict[str, int]:
        from ledger import keys

        params = self.client.contract("Parameters")
        out: dict[str, int] = {}
        for category in CATEGORIES:
            fn = params.functions.pricePerCategory(keys.category_key(category))
            price = int(self.client.view(fn, f"reading the price of {category}"))
            if price > 0:
                out[category] = price
        return out

    def _read_fee_bps(self) -> int:
        params = self.client.contract("Parameters")
        return int(self.client.view(params.functions.feeBps(), "reading the treasury fee"))

    def available(self, consumer: str, fresh: bool = False) -> int:
        key = consumer.lower()
        hit = self._funds.get(key)
        now = time.monotonic()
        if fresh or hit is None or now - hit[0] > self.funds_cache_s:
            hit = (now, int(self.client.market.spendable(consumer)))
            if len(self._funds) >= _MAX_CACHED_CONSUMERS:
                self._funds.clear()
            self._funds[key] = hit
        return hit[1]

    def ready(self, consumer: str, for_s: float = 0.1) -> bool:
        """True if prices, fee and ``consumer``'s funds are answered from memory for ``for_s`` more seconds."""
        now = time.monotonic()
        params = [self._cached.get("prices"), self._cached.get("fee_bps")]
        if any(hit is None or now + for_s - hit[0] > self.cache_s for hit in params):
            return False
        funds = self._funds.get(consumer.lower())
        return funds is not None and now + for_s - funds[0] <= self.funds_cache_s

    # -- producers -----------------------------------------------------------------------------

    def producer_problems(self, source_ids: Iterable[str]) -> dict[str, str]:
        """The producers of ``source_ids`` whose rows cannot be sold now, each with why
        (``"not registered"``, ``"suspended"``); each read at most every ``producers_cache_s`` seconds."""
        out: dict[str, str] = {}
        now = time.monotonic()
        for source_id in source_ids:
            if source_id == CONSORTIUM:  # the consortium's own rows: paid to the treasury
                continue
            hit = self._producers.get(source_id)
            if hit is None or now - hit[0] > self.producers_cache_s:
                hit = self._producers[source_id] = (now, self._read_producer(source_id))
            if hit[1] is not None:
                out[source_id] = hit[1]
        return out

    def require_active_producers(self, source_ids: Iterable[str]) -> None:
        """Raise :class:`ProducerUnavailableError` (409) unless every producer of ``source_ids`` is
        registered and active: the Marketplace would not settle a receipt paying the others."""
        problems = self.producer_problems(source_ids)
        if problems:
            named = ", ".join(f"{source} ({why})" for source, why in sorted(problems.items()))
            raise ProducerUnavailableError(f"the answer uses rows of producers that cannot be paid: {named}")

    def producers_ready(self, source_ids: Iterable[str], for_s: float = 0.1) -> bool:
        """True if :meth:`producer_problems` answers from memory for ``for_s`` more seconds (no I/O)."""
        now = time.monotonic()
        for source_id in source_ids:
            hit = self._producers.get(source_id)
            if source_id != CONSORTIUM and (hit is None or now + for_s - hit[0] > self.producers_cache_s):
                return False
        return True

    def _read_producer(self, source_id: str) -> str | None:
        from ledger.errors import LedgerNotFoundError
        from pipelines.errors import PccValueError

        try:
            info = self.client.sources.get(source_id)
        except (LedgerNotFoundError, PccValueError):
            return "not registered"
        self._accounts.setdefault(source_id, str(info.account))
        return None if info.active else "suspended"

    def _account(self, source_id: str) -> str | None:
        """The producer's account in the SourceRegistry (the treasury for the consortium), None if unknown."""
        if source_id == CONSORTIUM:  # rows the consortium derived: paid to the treasury
            from ledger.market import TREASURY

            return TREASURY
        if source_id not in self._accounts and self._read_producer(source_id) == "not registered":
            return None
        return self._accounts[source_id]

    # -- settlement ----------------------------------------------------------------------------

    def settle_batch(self, receipts: Sequence[Mapping[str, Any]]) -> SettlementOutcome:
        """Settle receipts in one transaction, with an outcome per receipt.

        A receipt naming a producer without an account in the SourceRegistry, or that does
        not fit the Marketplace's encoding, fails here without being sent; the Marketplace
        fails those of suspended producers and of consumers that cannot pay.
        """
        from ledger.errors import LedgerRuleError
        from ledger.market import QueryReceipt

        todo: list[QueryReceipt] = []
        done: list[int] = []
        failed: list[Failure] = []
        for r in receipts:
            no = int(r["receipt_no"])
            if self.client.market.is_settled(no):
                done.append(no)
                continue
            shares: dict[str, int] = {}
            unknown = None
            for source_id, part in r["by_producer"].items():
                if int(part["cents"]) > 0:
                    account = self._account(source_id)
                    if account is None:
                        unknown = source_id
                        break
                    shares[account] = shares.get(account, 0) + int(part["cents"])
            if unknown is not None:
                failed.append((no, "unknown_producer", unknown))
                continue
            receipt = QueryReceipt(no, str(r["consumer"]), int(r["amount_cents"]), shares)
            try:
                self.client.market.encode([receipt])
            except LedgerRuleError as exc:
                failed.append((no, "invalid_receipt", exc.message))
                continue
            todo.append(receipt)
        if not todo:
            return SettlementOutcome("already-settled" if done else "", tuple(done), tuple(failed))
        self._funds.clear()  # the settlement moves the consumers' funds
        outcome = self.client.market.settle_receipts(todo)
        failed += [(f.receipt_no, f.reason, f.party) for f in outcome.failed]
        return SettlementOutcome(outcome.tx_hash, (*done, *outcome.settled), tuple(failed))

    def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
        """:meth:`settle_batch`, returning only the transaction hash (``"already-settled"`` if none was needed)."""
        return self.settle_batch(receipts).tx


def chain_billing(settings: Settings) -> Billing:
    """The Billing backed by the deployment named in the ledger settings."""
    try:
        from ledger.client import LedgerClient
    except ImportError as exc:
        raise PccStateError(
            f"on-chain billing needs the ledger extra ({exc}); or use --offline-prices FILE"
        ) from None
    return ChainBilling(LedgerClient.from_settings(settings))
