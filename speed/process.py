"""The per-event logic of the speed layer, as plain Python.

:class:`EventProcessor` is used as is by the Beam pipeline (inside one fused
DoFn) and by the plain-loop reference of ``bench/bench_speed.py``, so the
bench compares the runner, not two implementations.

Per event, in this order: strict parsing and schema validation -> the
canonical leaf hash recomputed and compared with the proof's leaf -> the
inclusion proof checked against its own root, then that root against the
checkpoint anchored on the ledger (a checkpoint not seen yet waits up to
``proof_wait_s``, then the event is accepted as ``unverified``; a ledger that
cannot be read makes the event wait without limit) -> replay detection by
event id -> fraud flags from per-vehicle state -> the quality index -> the
stored payload.

Version 2 events (sealed at the producer, docs/events.md) arrive with every
protected field as a commitment and its value sealed: the speed layer never
holds a protected value in clear and needs no key.  It checks every
commitment has its sealed value (a clear protected field is ``bad_schema``
naming its path), stores each sealed token in place of its commitment, takes
``lat``/``lon`` from the public ``region`` and gives the rules public fields
only.  Version 1 events (clear) are still read until ``v1_cutover`` (then
``retired_version``): their protected fields are sealed here into ``enc:v1``
tokens under the vehicle's current data keys (a batch's ready events in one
pass: the ciphers stay warm).  Dead letters never carry a protected value in
clear: protected members of a refused event are replaced by ``"redacted"``.

Order: decided events are applied to the per-vehicle state sorted by
``(event_time, source_id, log_index)`` (then the Kafka record, so a replay and
its original meet in one order everywhere), not by arrival, so that events of
one vehicle arriving through different topics and partitions meet the rules in
event order.  With a ``watermark_ms`` (the lowest position every partition
read has reached, in Kafka timestamps), decided events wait in an ordering
buffer until the watermark passes their record's timestamp by
``order_hold_ms``; a vehicle's released events take with them its buffered
events that sort before them.  Without one, everything decided is applied at
once (the plain loop, the last flush of a run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pipelines import canonical, merkle
from pipelines.access import (
    AccessDenied,
    KeyRing,
    SqliteGrantStore,
    open_grant_store,
    row_aad,
    seal_payload,
    stored_payload,
)
from pipelines.dataset import region
from pipelines.errors import PccValidationError
from pipelines.events import EVENT_TYPES, Envelope, format_time, parse_event, parse_time_ms, validate_envelope
from pipelines.events.categories import PUBLIC_CATEGORIES, top_level_categories
from pipelines.events.commitments import COMMITTED_VERSION, is_commitment
from speed.config import SpeedConfig
from speed.errors import LedgerUnavailable, RejectedEvent
from speed.roots import RootSource, SourceInfo
from speed.rules import RulesAdapter
from speed.source import KafkaRecord
from speed.state import ReplayIndex, SeenEvents, VehicleSlot, VehicleStates, VehicleStore, origin_key


@dataclass(slots=True)
class DeadLetter:
    record: KafkaRecord
    reason: str
    detail: str
    event_id: str | None = None
    value: bytes | None = None  # what the dead-letter topic gets; set from the record by redacted()

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = redacted(self.record.value)


REDACTED = "redacted"


def redacted(value: bytes) -> bytes:
    """The bytes a dead letter keeps: protected payload members in clear replaced by ``"redacted"``.

    Commitments and sealed values are kept (they reveal nothing); bytes that are
    not a JSON object with a known event type and a payload are kept as they
    are (there is no field to tell).
    """
    try:
        import orjson

        doc = orjson.loads(value)
    except Exception:
        return value
    if not isinstance(doc, dict) or doc.get("event_type") not in EVENT_TYPES:
        return value
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        return value
    event_type = str(doc["event_type"])
    known = {**top_level_categories(event_type, 1), **top_level_categories(event_type, COMMITTED_VERSION)}
    # fail closed: a member of no known public category (a typo, an extra field) is hidden too
    hidden = [n for n, v in payload.items() if known.get(n) not in PUBLIC_CATEGORIES and not is_commitment(v)]
    if not hidden:
        return value
    doc["payload"] = {k: (REDACTED if k in hidden else v) for k, v in payload.items()}
    return orjson.dumps(doc)


@dataclass(slots=True)
class _Checked:
    """An event that passed parsing, schema, hash and proof-shape checks."""

    record: KafkaRecord
    env: Envelope
    leaf: bytes
    event_ms: int
    ingestion_ms: int
    source: SourceInfo | None = None
    verified: bool = False
    first_seen_ms: int = 0


@dataclass(slots=True)
class BatchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    redelivered: int = 0
    verified: int = 0
    unverified: int = 0


Clock = Callable[[], int]


class EventProcessor:
    def __init__(
        self,
        config: SpeedConfig,
        roots: RootSource,
        *,
        rules: RulesAdapter | None = None,
        vehicles: VehicleStates | None = None,
        seen: SeenEvents | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self._config = config
        self._keys = keys
        self._roots = roots
        self._rules = rules or RulesAdapter()
        self.vehicles = vehicles or VehicleStates()
        self.seen = seen or SeenEvents(config.dedupe_window_s)
        self._pending: list[_Checked] = []
        self._held: list[_Checked] = []  # decided, waiting for the watermark (ordering buffer)
        self._order_hold_ms = config.order_hold_ms or 0
        self._v1_cutover_ms = config.v1_cutover_ms
        self._proof_wait_ms = int(config.proof_wait_s * 1000)
        self._expired_at = 0

    @property
    def keys(self) -> KeyRing:
        """The data keys protected fields are sealed with (the vault and grant store of the config)."""
        if self._keys is None:
            from pipelines.vault import IdentityVault

            data = self._config.data_dir / "vault"
            vault = IdentityVault(
                self._config.vault_path or data / "identity.sqlite", self._config.vault_key_file
            )
            grants_path = self._config.grants_path or data / "grants.sqlite"
            settings = self._config.settings
            grants = (
                SqliteGrantStore(grants_path)
                if settings is None
                else open_grant_store(settings, sqlite_path=grants_path)
            )
            self._keys = KeyRing(vault, grants, cache_s=1.0)
        return self._keys

    def _seal(self, env: Mapping[str, Any]) -> str:
        """The payload as stored: canonical JSON with every protected field sealed."""
        vehicle, event_type, version = env["vehicle"], env["event_type"], env["schema_version"]
        if version == COMMITTED_VERSION:  # sealed at the producer: the tokens take the commitments' place
            return canonical.canonical_bytes(stored_payload(env)).decode()
        payload = env["payload"]
        try:
            sealed = seal_payload(
                event_type, version, payload, self._lazy_key_for(vehicle), row_aad(vehicle, env["event_id"])
            )
        except AccessDenied as exc:
            raise RejectedEvent("unknown_vehicle", f"event {env['event_id']}: {exc.message}") from None
        return canonical.canonical_bytes(sealed).decode()

    def _lazy_key_for(self, vehicle: str) -> Callable[[str], tuple[int, bytes]]:
        # the key ring (vault, grant store) is opened only when an event has a protected field
        if self._keys is not None:
            return self._keys.key_for(vehicle)
        return lambda category: self.keys.current(vehicle, category)

    # ------------------------------------------------------------------ checks

    def _parse(self, record: KafkaRecord, now_ms: int) -> tuple[_Checked, merkle.InclusionClaim]:
        """The event parsed, validated and hashed, and the inclusion claim its proof makes."""
        try:
            parsed = parse_event(record.value, max_bytes=self._config.max_event_bytes)
        except PccValidationError as exc:
            raise RejectedEvent("unparseable", "; ".join(exc.problems) or str(exc)) from None
        problems = validate_envelope(parsed, now_ms=now_ms, future_tolerance_s=self._config.future_tolerance_s)
        if problems:
            text = "; ".join(str(p) for p in problems)
            future = any("in the future" in p.message for p in problems)
            raise RejectedEvent("future_timestamp" if future else "bad_schema", text)
        if "proof" not in parsed:
            raise RejectedEvent("bad_schema", "$.proof: missing (the producer SDK adds it)")
        env = cast(Envelope, parsed)  # the shape validate_envelope checked, proof included
        cutover = self._v1_cutover_ms
        if (
            cutover is not None
            and env["schema_version"] == 1
            and parse_time_ms(env["ingestion_time"]) >= cutover
        ):
            raise RejectedEvent(
                "retired_version",
                f"event {env['event_id']}: schema_version 1 carries protected fields in clear and is not "
                f"accepted for events ingested from {format_time(cutover)} (speed.v1_cutover); "
                "send version 2 (the producer SDK seals by default)",
            )
        proof = env["proof"]
        leaf = canonical.leaf_hash(env)
        if proof["leaf"] != leaf.hex():
            raise RejectedEvent(
                "bad_hash", f"event {env['event_id']}: leaf {proof['leaf']} is not the hash of the envelope"
            )
        try:
            path = [bytes.fromhex(h) for h in proof["path"]]
            claimed_root = bytes.fromhex(proof["root"])
        except ValueError:
            raise RejectedEvent("bad_proof", f"event {env['event_id']}: proof hashes are not hex") from None
        checked = _Checked(
            record, env, leaf, parse_time_ms(env["event_time"]), parse_time_ms(env["ingestion_time"])
        )
        return checked, (leaf, proof["log_index"], proof["tree_size"], path, claimed_root)

    def _anchor(self, ev: _Checked, now_ms: int) -> bool:
        """True when decided (verified, or unverified after the wait); False: keep waiting.

        Raises RejectedEvent for an unknown source or a proof against a root
        that is not the anchored one; LedgerUnavailable propagates.
        """
        env = ev.env
        source_id = env["source_id"]
        if ev.source is None:
            info = self._roots.source_info(source_id)
            if info is None or not info.active:
                raise RejectedEvent(
                    "unknown_source", f"event {env['event_id']}: source {source_id!r} is not registered"
                )
            ev.source = info
        proof = env["proof"]
        anchored = self._roots.checkpoint_root(source_id, proof["tree_size"])
        if anchored is None:
            if now_ms - ev.first_seen_ms >= self._proof_wait_ms:
                ev.verified = False
                return True
            return False
        if anchored.hex() != proof["root"]:
            raise RejectedEvent(
                "bad_proof",
                f"event {env['event_id']}: root {proof['root'][:16]}… is not the checkpoint anchored by "
                f"{source_id} at tree size {proof['tree_size']}",
            )
        ev.verified = True
        return True

    # ------------------------------------------------------------------ batches

    def process_batch(
        self, records: Iterable[KafkaRecord], now_ms: int, watermark_ms: int | None = None
    ) -> BatchResult:
        """Process records (and retry waiting ones); decided events come out in ``BatchResult``.

        ``watermark_ms``: every partition read is past this Kafka timestamp; decided events
        wait until it passes theirs by ``order_hold_ms``.  ``None``: apply everything decided.
        """
        ready, result = self.check_batch(records, now_ms)
        held = self._held + ready if self._held else ready
        ready, self._held = release(held, None if watermark_ms is None else watermark_ms - self._order_hold_ms)
        self.apply(ready, now_ms, result)
        return result

    def check_batch(self, records: Iterable[KafkaRecord], now_ms: int) -> tuple[list[_Checked], BatchResult]:
        """Parse, validate and prove ``records``; retry the events waiting for their checkpoint.

        Returns the events decided (verified, or unverified after the wait), not applied yet, and
        the dead letters; the others wait in this processor for their checkpoint.
        """
        result = BatchResult()
        if now_ms - self._expired_at >= 60_000:
            self.seen.expire(now_ms)
            self._expired_at = now_ms
        ready: list[_Checked] = []
        waiting: list[_Checked] = []
        candidates: list[_Checked] = self._pending
        self._pending = []
        parsed: list[_Checked] = []
        claims: list[merkle.InclusionClaim] = []
        for record in records:
            try:
                ev, claim = self._parse(record, now_ms)
            except RejectedEvent as exc:
                result.dead.append(DeadLetter(record, exc.reason, exc.detail, _event_id_of(record)))
                continue
            parsed.append(ev)
            claims.append(claim)
        # the proofs of one poll together: the events of a checkpoint share their audit paths
        for ev, included in zip(parsed, merkle.verify_inclusions(claims), strict=True):
            if not included:
                proof = ev.env["proof"]
                detail = (
                    f"event {ev.env['event_id']}: proof does not lead from leaf {proof['log_index']} "
                    f"to the root of tree size {proof['tree_size']}"
                )
                result.dead.append(DeadLetter(ev.record, "bad_proof", detail, ev.env["event_id"]))
                continue
            ev.first_seen_ms = now_ms
            candidates.append(ev)
        for ev in candidates:
            try:
                (ready if self._anchor(ev, now_ms) else waiting).append(ev)
            except RejectedEvent as exc:
                result.dead.append(DeadLetter(ev.record, exc.reason, exc.detail, ev.env["event_id"]))
            except LedgerUnavailable:
                ev.first_seen_ms = now_ms  # the wait for a checkpoint starts once the ledger answers
                waiting.append(ev)
        self._pending = waiting
        return ready, result

    def apply(
        self,
        ready: list[_Checked],
        now_ms: int,
        result: BatchResult,
        *,
        seen: ReplayIndex | None = None,
        vehicles: VehicleStore | None = None,
    ) -> None:
        """Apply decided events in the rules' order: replay check, fraud flags, quality, the row.

        ``seen`` and ``vehicles``: the replay index and fraud states to use (one vehicle's keyed
        state); by default this processor's own.
        """
        seen = self.seen if seen is None else seen
        vehicles = self.vehicles if vehicles is None else vehicles
        ready.sort(key=_order)
        for ev, payload in zip(ready, self._seal_all(ready, seen), strict=True):
            self._accept(ev, now_ms, result, payload, seen, vehicles)

    def _seal_all(self, ready: list[_Checked], seen: ReplayIndex) -> list[str | RejectedEvent]:
        """The stored payload of each ready event, sealed in one pass (ciphers and key cache stay warm)."""
        out: list[str | RejectedEvent] = []
        for ev in ready:
            if seen.origin_of(ev.env["event_id"]) is not None:
                out.append("")  # a duplicate or redelivery: _accept drops it before using the payload
                continue
            try:
                out.append(self._seal(ev.env))
            except RejectedEvent as exc:
                out.append(exc)
        return out

    def _accept(
        self,
        ev: _Checked,
        now_ms: int,
        result: BatchResult,
        payload: str | RejectedEvent,
        seen: ReplayIndex,
        vehicles: VehicleStore,
    ) -> None:
        env, rec = ev.env, ev.record
        event_id = env["event_id"]
        origin = origin_key(rec.topic, rec.partition, rec.offset)
        before = seen.origin_of(event_id)
        if before is not None:
            if before == origin:
                result.redelivered += 1  # the same record read again after a restart: already in the sinks
            else:
                result.dead.append(
                    DeadLetter(rec, "duplicate_event", f"event {event_id} was already accepted", event_id)
                )
            return
        if isinstance(payload, RejectedEvent):
            result.dead.append(DeadLetter(rec, payload.reason, payload.detail, event_id))
            return
        seen.add(event_id, origin, now_ms)
        state = vehicles.get(env["vehicle"])
        state, flags = self._rules.fraud(state, env, ev.event_ms, ev.verified)
        vehicles.put(env["vehicle"], state)
        assert ev.source is not None
        quality = self._rules.quality(
            env, ev.source, ev.verified, flags, ev.event_ms, ev.ingestion_ms, now_ms
        )
        result.rows.append(_row(ev, flags, quality, now_ms, payload))
        if ev.verified:
            result.verified += 1
        else:
            result.unverified += 1

    def restore(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Rebuild the seen ids and per-vehicle state from master-dataset rows (after a restart).

        Rows are applied in the rules' order (event time, source, log index),
        as they were when accepted.
        """
        ordered = sorted(rows, key=lambda r: (r["event_time"], r["source_id"], r["log_index"], r["event_id"]))
        for r in ordered:
            self.seen.add(r["event_id"], origin_key(r["topic"], r["partition"], r["offset"]))
            verified = r["verification"] == "verified"
            env = {
                "event_id": r["event_id"],
                "event_type": r["event_type"],
                "source_id": r["source_id"],
                "payload": {
                    "odometer_km": r["odometer_km"],
                    "location": None if r["lat"] is None else {"lat": r["lat"], "lon": r["lon"]},
                },
                "proof": {"log_index": r["log_index"]},
            }
            state, _ = self._rules.fraud(self.vehicles.get(r["vehicle"]), env, r["event_time"], verified)
            self.vehicles.put(r["vehicle"], state)
        return len(ordered)

    def slots(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, VehicleSlot]:
        """Per vehicle, the keyed state a restart gives it: the fraud state and replay index
        :meth:`restore` rebuilt from ``rows`` (``speed.state: keyed``)."""
        window_ms = self._config.dedupe_window_s * 1000
        out: dict[str, VehicleSlot] = {}
        for r in rows:
            vehicle = r["vehicle"]
            slot = out.get(vehicle)
            if slot is None:
                slot = out[vehicle] = VehicleSlot(window_ms, self.vehicles.get(vehicle))
            slot.add(r["event_id"], origin_key(r["topic"], r["partition"], r["offset"]))
        return out

    def pending_floor(self) -> dict[tuple[str, int], int]:
        """Per partition, the lowest offset still waiting (the sinks must not commit past it)."""
        floor: dict[tuple[str, int], int] = {}
        for ev in (*self._pending, *self._held):
            key = (ev.record.topic, ev.record.partition)
            if key not in floor or ev.record.offset < floor[key]:
                floor[key] = ev.record.offset
        return floor

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        """Decided events in the ordering buffer, waiting for the watermark."""
        return len(self._held)


