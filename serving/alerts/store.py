"""Subscriptions, the alerts they matched and the delivery log, in one SQLite file.

A delivery is one (subscription, alert) pair: ``pending`` until the
destination answers 2xx (``delivered``), ``failed`` once retries gave up
(parked, ``pcc alerts redeliver``), ``gone`` when the destination answered
410 (the subscription ends).  The pair is the primary key: an alert read
twice from the topic is delivered once per subscription.

The subscriptions' webhook secrets are sealed at rest (AES-256-GCM, the
subscription id as associated data) under a key kept beside the database
(``subscription-secrets.key``, mode 0600): a copy of the database, a backup or
a leaked WAL file does not let anyone sign alerts a receiver would accept.
Rows written before sealing existed (a plain ``whsec_`` secret) stay readable.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.files import secret_file
from serving.alerts.errors import SubscriptionNotFound

_SEALED = "sealed:v1:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
    kinds TEXT NOT NULL, vehicles TEXT NOT NULL, grant_key TEXT NOT NULL,
    created_ms INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 1, ended TEXT);
CREATE INDEX IF NOT EXISTS subscriptions_account ON subscriptions(account);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, vehicle TEXT NOT NULL, raised_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    subscription_id TEXT NOT NULL, alert_id TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT,
    created_ms INTEGER NOT NULL, last_ms INTEGER, next_ms INTEGER NOT NULL, delivered_ms INTEGER,
    PRIMARY KEY (subscription_id, alert_id));
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(status) WHERE status = 'pending';
"""


@dataclass(frozen=True)
class Subscription:
    id: str
    account: str  # checksummed: the signer who made it
    url: str
    secret: str
    kinds: tuple[str, ...]
    vehicles: tuple[str, ...]  # empty: fleet-wide (public kinds only)
    grant_key: str  # hex of the consumer key the grants name ("" fleet-wide)
    created_ms: int
    active: bool = True
    ended: str | None = None

    @property
    def fleet_wide(self) -> bool:
        """Every vehicle's alerts of its (public) kinds, without a vehicle list."""
        return not self.vehicles

    def public(self) -> dict[str, Any]:
        """What the API answers about it (never the secret after creation)."""
        return {
            "id": self.id,
            "url": self.url,
            "kinds": list(self.kinds),
            "vehicles": len(self.vehicles),
            "fleet_wide": self.fleet_wide,
            "created_ms": self.created_ms,
            "active": self.active,
            "ended": self.ended,
        }


@dataclass(frozen=True)
class Due:
    """A delivery to attempt."""

    subscription_id: str
    alert_id: str
    attempts: int
    created_ms: int


class SecretBox:
    """Seals and opens webhook secrets with the store's key (created on first use)."""

    def __init__(self, key_path: Path) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = bytes.fromhex(secret_file(key_path, lambda: os.urandom(32).hex(), "subscription secrets key"))
        self._aead = AESGCM(key)

    def seal(self, subscription_id: str, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), subscription_id.encode())
        return f"{_SEALED}{nonce.hex()}:{sealed.hex()}"

    def open(self, subscription_id: str, stored: str) -> str:
        if not stored.startswith(_SEALED):
            return stored  # written before secrets were sealed
        from cryptography.exceptions import InvalidTag

        nonce, _, sealed = stored.removeprefix(_SEALED).partition(":")
        try:
            return self._aead.decrypt(
                bytes.fromhex(nonce), bytes.fromhex(sealed), subscription_id.encode()
            ).decode()
        except (InvalidTag, ValueError):
            raise PermissionError(
                f"subscription {subscription_id}: its webhook secret does not open with this store's key "
                "(subscription-secrets.key replaced or from another deployment)"
            ) from None


class AlertStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._box = SecretBox(path.parent / "subscription-secrets.key")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ subscriptions

    def add(self, sub: Subscription) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO subscriptions VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    sub.id,
                    sub.account,
                    sub.url,
                    self._box.seal(sub.id, sub.secret),
                    json.dumps(sub.kinds),
                    json.dumps(sub.vehicles),
                    sub.grant_key,
                    sub.created_ms,
                    int(sub.active),
                    sub.ended,
                ),
            )

    def _sub(self, row: Sequence[Any]) -> Subscription:
        return Subscription(
            row[0],
            row[1],
            row[2],
            self._box.open(row[0], row[3]),
            tuple(json.loads(row[4])),
            tuple(json.loads(row[5])),
            row[6],
            row[7],
            bool(row[8]),
            row[9],
        )

    def subscriptions(self, account: str | None = None, *, active_only: bool = False) -> list[Subscription]:
        sql, args = "SELECT * FROM subscriptions WHERE 1=1", []
        if account is not None:
            sql += " AND lower(account) = lower(?)"
            args.append(account)
        if active_only:
            sql += " AND active = 1"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_ms, id", args).fetchall()
        return [self._sub(r) for r in rows]

    def get(self, sub_id: str, account: str | None = None) -> Subscription:
        """The subscription; another account's is not found (its existence is not revealed)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
        if row is None or (account is not None and row[1].lower() != account.lower()):
            raise SubscriptionNotFound(f"no subscription {sub_id} of this account")
        return self._sub(row)

    def end(self, sub_id: str, reason: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE subscriptions SET active = 0, ended = ? WHERE id = ?", (reason, sub_id))
            db.execute(
                "UPDATE deliveries SET status = 'gone', last_error = ? WHERE subscription_id = ? AND status = 'pending'",
                (reason, sub_id),
            )

    # ------------------------------------------------------------------ alerts and deliveries

    def record(self, alert: dict[str, Any], body: bytes, sub_ids: Iterable[str], now_ms: int) -> list[str]:
        """Keep the alert and a pending delivery per subscription; returns the subscriptions it is new for."""
        data = alert["data"]
        new: list[str] = []
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?,?,?,?,?)",
                (alert["id"], data["kind"], data["vehicle"], data["raised_ms"], body),
            )
            for sub_id in sub_ids:
                cur = db.execute(
                    "INSERT OR IGNORE INTO deliveries (subscription_id, alert_id, status, created_ms, next_ms) "
                    "VALUES (?,?,'pending',?,?)",
                    (sub_id, alert["id"], now_ms, now_ms),
                )
                if cur.rowcount:
                    new.append(sub_id)
        return new

    def body(self, alert_id: str) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT body FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return bytes(row[0])

    def attempted(
        self, due: Due, *, status: str, http_status: int | None, error: str | None, now_ms: int, next_ms: int
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, last_status = ?, last_error = ?, last_ms = ?, "
                "next_ms = ?, delivered_ms = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_ms END "
                "WHERE subscription_id = ? AND alert_id = ? AND status = 'pending'",
                (
                    status,
                    due.attempts + 1,
                    http_status,
                    error,
                    now_ms,
                    next_ms,
                    status,
                    now_ms,
                    due.subscription_id,
                    due.alert_id,
                ),
            )

    def pending(self) -> list[tuple[Due, int]]:
        """Every pending delivery with the time it is due (after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT subscription_id, alert_id, attempts, created_ms, next_ms FROM deliveries "
                "WHERE status = 'pending'"
            ).fetchall()
        return [(Due(r[0], r[1], r[2], r[3]), r[4]) for r in rows]

    def deliveries(self, sub_id: str, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT d.alert_id, a.kind, a.vehicle, d.status, d.attempts, d.last_status, d.last_error, "
            "d.created_ms, d.last_ms, d.next_ms, d.delivered_ms FROM deliveries d JOIN alerts a ON a.id = d.alert_id "
            "WHERE d.subscription_id = ?"
        )
        args: list[Any] = [sub_id]
        if status is not None:
            sql += " AND d.status = ?"
            args.append(status)
        with self._lock:
            rows = self._db.execute(
                sql + " ORDER BY d.created_ms DESC, d.alert_id LIMIT ?", [*args, limit]
            ).fetchall()
        keys = (
            "alert_id",
            "kind",
            "vehicle",
            "status",
            "attempts",
            "last_status",
            "last_error",
            "created_ms",
            "last_ms",
            "next_ms",
            "delivered_ms",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def redeliver(self, sub_id: str, alert_ids: Sequence[str] | None, now_ms: int) -> list[Due]:
        """Put parked (``failed``) deliveries back to pending, or the named ones whatever their status."""
        with self._tx() as db:
            if alert_ids:
                marks = ",".join("?" * len(alert_ids))
                where, args = f"subscription_id = ? AND alert_id IN ({marks})", [sub_id, *alert_ids]
            else:
                where, args = "subscription_id = ? AND status = 'failed'", [sub_id]
            rows = db.execute(f"SELECT alert_id FROM deliveries WHERE {where}", args).fetchall()
            db.execute(
                f"UPDATE deliveries SET status = 'pending', attempts = 0, created_ms = ?, next_ms = ? WHERE {where}",
                [now_ms, now_ms, *args],
            )
        return [Due(sub_id, r[0], 0, now_ms) for r in rows]
