"""The batch layer's verdicts as alerts: a flag a published version finds on a vehicle, and the version
alerted before did not, is sent once to the alerts topic (the sender faked at the broker boundary; the
views are real Parquet files in the batch layout)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.alerts import alert_new_verdicts
from batch.config import BatchConfig
from batch.publish import manifest, read_current
from batch.views.bucket_views import SCORES_SCHEMA
from pipelines.alerts import alert_id, alerts_of

CLOCKED, ROLLED, CLEAN = ("v-" + c * 32 for c in "abc")


def _event(n: int) -> str:
    return f"019ca877-0000-7000-8000-{n:012d}"


def _version(config: BatchConfig, version: str, flags: dict[str, dict[str, list[int]]]) -> None:
    """Write a version's fraud_scores and vehicle_history (events 1..9 per vehicle) and publish it."""
    out = config.version_dir(version)
    vehicles = [CLOCKED, ROLLED, CLEAN]
    scores = [
        {
            "vehicle": v,
            "score": 0.9 if flags.get(v) else 0.0,
            "label": "fraudulent" if flags.get(v) else "clean",
            "reasons": [
                {"flag": f, "evidence": [_event(i * 10 + e) for e in ev]}
                for f, ev in flags.get(v, {}).items()
            ],
            "flags": sorted(flags.get(v, {})),
            "explanation": [],
            "events": 9,
            "last_event_time": datetime(2026, 12, 1, tzinfo=UTC),
            "duplicates": 0,
        }
        for i, v in enumerate(vehicles)
    ]
    (out / "fraud_scores").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(scores, schema=SCORES_SCHEMA), out / "fraud_scores" / "part-0.parquet"
    )
    history = [
        {
            "vehicle": v,
            "event_id": _event(i * 10 + e),
            "event_type": "odometer_reading",
            "source_id": "cc-aurora",
            "event_time": datetime(2026, 11, e, tzinfo=UTC),
        }
        for i, v in enumerate(vehicles)
        for e in range(1, 10)
    ]
    (out / "vehicle_history").mkdir()
    pq.write_table(pa.Table.from_pylist(history), out / "vehicle_history" / "part-0.parquet")
    manifest(version, {"processed_time": None}).write(config.current_file)


class FakeTopic:
    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.alerts: list[dict[str, Any]] = []

    def send(self, alerts: list[dict[str, Any]]) -> None:
        if self.down:
            raise OSError("broker down")
        self.alerts += alerts


def test_only_verdicts_new_in_the_published_version_are_alerted_once(tmp_path: Path) -> None:
    config = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    topic = FakeTopic()
    _version(config, "v1", {ROLLED: {"odometer_rollback": [4]}})
    first = alert_new_verdicts(config, None, topic.send)  # nothing published before: every verdict is new
    assert first is not None and (first.baseline, first.sent) == (None, 1)

    previous = read_current(config)
    _version(config, "v2", {ROLLED: {"odometer_rollback": [4, 6]}, CLOCKED: {"gradual_clocking": [3, 5, 7]}})
    second = alert_new_verdicts(config, previous, topic.send)
    assert second is not None and (second.baseline, second.sent) == ("v1", 1)
    clocking = topic.alerts[-1]
    assert (clocking["type"], clocking["subject"], clocking["source"]) == (
        "pcc.fraud.clocking",
        CLOCKED,
        "/pcc/batch",
    )
    data = clocking["data"]
    assert (data["event_id"], data["event_time"]) == (
        _event(3),
        int(datetime(2026, 11, 3, tzinfo=UTC).timestamp() * 1000),
    )
    assert (data["batch_version"], data["label"], data["source_id"]) == ("v2", "fraudulent", "cc-aurora")
    assert clocking["id"] == alert_id(_event(3), "fraud.clocking")

    # a re-run of the same version sends nothing; a new version with the same verdicts sends nothing
    assert alert_new_verdicts(config, previous, topic.send).sent == 0  # type: ignore[union-attr]
    _version(config, "v3", {ROLLED: {"odometer_rollback": [4, 6]}, CLOCKED: {"gradual_clocking": [3, 5, 7]}})
    assert alert_new_verdicts(config, manifest("v2", {}), topic.send).sent == 0  # type: ignore[union-attr]
    assert len(topic.alerts) == 2
    assert "vin" not in json.dumps(topic.alerts).lower()


def test_the_same_flag_on_the_same_event_has_the_speed_layers_alert_id(tmp_path: Path) -> None:
    config = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    topic = FakeTopic()
    _version(config, "v1", {ROLLED: {"odometer_rollback": [4]}})
    alert_new_verdicts(config, None, topic.send)
    row = {"vehicle": ROLLED, "event_id": _event(14), "event_type": "odometer_reading", "source_id": "cc-aurora",
           "event_time": 0, "processed_time": 0, "flags": ["odometer_rollback"]}  # fmt: skip
    assert topic.alerts[0]["id"] == next(alerts_of([row]))["id"]  # the alert service delivers it once


def test_alerts_a_broker_refused_are_sent_by_the_next_run_even_when_nothing_changed(tmp_path: Path) -> None:
    config = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    topic = FakeTopic()
    _version(config, "v1", {})
    alert_new_verdicts(config, None, topic.send)
    previous = read_current(config)
    _version(config, "v2", {CLOCKED: {"gradual_clocking": [3]}})
    topic.down = True
    with pytest.raises(OSError):
        alert_new_verdicts(config, previous, topic.send)
    topic.down = False
    # the next run finds the master unchanged: v2 stays published, compared with v1 still
    later = alert_new_verdicts(config, read_current(config), topic.send)
    assert later is not None and (later.baseline, later.sent) == ("v1", 1)
