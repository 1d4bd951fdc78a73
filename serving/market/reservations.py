"""Funds held for queries in flight, and the per-consumer limits that come with them.

Money moves last, but it is *held* first: before a paid query does any engine
work, the service holds part of what the consumer can still pay (its funds on
chain, minus what its unsettled receipts owe, minus what its other queries in
flight hold).  An account with nothing free is refused with 402 before the
engine sees its SQL.  When the answer is priced and encoded, the hold is turned
into the receipt's amount under the same lock (topped up from what is still
free if the query cost more than was held, else 402), so concurrent queries can
never spend more than the account holds.  A query that fails releases its hold
and costs nothing.

The same object counts each consumer's queries in flight (``max_in_flight``)
and its request rate (a token bucket of ``rate_per_s`` with ``burst``): past
either the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.errors import PaymentRequiredError, TooManyRequestsError

#: consumers whose rate buckets are kept (the table starts over beyond it)
_MAX_TRACKED = 100_000


@dataclass
class _Account:
    held: int = 0
    in_flight: int = 0
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)


class Hold:
    """Cents held for one query of one consumer until it is charged or released."""

    def __init__(self, owner: Reservations, consumer: str, cents: int) -> None:
        self.owner = owner
        self.consumer = consumer
        self.cents = cents
        self.open = True

    def cover(self, amount: int, pending: Callable[[], int]) -> None:
        """Make the hold cover ``amount`` (topping it up from free funds), else 402 naming both."""
        self.owner._cover(self, amount, pending)

    def release(self) -> None:
        """Give the held cents back (after the receipt is written, or when the query failed)."""
        self.owner._release(self)


class Reservations:
    """Holds and limits per consumer (thread-safe)."""

    def __init__(
        self,
        available: Callable[[str, bool], int],
        hold_cents: int = 1,
        max_in_flight: int = 4,
        rate_per_s: float = 50.0,
        burst: int = 100,
    ) -> None:
        #: (consumer, fresh) → cents the chain lets the Marketplace collect from it
        self.available = available
        self.hold_cents = hold_cents
        self.max_in_flight = max_in_flight
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def _account(self, consumer: str) -> _Account:
        account = self._accounts.get(consumer)
        if account is None:
            if len(self._accounts) >= _MAX_TRACKED:
                self._accounts = {k: a for k, a in self._accounts.items() if a.in_flight or a.held}
            account = self._accounts[consumer] = _Account(tokens=float(self.burst))
        return account

    def admit(self, consumer: str) -> None:
        """Count one request against the consumer's rate (429 past it)."""
        key = consumer.lower()
        with self._lock:
            account = self._account(key)
            now = time.monotonic()
            account.tokens = min(
                float(self.burst), account.tokens + (now - account.refilled) * self.rate_per_s
            )
            account.refilled = now
            if account.tokens < 1.0:
                wait = math.ceil((1.0 - account.tokens) / self.rate_per_s) if self.rate_per_s > 0 else 60
                raise TooManyRequestsError(
                    f"account {consumer} sends more than {self.rate_per_s:g} requests per second", wait
                )
            account.tokens -= 1.0

    def hold(self, consumer: str, pending: Callable[[], int], want: int | None = None) -> Hold:
        """Hold up to ``want`` (default ``hold_cents``) of what ``consumer`` can still pay.

        402 if nothing is free; 429 if the consumer already has ``max_in_flight`` queries running.
        """
        key = consumer.lower()
        want = self.hold_cents if want is None else want
        if want <= 0:
            raise PaymentRequiredError(f"max_cents must be positive, got {want}", {"max_cents": want})
        funds = self.available(consumer, False)
        with self._lock:
            account = self._account(key)
            if account.in_flight >= self.max_in_flight:
                raise TooManyRequestsError(
                    f"account {consumer} already has {account.in_flight} queries in flight "
                    f"(at most {self.max_in_flight})",
                    1,
                )
            free = funds - pending() - account.held
            if free <= 0:
                funds = -1  # read the chain again, outside the lock, before refusing
            else:
                return self._take(account, key, min(want, free))
        funds = self.available(consumer, True)
        with self._lock:
            account = self._account(key)
            free = funds - pending() - account.held
            if free <= 0:
                raise PaymentRequiredError(
                    f"account {consumer} has no funds free for a query "
                    f"({funds} cents on chain, {pending()} owed by unsettled receipts, {account.held} held)",
                    {"available_cents": max(free, 0)},
                )
            return self._take(account, key, min(want, free))

    def _take(self, account: _Account, key: str, cents: int) -> Hold:
        account.held += cents
        account.in_flight += 1
        return Hold(self, key, cents)

    def _cover(self, hold: Hold, amount: int, pending: Callable[[], int]) -> None:
        if amount <= hold.cents:
            return
        for fresh in (False, True):
            funds = self.available(hold.consumer, fresh)
            with self._lock:
                account = self._account(hold.consumer)
                free = funds - pending() - account.held
                if amount - hold.cents <= free:
                    account.held += amount - hold.cents
                    hold.cents = amount
                    return
        raise PaymentRequiredError(
            f"the query costs {amount} cents; account {hold.consumer} can pay {hold.cents + max(free, 0)}",
            {"amount_cents": amount, "available_cents": hold.cents + max(free, 0)},
        )

    def _release(self, hold: Hold) -> None:
        with self._lock:
            if not hold.open:
                return
            hold.open = False
            account = self._account(hold.consumer)
            account.held -= hold.cents
            account.in_flight -= 1

    def held(self, consumer: str) -> int:
        with self._lock:
            account = self._accounts.get(consumer.lower())
            return account.held if account else 0
