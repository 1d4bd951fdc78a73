"""The producer SDK against in-memory anchor and publisher, with a real vault and a real log on disk."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest

from pipelines.canonical import leaf_hash
from pipelines.errors import PccTransientError, PccValidationError
from pipelines.merkle import LeafHashFile, consistency_proof, verify_consistency, verify_inclusion
from pipelines.producer import AnchorUnavailable, MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit

SOURCE = "cc-aurora"


def vin(i: int) -> str:
    return with_check_digit(f"1HGCM8263{i:08d}"[:17])


def raw(i: int, km: int = 1000, **extra: object) -> dict:
    event = {
        "event_type": "odometer_reading",
        "schema_version": 1,
        "source_id": SOURCE,
        "vin": vin(i % 7),
        "event_time": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "payload": {"odometer_km": km + i},
    }
    event.update(extra)
    return event


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, producer={"checkpoint_every": 16, "checkpoint_seconds": 3600})


@pytest.fixture
def vault(settings):
    v = IdentityVault(settings)
    yield v
    v.close()


def make(settings, vault, anchor=None, publisher=None) -> Producer:
    return Producer(
        settings, source_id=SOURCE, source_kind="connected_car", anchor=anchor or MemoryAnchor(),
        publisher=publisher if publisher is not None else MemoryPublisher(), vault=vault,
    )  # fmt: skip


def wire(event) -> dict:
    return orjson.loads(event.value)


def test_every_published_event_carries_a_proof_against_an_anchored_root(settings, vault):
    anchor, pub = MemoryAnchor(), MemoryPublisher()
    with make(settings, vault, anchor, pub) as producer:
        for i in range(40):
            producer.submit(raw(i))
    assert len(pub.sent) == 40
    assert producer.report.checkpoints == 3  # 16 + 16 + the 8 flushed on close
    for event in pub.sent:
        env = wire(event)
        proof = env["proof"]
        root = anchor.root_at(SOURCE, proof["tree_size"])
        assert root is not None and root.hex() == proof["root"]
        path = [bytes.fromhex(h) for h in proof["path"]]
        assert verify_inclusion(leaf_hash(env), proof["log_index"], proof["tree_size"], path, root)
        assert event.topic == "pcc.telemetry" and event.key == env["vehicle"].encode()
    assert [wire(e)["proof"]["log_index"] for e in pub.sent] == list(range(40))


def test_no_vin_leaves_the_producer(settings, vault):
    pub = MemoryPublisher()
    with make(settings, vault, publisher=pub) as producer:
        producer.submit(raw(1))
    blob = b"".join(e.value for e in pub.sent)
    assert vin(1).encode() not in blob
    assert wire(pub.sent[0])["vehicle"] == vault.pseudonymize_vehicle(vin(1))


def test_a_changed_byte_breaks_the_proof(settings, vault):
    anchor, pub = MemoryAnchor(), MemoryPublisher()
    with make(settings, vault, anchor, pub) as producer:
        for i in range(5):
            producer.submit(raw(i))
    env = wire(pub.sent[2])
    env["payload"]["odometer_km"] += 1
    proof = env["proof"]
    assert not verify_inclusion(
        leaf_hash(env), proof["log_index"], proof["tree_size"], [bytes.fromhex(h) for h in proof["path"]],
        anchor.root_at(SOURCE, proof["tree_size"]),
    )  # fmt: skip


def test_invalid_lines_are_rejected_with_their_line_and_the_rest_is_sent(settings, vault):
    pub = MemoryPublisher()
    records = [(1, raw(1)), (2, raw(2, km=-100_000)), (3, raw(3, vin="NOT-A-VIN")), (4, raw(4))]
    with make(settings, vault, publisher=pub) as producer:
        producer.submit_many(records)
    assert len(pub.sent) == 2
    lines = [where for where, _ in producer.report.rejections]
    assert lines == [2, 3]
    assert "odometer_km" in producer.report.rejections[0][1]
    assert "vin" in producer.report.rejections[1][1]


def test_strict_sends_nothing_when_one_line_is_invalid(settings, vault):
    pub = MemoryPublisher()
    producer = make(settings, vault, publisher=pub)
    with pytest.raises(PccValidationError, match="line 2"):
        producer.submit_many([(1, raw(1)), (2, raw(2, km=-100_000)), (3, raw(3))], strict=True)
    producer.close()
    assert pub.sent == []
    assert producer.log.size == 0


def test_a_restarted_producer_continues_its_log_consistently(settings, vault):
    anchor = MemoryAnchor()
    first, second = MemoryPublisher(), MemoryPublisher()
    with make(settings, vault, anchor, first) as producer:
        for i in range(20):
            producer.submit(raw(i))
    with make(settings, vault, anchor, second) as producer:
        for i in range(20, 45):
            producer.submit(raw(i))
    indexes = [wire(e)["proof"]["log_index"] for e in first.sent + second.sent]
    assert indexes == list(range(45))
    checkpoints = anchor.checkpoints[SOURCE]
    leaves = LeafHashFile(settings.path("producers", SOURCE, "leaves.bin"))
    for (size1, root1), (size2, root2) in itertools.pairwise(checkpoints):
        proof = consistency_proof(leaves, size1, size2)
        assert verify_consistency(size1, size2, proof, root1, root2)
    leaves.close()


class DownAnchor(MemoryAnchor):
    def anchor(self, source_id, tree_size, root):
        raise PccTransientError("chain node unreachable")


def test_chain_down_publishes_nothing_and_the_next_run_sends_everything(settings, vault):
    settings = Settings(data_dir=settings.data_dir, producer={**settings.producer.model_dump(), "anchor_wait_s": 0})
    pub = MemoryPublisher()
    producer = make(settings, vault, DownAnchor(), pub)
    for i in range(40):  # accepted into the log all the same: they wait for their anchor
        producer.submit(raw(i))
    assert producer.report.accepted == 40 and producer.log.unpublished == 40
    with pytest.raises(AnchorUnavailable, match="40 events wait in the log"):
        producer.close()
    assert pub.sent == [] and producer.report.unsent == 40
    anchor, later = MemoryAnchor(), MemoryPublisher()
    make(settings, vault, anchor, later).close()
    assert [wire(e)["proof"]["log_index"] for e in later.sent] == list(range(40))
    assert len(anchor.checkpoints[SOURCE]) == 1


class FlakyAnchor(MemoryAnchor):
    """Unreachable while ``down``; ``lands`` makes the cut-off attempt land on the ledger (mined, no receipt)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lands = False
        self.attempts = 0

    def anchor(self, source_id, tree_size, root):
        self.attempts += 1
        if self.down:
            if self.lands:
                super().anchor(source_id, tree_size, root)
            raise PccTransientError("chain node unreachable")
        return super().anchor(source_id, tree_size, root)


