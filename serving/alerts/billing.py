"""What a delivered alert costs, and who it pays: billed like a query row.

Each alert kind has its own governance price, in cents per delivery, under the
price key ``alert.<kind>`` (``Parameters.pricePerCategory(keccak("alert.fraud.rollback"))``,
:func:`serving.market.pricing.alert_category`), read with every other price.
A subscription to a kind without a price is refused when it is made (400,
naming the key governance must set).  For every delivery attempt:

1. the kind's price is held of the subscriber's free funds (on chain, less its
   unsettled receipts, less what its queries and other deliveries in flight
   hold: :mod:`serving.market.reservations`) *before* the request is sent; a
   subscriber that cannot pay gets the delivery parked (``failed``, reason
   ``cannot pay: …``), never sent; ``pcc alerts redeliver`` sends it once funded;
2. only a 2xx answer writes a receipt (:meth:`ReceiptStore.issue`): one per
   (subscription, alert) — its nonce is ``alert:<subscription>:<alert id>``, so a
   retried or redelivered alert is never charged twice; a failed attempt, a retry
   or a 410 costs nothing;
3. the price goes to the producer of the event that raised the alert (the
   alert's ``source_id``: its evidence event), less the treasury's fee, when the
   receipt is settled with the queries' (:class:`serving.market.settlement.Settler`).
   A producer the Marketplace cannot pay has its share paid to the consortium, as for queries.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pipelines.alerts import ALERT_KINDS, kind_matches
from serving.errors import PriceUnavailableError
from serving.market.pricing import CONSORTIUM, Billing, Quote, alert_category
from serving.market.receipts import ReceiptStore
from serving.market.reservations import Hold, Reservations

#: what a delivery is metered as in its quote and receipt
METERING = "alert"


def delivery_nonce(subscription_id: str, alert_id: str) -> str:
    """The receipt's nonce of one delivery: unique per (subscriber, subscription, alert)."""
    return f"alert:{subscription_id}:{alert_id}"


def delivery_hash(kind: str, subscription_id: str, alert_id: str) -> str:
    """The receipt's ``query_hash`` of one delivery: which alert, of which kind, to which subscription."""
    return hashlib.sha256(f"{METERING}:{kind}:{subscription_id}:{alert_id}".encode()).hexdigest()


def alert_quote(price_cents: int, fee_bps: int, producer: str | None) -> Quote:
    """One delivery at ``price_cents``, all of it to ``producer`` (the consortium if none)."""
    return Quote(price_cents, fee_bps, {producer or CONSORTIUM: {"rows": 1, "cents": price_cents}}, METERING)


class AlertBilling:
    """Holds, prices and receipts of alert deliveries, over the paid queries' billing and receipts.

    ``reservations`` and ``producer_problems``: the paid queries' own when the alert
    service runs beside them (``pcc serve --alerts``), so that a subscriber's queries
    and deliveries hold its funds together.
    """

    def __init__(
        self,
        billing: Billing,
        receipts: ReceiptStore,
        reservations: Reservations | None = None,
        producer_problems: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
    ) -> None:
        self.billing = billing
        self.receipts = receipts
        self.reservations = reservations or Reservations(billing.available)
        self.producer_problems = producer_problems

    def price(self, kind: str) -> int:
        """Cents per delivered alert of ``kind``; :class:`PriceUnavailableError` until governance sets it."""
        cents = self.billing.prices().get(alert_category(kind))
        if cents is None:
            raise PriceUnavailableError(
                f"alert kind {kind!r} is not for sale: governance has set no price for '{alert_category(kind)}'"
            )
        return int(cents)

    def unpriced(self, patterns: Iterable[str]) -> list[str]:
        """The alert kinds ``patterns`` match that have no price (a subscription to them is refused)."""
        prices = self.billing.prices()
        return [
            k
            for k in ALERT_KINDS
            if any(kind_matches(p, k) for p in patterns) and alert_category(k) not in prices
        ]

    def hold(self, account: str, kind: str) -> Hold | None:
        """Hold one delivery's price of ``account``'s free funds (None if it is free).

        Raises :class:`PaymentRequiredError` (cannot pay), :class:`TooManyRequestsError`
        (too much in flight: try later) or :class:`PriceUnavailableError`.
        """
        price = self.price(kind)
        if price <= 0:
            return None

        def pending() -> int:
            return self.receipts.pending_cents(account)

        hold = self.reservations.hold(account, pending, price)
        try:
            hold.cover(price, pending)
        except BaseException:
            hold.release()
            raise
        return hold

    def charge(self, account: str, subscription_id: str, alert: Mapping[str, Any]) -> dict[str, Any] | None:
        """The receipt of one delivered alert; None if this delivery was charged before (redelivered)."""
        data = alert["data"]
        quote = alert_quote(self.price(data["kind"]), self.billing.fee_bps(), data.get("source_id"))
        if self.producer_problems is not None:
            quote = quote.paying(self.producer_problems(quote.by_producer))
        try:
            return self.receipts.issue(
                account,
                delivery_nonce(subscription_id, alert["id"]),
                delivery_hash(data["kind"], subscription_id, alert["id"]),
                quote,
            )
        except sqlite3.IntegrityError:  # (consumer, nonce) is unique: already charged
            return None