def release(held: list[_Checked], limit_ms: int | None) -> tuple[list[_Checked], list[_Checked]]:
    """The ordering buffer's rule: the held events to apply now, and those that keep waiting.

    An event whose Kafka timestamp is at most ``limit_ms`` (the watermark less ``order_hold_ms``)
    is released, and with it every held event of its vehicle that sorts before the vehicle's
    last released one.  ``None``: everything is released (the end of a run, the plain loop).
    """
    if limit_ms is None:
        return held, []
    top: dict[str, tuple[Any, ...]] = {}  # per vehicle, the last released sort key
    for ev in held:
        if ev.record.timestamp_ms <= limit_ms:
            key, vehicle = _order(ev), ev.env["vehicle"]
            if vehicle not in top or key > top[vehicle]:
                top[vehicle] = key
    if not top:
        return [], held
    out: list[_Checked] = []
    keep: list[_Checked] = []
    for ev in held:
        last = top.get(ev.env["vehicle"])
        (out if last is not None and _order(ev) <= last else keep).append(ev)
    return out, keep


def _order(ev: _Checked) -> tuple[Any, ...]:
    """The rules' order: event time, source, log index, then the Kafka record (a replay's tie)."""
    rec = ev.record
    return (
        ev.event_ms,
        ev.env["source_id"],
        ev.env["proof"]["log_index"],
        rec.topic,
        rec.partition,
        rec.offset,
    )


