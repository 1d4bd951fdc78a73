"""What the speed layer asks the ledger: checkpoint roots and source facts.

:class:`RootSource` is the one interface: ``checkpoint_root(source_id,
tree_size)`` returns the anchored root of that checkpoint, ``None`` when the
ledger has no such checkpoint (yet), and raises :class:`LedgerUnavailable`
when the ledger cannot be read.  ``source_info(source_id)`` returns the
source's tier and reputation from the SourceRegistry, ``None`` if unknown.

Implementations: :class:`InMemoryRoots` (tests, benches) and
:class:`CachedRoots`, a cache in front of any reader (the ledger client's
checkpoint reader; the ledger indexer calls :meth:`CachedRoots.observe` for
every ``CheckpointAnchored`` event so lookups rarely reach the RPC node).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cachetools import TTLCache


@dataclass(frozen=True, slots=True)
class SourceInfo:
    source_id: str
    tier: int  # 1 best .. 4
    reputation: float  # [0, 1]
    active: bool = True


@runtime_checkable
class RootSource(Protocol):
    def checkpoint_root(self, source_id: str, tree_size: int) -> bytes | None: ...

    def source_info(self, source_id: str) -> SourceInfo | None: ...


class InMemoryRoots:
    """Checkpoints and sources held in dicts (unit tests, benches, replay tools)."""

    def __init__(self) -> None:
        self._roots: dict[tuple[str, int], bytes] = {}
        self._sources: dict[str, SourceInfo] = {}
        self.down = False  # simulate an unreachable ledger

    def add_source(self, source_id: str, tier: int = 1, reputation: float = 1.0) -> None:
        self._sources[source_id] = SourceInfo(source_id, tier, reputation)

    def add_checkpoint(self, source_id: str, tree_size: int, root: bytes) -> None:
        self._roots[(source_id, tree_size)] = root

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the sources and checkpoints as JSON (for a speed layer in another process)."""
        body = {
            "sources": {k: [v.tier, v.reputation, v.active] for k, v in self._sources.items()},
            "checkpoints": [[s, n, r.hex()] for (s, n), r in self._roots.items()],
        }
        Path(path).write_text(json.dumps(body))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InMemoryRoots:
        body = json.loads(Path(path).read_text())
        roots = cls()
        for source_id, (tier, reputation, active) in body["sources"].items():
            roots._sources[source_id] = SourceInfo(source_id, tier, reputation, active)
        for source_id, size, root in body["checkpoints"]:
            roots._roots[(source_id, size)] = bytes.fromhex(root)
        return roots

    def _check(self) -> None:
        if self.down:
            from speed.errors import LedgerUnavailable

            raise LedgerUnavailable("ledger unavailable (in-memory roots marked down)")

    def checkpoint_root(self, source_id: str, tree_size: int) -> bytes | None:
        self._check()
        return self._roots.get((source_id, tree_size))

    def source_info(self, source_id: str) -> SourceInfo | None:
        self._check()
        return self._sources.get(source_id)


#: entries of each expiring cache (misses, source facts): far more than a fleet's sources
_CACHE_SIZE = 65_536
_UNKNOWN: Any = object()

RootReader = Callable[[str, int], bytes | None]
SourceReader = Callable[[str], SourceInfo | None]


class CachedRoots:
    """A cache in front of ledger readers.

    Anchored checkpoints never change, so found roots are kept for good.  A
    miss is remembered for ``negative_ttl_s`` (the event waiting on it retries
    without hammering the node).  Source facts are refreshed every
    ``source_ttl_s``.  Reader exceptions propagate (``LedgerUnavailable``).
    """

    def __init__(
        self,
        read_root: RootReader,
        read_source: SourceReader,
        *,
        negative_ttl_s: float = 0.5,
        source_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_root = read_root
        self._read_source = read_source
        self._roots: dict[tuple[str, int], bytes] = {}  # for good: read without the lock
        #: misses and source facts expire on ``clock`` (cachetools is not thread-safe: ``_lock``)
        self._misses: TTLCache[tuple[str, int], bool] = TTLCache(_CACHE_SIZE, negative_ttl_s, timer=clock)
        self._sources: TTLCache[str, SourceInfo | None] = TTLCache(_CACHE_SIZE, source_ttl_s, timer=clock)
        self._lock = threading.Lock()

    def observe(self, source_id: str, tree_size: int, root: bytes) -> None:
        """Feed an anchored checkpoint (called by the ledger indexer)."""
        with self._lock:
            self._roots[(source_id, tree_size)] = root
            self._misses.pop((source_id, tree_size), None)

    def checkpoint_root(self, source_id: str, tree_size: int) -> bytes | None:
        key = (source_id, tree_size)
        found = self._roots.get(key)
        if found is not None:
            return found
        with self._lock:
            if self._misses.get(key, False):
                return None
        root = self._read_root(source_id, tree_size)
        with self._lock:
            if root is None:
                self._misses[key] = True
            else:
                self._roots[key] = root
        return root

    def source_info(self, source_id: str) -> SourceInfo | None:
        with self._lock:
            cached = self._sources.get(source_id, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached
        info = self._read_source(source_id)
        with self._lock:
            self._sources[source_id] = info
        return info


class FileRootsFactory:
    """Builds :class:`InMemoryRoots` from a JSON file written by :meth:`InMemoryRoots.save` (picklable)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = str(path)

    def __call__(self) -> InMemoryRoots:
        return InMemoryRoots.load(self._path)


class LedgerRootsFactory:
    """Builds :class:`CachedRoots` over the ledger client (picklable: each worker connects itself)."""

    def __init__(self, settings: object) -> None:
        self._settings = settings

    def __call__(self) -> CachedRoots:
        from ledger.client import LedgerClient
        from pipelines.errors import PccTransientError
        from speed.errors import LedgerUnavailable

        settings = self._settings
        client: list[LedgerClient] = []

        def connected() -> LedgerClient:
            if not client:
                try:
                    client.append(LedgerClient.from_settings(settings))  # type: ignore[arg-type]
                except PccTransientError as exc:
                    raise LedgerUnavailable(f"ledger unavailable: {exc}") from exc
            return client[0]

        def read_root(source_id: str, tree_size: int) -> bytes | None:
            try:
                return connected().anchors.root_at(source_id, tree_size)
            except PccTransientError as exc:
                raise LedgerUnavailable(f"ledger unavailable reading {source_id}@{tree_size}: {exc}") from exc

        def read_source(source_id: str) -> SourceInfo | None:
            try:
                sources = connected().sources
                if not sources.is_registered(source_id):
                    return None
                s = sources.get(source_id)
            except PccTransientError as exc:
                raise LedgerUnavailable(f"ledger unavailable reading source {source_id}: {exc}") from exc
            return SourceInfo(source_id, s.tier, s.reputation_bps / 10_000, s.active)

        return CachedRoots(read_root, read_source)


def ledger_roots_factory(settings: object) -> LedgerRootsFactory:
    return LedgerRootsFactory(settings)
