"""The producer SDK: from a producer's own record to a proven event on Kafka.

For each event: validate the producer input against its schema, turn the VIN
(and any owner identity) into pseudonyms through the identity vault, build the
envelope, seal it (contract version 2, ``producer.contract_version``: every
protected field becomes its commitment, its value and salt are sealed under the
vehicle's current data key of its category - nothing protected leaves this
process in clear, not the spool, not Kafka), hash it (RFC 8785 + SHA-256,
RFC 6962 leaf, over the public fields and commitments) and append it to the
source's durable transparency log.  Every ``checkpoint_every`` events or
``checkpoint_seconds`` seconds the log is checkpointed: the checkpoint
``(tree size, root)`` is anchored on the ledger first, then every event of the
batch is published with its inclusion proof against that checkpoint, keyed by
vehicle pseudonym so a car's events stay in order within a partition.

No event is published without a checkpoint it can be proven against; an
event the broker did not acknowledge stays in the log's spool and is sent
again by the next :meth:`Producer.flush` (or the next run for this source).

An unreachable ledger stops nothing upstream: :meth:`Producer.submit` keeps
accepting events into the durable log, where they wait for their anchor; the
checkpoint is tried again with backoff (0.5 s doubling to 5 s, one warning
when the outage starts, one line when it ends) and, once the ledger answers,
one checkpoint covers everything that waited.  An anchor attempt cut off by
the outage may have been mined: the ledger's latest checkpoint is read before
it is sent again, so nothing is anchored twice.  :meth:`Producer.close` waits
up to ``producer.anchor_wait_s`` for the ledger, then raises
:class:`AnchorUnavailable` with the events still in the log, for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from pipelines.access.fields import KeyFor
from pipelines.access.sealing import seal_event
from pipelines.canonical import leaf_hash
from pipelines.errors import PccTransientError, PccValidationError, PccValueError
from pipelines.events import format_time, new_event_id, now_ms, validate_envelope, validate_input
from pipelines.events.commitments import COMMITTED_VERSION
from pipelines.events.envelope import Envelope, ProducerInput
from pipelines.events.validation import clear_version
from pipelines.merkle import Checkpoint
from pipelines.producer.log import ProducerLog
from pipelines.producer.protocols import Anchor, OutgoingEvent, Publisher
from pipelines.settings import Settings
from pipelines.topics import topic_for_kind

if TYPE_CHECKING:
    from pipelines.access import AccessService


class Pseudonymizer(Protocol):
    """What the producer needs of the identity vault."""

    def pseudonymize_vehicle(self, vin: str) -> str: ...

    def pseudonymize_owner(self, identity: Mapping[str, Any]) -> str: ...

    def record_ownership(self, vehicle: str, owner: str) -> None: ...


#: Called with the vehicle pseudonym after an ``ownership_change`` is recorded in the vault:
#: revoke the previous owner's grants and rotate the data keys (``AccessService.ownership_changed``).
OwnershipHook = Callable[[str], object]

#: ``keys(vehicle) -> key_for``: the current data keys protected fields of a vehicle are sealed with
#: (``KeyRing.key_for``; from the platform's vault, or the key service for another organisation).
SealingKeys = Callable[[str], KeyFor]

#: Called after each published checkpoint: (events published so far, checkpoints anchored).
ProgressCallback = Callable[[int, int], None]

_OWNER_FIELDS = ("new_owner", "previous_owner")

log = logging.getLogger(__name__)

#: pauses between anchor attempts while the ledger is unreachable: the first, doubling up to the last
ANCHOR_RETRY_FIRST_S = 0.5
ANCHOR_RETRY_MAX_S = 5.0


class AnchorUnavailable(PccTransientError):
    """The ledger did not take a checkpoint now; its events wait in the log, nothing is lost."""


@dataclass
class ProducerReport:
    """What a producer run did, for the summary a user reads at the end."""

    accepted: int = 0
    published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejections: list[tuple[int, str]] = field(default_factory=list)  # (line or position, message)
    checkpoints: int = 0
    gas_used: int = 0
    unsent: int = 0
    elapsed_s: float = 0.0

    def reject(self, where: int, error: PccValueError) -> None:
        problems = getattr(error, "problems", None) or [str(error)]
        self.rejected[_reason(problems[0])] += 1
        if len(self.rejections) < 1000:
            self.rejections.append((where, str(error)))


def _reason(problem: str) -> str:
    """A short key for grouping rejections: the JSON path of the first problem."""
    head = problem.split(":", 1)[0].strip()
    return head if head.startswith("$") or head in {"vin", "event_time", "source_id"} else "invalid"


class _PlatformAccess:
    """With the platform's identity vault: the access service over the grant store beside it.

    Opened on first use (the grant store may be the ledger's).  Its key ring
    seals (current keys cached 1 s, dropped at once by its own rotations on a
    sale) and rotates the keys on an ownership change.
    """

    def __init__(self, settings: Settings, vault: Any) -> None:
        self._settings = settings
        self._vault = vault
        self._service: AccessService | None = None

    @property
    def service(self) -> AccessService:
        if self._service is None:
            from pipelines.access import AccessService, open_grant_store

            self._service = AccessService(self._vault, open_grant_store(self._settings), key_cache_s=1.0)
        return self._service

    def ownership_changed(self, vehicle: str) -> object:
        return self.service.ownership_changed(vehicle)

    def key_for(self, vehicle: str) -> KeyFor:
        # KeyRing.current bound to the vehicle (a partial): no Python frame of ours per category
        return self.service.keys.key_for(vehicle)


def _platform_access(settings: Settings, vault: Pseudonymizer) -> _PlatformAccess | None:
    from pipelines.vault import IdentityVault

    return _PlatformAccess(settings, vault) if isinstance(vault, IdentityVault) else None


class Producer:
    """Streams one source's events to Kafka with proofs anchored on the ledger."""

    def __init__(
        self,
        settings: Settings,
        *,
        source_id: str,
        source_kind: str,
        anchor: Anchor,
        publisher: Publisher,
        vault: Pseudonymizer,
        on_progress: ProgressCallback | None = None,
        clock: Callable[[], int] = now_ms,
        on_ownership_change: OwnershipHook | None = None,
        keys: SealingKeys | None = None,
    ) -> None:
        self.settings = settings
        self.source_id = source_id
        self.topic = topic_for_kind(source_kind, settings.kafka.topic_prefix)
        self._anchor = anchor
        self._publisher = publisher
        self._vault = vault
        platform = _platform_access(settings, vault)
        if on_ownership_change is None and platform is not None:
            on_ownership_change = platform.ownership_changed
        if keys is None and platform is not None:
            keys = platform.key_for
        self._on_ownership_change = on_ownership_change
        self._keys = keys
        self._contract = settings.producer.contract_version
        self._on_progress = on_progress
        self._clock = clock
        self._every = settings.producer.checkpoint_every
        self._every_ms = int(settings.producer.checkpoint_seconds * 1000)
        self.log = ProducerLog(settings.path("producers", source_id), source_id)
        self.report = ProducerReport(checkpoints=0)
        self._last_checkpoint_ms = clock()
        self._started = time.perf_counter()
        self._anchor_wait_s = settings.producer.anchor_wait_s
        self._down_since: float | None = None  # monotonic time of the first failed anchor of an outage
        self._backoff_s = 0.0
        self._retry_at = 0.0  # no anchor attempt from submit() before this monotonic time
        self._uncertain = False  # an anchor attempt failed midway: it may have been mined

    # ------------------------------------------------------------------ events

    def prepare(self, raw: Mapping[str, Any]) -> Envelope:
        """Validate a producer input record and build its envelope (no side effect on the log).

        Raises :class:`PccValidationError` listing every problem with its JSON path.
        """
        problems = validate_input(
            raw, now_ms=self._clock(), future_tolerance_s=self.settings.producer.future_tolerance_s
        )
        if problems:
            raise PccValidationError("event rejected", [str(p) for p in problems])
        if raw.get("source_id", self.source_id) != self.source_id:
            raise PccValidationError(
                "event rejected",
                [f"$.source_id: {raw['source_id']!r} is not this producer ({self.source_id})"],
            )
        record = cast(ProducerInput, raw)  # the shape validate_input checked
        vehicle = self._vault.pseudonymize_vehicle(record["vin"])
        payload = dict(record["payload"])
        for name in _OWNER_FIELDS:
            identity = payload.get(name)
            if isinstance(identity, Mapping):
                payload[name] = self._vault.pseudonymize_owner(identity)
        if record["event_type"] == "ownership_change":
            self._vault.record_ownership(vehicle, payload["new_owner"])
            if self._on_ownership_change is not None:
                self._on_ownership_change(vehicle)
        version = max(self._contract, record.get("schema_version", 1))
        envelope: Envelope = {
            "event_id": record.get("event_id") or new_event_id(),
            "event_type": record["event_type"],
            "schema_version": clear_version(version),
            "source_id": self.source_id,
            "vehicle": vehicle,
            "event_time": record["event_time"],
            "ingestion_time": format_time(self._clock()),
            "payload": payload,
        }
        problems = validate_envelope(
            envelope, now_ms=self._clock(), future_tolerance_s=self.settings.producer.future_tolerance_s
        )
        if problems:
            raise PccValidationError("event rejected", [str(p) for p in problems])
        if version == COMMITTED_VERSION:
            if self._keys is None:
                raise PccValueError(
                    "contract version 2 seals protected fields: give the producer its data keys "
                    "(keys=KeyRing.key_for, or the key service's) or use the platform's IdentityVault"
                )
            envelope = seal_event(envelope, self._keys(vehicle))
        return envelope

    def submit(self, raw: Mapping[str, Any]) -> str:
        """Accept one event into the log; publishes when a checkpoint is due.  Returns its event id."""
        envelope = self.prepare(raw)
        self.log.append(envelope, leaf_hash(envelope))
        self.report.accepted += 1
        due = (
            self.log.unpublished >= self._every or self._clock() - self._last_checkpoint_ms >= self._every_ms
        )
        if due and time.monotonic() >= self._retry_at:
            # an unreachable ledger: accepted all the same, the event waits in the log for its anchor
            with contextlib.suppress(AnchorUnavailable):
                self.flush()
        return str(envelope["event_id"])

    def check(self, raw: Mapping[str, Any]) -> None:
        """Validate a producer input record without touching the vault or the log."""
        problems = validate_input(
            raw, now_ms=self._clock(), future_tolerance_s=self.settings.producer.future_tolerance_s
        )
        if problems:
            raise PccValidationError("event rejected", [str(p) for p in problems])

    def submit_many(
        self, records: Iterable[tuple[int, Mapping[str, Any] | Exception]], *, strict: bool = False
    ) -> None:
        """Submit numbered records (line number, record or the parse error of that line).

        Invalid records are counted in the report with their line number and the
        valid ones around them are still sent.  With ``strict``, every record is
        checked first and one invalid record means nothing is sent.
        """
        if strict:
            records = list(records)
            bad: list[str] = []
            for where, record in records:
                try:
                    if isinstance(record, Exception):
                        raise record
                    self.check(record)
                except PccValueError as exc:
                    self.report.reject(where, exc)
                    bad.append(f"line {where}: {exc}")
            if bad:
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise PccValidationError(
                    f"--strict: {len(bad)} invalid line(s), nothing was sent",
                    bad[:5] + ([more] if more else []),
                )
        for where, record in records:
            try:
                if isinstance(record, Exception):
                    raise record
                self.submit(record)
            except PccValueError as exc:
                self.report.reject(where, exc)

    # ------------------------------------------------------------------ checkpoints

    def flush(self) -> None:
        """Checkpoint, anchor and publish everything appended so far."""
        while True:
            step = self.log.next_checkpoint()
            if step is None:
                break
            checkpoint, events, leaves = step
            if not self.log.anchored:
                self._anchor_checkpoint(checkpoint)
            root_hex = checkpoint.root.hex()
            outgoing = []
            for spooled, (index, path) in zip(events, checkpoint.proofs(), strict=True):
                env = spooled.envelope
                wire = dict(env)
                wire["proof"] = {
                    "log_index": index,
                    "tree_size": checkpoint.tree_size,
                    "root": root_hex,
                    "path": [h.hex() for h in path],
                    "leaf": leaves[index - checkpoint.previous_size].hex(),
                }
                outgoing.append(
                    OutgoingEvent(
                        self.topic, env["vehicle"].encode(), orjson.dumps(wire), env["event_id"], index
                    )
                )
            failed = self._publisher.publish(outgoing)
            if failed:
                self.report.unsent = self.log.unpublished
                first = failed[0][1]
                raise PccTransientError(
                    f"Kafka did not acknowledge {len(failed)} of {len(outgoing)} events of source "
                    f"{self.source_id} (log indexes {failed[0][0].log_index}..): {first}; "
                    f"{self.log.unpublished} events are kept in the log and are sent by the next run"
                )
            self.log.record_published(checkpoint)
            self.report.published += len(outgoing)
            if self._on_progress:
                self._on_progress(self.report.published, self.report.checkpoints)
        self._last_checkpoint_ms = self._clock()
        self.report.unsent = 0

    def _anchor_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Anchor the log's next checkpoint; raises :class:`AnchorUnavailable` when the ledger is unreachable."""
        size, root = checkpoint.tree_size, checkpoint.root
        try:
            if self._uncertain and self._anchor.latest_checkpoint(self.source_id) == (size, root):
                # the attempt the outage cut off was mined after all: record it, do not send it again
                self.log.record_anchor(checkpoint, "", 0)
                self.report.checkpoints += 1
                self._ledger_back(size)
                return
            receipt = self._anchor.anchor(self.source_id, size, root)
        except (ConnectionError, TimeoutError) as exc:  # PccTransientError is a ConnectionError
            self._uncertain = True
            self._ledger_down(size, exc)
            raise AnchorUnavailable(
                f"the ledger did not anchor checkpoint {size} of source {self.source_id} ({exc}); "
                f"{self.log.unpublished} events wait in the log for their anchor and are sent once it "
                "answers (by this producer, or the next run for this source)"
            ) from exc
        self.log.record_anchor(checkpoint, receipt.tx_hash, receipt.gas_used)
        self.report.checkpoints += 1
        self.report.gas_used += receipt.gas_used
        self._ledger_back(size)

    def _ledger_down(self, tree_size: int, exc: BaseException) -> None:
        now = time.monotonic()
        self._backoff_s = min(max(2 * self._backoff_s, ANCHOR_RETRY_FIRST_S), ANCHOR_RETRY_MAX_S)
        self._retry_at = now + self._backoff_s
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "source %s: the ledger is unreachable, checkpoint %d is not anchored (%s); events are "
                "accepted into the log and wait for their anchor, retrying every %.1f-%.0f s",
                self.source_id, tree_size, exc, ANCHOR_RETRY_FIRST_S, ANCHOR_RETRY_MAX_S,
            )  # fmt: skip
        else:
            log.info(
                "source %s: the ledger is still unreachable after %.0f s (%d events wait); next try in %.1f s",
                self.source_id, now - self._down_since, self.log.unpublished, self._backoff_s,
            )  # fmt: skip

    def _ledger_back(self, tree_size: int) -> None:
        self._uncertain = False
        self._backoff_s = 0.0
        self._retry_at = 0.0
        if self._down_since is not None:
            log.warning(
                "source %s: the ledger answers again after %.1f s; checkpoint %d anchored, %d events to publish",
                self.source_id, time.monotonic() - self._down_since, tree_size, self.log.unpublished,
            )  # fmt: skip
            self._down_since = None

    def _flush_waiting(self, wait_s: float) -> None:
        """:meth:`flush`, waiting up to ``wait_s`` for an unreachable ledger."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.flush()
                return
            except AnchorUnavailable:
                if self._retry_at > deadline:
                    raise
                time.sleep(max(0.0, self._retry_at - time.monotonic()))

    def close(self, *, anchor_wait_s: float | None = None) -> ProducerReport:
        """Publish what is pending, release the log and return the report.

        An unreachable ledger is waited for up to ``anchor_wait_s`` (default
        ``producer.anchor_wait_s``; 0: one try), then :class:`AnchorUnavailable`
        is raised and the events stay in the log for the next run.
        """
        try:
            self._flush_waiting(self._anchor_wait_s if anchor_wait_s is None else anchor_wait_s)
        finally:
            self.report.unsent = self.log.unpublished
            self.report.elapsed_s = time.perf_counter() - self._started
            self.log.close()
            self._publisher.close()
        return self.report

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.report.unsent = self.log.unpublished
            self.log.close()
            self._publisher.close()