def _event_id_of(record: KafkaRecord) -> str | None:
    """Best effort event id of a rejected message (for the dead-letter key), never raises."""
    try:
        import orjson

        value = orjson.loads(record.value)
        event_id = value.get("event_id") if isinstance(value, dict) else None
        return event_id if isinstance(event_id, str) and len(event_id) == 36 else None
    except Exception:
        return None


def _row(
    ev: _Checked, flags: Sequence[str], quality: Mapping[str, float], now_ms: int, sealed_payload: str
) -> dict[str, Any]:
    env = ev.env
    payload = env["payload"]
    proof = env["proof"]
    # version 2: the public region the producer gave; version 1: rounded here from the clear location
    location = payload.get("region" if env["schema_version"] == COMMITTED_VERSION else "location") or {}
    rec = ev.record
    return {
        "event_id": env["event_id"],
        "event_type": env["event_type"],
        "schema_version": env["schema_version"],
        "source_id": env["source_id"],
        "vehicle": env["vehicle"],
        "event_time": ev.event_ms,
        "ingestion_time": ev.ingestion_ms,
        "processed_time": now_ms,
        "odometer_km": payload.get("odometer_km"),
        "lat": region(location.get("lat")),  # the region only: the place is sealed in the payload
        "lon": region(location.get("lon")),
        "payload": sealed_payload,
        "leaf_hash": ev.leaf.hex(),
        "log_index": proof["log_index"],
        "tree_size": proof["tree_size"],
        "root": proof["root"],
        "proof_path": list(proof["path"]),
        "verification": "verified" if ev.verified else "unverified",
        "quality": quality["quality"],
        "q_source": quality["q_source"],
        "q_proof": quality["q_proof"],
        "q_consistency": quality["q_consistency"],
        "q_timeliness": quality["q_timeliness"],
        "q_completeness": quality["q_completeness"],
        "flags": list(flags),
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "event_date": env["event_time"][:10],
    }
