"""Prices, quotes and the interfaces to the chain that holds them.

The price of a query is the sum, over the rows it uses, of the price of each
row's data category (cents per row, set by governance on the Parameters
contract).  Which rows a query *uses* (``docs/serving.md``, "What a query costs"):

* a row query over one view (``SELECT ... FROM vehicle_history WHERE ... LIMIT``)
  uses the rows it returns — metered exactly, on the same snapshot;
* an aggregate over one view uses the rows its ``WHERE`` lets through (every
  row that contributed to the result);
* anything else (joins, subqueries, CTEs, set operations) uses every row of each
  view it reads.  DuckDB has no lineage, so we do not guess.

A row's category: for ``vehicle_history`` the category of its event type
(``odometer_reading`` → ``mileage`` ...); ``mileage_timeline`` rows are
``mileage``; ``fraud_scores`` rows ``fraud_score``; ``source_reputation`` rows
``source_reputation``.  Mentioning ``lat``, ``lon``, ``payload`` or ``*`` of
``vehicle_history`` adds ``precise_location`` to each row.  Each row is paid to
the producer in its ``source_id`` (rows without one to :data:`CONSORTIUM`).
With ``quality_weight_bps = w`` a row of quality ``q`` costs
``price × ((1 - w) + w × q)``; amounts are integer cents, rounded down per producer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

EVENT_CATEGORY: dict[str, str] = {
    "odometer_reading": "mileage",
    "maintenance": "maintenance",
    "repair": "maintenance",
    "inspection": "inspection",
    "accident_declaration": "accident",
    "wreck_declaration": "accident",
    "ownership_change": "owner_identity",
}
VIEW_CATEGORY: dict[str, str] = {
    "mileage_timeline": "mileage",
    "fraud_scores": "fraud_score",
    "source_reputation": "source_reputation",
}
#: the view whose rows may carry a precise location, and the columns that hold it
LOCATION_VIEW = "vehicle_history"
LOCATION_COLUMNS = frozenset({"lat", "lon", "payload"})
LOCATION_CATEGORY = "precise_location"
CONSORTIUM = "pcc-consortium"
#: the price of one car passport report, in cents per report (not per row): serving/passport/sales.py
PASSPORT_REPORT_CATEGORY = "passport_report"
#: the price of one alert delivered, in cents per delivery, one per alert kind: ``alert.<kind>``
#: (``alert.fraud.rollback`` ...), read like every other price (serving/alerts/billing.py)
ALERT_CATEGORY_PREFIX = "alert."
BPS = 10_000


def alert_category(kind: str) -> str:
    """The governance price key of one delivered alert of ``kind``."""
    return ALERT_CATEGORY_PREFIX + kind


def view_categories(view: str) -> list[str]:
    """The categories a view's rows may carry (for the catalog)."""
    if view == "vehicle_history":
        return sorted({*EVENT_CATEGORY.values(), LOCATION_CATEGORY})
    return [VIEW_CATEGORY.get(view, view)]


def category_sql(view: str, columns: set[str] | frozenset[str]) -> str:
    """A SQL expression giving each row's categories as ``'cat'`` or ``'cat+precise_location'``."""
    if view == "vehicle_history":
        cases = " ".join(f"WHEN '{t}' THEN '{c}'" for t, c in EVENT_CATEGORY.items())
        expr = f"(CASE event_type {cases} ELSE 'mileage' END)"
        if columns & LOCATION_COLUMNS:
            expr = f"({expr} || '+{LOCATION_CATEGORY}')"
        return expr
    return f"'{VIEW_CATEGORY.get(view, view)}'"


def row_categories(view: str, event_type: str | None, location: bool) -> str:
    """A row's categories, as :func:`category_sql` computes them, from its view and event type."""
    if view == "vehicle_history":
        base = EVENT_CATEGORY.get(event_type, "mileage") if event_type is not None else "mileage"
        return f"{base}+{LOCATION_CATEGORY}" if location else base
    return VIEW_CATEGORY.get(view, view)


@dataclass(frozen=True)
class Usage:
    """Rows of one producer and one category set used by a query."""

    source_id: str
    categories: str  # "mileage" or "mileage+precise_location"
    rows: int
    quality_bps_sum: int  # Σ round(quality × 10000) over those rows


