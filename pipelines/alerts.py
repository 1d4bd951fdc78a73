"""Alerts: what the speed layer raises and the alert service pushes to subscribers' webhooks.

The contract between the two, defined once: the alert kinds, the topic
(``<prefix>alerts``, key = the vehicle pseudonym) and the alert itself, a
CloudEvents 1.0 JSON document whose ``id`` is derived from the event and the
kind, so an event processed twice raises the same alert (receivers deduplicate
on it: it is the ``webhook-id`` of every delivery).

An alert names the vehicle by its pseudonym only: no VIN, no owner identity,
no protected payload field.

Every alert is signed by the layer that raised it (Ed25519, :class:`AlertSigner`:
the CloudEvents extension attributes ``pccraiser``, its public key, and
``pccsignature``, over the document's canonical JSON).  The alert service
delivers and bills only alerts signed by a trusted raiser
(:func:`alert_refusal`): the topic is writable by any client of a broker
without ACLs, and a producer is paid for every delivery its events raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NotRequired, TypedDict

import orjson

from pipelines.files import secret_file

if TYPE_CHECKING:
    from pipelines.settings import Settings

ALERTS: Final = "alerts"

#: a speed-layer fraud flag -> the alert kind it raises (``duplicate_event`` raises none: a replay
#: is refused, not a fraud on the car)
KIND_OF_FLAG: Final[Mapping[str, str]] = {
    "odometer_rollback": "fraud.rollback",
    "rollback_before_sale": "fraud.rollback",
    "gradual_clocking": "fraud.clocking",
    "activity_after_wreck": "fraud.wreck_resurrection",
    "interleaved_odometers": "fraud.clone",
    "implausible_rate": "fraud.implausible_rate",
    "impossible_travel": "fraud.impossible_travel",
}
#: an accepted event of this type raises this alert kind
KIND_OF_EVENT: Final[Mapping[str, str]] = {
    "wreck_declaration": "wreck.declared",
    "ownership_change": "ownership.changed",
}
ALERT_KINDS: Final = tuple(sorted(set(KIND_OF_FLAG.values()) | set(KIND_OF_EVENT.values())))


class AlertData(TypedDict):
    kind: str
    vehicle: str  # the pseudonym v-...
    event_id: str
    event_type: str
    source_id: str
    event_time: int  # unix ms
    raised_ms: int  # when the speed layer (or the batch layer's publish) raised it
    # a batch verdict's alert only: the published batch version, the vehicle's score and label
    batch_version: NotRequired[str]
    score: NotRequired[float]
    label: NotRequired[str]


def alerts_topic(prefix: str = "pcc.") -> str:
    return prefix + ALERTS


def alert_id(event_id: str, kind: str) -> str:
    """The stable id of the alert of ``kind`` raised by ``event_id`` (a UUID, version 8 bits)."""
    digest = bytearray(hashlib.sha256(f"{event_id}|{kind}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def kind_matches(pattern: str, kind: str) -> bool:
    """``fraud.*`` matches every ``fraud.`` kind; anything else matches itself only."""
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


def valid_pattern(pattern: str) -> bool:
    if pattern.endswith(".*"):
        return any(k.startswith(pattern[:-1]) for k in ALERT_KINDS)
    return pattern in ALERT_KINDS


def alerts_of(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The alerts (CloudEvents documents) raised by accepted speed-layer rows."""
    for row in rows:
        kinds = {KIND_OF_FLAG[f] for f in row.get("flags") or () if f in KIND_OF_FLAG}
        event_kind = KIND_OF_EVENT.get(row["event_type"])
        if event_kind is not None:
            kinds.add(event_kind)
        for kind in sorted(kinds):
            yield cloud_event(
                AlertData(
                    kind=kind,
                    vehicle=row["vehicle"],
                    event_id=row["event_id"],
                    event_type=row["event_type"],
                    source_id=row["source_id"],
                    event_time=int(row["event_time"]),
                    raised_ms=int(row["processed_time"]),
                )
            )


def cloud_event(data: AlertData, origin: str = "speed") -> dict[str, Any]:
    """A CloudEvents 1.0 structured JSON document carrying ``data`` (``origin``: speed or batch)."""
    from pipelines.events import format_time

    return {
        "specversion": "1.0",
        "id": alert_id(data["event_id"], data["kind"]),
        "source": f"/pcc/{origin}",
        "type": "pcc." + data["kind"],
        "subject": data["vehicle"],
        "time": format_time(data["event_time"]),
        "datacontenttype": "application/json",
        "data": dict(data),
    }


