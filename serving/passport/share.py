"""Share links: an owner's signed, expiring, revocable capability to open one car's passport.

``pcc passport share --vin ... --ttl 7d`` (the operator acting for an owner it
authenticated, as with ``pcc grant create``) prints a URL
``/passport/<pseudonym>?share=<token>``; anyone holding it opens that one
passport, free, until it expires or is revoked.  The token is::

    <link id>.<expires>.<mac>
    link id  16 random bytes, base64url: the link's name (revocation) and its nonce
    expires  unix seconds
    mac      HMAC-SHA256(share key, "pcc-passport-share/v1" LF vehicle LF expires LF link id), base64url

The vehicle is not in the token but in the path, and in the MAC: a token opens
only the passport it was made for.  :meth:`ShareLinks.check` refuses, each
with its reason: a malformed token, a MAC that does not match (altered, or
another vehicle), an expired link, a link the link store does not hold (an
allow-list: a leaked key file alone mints nothing the store does not know,
and a store read alone forges nothing without the key) or holds as revoked,
and — when the link recorded the owner who shared it and the service reads
the identity vault — a car that has changed owner since (a sale ends the
seller's links) or has been erased.

Files, under the serving state dir (``<data_dir>/serving``), shared by the CLI
that makes links and ``pcc serve`` that checks them: ``passport-share.key``
(32 random bytes, hex, mode 0600, made on first use by whichever comes first)
and ``passport-shares.sqlite`` (one row per link; no VIN, no owner identity:
the vehicle and owner pseudonyms).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import PccConfigError, PccNotFoundError, PccValueError
from pipelines.vault import IdentityVault
from serving.passport.errors import ShareLinkError

KEY_FILE = "passport-share.key"
STORE_FILE = "passport-shares.sqlite"
#: the query parameter that carries a share token
SHARE_PARAM = "share"
MIN_TTL_S = 60
MAX_TTL_S = 90 * 86_400
_LABEL = b"pcc-passport-share/v1"
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{22})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")
_TTL = re.compile(r"^([0-9]+)\s*([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}

#: the current owner pseudonym of a vehicle (``IdentityVault.current_owner``), raising
#: PccNotFoundError for a vehicle the vault no longer knows
CurrentOwner = Callable[[str], str | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS share_links (
    link_id    TEXT PRIMARY KEY,
    vehicle    TEXT NOT NULL,
    owner      TEXT,
    expires    INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS share_links_vehicle ON share_links (vehicle);
"""


def parse_ttl(text: str) -> int:
    """Seconds of a duration such as ``7d``, ``12h``, ``30m``, ``2w`` or ``3600`` (seconds)."""
    match = _TTL.match(text.strip().lower())
    if match is None:
        raise PccValueError(f"--ttl {text!r}: expected a number with s, m, h, d or w, e.g. 7d")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        raise PccValueError(
            f"--ttl {text!r}: a share link lasts between {MIN_TTL_S} s and {MAX_TTL_S // 86_400} days"
        )
    return seconds


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_share_key(path: Path) -> bytes:
    """The share key in ``path``, created (32 random bytes, hex, mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise PccConfigError(f"share key file {path} is readable by others; run: chmod 600 {path}")
    text = path.read_text(encoding="ascii").strip()
    if not re.fullmatch(r"[0-9a-f]{64,}", text):
        raise PccConfigError(f"share key file {path} must hold at least 64 lower-case hex digits")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class ShareLink:
    """One share link as the store holds it (``token`` only when just made)."""

    link_id: str
    vehicle: str
    expires: int  # unix seconds
    owner: str | None = None  # the owner pseudonym who shared it, if the vault knew one
    created_ms: int = 0
    revoked_ms: int | None = None
    token: str | None = None

    def url(self, base: str, prefix: str = "/passport") -> str:
        """The link to hand out: ``base`` is the service's URL, e.g. ``http://127.0.0.1:8600``."""
        if self.token is None:
            raise PccValueError(f"share link {self.link_id}: its token is only known when it is made")
        return f"{base.rstrip('/')}{prefix}/{self.vehicle}?{SHARE_PARAM}={self.token}"

    @property
    def expires_text(self) -> str:
        return _when(self.expires)

    def as_dict(self) -> dict[str, object]:
        return {
            "link_id": self.link_id,
            "vehicle": self.vehicle,
            "expires": self.expires,
            "expires_at": self.expires_text,
            "revoked": self.revoked_ms is not None,
        }


