"""The HTTP ingest bridge in process (Starlette's test client, in-memory anchor and publisher):
what a garage's IT team sees when it POSTs JSON Lines — per-line answers, retries that are safe,
refusals before anything is parsed or logged, 503 and 429 with Retry-After."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("eth_account")

from pipelines.producer import MemoryAnchor, MemoryPublisher, OutgoingEvent
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from serving.auth import RequestDomain, sign_request
from serving.eip191 import Signer
from serving.errors import TooManyRequestsError
from serving.ingest import (
    IngestBridge,
    IngestConfig,
    MemorySources,
    RegisteredSource,
    as_lines,
    create_ingest_app,
    request_authenticator,
)
from serving.ingest.bridge import split_lines

with warnings.catch_warnings():  # Starlette asks for its httpx fork; the pinned httpx works as is
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

SOURCE = "garage-net-03"
SOURCE_KEY = "0x" + "a1" * 32
OTHER_KEY = "0x" + "b2" * 32
PATH = f"/v1/events/{SOURCE}"
DOMAIN = RequestDomain.local(host="testserver")


def reading(i: int, *, with_id: bool = True, km: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_type": "odometer_reading",
        "schema_version": 1,
        "source_id": SOURCE,
        "vin": with_check_digit(f"WVWZZZ1KZ{i % 7:08d}"),
        "event_time": f"2026-02-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "payload": {"odometer_km": 10_000 + i if km is None else km},
    }
    if with_id:
        record["event_id"] = f"01936f0e-8a4b-7c3d-9e2f-{i:012x}"
    return record


class Parts:
    def __init__(self, tmp_path: Path, publisher: MemoryPublisher | None = None) -> None:
        self.settings = Settings(data_dir=tmp_path)
        self.config = IngestConfig(data_dir=tmp_path, max_queued=1, retry_after_s=7)
        self.anchor = MemoryAnchor()
        self.publisher = publisher or MemoryPublisher()
        self.vault = IdentityVault(self.settings)
        sources = MemorySources({SOURCE: RegisteredSource(SOURCE, "garage", Signer(SOURCE_KEY).address)})
        self.bridge = IngestBridge(
            self.settings, self.config, sources=sources, anchor=self.anchor, publisher=self.publisher,
            vault=self.vault,
        )  # fmt: skip
        self.auth = request_authenticator(self.config, DOMAIN)
        self.http = TestClient(create_ingest_app(self.config, self.bridge, self.auth, background=False))

    def post(self, body: bytes, key: str = SOURCE_KEY, path: str = PATH) -> Any:
        headers = sign_request(key, "POST", path, body, domain=DOMAIN)
        return self.http.post(path, content=body, headers={**headers, "Content-Type": "application/x-ndjson"})

    def sent_ids(self) -> list[str]:
        return [e.event_id for e in self.publisher.sent]

    def close(self) -> None:
        self.bridge.close()
        self.auth.store.close()
        self.vault.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    yield p
    p.close()


def test_each_line_is_answered_accepted_with_its_checkpoint_or_refused_with_its_path(parts: Parts) -> None:
    bad = reading(3)
    bad["payload"] = {"odometer_km": -5}
    body = as_lines([reading(0), reading(1), reading(2, with_id=False), bad]) + b"not json\n"
    response = parts.post(body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["duplicate"], answer["refused"]) == (3, 0, 2)
    lines = answer["lines"]
    assert [line["line"] for line in lines] == [1, 2, 3, 4, 5]
    accepted = lines[:3]
    assert [line["log_index"] for line in accepted] == [0, 1, 2]
    assert accepted[0]["event_id"] == reading(0)["event_id"]
    size, root = parts.anchor.latest_checkpoint(SOURCE) or (0, b"")
    for line in accepted:
        assert line["status"] == "accepted" and line["published"] is True
        assert line["checkpoint"]["tree_size"] == size == 3
        assert line["checkpoint"]["root"] == root.hex()
    assert lines[3]["status"] == "refused" and lines[3]["path"] == "$.payload.odometer_km"
    assert lines[4]["status"] == "refused" and lines[4]["reason"]
    assert parts.sent_ids() == [line["event_id"] for line in accepted]
    # a published event carries its proof against that checkpoint
    proof = orjson.loads(parts.publisher.sent[0].value)["proof"]
    assert (proof["tree_size"], proof["root"]) == (3, root.hex())


def test_the_same_batch_sent_three_times_is_published_once(parts: Parts) -> None:
    body = as_lines([reading(i, with_id=i % 2 == 0) for i in range(10)])
    answers = [parts.post(body).json() for _ in range(3)]
    assert answers[0]["accepted"] == 10
    assert [(a["accepted"], a["duplicate"]) for a in answers[1:]] == [(0, 10), (0, 10)]
    first = [(line["event_id"], line["log_index"]) for line in answers[0]["lines"]]
    for again in answers[1:]:
        assert [(line["event_id"], line["log_index"]) for line in again["lines"]] == first
        assert all(line["published"] and line["checkpoint"] for line in again["lines"])
    assert sorted(parts.sent_ids()) == sorted(eid for eid, _ in first)
    assert len(parts.anchor.checkpoints[SOURCE]) == 1


def test_an_event_id_reused_for_other_content_is_refused(parts: Parts) -> None:
    assert parts.post(as_lines([reading(1)])).json()["accepted"] == 1
    response = parts.post(as_lines([reading(1, km=99_999)]))
    assert response.status_code == 422  # every line refused
    line = response.json()["lines"][0]
    assert line["path"] == "$.event_id" and "already accepted" in line["reason"]
    assert len(parts.publisher.sent) == 1


def test_unsigned_replayed_or_foreign_requests_are_refused(parts: Parts) -> None:
    body = as_lines([reading(1)])
    assert parts.http.post(PATH, content=body).status_code == 401
    foreign = parts.post(body, key=OTHER_KEY)
    assert foreign.status_code == 403
    assert "not the registered key of source garage-net-03" in foreign.json()["message"]
    assert parts.post(body, path="/v1/events/unknown-source").status_code == 403
    headers = sign_request(SOURCE_KEY, "POST", PATH, body, domain=DOMAIN)
    assert parts.http.post(PATH, content=body, headers=headers).status_code == 200
    replay = parts.http.post(PATH, content=body, headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.json()["message"]
    other_chain = sign_request(SOURCE_KEY, "POST", PATH, body, domain=RequestDomain.local(1, "testserver"))
    assert parts.http.post(PATH, content=body, headers=other_chain).status_code == 401
    assert len(parts.publisher.sent) == 1


def test_oversized_batches_are_refused_before_anything_is_parsed(parts: Parts) -> None:
    too_many = b"{}\n" * 1001  # not even valid events: refused on the count alone, unsigned
    response = parts.http.post(PATH, content=too_many)
    assert response.status_code == 413 and "1001 lines" in response.json()["message"]
    too_big = b" " * (1024 * 1024 + 1)
    assert parts.http.post(PATH, content=too_big).status_code == 413
    assert parts.bridge.store.find([reading(1)["event_id"]]) == {}
    assert parts.publisher.sent == []


def test_a_broker_outage_is_503_and_loses_nothing_acknowledged(parts: Parts) -> None:
    parts.publisher.fail_with = ConnectionError("no Kafka broker reachable")
    first = parts.post(as_lines([reading(i) for i in range(4)]))
    assert first.status_code == 503 and first.headers["Retry-After"] == "7"
    body = first.json()
    assert body["accepted"] == 4 and "sending the batch again is safe" in body["message"]
    assert all(line["published"] is False for line in body["lines"])
    # while it is down, a new batch is refused whole: nothing of it is logged
    second = parts.post(as_lines([reading(10)]))
    assert second.status_code == 503 and second.headers["Retry-After"] == "7"
    assert "nothing of this batch was accepted" in second.json()["message"]
    assert parts.bridge.store.find([reading(10)["event_id"]]) == {}
    # the broker is back: the retry loop sends the acknowledged events, once
    parts.publisher.fail_with = None
    parts.bridge.retry_now()
    assert sorted(parts.sent_ids()) == sorted(reading(i)["event_id"] for i in range(4))
    again = parts.post(as_lines([reading(i) for i in range(4)] + [reading(10)])).json()
    assert (again["accepted"], again["duplicate"]) == (1, 4)
    assert all(line["published"] for line in again["lines"])
    assert len(parts.sent_ids()) == len(set(parts.sent_ids())) == 5


class SlowPublisher(MemoryPublisher):
    """A broker that acknowledges only when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        self.entered.set()
        self.release.wait(10)
        return super().publish(events)


