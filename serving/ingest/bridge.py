"""The ingest bridge: a producer's JSON Lines batch, sent over HTTPS, through the producer SDK.

Each source gets a *lane*: one :class:`pipelines.producer.Producer` over the
source's own log, and one worker thread, so a source's batches are logged,
anchored and published in the order they arrived while other sources go on.
One batch, in its lane:

1. every line is parsed strictly (``parse_event``) and given its event id:
   the one it carries, else one derived from its content (a UUIDv7 with the
   event time's milliseconds and 74 bits of SHA-256 of the source and the
   line), so a retried batch names the same events either way;
2. an event id the bridge already accepted is answered again as it was
   (``duplicate``), never logged twice; the same id with other content is
   refused;
3. the others are validated, pseudonymised and appended to the log by the
   SDK (``Producer.submit``); the log is made durable and the ids recorded
   (:class:`serving.ingest.store.AcceptedEvents`) — from here on an event is
   *acknowledged*: it is never lost and never sent twice;
4. the batch is checkpointed, anchored and published (``Producer.flush``),
   and each line is answered with its event id, log index and checkpoint.

If Kafka or the chain fails at step 4, the acknowledged events stay in the
log, the lane is *down*: new batches are refused with 503 (nothing of them
is logged) and a retry loop flushes the lane every ``retry_after_s`` until it
succeeds.  A lane with ``max_queued`` batches waiting (a slow chain or broker)
refuses more with 429.  Both carry ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.canonical import canonical_bytes
from pipelines.errors import PccError, PccValueError
from pipelines.events import now_ms, parse_event, parse_time_ms
from pipelines.producer import Anchor, OutgoingEvent, Producer, Pseudonymizer, Publisher
from pipelines.settings import Settings
from serving.errors import TooManyRequestsError, UpstreamUnavailableError
from serving.ingest.config import IngestConfig
from serving.ingest.sources import RegisteredSource, SourceDirectory, check_source
from serving.ingest.store import AcceptedEvent, AcceptedEvents, AnchoredRoot

log = logging.getLogger(__name__)

_PATH = re.compile(r"^(\$[^:\s]*):\s*(.*)$", re.DOTALL)
#: the SDK would checkpoint on its own every N events or T seconds; the bridge checkpoints per batch
_NEVER = 10**12


def derived_event_id(source_id: str, raw: dict[str, Any]) -> str:
    """The event id of a line that carries none: the same line from the same source, the same id.

    A UUIDv7 whose 48-bit time is the event time's milliseconds (as the
    simulator's) and whose 74 random bits are SHA-256 of the source id and
    the line's RFC 8785 form.
    """
    try:
        ms = parse_time_ms(raw.get("event_time", ""))
    except PccValueError:
        ms = 0  # refused by validation anyway
    ms = min(max(ms, 0), 2**48 - 1)
    digest = hashlib.sha256(source_id.encode() + b"\n" + canonical_bytes(raw)).digest()
    b = bytearray(ms.to_bytes(6, "big") + digest[:10])
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(b)))


def _refusal(line: int, error: PccValueError) -> dict[str, Any]:
    problems = getattr(error, "problems", None) or [str(error)]
    first = str(problems[0])
    match = _PATH.match(first)
    path, reason = (match[1], match[2]) if match else ("$", first)
    answer: dict[str, Any] = {"line": line, "status": "refused", "path": path, "reason": reason}
    if len(problems) > 1:
        answer["problems"] = [str(p) for p in problems]
    return answer


@dataclass
class BatchAnswer:
    """What one batch comes to: its HTTP status, the body (per-line answers) and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class SharedPublisher:
    """One Kafka publisher for every lane: sends one batch at a time; lanes do not close it.

    After a batch Kafka did not fully acknowledge, the connection is closed:
    the next batch connects afresh (a new idempotent producer session), as the
    next run of ``pcc produce`` would.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        with self._lock:
            failed = self._publisher.publish(events)
            if failed:
                try:
                    self._publisher.close()
                except Exception:  # closing a connection to a broker that is gone
                    log.debug("ingest: closing the Kafka publisher after a failed batch", exc_info=True)
            return failed

    def close(self) -> None:
        return None

    def shutdown(self) -> None:
        with self._lock:
            self._publisher.close()


class _Lane:
    """One source's producer and worker thread, and whether its broker or chain is down."""

    def __init__(self, source: RegisteredSource, producer: Producer) -> None:
        self.source = source
        self.producer = producer
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pcc-ingest-{source.source_id}")
        self.queued = 0  # batches submitted and not finished (under the bridge's lock)
        self.down: str | None = None  # why the last anchor or publish failed