def test_an_outage_is_retried_with_backoff_and_one_checkpoint_catches_up(settings, vault, caplog):
    anchor, pub = FlakyAnchor(), MemoryPublisher()
    producer = make(settings, vault, anchor, pub)
    for i in range(16):
        producer.submit(raw(i))
    anchor.down = True
    for i in range(16, 200):
        producer.submit(raw(i))
    assert anchor.attempts == 2  # one failed try, then none before the backoff is over
    assert len(pub.sent) == 16 and producer.log.unpublished == 184
    assert "the ledger is unreachable" in caplog.text
    anchor.down = False
    producer._retry_at = 0.0  # the backoff is over
    producer.submit(raw(200))
    assert "the ledger answers again" in caplog.text
    producer.close()
    assert [wire(e)["proof"]["log_index"] for e in pub.sent] == list(range(201))
    assert [size for size, _ in anchor.checkpoints[SOURCE]] == [16, 201]


def test_an_anchor_cut_off_by_the_outage_but_mined_is_not_sent_again(settings, vault):
    anchor, pub = FlakyAnchor(), MemoryPublisher()
    producer = make(settings, vault, anchor, pub)
    anchor.down = anchor.lands = True
    for i in range(16):
        producer.submit(raw(i))
    anchor.down = False  # the same checkpoint again: the ledger has it, anchoring it twice would revert
    producer.close()
    assert [size for size, _ in anchor.checkpoints[SOURCE]] == [16]
    assert [wire(e)["proof"]["log_index"] for e in pub.sent] == list(range(16))
    assert producer.report.checkpoints == 1


def test_close_waits_for_the_ledger(settings, vault):
    anchor, pub = FlakyAnchor(), MemoryPublisher()
    producer = make(settings, vault, anchor, pub)
    anchor.down = True
    for i in range(10):
        producer.submit(raw(i))
    calls = []

    def back_on_the_second_try(source_id, tree_size, root):
        calls.append(tree_size)
        anchor.down = len(calls) < 2
        return FlakyAnchor.anchor(anchor, source_id, tree_size, root)

    anchor.anchor = back_on_the_second_try
    producer.close()
    assert calls == [10, 10] and [wire(e)["proof"]["log_index"] for e in pub.sent] == list(range(10))


def test_broker_down_keeps_events_and_never_anchors_twice(settings, vault):
    anchor = MemoryAnchor()
    producer = make(settings, vault, anchor, MemoryPublisher(fail_with=ConnectionError("broker down")))
    with pytest.raises(PccTransientError, match="kept in the log"):
        for i in range(16):
            producer.submit(raw(i))
    assert producer.report.unsent == 16
    producer.log.close()
    spool = settings.path("producers", SOURCE, "spool.jsonl").read_text().splitlines()
    ids_logged = [json.loads(line)["e"]["event_id"] for line in spool]
    later = MemoryPublisher()
    make(settings, vault, anchor, later).close()
    assert [wire(e)["event_id"] for e in later.sent] == ids_logged
    assert len(anchor.checkpoints[SOURCE]) == 1  # the checkpoint anchored before the outage is reused


def test_events_of_another_source_are_refused(settings, vault):
    with make(settings, vault) as producer, pytest.raises(PccValidationError, match="not this producer"):
        producer.submit(raw(1, source_id="garage-net-01"))
