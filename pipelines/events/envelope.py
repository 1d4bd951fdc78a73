"""The event envelope: its wire shape, event ids and the time format.

Times on the wire are RFC 3339 UTC with milliseconds and a ``Z``
(``2026-03-01T08:15:00.000Z``); event ids are UUIDv7 in lower-case text form.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NotRequired, TypedDict

import uuid6

from pipelines.errors import PccValueError

EventType = Literal[
    "odometer_reading",
    "maintenance",
    "inspection",
    "accident_declaration",
    "wreck_declaration",
    "repair",
    "ownership_change",
]

#: Every event type, in the order of docs/contracts.md.
EVENT_TYPES: tuple[str, ...] = (
    "odometer_reading",
    "maintenance",
    "inspection",
    "accident_declaration",
    "wreck_declaration",
    "repair",
    "ownership_change",
)

VEHICLE_PSEUDONYM = re.compile(r"^v-[0-9a-f]{32}$")
OWNER_PSEUDONYM = re.compile(r"^o-[0-9a-f]{32}$")
SOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")


class Proof(TypedDict):
    """The inclusion proof an envelope travels with (RFC 9162 audit path, hex SHA-256 hashes)."""

    log_index: int
    tree_size: int
    root: str
    path: list[str]
    leaf: str


class Envelope(TypedDict):
    """One event as it travels on Kafka and in JSON Lines (see docs/events.md)."""

    event_id: str
    event_type: EventType
    schema_version: int
    source_id: str
    vehicle: str
    event_time: str
    ingestion_time: str
    payload: dict[str, Any]
    #: version 2: the protected members' sealed values (``enc:v2:...``), not hashed (docs/access.md)
    sealed: NotRequired[dict[str, str]]
    proof: NotRequired[Proof]  # added by the producer SDK when the event's checkpoint is anchored


class ProducerInput(TypedDict):
    """What a producer feeds ``pcc produce``: the envelope before pseudonymisation."""

    event_id: NotRequired[str]
    event_type: EventType
    schema_version: int
    source_id: str
    vin: str
    event_time: str
    payload: dict[str, Any]


def new_event_id() -> str:
    """A fresh UUIDv7 (time ordered), lower-case text form."""
    return str(uuid6.uuid7())


def event_id_ms(event_id: str) -> int:
    """The Unix milliseconds embedded in a UUIDv7 event id."""
    if not UUID7.match(event_id):
        raise PccValueError("event_id: not a lower-case UUIDv7")
    return int(event_id[:8] + event_id[9:13], 16)


def utc_ms(dt: datetime) -> int:
    """Unix milliseconds of an aware datetime (naive datetimes are refused)."""
    if dt.tzinfo is None:
        raise PccValueError("time: a naive datetime has no time zone; use an aware UTC datetime")
    return _floor_ms(dt)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _floor_ms(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_time(value: datetime | int) -> str:
    """``2026-03-01T08:15:00.000Z`` from an aware datetime or Unix milliseconds (truncated to ms)."""
    if isinstance(value, int):
        dt = _EPOCH + timedelta(milliseconds=value)
    else:
        if value.tzinfo is None:
            raise PccValueError("time: a naive datetime has no time zone; use an aware UTC datetime")
        dt = value.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """An aware UTC datetime from the wire format; anything else raises :class:`PccValueError`."""
    if not isinstance(text, str) or not _TIME.match(text):
        raise PccValueError(
            f"time: {text!r} is not RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise PccValueError(f"time: {text!r} is not a valid date and time ({exc})") from None


def parse_time_ms(text: str) -> int:
    """Unix milliseconds of a wire time."""
    return _floor_ms(parse_time(text))


def now_ms() -> int:
    """The current time in Unix milliseconds (the clock read directly: a ``datetime`` costs 0.5 µs,
    and the speed layer asks once an event)."""
    return time.time_ns() // 1_000_000
