"""Assembling one vehicle's passport from its serving rows: what the page draws.

:func:`build_passport` turns a :class:`~serving.passport.source.PassportSource`'s
rows into a JSON-ready dict:

* ``readings``: every event with an odometer value, oldest first, with its
  verification status, quality index and fraud flags (the mileage curve);
* ``timeline``: every event, oldest first, with a one-line public summary
  (only payload fields of the public categories: mileage, maintenance,
  inspection, accident; never locations, money, claim references or owners);
* ``accidents`` and ``wreck`` (declared total loss or not);
* ``fraud``: score, label, reasons ``{rule, evidence}`` and explanation lines,
  or ``None`` before the first batch run has scored the vehicle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pipelines.events.categories import PUBLIC_CATEGORIES, top_level_categories
from pipelines.events.envelope import format_time
from serving.passport.errors import VehicleNotFoundError
from serving.passport.source import PassportSource, Row

#: Titles of the event types on the page.
EVENT_TITLES: dict[str, str] = {
    "odometer_reading": "Odometer reading",
    "maintenance": "Maintenance",
    "inspection": "Inspection",
    "accident_declaration": "Accident",
    "wreck_declaration": "Wreck (total loss)",
    "repair": "Repair",
    "ownership_change": "Change of owner",
}

_SUMMARY_FIELDS = (
    "service_type",
    "repair_type",
    "result",
    "severity",
    "reason",
    "items",
    "defects",
    "valid_until",
    "description",
    "notes",
)


def _time(value: Any) -> str:
    return format_time(value) if isinstance(value, datetime) else str(value)


def _payload(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("payload")
    if isinstance(raw, str | bytes):
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}
    return dict(raw) if isinstance(raw, Mapping) else {}


def public_fields(event_type: str, payload: Mapping[str, Any], version: int = 1) -> dict[str, Any]:
    """The payload fields of the public categories (no location, money, claim or owner)."""
    try:
        categories = top_level_categories(event_type, version)
    except Exception:  # an unknown type or version: show nothing rather than something private
        return {}
    return {k: v for k, v in payload.items() if categories.get(k) in PUBLIC_CATEGORIES}


def _summary(fields: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in _SUMMARY_FIELDS:
        value = fields.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        label = key.replace("_", " ")
        parts.append(f"{label}: {str(value).replace('_', ' ')}")
    return "; ".join(parts)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return list(value) if isinstance(value, Iterable) and not isinstance(value, Mapping) else [value]


def _flags(row: Mapping[str, Any]) -> list[str]:
    return sorted({str(f) for f in _list(row.get("flags")) + _list(row.get("batch_flags"))})


def _reason(item: Any) -> dict[str, Any]:
    """A fraud reason as ``{rule, evidence}``, whatever shape the batch layer wrote."""
    if isinstance(item, Mapping):
        rule = item.get("rule") or item.get("flag") or item.get("name") or "unknown"
        evidence = item.get("evidence") or item.get("event_ids") or []
        return {"rule": str(rule), "evidence": [str(e) for e in _list(evidence)]}
    if isinstance(item, list | tuple) and item:
        return {"rule": str(item[0]), "evidence": [str(e) for e in _list(item[1] if len(item) > 1 else [])]}
    return {"rule": str(item), "evidence": []}


def fraud_of(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fraud verdict of a ``fraud_scores`` row, normalised for the page."""
    if row is None:
        return None
    score = row.get("score")
    return {
        "score": None if score is None else round(float(score), 3),
        "label": str(row.get("label") or "unscored"),
        "reasons": [_reason(r) for r in _list(row.get("reasons"))],
        "explanation": [str(e) for e in _list(row.get("explanation"))],
    }


def _event(row: Row) -> dict[str, Any]:
    payload = _payload(row)
    event_type = str(row["event_type"])
    fields = public_fields(event_type, payload, int(row.get("schema_version") or 1))
    km = row.get("odometer_km")
    if km is None and isinstance(payload.get("odometer_km"), int):
        km = payload["odometer_km"]
    quality = row.get("quality")
    return {
        "event_id": str(row["event_id"]),
        "event_type": event_type,
        "title": EVENT_TITLES.get(event_type, event_type.replace("_", " ").capitalize()),
        "event_time": _time(row["event_time"]),
        "source_id": str(row["source_id"]),
        "odometer_km": None if km is None else int(km),
        "verification": str(row.get("verification") or "unverified"),
        "quality": None if quality is None else round(float(quality), 3),
        "flags": _flags(row),
        "summary": _summary(fields),
        "details": fields,
    }


def build_passport(source: PassportSource, vehicle: str) -> dict[str, Any]:
    """The passport of ``vehicle`` (a pseudonym); :class:`VehicleNotFoundError` if it has no event."""
    rows = source.history(vehicle)
    if not rows:
        raise VehicleNotFoundError(f"no events for vehicle {vehicle}")
    seen: set[str] = set()
    events: list[dict[str, Any]] = []
    for row in rows:
        event = _event(row)
        if event["event_id"] in seen:  # the merged view keeps one copy; be safe across layers
            continue
        seen.add(event["event_id"])
        events.append(event)
    events.sort(key=lambda e: (e["event_time"], e["source_id"], e["event_id"]))

    readings = [
        {
            k: e[k]
            for k in (
                "event_id",
                "event_time",
                "odometer_km",
                "verification",
                "quality",
                "source_id",
                "event_type",
                "flags",
            )
        }
        for e in events
        if e["odometer_km"] is not None
    ]
    accidents = [
        {
            "event_id": e["event_id"],
            "event_time": e["event_time"],
            "source_id": e["source_id"],
            **e["details"],
        }
        for e in events
        if e["event_type"] == "accident_declaration"
    ]
    wrecks = [e for e in events if e["event_type"] == "wreck_declaration"]
    wreck: dict[str, Any] = {"wrecked": bool(wrecks)}
    if wrecks:
        first = wrecks[0]
        wreck.update(
            event_id=first["event_id"],
            event_time=first["event_time"],
            reason=first["details"].get("reason"),
            events_after=sum(1 for e in events if e["event_time"] > first["event_time"]),
        )
    verified = sum(1 for e in events if e["verification"] == "verified")
    last_km = next((r["odometer_km"] for r in reversed(readings)), None)
    return {
        "vehicle": vehicle,
        "summary": {
            "events": len(events),
            "readings": len(readings),
            "verified": verified,
            "unverified": len(events) - verified,
            "first_event_time": events[0]["event_time"],
            "last_event_time": events[-1]["event_time"],
            "last_odometer_km": last_km,
            "max_odometer_km": max((r["odometer_km"] for r in readings), default=None),
        },
        "readings": readings,
        "timeline": events,
        "accidents": accidents,
        "wreck": wreck,
        "fraud": fraud_of(source.fraud(vehicle)),
    }
