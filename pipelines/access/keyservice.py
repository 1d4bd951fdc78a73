"""The key service: sealing keys for producers in other organisations, never a copy of the vault.

A producer outside the platform's organisation seals protected fields at its
source (contract version 2) with the vehicle's *current* data key of each
category.  It asks the platform for them with a request signed by its
registered Ed25519 key; the platform answers with the keys wrapped (HPKE, as
for grantees: :func:`~pipelines.access.wrap.wrap_key`) to the producer's
registered X25519 key.  The vault stays the only place a key lives in clear
on the platform's side; the producer holds a wrapped key only as long as its
cache (1 s by default, as every sealing key ring).

Request (JCS, RFC 8785, signed with Ed25519 over its canonical bytes)::

    {"source_id": "garage-ext-01", "vehicle": "v-…", "categories": ["commercial", …],
     "issued_ms": 1767225600000, "nonce": "<32 hex>"}

Answer: ``{category: {"epoch": e, "wrapped": "wk:v1:…"}}``.  Refused (and
audited in the vault with the source id, never a key): an unknown or
inactive source, a bad signature, a request older than ``max_age_s`` or
from the future, a nonce already seen within that window (replay), a
category that is not protected, an unknown (or erased) vehicle.

What a producer can do with a current key: seal new data of that vehicle and
category - and open what others sealed under the same (vehicle, category,
epoch), since keys are per vehicle and category, not per source (the same
trade-off as producer grants, docs/access.md).  The service is for producers
the consortium registered; the audit says who fetched which key when.

The HTTP route that carries these requests belongs to the serving layer
(``POST /v1/keys/current``, body = the signed request); :class:`KeyService`
is the whole decision, :class:`RemoteKeys` the producer's side
(``Producer(keys=RemoteKeys(fetch, key_pair))``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipelines.canonical import canonical_bytes
from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES
from pipelines.events.envelope import SOURCE_ID, VEHICLE_PSEUDONYM

from .errors import AccessDenied
from .fields import KeyFor
from .keys import KeyRing
from .wrap import ConsumerKeyPair, fingerprint, unwrap_key, wrap_key


@dataclass(frozen=True, slots=True)
class RegisteredProducer:
    """A producer allowed to seal: its Ed25519 key (requests) and X25519 key (wrapped answers)."""

    source_id: str
    signing_key: bytes  # raw Ed25519 public key, 32 bytes
    wrapping_key: bytes  # raw X25519 public key, 32 bytes
    active: bool = True


def sign_request(
    private_key: Ed25519PrivateKey, source_id: str, vehicle: str, categories: Sequence[str], issued_ms: int
) -> dict[str, Any]:
    """A producer's signed key request (what it POSTs)."""
    body = {
        "source_id": source_id,
        "vehicle": vehicle,
        "categories": sorted(set(categories)),
        "issued_ms": issued_ms,
        "nonce": os.urandom(16).hex(),
    }
    return {"request": body, "signature": private_key.sign(canonical_bytes(body)).hex()}


