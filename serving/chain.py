"""Billing on the chain, through ``ledger.client``'s public API only.

* prices: ``Parameters.pricePerCategory(keccak256(category))`` and ``feeBps()``,
  read at most every ``cache_s`` seconds (not nine calls per query);
* what a consumer can pay: its Marketplace deposit plus the part of its
  PCC_token allowance to the Marketplace that its balance covers, read at most
  every ``funds_cache_s`` seconds per consumer (three calls otherwise on every
  query); a stale read never refuses anyone (the service reads again before a
  402), and a settlement drops the cache (the chain's funds moved);
* settlement: ``MarketApi.settle`` with each receipt's per-producer cents as the
  share weights; producers are resolved from ``source_id`` to their account in
  the SourceRegistry.  Receipts the Marketplace already marks settled are
  skipped, so a retry after a crash between mining and marking charges nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipelines.errors import PccStateError
from pipelines.settings import Settings
from serving.errors import SettlementError
from serving.pricing import CONSORTIUM, EVENT_CATEGORY, LOCATION_CATEGORY, VIEW_CATEGORY, Billing

#: Every category a serving view prices.
CATEGORIES: tuple[str, ...] = tuple(
    sorted({*EVENT_CATEGORY.values(), LOCATION_CATEGORY, *VIEW_CATEGORY.values()})
)


#: consumers whose funds are cached (the cache starts over beyond it)
_MAX_CACHED_CONSUMERS = 100_000


class ChainBilling:
    """A :class:`Billing` over a deployed PCC ledger."""

    def __init__(
        self, client: Any, cache_s: float = 5.0, funds_cache_s: float = 2.0
    ) -> None:  # ledger.client.LedgerClient
        self.client = client
        self.cache_s = cache_s
        self.funds_cache_s = funds_cache_s
        #: consumer (lowercase) → (monotonic time read, cents)
        self._funds: dict[str, tuple[float, int]] = {}
        self._accounts: dict[str, str] = {}
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
            market = self.client.market
            allowance = self.client.tokens.allowance(consumer, market.address)
            balance = self.client.tokens.balance(consumer)
            hit = (now, int(market.deposit_of(consumer)) + min(int(allowance), int(balance)))
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

    def _account(self, source_id: str) -> str:
        if source_id == CONSORTIUM:  # rows the consortium derived: paid to the treasury
            from ledger.market import TREASURY

            return TREASURY
        if source_id not in self._accounts:
            try:
                self._accounts[source_id] = str(self.client.sources.get(source_id).account)
            except Exception as exc:
                raise SettlementError(
                    f"producer {source_id} has no account in the SourceRegistry: {exc}"
                ) from None
        return self._accounts[source_id]

    def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
        from ledger.market import QueryReceipt

        todo = []
        for r in receipts:
            if self.client.market.is_settled(int(r["receipt_no"])):
                continue
            shares: dict[str, int] = {}
            for source_id, part in r["by_producer"].items():
                if int(part["cents"]) > 0:
                    account = self._account(source_id)
                    shares[account] = shares.get(account, 0) + int(part["cents"])
            todo.append(
                QueryReceipt(int(r["receipt_no"]), str(r["consumer"]), int(r["amount_cents"]), shares)
            )
        if not todo:
            return "already-settled"
        self._funds.clear()  # the settlement moves the consumers' funds
        tx = self.client.market.settle(todo)
        return "0x" + bytes(tx["transactionHash"]).hex()


def chain_billing(settings: Settings) -> Billing:
    """The Billing backed by the deployment named in the ledger settings."""
    try:
        from ledger.client import LedgerClient
    except ImportError as exc:
        raise PccStateError(
            f"on-chain billing needs the ledger extra ({exc}); or use --offline-prices FILE"
        ) from None
    return ChainBilling(LedgerClient.from_settings(settings))