class ShareStore:
    """The share links made, in one SQLite file (a connection per call: CLI and service share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        finally:
            db.close()

    def add(self, link: ShareLink) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO share_links (link_id, vehicle, owner, expires, created_ms) VALUES (?, ?, ?, ?, ?)",
                (link.link_id, link.vehicle, link.owner, link.expires, link.created_ms),
            )

    @staticmethod
    def _link(row: tuple[Any, ...]) -> ShareLink:
        link_id, vehicle, owner, expires, created_ms, revoked_ms = row
        return ShareLink(link_id, vehicle, int(expires), owner, int(created_ms), revoked_ms)

    def get(self, link_id: str) -> ShareLink | None:
        with self._db() as db:
            row = db.execute(
                "SELECT link_id, vehicle, owner, expires, created_ms, revoked_ms FROM share_links WHERE link_id = ?",
                (link_id,),
            ).fetchone()
        return None if row is None else self._link(row)

    def links(self, vehicle: str) -> list[ShareLink]:
        """Every link of ``vehicle``, newest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT link_id, vehicle, owner, expires, created_ms, revoked_ms FROM share_links "
                "WHERE vehicle = ? ORDER BY created_ms DESC, link_id",
                (vehicle,),
            ).fetchall()
        return [self._link(r) for r in rows]

    def revoke(self, vehicle: str, link_id: str | None = None) -> int:
        """Revoke one live link of ``vehicle`` (``link_id``), or all of them; how many were revoked."""
        where, args = "vehicle = ? AND revoked_ms IS NULL", [vehicle]
        if link_id is not None:
            where, args = where + " AND link_id = ?", [*args, link_id]
        with self._db() as db:
            cur = db.execute(
                f"UPDATE share_links SET revoked_ms = ? WHERE {where}", (int(time.time() * 1000), *args)
            )
            return int(cur.rowcount)


class ShareLinks:
    """Makes and checks share links with one key over one :class:`ShareStore`."""

    def __init__(
        self,
        key: bytes,
        store: ShareStore,
        current_owner: CurrentOwner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < 32:
            raise PccConfigError("share key: must be at least 32 bytes")
        self._key = key
        self.store = store
        self._current_owner = current_owner
        self._clock = clock

    @classmethod
    def open(cls, state_dir: Path, current_owner: CurrentOwner | None = None) -> ShareLinks:
        """The links of a serving state dir (its key file and store, made on first use)."""
        return cls(load_share_key(state_dir / KEY_FILE), ShareStore(state_dir / STORE_FILE), current_owner)

    def _mac(self, vehicle: str, expires: int, link_id: str) -> str:
        message = b"\n".join(
            (_LABEL, vehicle.encode("ascii"), str(expires).encode("ascii"), link_id.encode())
        )
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def create(self, vehicle: str, ttl_s: int, owner: str | None = None) -> ShareLink:
        """A new link to ``vehicle``'s passport for ``ttl_s`` seconds, recorded in the store."""
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise PccValueError(f"a share link lasts between {MIN_TTL_S} s and {MAX_TTL_S // 86_400} days")
        now = self._clock()
        link_id = _b64(secrets.token_bytes(16))
        expires = int(now) + ttl_s
        token = f"{link_id}.{expires}.{self._mac(vehicle, expires, link_id)}"
        link = ShareLink(link_id, vehicle, expires, owner, int(now * 1000), None, token)
        self.store.add(link)
        return link

    def check(self, token: str, vehicle: str) -> ShareLink:
        """The link ``token`` names if it opens ``vehicle``'s passport now; else :class:`ShareLinkError`."""
        match = _TOKEN.match(token)
        if match is None:
            raise ShareLinkError("the share link is malformed (expected <link id>.<expires>.<signature>)")
        link_id, expires_text, mac = match.groups()
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(vehicle, expires, link_id)):
            raise ShareLinkError(f"share link {link_id} was not made for this vehicle, or was altered")
        if expires <= self._clock():
            raise ShareLinkError(
                f"share link {link_id} expired at {_when(expires)}: ask the owner for a new one"
            )
        link = self.store.get(link_id)
        if link is None or link.vehicle != vehicle or link.expires != expires:
            raise ShareLinkError(f"share link {link_id} is not one this service made")
        if link.revoked_ms is not None:
            raise ShareLinkError(f"share link {link_id} was revoked by the owner")
        if link.owner is not None and self._current_owner is not None:
            try:
                current = self._current_owner(vehicle)
            except PccNotFoundError:
                current = None  # erased from the vault: nobody may share it any more
            if current is None or not hmac.compare_digest(current, link.owner):
                raise ShareLinkError(
                    f"share link {link_id} ended: the car has changed owner since it was shared"
                )
        return link


def share_passport(
    links: ShareLinks, vault: IdentityVault, vehicle: str, ttl_s: int, actor: str = "cli"
) -> ShareLink:
    """A share link to ``vehicle``'s passport, made for its current owner (whom the caller authenticated).

    The owner the vault records now is kept with the link, so a sale ends it; the
    vault's audit log names the vehicle pseudonym and the link, never the VIN.
    """
    try:
        owner = vault.current_owner(vehicle)
    except PccNotFoundError:
        raise PccNotFoundError("no such vehicle in the identity vault (erased or never seen)") from None
    link = links.create(vehicle, ttl_s, owner)
    vault.record_audit(
        "passport_share",
        subject=vehicle,
        actor=actor,
        detail=f"link {link.link_id} until {link.expires_text}",
    )
    return link


def unshare_passport(
    links: ShareLinks, vault: IdentityVault, vehicle: str, link_id: str | None = None, actor: str = "cli"
) -> int:
    """Revoke one share link of ``vehicle`` (``link_id``) or all of them; how many were live."""
    revoked = links.store.revoke(vehicle, link_id)
    vault.record_audit(
        "passport_unshare", subject=vehicle, actor=actor, detail=f"link {link_id or 'all'}: {revoked} revoked"
    )
    return revoked