@dataclass(frozen=True)
class Quote:
    """What a query costs, per producer, before or after it runs."""

    amount_cents: int
    fee_bps: int
    by_producer: dict[str, dict[str, int]] = field(default_factory=dict)  # source → {rows, cents}
    kind: str = "rows"
    version: str | None = None

    @property
    def fee_cents(self) -> int:
        return self.amount_cents * self.fee_bps // BPS

    def paying(self, unpayable: Mapping[str, str]) -> Quote:
        """This quote with the shares of producers the Marketplace cannot pay (not registered,
        suspended) paid to the consortium instead: the consumer pays the same, the receipt names
        only parties that can be paid, and one suspended producer blocks nobody's query."""
        moved = {src: p for src, p in self.by_producer.items() if src in unpayable and src != CONSORTIUM}
        if not moved:
            return self
        kept = {src: dict(p) for src, p in self.by_producer.items() if src not in moved}
        into = kept.setdefault(CONSORTIUM, {"rows": 0, "cents": 0})
        for p in moved.values():
            into["rows"] += p["rows"]
            into["cents"] += p["cents"]
        return Quote(self.amount_cents, self.fee_bps, dict(sorted(kept.items())), self.kind, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {
            "amount_cents": self.amount_cents,
            "fee_bps": self.fee_bps,
            "fee_cents": self.fee_cents,
            "rows": sum(p["rows"] for p in self.by_producer.values()),
            "by_producer": self.by_producer,
            "metering": self.kind,
            "batch_version": self.version,
        }


def price_usage(
    usage: Sequence[Usage],
    prices: Mapping[str, int],
    fee_bps: int,
    quality_weight_bps: int = 0,
    kind: str = "rows",
    version: str | None = None,
) -> Quote:
    """Turn metered rows into a quote (exact integer arithmetic)."""
    from serving.errors import PriceUnavailableError

    w = quality_weight_bps
    numerators: dict[str, int] = {}
    rows: dict[str, int] = {}
    for u in usage:
        unit = 0
        for category in u.categories.split("+"):
            if category not in prices:
                raise PriceUnavailableError(f"no price is set for data category '{category}'")
            unit += prices[category]
        # Σ_rows unit × ((BPS - w) / BPS + w × q_bps / BPS²), kept over BPS²
        numerators[u.source_id] = numerators.get(u.source_id, 0) + unit * (
            u.rows * (BPS - w) * BPS + w * u.quality_bps_sum
        )
        rows[u.source_id] = rows.get(u.source_id, 0) + u.rows
    by_producer = {
        src: {"rows": rows[src], "cents": numerators[src] // (BPS * BPS)} for src in sorted(numerators)
    }
    amount = sum(p["cents"] for p in by_producer.values())
    return Quote(amount, fee_bps, by_producer, kind, version)


@runtime_checkable
class PriceBook(Protocol):
    """Governance parameters: prices per category and the treasury's fee."""

    def prices(self) -> dict[str, int]: ...

    def fee_bps(self) -> int: ...


@runtime_checkable
class Billing(PriceBook, Protocol):
    """What the serving layer needs from the chain."""

    def available(self, consumer: str, fresh: bool = False) -> int:
        """Cents the Marketplace can collect from ``consumer`` (deposit + usable allowance);
        ``fresh``: read now, not from a cache."""
        ...

    def ready(self, consumer: str, for_s: float = 0.1) -> bool:
        """True if prices, fee and ``consumer``'s funds are answered from memory for ``for_s`` more seconds
        (no I/O: the event loop may answer the query itself)."""
        ...

    def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
        """Settle signed receipts on the Marketplace in one transaction; returns its hash."""
        ...


class InMemoryBilling:
    """A Billing for tests and demos: balances in a dict, settlement moves them."""

    def __init__(self, prices: Mapping[str, int], fee_bps: int = 1000, treasury: str = "treasury") -> None:
        self._prices = dict(prices)
        self._fee = fee_bps
        self.treasury = treasury
        self.balances: dict[str, int] = {}
        self.settled: set[int] = set()
        self.transactions = 0

    def prices(self) -> dict[str, int]:
        return dict(self._prices)

    def fee_bps(self) -> int:
        return self._fee

    def fund(self, account: str, cents: int) -> None:
        self.balances[account.lower()] = self.balances.get(account.lower(), 0) + cents

    def available(self, consumer: str, fresh: bool = False) -> int:
        return self.balances.get(consumer.lower(), 0)

    def ready(self, consumer: str, for_s: float = 0.1) -> bool:
        return True

    def settle(self, receipts: Sequence[Mapping[str, Any]]) -> str:
        from serving.errors import SettlementError

        for r in receipts:
            if r["receipt_no"] in self.settled:
                raise SettlementError(f"receipt {r['receipt_no']} is already settled")
        for r in receipts:
            amount = int(r["amount_cents"])
            consumer = str(r["consumer"]).lower()
            if self.balances.get(consumer, 0) < amount:
                raise SettlementError(f"consumer {consumer} cannot pay receipt {r['receipt_no']}")
            self.balances[consumer] -= amount
            fee = amount * self._fee // BPS
            rest = amount - fee
            weights = {src: p["cents"] for src, p in r["by_producer"].items() if p["cents"] > 0}
            total = sum(weights.values())
            paid = 0
            for src, weight in weights.items():
                part = rest * weight // total
                self.balances[src] = self.balances.get(src, 0) + part
                paid += part
            self.balances[self.treasury] = self.balances.get(self.treasury, 0) + fee + rest - paid
            self.settled.add(int(r["receipt_no"]))
        self.transactions += 1
        return f"0x{self.transactions:064x}"
