"""Test vectors of contract version 2, for a producer written in another language.

``python -m pipelines.access.vectors`` writes ``pipelines/events/vectors/v2.json``
from fixed inputs (keys, salts and nonces are given, never random here): for
each case the clear envelope, the data keys, each protected member's salt,
nonce, ``salt || JCS(value)``, commitment and sealed token, the public region,
the JCS text of the hashed envelope, its ``leaf_data`` and RFC 6962
``leaf_hash``; plus commitments of single values with awkward JCS forms.
``pipelines/events/vectors/verify.mjs`` recomputes all of it with Node's own
crypto; a test runs it and checks this module still produces the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.canonical import canonical_bytes, envelope_without_proof, leaf_data, leaf_hash
from pipelines.events.commitments import commit_bytes, commitment
from pipelines.events.envelope import Envelope, EventType

from .sealing import committed_members, seal_event

VECTORS = Path(__file__).resolve().parent.parent / "events" / "vectors" / "v2.json"

_VEHICLE = "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d"
_KEYS = {
    "owner_identity": (0, bytes(range(32)).hex()),
    "precise_location": (2, bytes(range(32, 64)).hex()),
    "commercial": (1, bytes(range(64, 96)).hex()),
}


def _case(name: str, event_id: str, event_type: EventType, time: str, payload: dict[str, Any]) -> dict[str, Any]:
    clear: Envelope = {
        "event_id": event_id,
        "event_type": event_type,
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vehicle": _VEHICLE,
        "event_time": time,
        "ingestion_time": time[:-4] + "999Z",
        "payload": payload,
    }
    members = [m for m in committed_members(event_type) if m[0] in payload]
    salts = {m[0]: hashlib.sha256(f"salt {name} {m[0]}".encode()).digest()[:16] for m in members}
    nonces = {m[0]: hashlib.sha256(f"nonce {name} {m[0]}".encode()).digest()[:12] for m in members}
    stream = b"".join(salts[m[0]] + nonces[m[0]] for m in members)  # seal_event's order: by category

    def randbytes(n: int) -> bytes:
        assert n == len(stream)
        return stream

    def key_for(category: str) -> tuple[int, bytes]:
        epoch, key = _KEYS[category]
        return epoch, bytes.fromhex(key)

    wire = seal_event(clear, key_for, randbytes=randbytes)
    hashed = envelope_without_proof(wire)
    return {
        "name": name,
        "clear": clear,
        "keys": {c: {"epoch": e, "key": k} for c, (e, k) in _KEYS.items() if c in {m[1] for m in members}},
        "members": {
            m[0]: {
                "category": m[1],
                "salt": salts[m[0]].hex(),
                "nonce": nonces[m[0]].hex(),
                "committed_bytes": commit_bytes(salts[m[0]], payload[m[0]]).hex(),
                "commitment": wire["payload"][m[0]],
                "aad": (
                    f"pcc-field-v1\x00{_VEHICLE}\x00{event_id}\x00$.payload.{m[0]}\x00{m[1]}\x00"
                    f"{_KEYS[m[1]][0]}"
                )
                .encode()
                .hex(),
                "sealed": wire["sealed"][m[0]],
            }
            for m in members
        },
        "region": wire["payload"].get("region"),
        "envelope": wire,
        "hashed_jcs": canonical_bytes(hashed).decode(),
        "leaf_data": leaf_data(wire).hex(),
        "leaf_hash": leaf_hash(wire).hex(),
    }


_VALUES: list[Any] = [
    18950,
    0,
    {"lat": 48.856613, "lon": 2.352222},
    {"lon": -8.629105, "lat": 41.157944},
    {"lat": 1e-7, "lon": 100.0},
    "INV-2026-0042",
    "FR",
    "o-22222222222222222222222222222222",
    'Zürich € \u2028 "quoted" \\ tab\t',
    9007199254740991,
]


def build() -> dict[str, Any]:
    cases = [
        _case(
            "maintenance with location and prices",
            "01936f0e-8a4b-7c3d-9e2f-0123456789ab",
            "maintenance",
            "2026-03-01T08:15:00.000Z",
            {
                "odometer_km": 41500,
                "service_type": "oil_change",
                "in_network": True,
                "items": ["oil", "filter"],
                "cost_cents": 18950,
                "invoice_ref": "INV-2026-0042",
                "location": {"lat": 48.856613, "lon": 2.352222},
            },
        ),
        _case(
            "ownership change, every protected category",
            "01936f0e-8a4b-7c3d-9e2f-0123456789ac",
            "ownership_change",
            "2026-03-02T10:00:00.000Z",
            {
                "odometer_km": 45000,
                "new_owner": "o-22222222222222222222222222222222",
                "previous_owner": "o-11111111111111111111111111111111",
                "sale_price_cents": 1250000,
                "country": "FR",
            },
        ),
        _case(
            "odometer reading with a location south-west of Greenwich",
            "01936f0e-8a4b-7c3d-9e2f-0123456789ad",
            "odometer_reading",
            "2026-03-03T12:30:00.000Z",
            {"odometer_km": 41235, "location": {"lat": -0.04, "lon": -0.049}, "fuel_level_pct": 62.5},
        ),
        _case(
            "inspection without protected fields",
            "01936f0e-8a4b-7c3d-9e2f-0123456789ae",
            "inspection",
            "2026-03-04T09:00:00.000Z",
            {"odometer_km": 42000, "result": "pass_with_defects", "defects": ["worn wiper"]},
        ),
    ]
    values = []
    for i, value in enumerate(_VALUES):
        salt = hashlib.sha256(f"value salt {i}".encode()).digest()[:16]
        values.append(
            {
                "value": value,
                "salt": salt.hex(),
                "jcs": canonical_bytes(value).decode(),
                "commitment": commitment(salt, value),
            }
        )
    return {
        "description": (
            "PCC event contract version 2 (docs/events.md). commitment = 'cm:' + hex(SHA-256(salt || "
            "JCS(value))), JCS = RFC 8785; sealed = 'enc:v2:<category>:<epoch>:<commitment hex>:' + "
            "base64(nonce || AES-256-GCM(key, nonce, salt || JCS(value), aad)); leaf_data = "
            "SHA-256(JCS(envelope without proof and sealed)); leaf_hash = SHA-256(0x00 || leaf_data)."
        ),
        "generated_by": "python -m pipelines.access.vectors",
        "cases": cases,
        "values": values,
    }


def text() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    VECTORS.write_text(text(), encoding="utf-8")
    print(VECTORS)


if __name__ == "__main__":
    main()
