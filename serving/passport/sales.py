"""Passport reports for sale: a price per report set by governance, one signed receipt each.

A report is one answer of ``GET /passport/{vehicle}`` (the page) or
``GET /passport/{vehicle}/data.json`` (its data), requested with a signed
request as for queries (:mod:`serving.auth`; the client's
:meth:`serving.client.PccClient.passport`).  Its price is the governance
parameter ``Parameters.pricePerCategory(keccak("passport_report"))`` read with
every other price (:data:`serving.market.pricing.PASSPORT_REPORT_CATEGORY`), in
cents per report.  Money moves last, and only for a report delivered:

1. the signature is checked (401) — an unsigned request costs nothing else —
   and the consumer's request rate (429, as for queries);
2. the price is read (503 until governance sets one) and held of the consumer's
   free funds (on chain, less its unsettled receipts, less what its queries in
   flight hold: :mod:`serving.market.reservations`), else 402 with the quote —
   before any row is read;
3. the report is assembled and rendered to its final bytes (404 for a car
   with no event: free);
4. only then is the receipt written and signed (:meth:`ReceiptStore.issue`,
   with the request's nonce, one commit); a failure anywhere before leaves
   the nonce spent and nothing charged.

The hold is released once the receipt counts as pending, so reports and
queries bought at once never spend more than the account holds.  The receipt is settled
with the queries' receipts (:class:`serving.market.settlement.Settler`): its price
is shared by the producers whose events the report shows, in proportion to
their events (largest remainders, so the shares add up to the price; events
without a source go to :data:`~serving.market.pricing.CONSORTIUM`).  Its
``query_hash`` is the SHA-256 of ``passport_report:<pseudonym>:<html|json>``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from serving.auth import Consumer
from serving.errors import PaymentRequiredError, PriceUnavailableError
from serving.market.pricing import CONSORTIUM, PASSPORT_REPORT_CATEGORY, Billing, Quote
from serving.market.receipts import ReceiptStore
from serving.market.reservations import Hold, Reservations

#: what a report is metered as in its quote and receipt
METERING = "passport_report"


class RequestVerifier(Protocol):
    """What :class:`serving.auth.Authenticator` offers: the signer of a request, its nonce spent."""

    def verify(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], deferred: bool = False
    ) -> Consumer: ...


@dataclass(frozen=True)
class Sale:
    """A report delivered: its bytes and the receipt they were charged on."""

    body: bytes
    receipt: dict[str, Any]

    def headers(self) -> dict[str, str]:
        return {
            "X-PCC-Receipt": str(self.receipt["receipt_no"]),
            "X-PCC-Price-Cents": str(self.receipt["amount_cents"]),
        }


def report_hash(vehicle: str, fmt: str) -> str:
    """The receipt's ``query_hash`` of a report: which car, in which format."""
    return hashlib.sha256(f"{METERING}:{vehicle}:{fmt}".encode()).hexdigest()


def report_quote(price_cents: int, fee_bps: int, events: Mapping[str | None, int]) -> Quote:
    """The quote of one report at ``price_cents``, shared by producers in proportion to their events.

    ``events``: events shown per ``source_id``.  Integer cents by largest remainder
    (ties to the producer named first in sort order), so they add up to the price.
    """
    counts: Counter[str] = Counter()
    for source, n in events.items():
        if n > 0:
            counts[source or CONSORTIUM] += n
    total = sum(counts.values())
    if not total:
        return Quote(price_cents, fee_bps, {}, METERING)
    sources = sorted(counts)
    floors = {s: price_cents * counts[s] // total for s in sources}
    left = price_cents - sum(floors.values())
    by_rest = sorted(sources, key=lambda s: (-(price_cents * counts[s] % total), s))
    for s in by_rest[:left]:
        floors[s] += 1
    by_producer = {s: {"rows": counts[s], "cents": floors[s]} for s in sources}
    return Quote(price_cents, fee_bps, by_producer, METERING)


class PassportSales:
    """Sells passport reports through ``billing``'s prices and funds, with receipts in ``receipts``.

    ``reservations``: the paid queries' own (``app.state.paid.reservations``), so that
    reports and queries in flight hold funds from one account together and share its
    rate limit; by default a new one over ``billing``.  ``producer_problems`` (the paid
    queries' too) names the producers that may not be paid: their share goes to the consortium.
    """

    def __init__(
        self,
        billing: Billing,
        receipts: ReceiptStore,
        auth: RequestVerifier,
        reservations: Reservations | None = None,
        producer_problems: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
    ) -> None:
        self.billing = billing
        self.receipts = receipts
        self.auth = auth
        self.reservations = reservations or Reservations(billing.available)
        self.producer_problems = producer_problems

    def price(self) -> Quote:
        """The report's price as a quote with no producer yet (for a 402); 503 until governance sets it."""
        cents = self.billing.prices().get(PASSPORT_REPORT_CATEGORY)
        if cents is None:
            raise PriceUnavailableError(
                f"no price is set for data category '{PASSPORT_REPORT_CATEGORY}': passport reports "
                "are not for sale until governance sets one"
            )
        return Quote(int(cents), self.billing.fee_bps(), {}, METERING)

    def payment_required(self, how: str) -> PaymentRequiredError:
        """The 402 of a request that neither pays nor carries a share link (``how``: what to do)."""
        quote = self.price()
        return PaymentRequiredError(
            f"a passport report costs {quote.amount_cents} cents (PCC_token): {how}", quote.as_dict()
        )

    def _hold(self, consumer: Consumer, price: Quote) -> Hold | None:
        """Hold the report's price of the consumer's free funds (held by queries in flight excepted), else 402."""
        if price.amount_cents <= 0:
            return None

        def pending() -> int:
            return self.receipts.pending_cents(consumer.account)

        hold: Hold | None = None
        try:
            hold = self.reservations.hold(consumer.account, pending, price.amount_cents)
            hold.cover(price.amount_cents, pending)
        except PaymentRequiredError as exc:
            if hold is not None:
                hold.release()
            available = exc.quote.get("available_cents", 0)
            raise PaymentRequiredError(
                f"a passport report costs {price.amount_cents} cents; account {consumer.account} "
                f"can pay {available}",
                {**price.as_dict(), "available_cents": available},
            ) from None
        return hold

    def sell(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        vehicle: str,
        fmt: str,
        make: Callable[[], tuple[bytes, Mapping[str | None, int]]],
    ) -> Sale:
        """One paid report: ``make()`` assembles and renders it — its bytes and events per producer.

        Raises the refusal (401, 402, 429, 503, or whatever ``make`` raises); nothing is
        charged unless the report's bytes are ready.
        """
        consumer = self.auth.verify(method, target, b"", headers, deferred=True)
        issued: dict[str, Any] | None = None
        hold: Hold | None = None
        try:
            self.reservations.admit(consumer.account)
            price = self.price()
            hold = self._hold(consumer, price)
            body, events = make()
            quote = report_quote(price.amount_cents, price.fee_bps, events)
            if self.producer_problems is not None:
                quote = quote.paying(self.producer_problems(quote.by_producer))
            issued = self.receipts.issue(
                consumer.account, consumer.nonce, report_hash(vehicle, fmt), quote, consumer.expires
            )
        finally:
            if hold is not None:  # after the receipt: its cents now count as pending instead
                hold.release()
            if issued is None:  # refused or failed: the nonce stays spent, nothing is charged
                self.receipts.record_nonce(consumer.account, consumer.nonce, consumer.expires)
        return Sale(body, issued)