#: CloudEvents extension attributes of a signed alert: the raiser's public key and its signature (hex)
RAISER: Final = "pccraiser"
SIGNATURE: Final = "pccsignature"
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def canonical_bytes(alert: Mapping[str, Any]) -> bytes:
    """What an alert's signature covers: the document without its signature, keys sorted, compact JSON."""
    return orjson.dumps({k: v for k, v in alert.items() if k != SIGNATURE}, option=orjson.OPT_SORT_KEYS)


def raiser_key_path(data_dir: Path) -> Path:
    """Where a deployment keeps its alert-signing key when ``alerts.raiser_key`` is not set."""
    return data_dir / "alerts" / "raiser.key"


class AlertSigner:
    """Signs the alerts a layer raises with its Ed25519 key (one per deployment by default)."""

    def __init__(self, private_hex: str) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        text = private_hex.strip().lower().removeprefix("0x")
        if not _HEX_KEY.fullmatch(text):
            raise ValueError("an alert raiser key is 32 bytes written as 64 hex digits")
        self._key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
        self.public_hex = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @classmethod
    def from_file(cls, path: Path) -> AlertSigner:
        """The key kept in ``path``, created (mode 0600) on first use."""
        return cls(secret_file(path, lambda: os.urandom(32).hex(), "alert raiser key"))

    @classmethod
    def for_settings(cls, settings: Settings) -> AlertSigner:
        """``alerts.raiser_key``, else the deployment's key file under ``data_dir``."""
        key = settings.alerts.raiser_key
        if key is not None:
            return cls(key.get_secret_value())
        return cls.from_file(raiser_key_path(settings.data_dir))

    def sign(self, alert: dict[str, Any]) -> dict[str, Any]:
        """``alert`` with this raiser's public key and signature (set in place, returned)."""
        alert.pop(SIGNATURE, None)
        alert[RAISER] = self.public_hex
        alert[SIGNATURE] = self._key.sign(canonical_bytes(alert)).hex()
        return alert


def trusted_raisers(settings: Settings) -> tuple[str, ...]:
    """The public keys whose alerts are delivered: ``alerts.trusted_raisers``, else this deployment's own."""
    listed = settings.alerts.trusted_raisers
    if listed:
        return tuple(k.lower().removeprefix("0x") for k in listed)
    return (AlertSigner.for_settings(settings).public_hex,)


def alert_refusal(alert: Mapping[str, Any], trusted: Collection[str]) -> str | None:
    """Why ``alert`` is not to be delivered (None: signed by one of the ``trusted`` raisers, unaltered)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raiser, signature = alert.get(RAISER), alert.get(SIGNATURE)
    if not isinstance(raiser, str) or not isinstance(signature, str):
        return "unsigned alert"
    if raiser not in trusted:
        return f"alert signed by {raiser[:16]}…, not a trusted raiser (alerts.trusted_raisers)"
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(raiser)).verify(
            bytes.fromhex(signature), canonical_bytes(alert)
        )
    except (ValueError, TypeError, InvalidSignature):  # TypeError: a value no signed alert holds
        return "alert signature does not match its content"
    return None


def ensure_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
    """Create the alerts topic if it does not exist (one partition: alerts are few)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="pcc-alerts-admin", bootstrap_timeout_ms=int(timeout_s * 1000)
    )
    try:
        if topic in set(admin.list_topics()):
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won the race
            admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def send_alerts(
    bootstrap: str,
    topic: str,
    alerts: Iterable[dict[str, Any]],
    signer: AlertSigner,
    timeout_s: float = 30.0,
) -> int:
    """Sign alerts and publish them to the alerts topic (key: the vehicle pseudonym); wait until
    the broker holds them."""
    from kafka import KafkaProducer

    ensure_topic(bootstrap, topic, timeout_s)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_block_ms=int(timeout_s * 1000),
        client_id="pcc-alerts",
    )
    try:
        futures = [
            producer.send(topic, key=alert["subject"].encode(), value=orjson.dumps(signer.sign(alert)))
            for alert in alerts
        ]
        producer.flush(timeout=timeout_s)
        for future in futures:
            if future.failed():
                raise future.exception
    finally:
        producer.close(timeout=10)
    return len(futures)