class IngestBridge:
    """Accepts producers' batches over HTTP and sends them through the producer SDK."""

    def __init__(
        self,
        settings: Settings,
        config: IngestConfig,
        *,
        sources: SourceDirectory,
        anchor: Anchor,
        publisher: Publisher,
        vault: Pseudonymizer,
        store: AcceptedEvents | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        # the bridge checkpoints once per batch: the SDK never does on its own inside a batch
        producer = settings.producer.model_copy(
            update={"checkpoint_every": _NEVER, "checkpoint_seconds": _NEVER}
        )
        self.settings = settings.model_copy(update={"producer": producer})
        self.config = config
        self.sources = sources
        self.store = store or AcceptedEvents(config.state_dir / "accepted.sqlite")
        self._anchor = anchor
        self._publisher = SharedPublisher(publisher)
        self._vault = vault
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retry = threading.Thread(target=self._retry_loop, name="pcc-ingest-retry", daemon=True)

    # ------------------------------------------------------------------ admission

    def source_for(self, source_id: str, account: str) -> RegisteredSource:
        """The source a request may write as: registered, active, and signed by its account."""
        return check_source(self.sources, source_id, account)

    def submit(self, source: RegisteredSource, lines: Sequence[tuple[int, bytes]]) -> Future[BatchAnswer]:
        """Queue a batch of (line number, bytes) on its source's lane; 503 or 429 before anything is logged."""
        lane = self._lane(source)
        retry = self.config.retry_after_s
        with self._lock:
            if lane.down is not None:
                raise UpstreamUnavailableError(
                    f"source {source.source_id}: {lane.down}; acknowledged events are kept and sent when it "
                    "is back - nothing of this batch was accepted",
                    retry,
                )
            if lane.queued > self.config.max_queued:
                raise TooManyRequestsError(
                    f"source {source.source_id} has {lane.queued} batches waiting for the chain and Kafka",
                    retry,
                )
            lane.queued += 1
        try:
            return lane.worker.submit(self._run, lane, lines)
        except RuntimeError:  # the bridge is closing
            with self._lock:
                lane.queued -= 1
            raise UpstreamUnavailableError("the ingest bridge is shutting down", retry) from None

    def _lane(self, source: RegisteredSource) -> _Lane:
        with self._lock:
            lane = self._lanes.get(source.source_id)
            if lane is not None:
                lane.source = source
                return lane
            try:
                producer = Producer(
                    self.settings,
                    source_id=source.source_id,
                    source_kind=source.kind,
                    anchor=self._anchor,
                    publisher=self._publisher,
                    vault=self._vault,
                    clock=self._clock or now_ms,
                )
            except PccError as exc:  # e.g. another process holds this source's log
                raise UpstreamUnavailableError(str(exc), self.config.retry_after_s) from None
            lane = _Lane(source, producer)
            self._remember_spooled(lane)
            self._lanes[source.source_id] = lane
            return lane

    def _remember_spooled(self, lane: _Lane) -> None:
        """Events logged but not yet published (a crash, a broker down at stop) are known by id;
        the lane's next batch anchors and publishes them with its own."""
        pending = list(lane.producer.log.pending_events())
        if not pending:
            return
        self.store.add(
            AcceptedEvent(str(e.envelope["event_id"]), lane.source.source_id, e.index, b"") for e in pending
        )

    # ------------------------------------------------------------------ one batch

    def _run(self, lane: _Lane, lines: Sequence[tuple[int, bytes]]) -> BatchAnswer:
        try:
            return self._accept(lane, lines)
        finally:
            with self._lock:
                lane.queued -= 1

    def _accept(self, lane: _Lane, lines: Sequence[tuple[int, bytes]]) -> BatchAnswer:
        source_id = lane.source.source_id
        producer = lane.producer
        answers: dict[int, dict[str, Any]] = {}
        parsed: list[tuple[int, dict[str, Any], str, bytes]] = []
        for number, raw_line in lines:
            try:
                raw = parse_event(raw_line, max_bytes=self.config.max_line_bytes)
                event_id = raw.get("event_id")
                if event_id is None:
                    event_id = derived_event_id(source_id, raw)
                    raw["event_id"] = event_id
                elif not isinstance(event_id, str):
                    raise PccValueError(f"$.event_id: {event_id!r} is not a string")
                digest = hashlib.sha256(canonical_bytes(raw)).digest()
            except PccValueError as exc:
                answers[number] = _refusal(number, exc)
                continue
            parsed.append((number, raw, event_id, digest))

        known = self.store.find(eid for _, _, eid, _ in parsed)
        fresh: list[tuple[int, AcceptedEvent]] = []
        for number, raw, event_id, digest in parsed:
            prior = known.get(event_id)
            if prior is not None:
                if prior.source_id != source_id or (prior.digest and prior.digest != digest):
                    answers[number] = {
                        "line": number,
                        "status": "refused",
                        "path": "$.event_id",
                        "reason": f"{event_id} was already accepted for another event",
                    }
                else:
                    answers[number] = {"line": number, "status": "duplicate", "event": prior}
                continue
            index = producer.log.size
            try:
                producer.submit(raw)
            except PccValueError as exc:
                answers[number] = _refusal(number, exc)
                continue
            event = AcceptedEvent(event_id, source_id, index, digest)
            known[event_id] = event
            fresh.append((number, event))
            answers[number] = {"line": number, "status": "accepted", "event": event}
        producer.log.sync()
        self.store.add(e for _, e in fresh)  # acknowledged from here on

        failure = self._flush(lane) if producer.log.unpublished else None
        return self._answer(lane, [answers[n] for n, _ in lines], failure)

    def _flush(self, lane: _Lane) -> str | None:
        """Anchor and publish what the lane's log holds; the reason it failed, else None."""
        try:
            lane.producer.flush()
        except PccError as exc:
            lane.down = str(exc)
        except Exception as exc:  # a broken connection surfacing as something else: same outcome
            log.exception("ingest: flushing source %s failed", lane.source.source_id)
            lane.down = f"{type(exc).__name__}: {exc}"
        else:
            lane.down = None
        last = lane.producer.log.last_anchor
        if last is not None:
            self.store.record_checkpoint(
                lane.source.source_id, AnchoredRoot(last.tree_size, last.root.hex(), last.tx_hash)
            )
        return lane.down

    def _answer(self, lane: _Lane, answers: list[dict[str, Any]], failure: str | None) -> BatchAnswer:
        published = lane.producer.log.published.size
        counts = {"accepted": 0, "duplicate": 0, "refused": 0}
        for answer in answers:
            counts[answer["status"]] += 1
            event: AcceptedEvent | None = answer.pop("event", None)
            if event is None:
                continue
            checkpoint = self.store.checkpoint_of(event.source_id, event.log_index)
            answer.update(
                event_id=event.event_id,
                log_index=event.log_index,
                checkpoint=checkpoint.as_dict() if checkpoint else None,
                published=event.log_index < published,
            )
        body: dict[str, Any] = {"source_id": lane.source.source_id, **counts, "lines": answers}
        if failure is not None:
            retry = self.config.retry_after_s
            body.update(
                error=UpstreamUnavailableError.__name__,
                message=f"{failure}; the accepted events are kept in the source's log and sent when it is "
                "back - sending the batch again is safe",
                retry_after_s=retry,
            )
            return BatchAnswer(503, body, {"Retry-After": str(retry)})
        status = 422 if answers and counts["refused"] == len(answers) else 200
        return BatchAnswer(status, body)

    # ------------------------------------------------------------------ status, retries, stop

    def status(self, source: RegisteredSource, event_id: str) -> dict[str, Any] | None:
        """One accepted event: its log index, checkpoint once anchored, whether Kafka has it."""
        event = self.store.find([event_id]).get(event_id)
        if event is None or event.source_id != source.source_id:
            return None
        lane = self._lane(source)
        checkpoint = self.store.checkpoint_of(source.source_id, event.log_index)
        return {
            "source_id": source.source_id,
            "event_id": event_id,
            "log_index": event.log_index,
            "checkpoint": checkpoint.as_dict() if checkpoint else None,
            "published": event.log_index < lane.producer.log.published.size,
        }

    def lanes_down(self) -> dict[str, str]:
        with self._lock:
            return {sid: lane.down for sid, lane in self._lanes.items() if lane.down is not None}

    def start(self) -> None:
        """Start the loop that retries lanes whose broker or chain was down."""
        self._retry.start()

    def retry_now(self) -> None:
        """Try once to send what every down lane holds (the retry loop calls this)."""
        with self._lock:
            waiting = [lane for lane in self._lanes.values() if lane.down is not None and lane.queued == 0]
        for lane in waiting:
            with self._lock:
                lane.queued += 1
            future = lane.worker.submit(self._retry_lane, lane)
            future.result()

    def _retry_lane(self, lane: _Lane) -> None:
        try:
            if lane.producer.log.unpublished:
                self._flush(lane)
            else:
                lane.down = None
        finally:
            with self._lock:
                lane.queued -= 1

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.config.retry_after_s):
            try:
                self.retry_now()
            except Exception:  # never let the loop die; the next round tries again
                log.exception("ingest: retrying down sources failed")

    def close(self) -> None:
        """Stop taking batches, send what can be sent, release every log."""
        self._stop.set()
        if self._retry.is_alive():
            self._retry.join(timeout=10)
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.worker.shutdown(wait=True)
            try:  # one try: a chain down at shutdown is not waited for (the bridge retries lanes itself)
                lane.producer.close(anchor_wait_s=0)
            except PccError as exc:  # kept in the log: sent by the next start
                log.warning("ingest: source %s: %s", lane.source.source_id, exc)
        self._publisher.shutdown()
        self.store.close()


def split_lines(body: bytes) -> list[tuple[int, bytes]]:
    """The non-blank lines of a JSON Lines body with their line numbers (1-based)."""
    out: list[tuple[int, bytes]] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        line = line.removesuffix(b"\r")
        if line.strip():
            out.append((number, line))
    return out


def as_lines(items: Iterable[dict[str, Any]]) -> bytes:
    """JSON Lines of producer input records (for clients and tests)."""
    return b"".join(orjson.dumps(item) + b"\n" for item in items)
