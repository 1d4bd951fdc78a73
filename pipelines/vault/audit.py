"""The vault's audit log: erasures, disclosures and grants, naming pseudonyms and caller roles only."""

from __future__ import annotations

import sqlite3
from typing import Any

from pipelines.events.envelope import OWNER_PSEUDONYM, VEHICLE_PSEUDONYM, now_ms
from pipelines.vault.store import VaultStore

_COLUMNS = ("at_ms", "action", "subject", "actor", "detail")


class AuditLog:
    def __init__(self, store: VaultStore) -> None:
        self._store = store

    def record(
        self, action: str, *, subject: str | None = None, actor: str | None = None, detail: str | None = None
    ) -> None:
        """Append an entry.  ``subject`` must be a pseudonym; anything else is left out of the log."""
        with self._store.tx() as tx:
            self.append(tx, action, subject=subject, actor=actor, detail=detail)

    @staticmethod
    def append(
        tx: sqlite3.Connection,
        action: str,
        *,
        subject: str | None,
        actor: str | None,
        detail: str | None = None,
    ) -> None:
        """Append inside the caller's transaction (an erasure and its entry commit together)."""
        if subject is not None and not (VEHICLE_PSEUDONYM.match(subject) or OWNER_PSEUDONYM.match(subject)):
            subject = None  # the log names pseudonyms only
        tx.execute(
            "INSERT INTO audit_log(at_ms, action, subject, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (now_ms(), action, subject, actor, detail),
        )

    def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest entries, newest first."""
        rows = self._store.conn().execute(
            "SELECT at_ms, action, subject, actor, detail FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