def test_a_lagging_broker_gets_429_with_retry_after(tmp_path: Path) -> None:
    slow = SlowPublisher()
    parts = Parts(tmp_path, slow)
    source = parts.bridge.source_for(SOURCE, Signer(SOURCE_KEY).address)
    try:
        running = parts.bridge.submit(source, split_lines(as_lines([reading(1)])))
        assert slow.entered.wait(10)
        waiting = parts.bridge.submit(source, split_lines(as_lines([reading(2)])))  # max_queued = 1
        with pytest.raises(TooManyRequestsError) as refused:
            parts.bridge.submit(source, split_lines(as_lines([reading(3)])))
        assert refused.value.retry_after_s == 7
        response = parts.post(as_lines([reading(4)]))
        assert response.status_code == 429 and response.headers["Retry-After"] == "7"
        slow.release.set()
        assert running.result(10).status == 200 and waiting.result(10).status == 200
    finally:
        slow.release.set()
        parts.close()
    assert [e.event_id for e in slow.sent] == [reading(1)["event_id"], reading(2)["event_id"]]


def test_an_accepted_event_can_be_looked_up(parts: Parts) -> None:
    event_id = parts.post(as_lines([reading(5)])).json()["lines"][0]["event_id"]
    path = f"{PATH}/{event_id}"
    status = parts.http.get(path, headers=sign_request(SOURCE_KEY, "GET", path, b"", domain=DOMAIN))
    assert status.status_code == 200
    assert status.json()["log_index"] == 0 and status.json()["published"] is True
    missing = f"{PATH}/01936f0e-8a4b-7c3d-9e2f-ffffffffffff"
    headers = sign_request(SOURCE_KEY, "GET", missing, b"", domain=DOMAIN)
    assert parts.http.get(missing, headers=headers).status_code == 404
    assert parts.http.get("/v1/domain").json()["host"] == "testserver"


def test_a_restarted_bridge_remembers_what_it_logged_but_did_not_publish(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    parts.publisher.fail_with = ConnectionError("down")
    assert parts.post(as_lines([reading(1), reading(2)])).status_code == 503
    parts.close()
    restarted = Parts(tmp_path)  # a new process over the same data directory, broker back
    try:
        answer = restarted.post(as_lines([reading(1), reading(2)])).json()
        assert (answer["accepted"], answer["duplicate"]) == (0, 2)
        assert all(line["published"] for line in answer["lines"])
        assert sorted(e.event_id for e in restarted.publisher.sent) == [
            reading(1)["event_id"],
            reading(2)["event_id"],
        ]
    finally:
        restarted.close()
