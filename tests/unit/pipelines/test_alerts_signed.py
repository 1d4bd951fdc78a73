"""Alerts are signed by the layer that raised them; the alert service trusts nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.alerts import (
    RAISER,
    SIGNATURE,
    AlertSigner,
    alert_refusal,
    alerts_of,
    raiser_key_path,
    trusted_raisers,
)
from pipelines.settings import AlertsSettings, Settings

SPEED = AlertSigner("5e" * 32)


def _alert(n: int = 1, flags: tuple[str, ...] = ("odometer_rollback",)) -> dict[str, Any]:
    row = {"vehicle": "v-" + "ab" * 16, "event_id": f"019ca877-0000-7000-8000-{n:012d}",
           "event_type": "odometer_reading", "source_id": "cc-aurora", "event_time": 1_767_000_000_000,
           "processed_time": 1_767_000_001_000, "flags": list(flags)}  # fmt: skip
    return next(alerts_of([row]))


def test_a_signed_alert_read_back_from_the_topic_is_trusted() -> None:
    doc = SPEED.sign(_alert())
    wire = orjson.loads(orjson.dumps(doc))  # what the alert service reads from Kafka
    assert alert_refusal(wire, (SPEED.public_hex,)) is None
    assert wire[RAISER] == SPEED.public_hex and len(wire[SIGNATURE]) == 128


_FIELDS = ("id", "source", "type", "subject", "time")
_DATA = ("kind", "vehicle", "event_id", "event_type", "source_id", "event_time", "raised_ms")


@given(
    where=st.sampled_from([*[("top", f) for f in _FIELDS], *[("data", f) for f in _DATA]]),
    value=st.one_of(st.text(max_size=40), st.integers(), st.none()),
)
def test_any_change_after_signing_is_refused(where: tuple[str, str], value: object) -> None:
    """A producer rewrites one field of a genuine alert (its own source id, another car, a later time...)."""
    doc = SPEED.sign(_alert())
    part, name = where
    target = doc if part == "top" else doc["data"]
    if target[name] == value:
        return  # not a change
    target[name] = value
    assert alert_refusal(doc, (SPEED.public_hex,)) == "alert signature does not match its content"


@given(key=st.binary(min_size=32, max_size=32))
def test_an_alert_signed_by_any_other_key_is_refused(key: bytes) -> None:
    other = AlertSigner(key.hex())
    if other.public_hex == SPEED.public_hex:
        return
    refusal = alert_refusal(other.sign(_alert()), (SPEED.public_hex,))
    assert refusal is not None and "not a trusted raiser" in refusal
    # naming the trusted raiser while signing with its own key does not help either
    doc = other.sign(_alert())
    doc[RAISER] = SPEED.public_hex
    assert alert_refusal(doc, (SPEED.public_hex,)) == "alert signature does not match its content"


def test_an_unsigned_alert_is_refused() -> None:
    assert alert_refusal(_alert(), (SPEED.public_hex,)) == "unsigned alert"
    assert alert_refusal(SPEED.sign(_alert()), ()) is not None  # nobody trusted: nothing delivered


def test_the_deployments_raiser_key_is_made_once_private_and_trusted_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = AlertSigner.for_settings(settings)
    assert AlertSigner.for_settings(settings).public_hex == first.public_hex  # the same key on every start
    path = raiser_key_path(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert trusted_raisers(settings) == (first.public_hex,)
    listed = Settings(data_dir=tmp_path, alerts=AlertsSettings(trusted_raisers=("0x" + "AB" * 32,)))
    assert trusted_raisers(listed) == ("ab" * 32,)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match=r"alert raiser key file .* is readable by others"):
        AlertSigner.for_settings(settings)


def test_a_raiser_key_that_is_not_32_bytes_of_hex_is_refused() -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        AlertSigner("not a key")


def test_the_unbilled_alert_service_does_not_start_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attacker: a subscriber pointed at a standalone ``pcc alerts serve`` would get every alert free."""
    from pipelines.cli.main import main

    monkeypatch.setenv("PCC__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PCC__ALERTS__MODE", "production")
    assert main(["alerts", "serve", "--port", "1"]) != 0
    err = capsys.readouterr().err
    assert "without billing" in err and "pcc serve --alerts" in err
