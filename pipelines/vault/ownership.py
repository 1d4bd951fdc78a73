"""Who owned a vehicle when: owner pseudonyms linked to vehicle pseudonyms, so an erasure finds them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.events.envelope import OWNER_PSEUDONYM, now_ms
from pipelines.vault.store import VaultStore


class Ownership:
    def __init__(self, store: VaultStore) -> None:
        self._store = store

    def record(self, vehicle: str, owner: str, *, since_ms: int | None = None) -> None:
        """Record that ``owner`` (pseudonym) owns ``vehicle`` (pseudonym) from ``since_ms`` on."""
        if not OWNER_PSEUDONYM.match(owner):
            raise PccValueError("owner: expected an owner pseudonym o- + 32 hex")
        with self._store.tx() as tx:
            vehicle_id = self._store.vehicle_id(tx, vehicle)
            row = tx.execute("SELECT id FROM owners WHERE pseudonym = ?", (owner,)).fetchone()
            if row is None:
                raise PccNotFoundError(f"unknown owner pseudonym {owner}")
            tx.execute(
                "INSERT INTO ownership(vehicle_id, owner_id, since_ms) VALUES (?, ?, ?)",
                (vehicle_id, row[0], now_ms() if since_ms is None else since_ms),
            )

    def current(self, vehicle: str) -> str | None:
        """The owner pseudonym recorded last for ``vehicle`` (latest ``since_ms``), or None."""
        conn = self._store.conn()
        vehicle_id = self._store.vehicle_id(conn, vehicle)
        row = conn.execute(
            "SELECT o.pseudonym FROM ownership w JOIN owners o ON o.id = w.owner_id "
            "WHERE w.vehicle_id = ? ORDER BY w.since_ms DESC, w.id DESC LIMIT 1",
            (vehicle_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def history(conn: sqlite3.Connection, vehicle_id: int) -> list[dict[str, Any]]:
        """Every owner of a vehicle, oldest first: ``{"owner", "since_ms", "identity"}``."""
        return [
            {"owner": str(r[0]), "since_ms": int(r[1]), "identity": json.loads(r[2])}
            for r in conn.execute(
                "SELECT o.pseudonym, w.since_ms, o.identity FROM ownership w JOIN owners o ON o.id = w.owner_id "
                "WHERE w.vehicle_id = ? ORDER BY w.since_ms, w.id",
                (vehicle_id,),
            )
        ]