class KeyService:
    """The platform's side: checks a signed request, answers with current keys wrapped to the producer."""

    def __init__(
        self,
        ring: KeyRing,
        producers: Mapping[str, RegisteredProducer],
        *,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ring = ring
        self.producers = dict(producers)
        self.max_age_s = max_age_s
        self._clock = clock
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _refuse(self, source_id: str, vehicle: str, why: str) -> AccessDenied:
        self.ring.vault.record_audit(
            "key_service_refused", subject=vehicle, actor=f"producer:{source_id}", detail=why
        )
        return AccessDenied(f"key service: {why}")

    def current_keys(self, signed: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The current keys a signed request asks for, wrapped; :class:`AccessDenied` when refused."""
        body, signature = signed.get("request"), signed.get("signature")
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise AccessDenied("key service: expected {request, signature}")
        source_id, vehicle = str(body.get("source_id", "")), str(body.get("vehicle", ""))
        if not SOURCE_ID.match(source_id) or not VEHICLE_PSEUDONYM.match(vehicle):
            raise AccessDenied("key service: malformed source id or vehicle pseudonym")
        producer = self.producers.get(source_id)
        if producer is None or not producer.active:
            raise self._refuse(source_id, vehicle, "not a registered, active producer")
        try:
            Ed25519PublicKey.from_public_bytes(producer.signing_key).verify(
                bytes.fromhex(signature), canonical_bytes(body)
            )
        except (InvalidSignature, ValueError, PccValueError):
            raise self._refuse(source_id, vehicle, "bad signature") from None
        now = self._clock()
        issued = body.get("issued_ms")
        if type(issued) is not int or not -5.0 <= now - issued / 1000 <= self.max_age_s:
            raise self._refuse(source_id, vehicle, f"request not issued within the last {self.max_age_s:g} s")
        nonce = f"{source_id}:{body.get('nonce')}"
        with self._lock:
            while self._nonces and now - next(iter(self._nonces.values())) > self.max_age_s + 5:
                self._nonces.popitem(last=False)
            if nonce in self._nonces:
                raise self._refuse(source_id, vehicle, "replayed request")
            self._nonces[nonce] = now
        categories = body.get("categories")
        if not isinstance(categories, list) or not categories or not set(categories) <= PROTECTED_CATEGORIES:
            raise self._refuse(
                source_id, vehicle, f"categories must be protected ones: {sorted(PROTECTED_CATEGORIES)}"
            )
        out: dict[str, dict[str, Any]] = {}
        try:
            for category in categories:
                epoch, key = self.ring.current(vehicle, category)
                out[category] = {
                    "epoch": epoch,
                    "wrapped": wrap_key(key, producer.wrapping_key, vehicle, category, epoch),
                }
        except (AccessDenied, PccNotFoundError):
            raise self._refuse(source_id, vehicle, "unknown or erased vehicle") from None
        self.ring.vault.record_audit(
            "key_service_release",
            subject=vehicle,
            actor=f"producer:{source_id}",
            detail=", ".join(f"{c}@{v['epoch']}" for c, v in sorted(out.items()))
            + f" to {fingerprint(producer.wrapping_key)}",
        )
        return out


#: ``fetch(signed request) -> answer``: the HTTP call to the key service (or the service itself in tests).
Fetch = Callable[[dict[str, Any]], Mapping[str, Mapping[str, Any]]]


class RemoteKeys:
    """The producer's side: ``keys(vehicle) -> key_for`` from the key service, cached ``cache_s``."""

    def __init__(
        self,
        fetch: Fetch,
        source_id: str,
        signing_key: Ed25519PrivateKey,
        wrapping_keys: ConsumerKeyPair,
        *,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._source_id = source_id
        self._signing = signing_key
        self._wrapping = wrapping_keys
        self._cache_s = cache_s
        self._clock = clock
        self._wall = wall
        self._cache: dict[tuple[str, str], tuple[float, tuple[int, bytes]]] = {}

    def current(self, vehicle: str, category: str) -> tuple[int, bytes]:
        now = self._clock()
        hit = self._cache.get((vehicle, category))
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        wanted = sorted(PROTECTED_CATEGORIES)  # one round trip for every category of the vehicle
        signed = sign_request(self._signing, self._source_id, vehicle, wanted, int(self._wall() * 1000))
        answer = self._fetch(signed)
        for name, item in answer.items():
            epoch = int(item["epoch"])
            key = unwrap_key(str(item["wrapped"]), self._wrapping, vehicle, name, epoch)
            self._cache[(vehicle, name)] = (now, (epoch, key))
        if (vehicle, category) not in self._cache:
            raise AccessDenied(f"key service: no key for {category}")
        return self._cache[(vehicle, category)][1]

    def __call__(self, vehicle: str) -> KeyFor:
        return lambda category: self.current(vehicle, category)

    def forget(self) -> None:
        self._cache.clear()
