"""The batch layer's verdicts as alerts: what a published version finds that was not found before.

The speed layer raises an alert per flagged event as it streams; some frauds
only show over a whole history (gradual clocking, ``fraud.clocking``; a
rollback whose reference arrived late).  After a batch version is published,
:func:`alert_new_verdicts` compares its ``fraud_scores`` with the version
whose alerts were last sent (``<batch_dir>/alerts.json``; without it, the
version published before the run) and sends one alert per flag a vehicle has
now and did not have then, to the same ``alerts`` topic as the speed layer.

Each alert names the flag's first evidence event and has the id the speed
layer would give that event and kind (:func:`pipelines.alerts.alert_id`): a
flag the speed layer already pushed for that event is not pushed twice, and a
re-run that finds the same verdicts sends nothing (and, sent again, the alert
service delivers an id once per subscription).  The marker moves only after
the broker holds the alerts: a run whose alerts could not be sent has them
sent by the next run, even one that finds the master dataset unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.config import BatchConfig
from batch.publish import read_current
from pipelines.alerts import KIND_OF_FLAG, AlertData, AlertSigner, alerts_topic, cloud_event
from pipelines.files import atomic_write
from pipelines.layout import BatchManifest
from pipelines.settings import Settings

#: ``send(alerts)``: publish the alerts and return once the broker holds them (raises otherwise).
SendAlerts = Callable[[list[dict[str, Any]]], None]

MARKER = "alerts.json"


@dataclass(frozen=True)
class VerdictAlerts:
    version: str  # the published version the alerts are for
    baseline: str | None  # the version compared with (None: every verdict is new)
    sent: int


def verdict_flags(scores: Path) -> dict[str, tuple[float, str, dict[str, list[str]]]]:
    """``vehicle -> (score, label, {flag: evidence event ids})`` from a ``fraud_scores`` view directory."""
    import pyarrow.parquet as pq

    found: dict[str, tuple[float, str, dict[str, list[str]]]] = {}
    for file in sorted(scores.glob("*.parquet")):
        table = pq.read_table(file, columns=["vehicle", "score", "label", "reasons"], partitioning=None)
        for row in table.to_pylist():
            reasons = {r["flag"]: list(r["evidence"] or ()) for r in row["reasons"] or ()}
            if any(f in KIND_OF_FLAG for f in reasons):
                found[row["vehicle"]] = (float(row["score"]), str(row["label"]), reasons)
    return found


def _events(history: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The evidence events' type, source and time, from the version's ``vehicle_history``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not ids:
        return {}
    wanted = pa.array(sorted(ids), pa.string())
    found: dict[str, dict[str, Any]] = {}
    for file in sorted(history.glob("*.parquet")):
        table = pq.read_table(
            file, columns=["event_id", "event_type", "source_id", "event_time"], partitioning=None
        )
        for row in table.filter(pc.is_in(table["event_id"], value_set=wanted)).to_pylist():
            found[row["event_id"]] = row
    return found


def new_verdict_alerts(
    config: BatchConfig, version: str, baseline: str | None, raised_ms: int
) -> list[dict[str, Any]]:
    """The alerts of the flags ``version`` finds on a vehicle that ``baseline`` did not."""
    now = verdict_flags(config.version_dir(version) / "fraud_scores")
    before = verdict_flags(config.version_dir(baseline) / "fraud_scores") if baseline else {}
    new: list[tuple[str, str, str, float, str]] = []  # vehicle, flag, evidence event, score, label
    for vehicle, (score, label, flags) in sorted(now.items()):
        old = before.get(vehicle, (0.0, "", {}))[2]
        old_kinds = {KIND_OF_FLAG[f] for f in old if f in KIND_OF_FLAG}
        for flag, evidence in sorted(flags.items()):
            kind = KIND_OF_FLAG.get(flag)
            if kind is None or kind in old_kinds or not evidence:
                continue
            old_kinds.add(kind)  # two flags of one kind (a rollback, one before a sale): one alert
            new.append((vehicle, kind, evidence[0], score, label))
    events = _events(config.version_dir(version) / "vehicle_history", {e for _, _, e, _, _ in new})
    alerts = []
    for vehicle, kind, event_id, score, label in new:
        event = events.get(event_id)
        if event is None:  # evidence outside the history: the view is inconsistent, say nothing wrong
            continue
        data = AlertData(
            kind=kind,
            vehicle=vehicle,
            event_id=event_id,
            event_type=event["event_type"],
            source_id=event["source_id"],
            event_time=_ms(event["event_time"]),
            raised_ms=raised_ms,
            batch_version=version,
            score=score,
            label=label,
        )
        alerts.append(cloud_event(data, origin="batch"))
    return alerts


def _ms(ts: datetime) -> int:
    return int((ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp() * 1000)


def _marker(config: BatchConfig) -> str | None:
    try:
        return str(json.loads((config.batch_dir / MARKER).read_text(encoding="utf-8"))["version"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _set_marker(config: BatchConfig, version: str, sent: int) -> None:
    atomic_write(config.batch_dir / MARKER, json.dumps({"version": version, "sent": sent}) + "\n")


def alert_new_verdicts(
    config: BatchConfig, previous: BatchManifest | None, send: SendAlerts
) -> VerdictAlerts | None:
    """Send the alerts of the published version's new verdicts, once; ``None`` if nothing is published.

    ``previous`` is the manifest published before the run (read before it).
    """
    current = read_current(config)
    if current is None:
        return None
    version = current.version
    candidates: Iterable[str | None] = (_marker(config), previous.version if previous is not None else None)
    baseline = next((v for v in candidates if v and (config.version_dir(v) / "fraud_scores").is_dir()), None)
    if baseline == version:
        return VerdictAlerts(version, baseline, 0)
    alerts = new_verdict_alerts(config, version, baseline, int(time.time() * 1000))
    if alerts:
        send(alerts)
    _set_marker(config, version, len(alerts))
    return VerdictAlerts(version, baseline, len(alerts))


def kafka_sender(bootstrap: str, topic: str, signer: AlertSigner, timeout_s: float = 10.0) -> SendAlerts:
    """Send to the alerts topic on the broker (the production ``send``); a broker that does not
    answer within ``timeout_s`` fails the send (the batch run has already published)."""
    from pipelines.alerts import send_alerts

    def send(alerts: list[dict[str, Any]]) -> None:
        send_alerts(bootstrap, topic, alerts, signer, timeout_s)

    return send


def after_run(
    settings: Settings, config: BatchConfig, previous: BatchManifest | None, warn: Callable[[str], None]
) -> VerdictAlerts | None:
    """What ``pcc batch run`` does once a run is over: alert the new verdicts; a broker down only warns
    (the version stays published, the next run sends what is owed)."""
    try:
        from kafka.errors import KafkaError
    except ImportError:
        warn("batch verdicts not alerted: kafka-python is missing (pip install 'pcc[kafka]')")
        return None
    send = kafka_sender(
        settings.kafka.bootstrap,
        alerts_topic(settings.kafka.topic_prefix),
        AlertSigner.for_settings(settings),
    )
    try:
        return alert_new_verdicts(config, previous, send)
    except (KafkaError, OSError) as exc:
        warn(
            f"batch verdicts not alerted yet ({type(exc).__name__} on {settings.kafka.bootstrap}): "
            "the next run sends them"
        )
        return None
