"""Who may send a source's events: its registered account (the SourceRegistry on the ledger).

The bridge asks a :class:`SourceDirectory`; :class:`ChainSources` reads the
ledger (cached briefly, so a batch costs no RPC call), :class:`MemorySources`
serves unit tests and trials without a chain.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from serving.errors import NotSourceKeyError

_SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


@dataclass(frozen=True)
class RegisteredSource:
    source_id: str
    kind: str  # connected_car, garage, insurer, inspection_centre, manual_entry
    account: str  # the address whose signature the bridge accepts for this source
    active: bool = True


class SourceDirectory(Protocol):
    """The registered producers, by source id."""

    def lookup(self, source_id: str) -> RegisteredSource | None: ...


def check_source(sources: SourceDirectory, source_id: str, account: str) -> RegisteredSource:
    """The source a signed request may act as: registered, active, and signed by its account (else 403)."""
    if not _SOURCE_ID.match(source_id):
        raise NotSourceKeyError(f"{source_id!r} is not a source id ([a-z0-9][a-z0-9-]{{1,62}})")
    source = sources.lookup(source_id)
    if source is None:
        raise NotSourceKeyError(f"source {source_id} is not registered")
    if not source.active:
        raise NotSourceKeyError(f"source {source_id} is suspended")
    if source.account.lower() != account.lower():
        raise NotSourceKeyError(
            f"{account} is not the registered key of source {source_id}: sign with that source's key"
        )
    return source


class MemorySources:
    """Sources kept in a dict: for unit tests and trials without a chain."""

    def __init__(self, sources: Mapping[str, RegisteredSource] | None = None) -> None:
        self.sources = dict(sources or {})

    def add(self, source: RegisteredSource) -> None:
        self.sources[source.source_id] = source

    def lookup(self, source_id: str) -> RegisteredSource | None:
        return self.sources.get(source_id)


class ChainSources:
    """The SourceRegistry read through a ledger client, each answer kept ``cache_s`` seconds.

    A suspension or a new account is seen within ``cache_s``; a source not
    registered is asked again on every request that names it (it may be
    registered meanwhile).
    """

    def __init__(self, client: Any, cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._sources = client.sources  # ledger.client.SourcesApi
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, RegisteredSource]] = {}
        self._lock = threading.Lock()

    def lookup(self, source_id: str) -> RegisteredSource | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(source_id)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        if not self._sources.is_registered(source_id):
            return None
        info = self._sources.get(source_id)
        found = RegisteredSource(source_id, info.kind, info.account, info.active)
        with self._lock:
            self._cache[source_id] = (now, found)
        return found
