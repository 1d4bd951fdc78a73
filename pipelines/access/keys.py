"""Data keys by key epoch, on top of the identity vault.

The vault holds the random 32-byte keys (``IdentityVault.data_key(vehicle,
category, epoch)``) and deletes them on erasure.  Which epoch is *current* for
a (vehicle, category) is kept by an :class:`EpochStore` - the grant store,
because revoking a grant and bumping the epoch are one step (on the ledger,
``AccessRegistry.revoke`` does both).  New data is always sealed under the
current epoch; :meth:`KeyRing.rotate` starts a new one.

The speed layer seals with ``KeyRing.key_for(vehicle)``; a ring shared by many
events may cache current keys for ``cache_s`` seconds, so a revocation made in
another process takes effect in the speed layer after at most that long (one
made through this ring's :meth:`rotate` at once).

The serving layer wraps keys for grantees with :meth:`KeyRing.wrapped`, which
keeps each HPKE-wrapped key for ``wrap_cache_s`` seconds (at most
``wrap_cache_size`` of them) per (consumer key, vehicle, category, epoch), so
a grantee's repeated queries do not pay an X25519 key agreement per key and
request.  The cache only saves that work; it never decides access: the grant
is checked on every request before the cache is asked (a revoked, expired or
previous owner's grant is refused at once, whatever is cached), and a hit is
used only if the key it wrapped is the vault's key for that epoch, read on
every request (an erased vehicle has none).  Erasure drops the vehicle's
entries with the other key caches (:meth:`erase_vehicle`).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Protocol

from cachetools import TTLCache

from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES
from pipelines.vault import IdentityVault

from .errors import AccessDenied
from .fields import KeyFor, KeyLookup, forget_ciphers
from .wrap import wrap_key

_NOTHING: Mapping[str, tuple[float, tuple[int, bytes]]] = MappingProxyType({})


class EpochStore(Protocol):
    """Where the current key epoch of each (vehicle, category) lives (0 until the first bump)."""

    def epoch(self, vehicle: str, category: str) -> int: ...

    def bump(self, vehicle: str, category: str) -> int:
        """Start the next epoch; returns it."""
        ...

    def bump_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        """Start the next epoch of each category at once; returns them."""
        ...


class KeyRing:
    """Current and past data keys of vehicles, by category and epoch."""

    def __init__(
        self,
        vault: IdentityVault,
        epochs: EpochStore,
        *,
        cache_s: float = 0.0,
        wrap_cache_s: float = 60.0,
        wrap_cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vault = vault
        self.epochs = epochs
        self.cache_s = cache_s
        self.wrap_cache_s = wrap_cache_s
        self.wrap_cache_size = wrap_cache_size
        self._clock = clock
        #: vehicle -> category -> (when fetched, (epoch, key)); read without the lock (dict ops are atomic)
        self._cache: dict[str, dict[str, tuple[float, tuple[int, bytes]]]] = {}
        #: (grantee, vehicle, category, epoch) -> (when wrapped, data key, wrapped key); expired entries
        #: and the least recently used beyond ``wrap_cache_size`` are dropped (not thread-safe: _lock)
        self._wrapped: TTLCache[tuple[bytes, str, str, int], tuple[float, bytes, str]] = TTLCache(
            maxsize=max(wrap_cache_size, 1), ttl=wrap_cache_s, timer=clock
        )
        self._lock = threading.Lock()

    def _vault_key(self, vehicle: str, category: str, epoch: int, *, cached: bool = False) -> bytes:
        try:
            return self.vault.data_key(vehicle, category, epoch, cached=cached)
        except PccNotFoundError:
            raise AccessDenied(f"no data keys for vehicle {vehicle}: it was erased or never seen") from None

    def current(self, vehicle: str, category: str) -> tuple[int, bytes]:
        """``(epoch, key)`` to seal new data of this vehicle and category with."""
        now = self._clock()
        hit = self._cache.get(vehicle, _NOTHING).get(category)  # always empty without a cache
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        if category not in PROTECTED_CATEGORIES:
            raise PccValueError(f"category {category!r} is public: it is never sealed")
        epoch = self.epochs.epoch(vehicle, category)
        # sealing: the vault may give a key it read before (an erasure elsewhere drops it within 1 s)
        current = (epoch, self._vault_key(vehicle, category, epoch, cached=self.cache_s > 0))
        if self.cache_s > 0:
            with self._lock:
                self._cache.setdefault(vehicle, {})[category] = (now, current)
        return current

    def key(self, vehicle: str, category: str, epoch: int) -> bytes:
        """The key of a past or the current epoch (never of a future one)."""
        current = self.epochs.epoch(vehicle, category)
        if type(epoch) is not int or not 0 <= epoch <= current:
            raise PccValueError(f"epoch {epoch} of {vehicle} {category}: current epoch is {current}")
        return self._vault_key(vehicle, category, epoch)

    def rotate(self, vehicle: str, category: str) -> int:
        """Start a new epoch (on revocation): data sealed from now on needs the new key."""
        epoch = self.epochs.bump(vehicle, category)
        self.invalidate(vehicle, category)
        self._vault_key(vehicle, category, epoch)  # create it now, not on the hot path
        return epoch

    def rotate_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        """Start a new epoch of each category at once (an ownership change: one ledger transaction)."""
        epochs = self.epochs.bump_many(vehicle, categories)
        for category, epoch in epochs.items():
            self.invalidate(vehicle, category)
            self._vault_key(vehicle, category, epoch)
        return epochs

    def wrapped(self, grantee: bytes, vehicle: str, category: str, epoch: int, key: bytes) -> str:
        """``key`` (this vehicle's data key of ``category`` at ``epoch``) wrapped to ``grantee``.

        The caller has checked the grant and read ``key`` from :meth:`key` for
        this request; a wrapping made within ``wrap_cache_s`` for the same
        consumer key and the same data key is reused.
        """
        slot = (grantee, vehicle, category, epoch)
        now = self._clock()
        with self._lock:
            hit = self._wrapped.get(slot)
        if hit is not None and now - hit[0] < self.wrap_cache_s and hmac.compare_digest(hit[1], key):
            return hit[2]
        token = wrap_key(key, grantee, vehicle, category, epoch)
        if self.wrap_cache_s > 0 and self.wrap_cache_size > 0:
            with self._lock:
                self._wrapped[slot] = (now, key, token)
        return token

    def invalidate(self, vehicle: str, category: str | None = None) -> None:
        """Forget cached current keys of a vehicle (one category or all)."""
        with self._lock:
            if category is None:
                self._cache.pop(vehicle, None)
            else:
                self._cache.get(vehicle, {}).pop(category, None)

    def key_for(self, vehicle: str) -> KeyFor:
        """``seal_payload``'s ``key_for`` for one vehicle: its current keys."""
        return partial(self.current, vehicle)

    def key_lookup(self, vehicle: str) -> KeyLookup:
        """``open_payload``'s ``key_lookup`` with the vault's own keys (server side: owner export)."""
        return lambda category, epoch: self.key(vehicle, category, epoch)

    # ErasableStore: cached keys are copies of what the vault is about to delete
    name = "key cache"

    def erase_vehicle(self, vehicle: str) -> int:
        with self._lock:
            cached = len(self._cache.pop(vehicle, {}))
            wrapped = [slot for slot in self._wrapped if slot[1] == vehicle]
            for slot in wrapped:
                del self._wrapped[slot]
        forget_ciphers()
        return cached + len(wrapped)
