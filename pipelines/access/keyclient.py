"""The producer's side of the key service: seal at the source without a copy of the vault.

A producer in another organisation runs the producer SDK with a
:class:`KeyClient` as both its pseudonymizer and its sealing keys::

    post = PccClient(url, source_account_key).post          # signed EIP-712 requests (serving.client)
    keys = KeyClient(post, "garage-ext-01", ConsumerKeyPair.load("garage-ext-01.x25519"))
    keys.register()                                          # once: the X25519 key answers are wrapped to
    Producer(settings, source_id="garage-ext-01", ..., vault=keys, keys=keys)

For each car, one round trip gives its pseudonym and the current key of every
protected category, wrapped to the producer's registered X25519 key; the
keys are unwrapped here (each bound to vehicle, category and epoch: a key
swapped for another car's or category's does not open) and kept
``cache_s`` (1 s) like every sealing key ring, so a revocation reaches the
producer within a second; the pseudonym is asked again with them, so after an
erasure the car's next event carries its new pseudonym, never the erased one.

Owner identities are pseudonymised by the platform only: a producer with an
ownership change sends it through the ingest bridge (``POST /v1/events``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipelines.errors import PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES

from .errors import AccessDenied
from .fields import KeyFor
from .keyservice import CURRENT_PATH, REGISTER_PATH
from .wrap import ConsumerKeyPair, unwrap_key

#: ``post(path, json body) -> json answer``: one request signed by the source's registered account
#: (``serving.client.PccClient.post``); raises the service's refusal as a :class:`PccError`.
Post = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


class KeyClient:
    """Pseudonyms and current sealing keys from the platform's key service, cached ``cache_s``."""

    def __init__(
        self,
        post: Post,
        source_id: str,
        wrapping_keys: ConsumerKeyPair,
        *,
        categories: Sequence[str] | None = None,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self.source_id = source_id
        self._wrapping = wrapping_keys
        self._categories = sorted(categories or PROTECTED_CATEGORIES)
        self._cache_s = cache_s
        self._clock = clock
        self._vehicles: dict[str, str] = {}  # VIN -> pseudonym
        self._vins: dict[str, str] = {}  # pseudonym -> VIN, to ask again when the keys are stale
        self._keys: dict[str, tuple[float, dict[str, tuple[int, bytes]]]] = {}
        self._lock = threading.Lock()
        self.round_trips = 0

    def register(self) -> dict[str, Any]:
        """Register this producer's X25519 public key with the service (answers its fingerprint)."""
        body = {"source_id": self.source_id, "public_key": self._wrapping.public_key.hex()}
        return dict(self._post(REGISTER_PATH, body))

    def _fetch(self, vin: str) -> str:
        answer = self._post(
            CURRENT_PATH, {"source_id": self.source_id, "vin": vin, "categories": self._categories}
        )
        self.round_trips += 1
        vehicle = str(answer["vehicle"])
        if answer.get("wrapped_to") != self._wrapping.fingerprint:
            raise AccessDenied(
                f"key service: keys wrapped to {answer.get('wrapped_to')}, not to this producer's key "
                f"{self._wrapping.fingerprint}: register it again (KeyClient.register)"
            )
        keys: dict[str, tuple[int, bytes]] = {}
        for category, item in answer["keys"].items():
            epoch = int(item["epoch"])
            keys[category] = (
                epoch,
                unwrap_key(str(item["wrapped"]), self._wrapping, vehicle, category, epoch),
            )
        with self._lock:
            before = self._vehicles.get(vin)
            if before is not None and before != vehicle:  # erased meanwhile: the old pseudonym is gone
                self._vins.pop(before, None)
                self._keys.pop(before, None)
            self._vehicles[vin] = vehicle
            self._vins[vehicle] = vin
            self._keys[vehicle] = (self._clock(), keys)
        return vehicle

    def _fresh(self, vehicle: str) -> bool:
        hit = self._keys.get(vehicle)
        return hit is not None and self._clock() - hit[0] < self._cache_s

    # --- the producer SDK's Pseudonymizer ------------------------------------------------------

    def pseudonymize_vehicle(self, vin: str) -> str:
        """The car's pseudonym, asked again with its keys once they are ``cache_s`` old (one round trip):
        after an erasure the car's next event carries its new pseudonym, never the erased one."""
        known = self._vehicles.get(vin)
        return known if known is not None and self._fresh(known) else self._fetch(vin)

    def pseudonymize_owner(self, identity: Mapping[str, Any]) -> str:
        raise PccValueError(
            "owner identities are pseudonymised by the platform only: send ownership changes through "
            "the ingest bridge (POST /v1/events)"
        )

    def record_ownership(self, vehicle: str, owner: str) -> None:
        self.pseudonymize_owner({})

    # --- the producer SDK's SealingKeys --------------------------------------------------------

    def current(self, vehicle: str, category: str) -> tuple[int, bytes]:
        """``(epoch, key)`` to seal this vehicle's ``category`` with (asked again after ``cache_s``)."""
        hit = self._keys.get(vehicle)
        if hit is None or self._clock() - hit[0] >= self._cache_s:
            vin = self._vins.get(vehicle)
            if vin is None:
                raise AccessDenied(f"key service: vehicle {vehicle} was not pseudonymised by this client")
            if self._fetch(vin) != vehicle:
                raise AccessDenied(
                    f"key service: vehicle {vehicle} was erased; its VIN now has another pseudonym "
                    "(prepare the event again)"
                )
            hit = self._keys[vehicle]
        found = hit[1].get(category)
        if found is None:
            raise AccessDenied(f"key service: no key for {category} of {vehicle}")
        return found

    def __call__(self, vehicle: str) -> KeyFor:
        return lambda category: self.current(vehicle, category)

    def forget(self) -> None:
        """Drop every key held (the pseudonyms stay)."""
        with self._lock:
            self._keys.clear()
