"""A receipt's signed bytes are RFC 8785 whatever the producer ids, amounts or batch version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from serving.errors import ReceiptsInUseError
from serving.market.pricing import Quote
from serving.market.receipts import RECEIPT_FIELDS, ReceiptStore, canonical_json, verify_receipt

SERVICE = "0x" + "5a" * 32


def _body(producer: str, cents: int, version: str | None) -> dict[str, Any]:
    return {
        "receipt_no": 7,
        "consumer": "0x" + "Ab" * 20,
        "query_hash": "9f" * 32,
        "batch_version": version,
        "by_producer": {producer: {"rows": 3, "cents": cents}, "garage-net-03": {"rows": 1, "cents": 2}},
        "amount_cents": cents + 2,
        "fee_bps": 1000,
        "created_at": "2026-01-01T00:00:00.000Z",
    }


@pytest.mark.parametrize(
    ("producer", "cents", "version"),
    [
        ("cc-aurora", 300, "2026-01-01T00"),
        ('quote"and\\backslash', 0, None),
        ("garage-münchen", 5, "v1"),  # non-ASCII: JCS sorts keys by UTF-16 units
        ("\U0001f697-fleet", 5, "v1"),  # beyond the BMP
        ("tab\there", 5, "line\nbreak"),  # control characters: JCS's own escapes
    ],
)
def test_canonical_json_is_rfc8785(producer: str, cents: int, version: str | None) -> None:
    body = _body(producer, cents, version)
    assert canonical_json(body) == rfc8785.dumps(body)


def test_an_amount_beyond_exact_json_numbers_is_refused_as_rfc8785_refuses_it() -> None:
    body = _body("cc-aurora", 2**60, "v1")
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(body)
    with pytest.raises(rfc8785.IntegerDomainError):
        canonical_json(body)


@pytest.mark.parametrize("producer", ["cc-aurora", "garage-münchen", "\U0001f697-fleet"])
def test_issued_receipt_verifies_against_the_published_signer(tmp_path: Path, producer: str) -> None:
    store = ReceiptStore(tmp_path / "receipts.sqlite", SERVICE)
    quote = Quote(
        7, 1000, {producer: {"rows": 2, "cents": 5}, "ins-mutua": {"rows": 1, "cents": 2}}, "rows", "v1"
    )
    receipt = store.issue("0x" + "Ab" * 20, "nonce-0001", "9f" * 32, quote)
    assert verify_receipt(receipt) == store.signer
    stored = store.for_consumer("0x" + "Ab" * 20)[0]
    assert {k: stored[k] for k in RECEIPT_FIELDS} == {k: receipt[k] for k in RECEIPT_FIELDS}
    assert verify_receipt(stored) == store.signer
    assert verify_receipt({**receipt, "by_producer": {producer: {"rows": 2, "cents": 4}}}) != store.signer
    store.close()


def _issue(store: ReceiptStore, k: int) -> dict[str, Any]:
    quote = Quote(5, 1000, {"cc-aurora": {"rows": 2, "cents": 5}}, "rows", "v1")
    return store.issue("0x" + "Ab" * 20, f"nonce-{k:08d}", "9f" * 32, quote, 2**31)


def test_the_log_is_copied_back_between_requests_and_does_not_grow(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    store = ReceiptStore(path, SERVICE, checkpoint_s=0.01)
    wal = path.with_name(path.name + "-wal")
    sizes = []
    for round_ in range(6):
        for k in range(100):
            _issue(store, round_ * 100 + k)
        deadline = time.monotonic() + 10  # the copy after the round's last commit
        while not store._checkpointer.caught_up and time.monotonic() < deadline:
            time.sleep(0.01)
        sizes.append(wal.stat().st_size)
    assert store._checkpointer.checkpoints >= 6
    # the log is reused from its start once copied back: it holds about one round, not six
    assert sizes[-1] <= 2 * sizes[0], sizes
    store.close()
    reopened = ReceiptStore(path, SERVICE)
    assert len(reopened.for_consumer("0x" + "Ab" * 20, limit=1000)) == 600
    reopened.close()


def test_receipts_not_yet_copied_back_survive_the_service_dying(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from serving.market.pricing import Quote\n"
        "from serving.market.receipts import ReceiptStore\n"
        f"store = ReceiptStore(Path({str(path)!r}), {SERVICE!r}, checkpoint_s=3600)\n"
        "q = Quote(5, 1000, {'cc-aurora': {'rows': 2, 'cents': 5}}, 'rows', 'v1')\n"
        "for k in range(50):\n"
        "    store.issue('0x' + 'Ab' * 20, f'nonce-{k:08d}', '9f' * 32, q, 2**31)\n"
        "os._exit(0)  # no close, no checkpoint: the receipts are in the log only\n"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=60)
    assert path.with_name(path.name + "-wal").stat().st_size > 0
    store = ReceiptStore(path, SERVICE)
    receipts = store.for_consumer("0x" + "Ab" * 20, limit=100)
    assert sorted(r["receipt_no"] for r in receipts) == list(range(1, 51))
    assert all(verify_receipt(r) == store.signer for r in receipts)
    assert not store.spend_nonce("0x" + "Ab" * 20, "nonce-00000007", 2**31)  # a replay is still refused
    store.close()


def test_a_second_service_on_the_same_receipts_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    first = ReceiptStore(path, SERVICE)
    _issue(first, 1)
    with pytest.raises(ReceiptsInUseError, match=rf"pid {os.getpid()}.*one `pcc serve` per data directory"):
        ReceiptStore(path, SERVICE)
    assert len(first.for_consumer("0x" + "Ab" * 20)) == 1  # the first is unharmed
    first.close()
    second = ReceiptStore(path, SERVICE)
    assert _issue(second, 2)["receipt_no"] == 2
    second.close()
