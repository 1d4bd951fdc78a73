"""The serving process killed (``kill -9``) mid-settlement: no receipt settled twice, none lost.

A real ``pcc serve`` (its settlement loop, its receipts file, its ledger client) settles 800
pending receipts of three consumers, paying three producers and the treasury, on the session's
anvil node, 200 receipts a transaction.  The node mines only when the test says so, which puts
the kill at the worst moment every run, without a race:

1. the first batch is mined and marked in the receipts file; the second batch's transaction is
   in the node's mempool when the process is killed;
2. ``pcc serve`` starts again on the same files while that transaction is still unmined, so the
   file and the chain both still call its receipts unsettled: the new process sends the same
   batch again.  Both are mined in one block: the dead process's batch settles, the new one is
   refused as a whole (``ReceiptAlreadySettled``); the node then mines as usual and the service
   settles to the end.

Then the Marketplace and the receipts file must agree receipt by receipt: every receipt settled
exactly once on chain (the ``settle`` calls mined, decoded), marked settled in the file (by the
transaction that settled it, or as found already settled), none pending or failed; each
producer's credit, the treasury's revenue and each consumer's deposit moved by exactly what the
receipts owe.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from infra.chain import node
from infra.procs import free_ports, terminate_group
from ledger.chain import connect_url
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import GovernanceParams, deploy
from ledger.keys import address_of
from ledger.tx import Signer
from serving.market.pricing import CONSORTIUM, Quote
from serving.market.receipts import FAILED, ReceiptStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
OP, MEMBER = DEV_KEYS[0], DEV_KEYS[1]
PRODUCERS = {"cc-aurora": DEV_KEYS[2], "garage-net-03": DEV_KEYS[3], "ins-mutua": DEV_KEYS[4]}
KINDS = {"cc-aurora": "connected_car", "garage-net-03": "garage", "ins-mutua": "insurer"}
CONSUMERS = (DEV_KEYS[5], DEV_KEYS[6], DEV_KEYS[7])
FEE_BPS = 1_000
RECEIPTS = 800
BATCH = 200  # the settler's batch in `pcc serve`
DEPOSIT = 200_000
SETTLE_EVERY_S = 0.3
WAIT_S = 180  # against a hang only; nothing is asserted about durations
#: if the restarted service sends nothing while the dead one's batch is unmined (it could wait
#: for it), the test mines that batch after this many seconds of the service listening
RESEND_GRACE_S = 5.0


@dataclass
class Chain:
    client: LedgerClient
    w3: Web3
    data: Path
    env: dict[str, str]

    def rpc(self, method: str, *params: Any) -> Any:
        answer = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in answer, answer
        return answer["result"]

    def pending_txs(self) -> list[Any]:
        return list(self.w3.eth.get_block("pending", full_transactions=True)["transactions"])


@pytest.fixture
def chain(anvil_node: node.NodeInfo, tmp_path: Path) -> Iterator[Chain]:
    """A fresh deployment with three active producers and three consumers who deposited."""
    w3 = connect_url(anvil_node.url)
    op = Signer(w3, OP)
    deployment = deploy(w3, op, {address_of(MEMBER): 10**18}, GovernanceParams(fee_bps=FEE_BPS))
    manifest = deployment.write(tmp_path / "ledger" / "deployment.json")
    client = LedgerClient(w3, deployment, op)
    for source, key in PRODUCERS.items():
        client.sources.register(source, KINDS[source], address_of(key), 1)
    for key in CONSUMERS:
        client.tokens.mint(address_of(key), DEPOSIT, f"SEPA-{address_of(key)}")
        client.tokens.approve(client.market.address, DEPOSIT, key)
        client.market.deposit(DEPOSIT, key)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
    env.update(
        PCC__DATA_DIR=str(tmp_path),
        PCC__LEDGER__RPC_URL=anvil_node.url,
        PCC__LEDGER__CHAIN="anvil",
        PCC__LEDGER__MANIFEST=str(manifest),
        PCC__SERVING__HOST="127.0.0.1",
        PCC__SERVING__PORT=str(port),
        PCC__SERVING__SETTLE_EVERY_S=str(SETTLE_EVERY_S),
    )
    c = Chain(client, w3, tmp_path, env)
    try:
        yield c
    finally:
        c.rpc("evm_setAutomine", True)  # the session's node, as the other tests expect it
        if c.pending_txs():
            c.rpc("evm_mine")


def issue_receipts(path: Path) -> list[dict[str, Any]]:
    """Pending receipts: one to three producers each, every fifth with the consortium's own rows."""
    sources = sorted(PRODUCERS)
    store = ReceiptStore(path, "0x" + "44" * 32)
    out = []
    try:
        for i in range(RECEIPTS):
            by_producer: dict[str, dict[str, int]] = {}
            for j in range(1 + i % 3):
                cents = 1 + (i * 7 + j * 3) % 23
                by_producer[sources[(i + j) % 3]] = {"rows": cents, "cents": cents}
            if i % 5 == 0:
                by_producer[CONSORTIUM] = {"rows": 2, "cents": 4}
            amount = sum(p["cents"] for p in by_producer.values())
            quote = Quote(amount, FEE_BPS, by_producer, "rows", "v1")
            out.append(store.issue(address_of(CONSUMERS[i % 3]), f"nonce-{i}", "ab" * 32, quote))
    finally:
        store.close()
    return out


def owed(receipts: list[dict[str, Any]]) -> tuple[Counter[str], int]:
    """What the receipts owe each producer's account and the treasury, split as the Marketplace does."""
    credits: Counter[str] = Counter()
    treasury = 0
    for r in receipts:
        amount = r["amount_cents"]
        weights = {s: p["cents"] for s, p in r["by_producer"].items()}
        fee = amount * FEE_BPS // 10_000
        rest, paid = amount - fee, 0
        for source, weight in weights.items():
            part = rest * weight // sum(weights.values())
            paid += part
            if source == CONSORTIUM:
                fee += part
            else:
                credits[address_of(PRODUCERS[source])] += part
        treasury += fee + rest - paid  # rounding dust goes to the treasury
    return credits, treasury


def file_state(path: Path) -> dict[int, str | None]:
    """Receipt number → ``settled_tx``, read as ``pcc market receipts`` reads it (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {int(n): tx for n, tx in db.execute("SELECT receipt_no, settled_tx FROM receipts")}
    finally:
        db.close()


def serve(c: Chain, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "pcc"), "--debug", "serve"], cwd=c.data, env=c.env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def settle_calls(c: Chain, from_block: int) -> dict[str, list[int]]:
    """Every mined ``Marketplace.settle`` call since ``from_block``: tx hash → its receipt numbers
    ([] if it reverted)."""
    market = c.client.market.market
    out: dict[str, list[int]] = {}
    for number in range(from_block, c.w3.eth.block_number + 1):
        for tx in c.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)
            if tx["to"] != market.address:
                continue
            fn, args = market.decode_function_input(tx["input"])
            if fn.fn_name != "settle":
                continue
            tx_hash = "0x" + bytes(tx["hash"]).hex()
            if c.w3.eth.get_transaction_receipt(tx["hash"])["status"] != 1:
                out[tx_hash] = []
                continue
            words, nos, i = args["words"], [], 0
            while i < len(words):  # header: receipt number in bits 0-63, share count in 176-191
                nos.append(words[i] & (2**64 - 1))
                i += 1 + ((words[i] >> 176) & 0xFFFF)
            out[tx_hash] = nos
    return out


def test_serving_killed_mid_settlement_settles_every_receipt_once_after_restart(chain: Chain):
    c, client = chain, chain.client
    market = client.market.address
    path = c.data / "serving" / "receipts.sqlite"
    receipts = issue_receipts(path)
    numbers = [int(r["receipt_no"]) for r in receipts]
    total = sum(r["amount_cents"] for r in receipts)
    credits, treasury_fee = owed(receipts)
    gold = client.deployment.address("PCCGold")
    treasury_before = client.tokens.balance(gold)
    start_block = c.w3.eth.block_number + 1
    log = c.data / "serve.log"

    def alive(proc: subprocess.Popen[bytes], deadline: float, waiting_for: str) -> None:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{waiting_for}: " + log.read_text()[-3000:]

    # 1. the node mines on request: batch 1 is mined; batch 2 is in the mempool at the kill
    c.rpc("evm_setAutomine", False)
    first = serve(c, log)
    deadline, sent = time.monotonic() + WAIT_S, 0
    try:
        while sent < 2:
            alive(first, deadline, f"settlement call {sent + 1} not sent")
            txs = c.pending_txs()
            if not txs:
                time.sleep(0.02)
                continue
            assert [tx["to"] for tx in txs] == [market], txs  # one settle call at a time
            sent += 1
            if sent == 1:
                c.rpc("evm_mine")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    (in_flight,) = c.pending_txs()
    landed = settle_calls(c, start_block)
    marked = {n for n, tx in file_state(path).items() if tx is not None}
    assert [len(nos) for nos in landed.values()] == [BATCH]
    assert marked == set(next(iter(landed.values())))  # batch 1 on chain and in the file, nothing else

    # 2. restarted while batch 2 is unmined: it sends that batch again; both are mined in one block
    restarted = time.monotonic()
    second = serve(c, log)
    try:
        deadline, up_since = time.monotonic() + WAIT_S, None
        while len(c.pending_txs()) < 2:
            alive(second, deadline, "the restarted service settled nothing")
            if up_since is None and listening(int(c.env["PCC__SERVING__PORT"])):
                up_since = time.monotonic()
            if up_since is not None and time.monotonic() - up_since > RESEND_GRACE_S:
                break  # it waits for the batch in flight: mine it (both paths are checked below)
            time.sleep(0.02)
        resent = [tx for tx in c.pending_txs() if tx["hash"] != in_flight["hash"]]
        assert all(tx["to"] == market for tx in resent), resent
        c.rpc("evm_mine")
        c.rpc("evm_setAutomine", True)
        deadline = time.monotonic() + WAIT_S
        while any(tx is None for tx in file_state(path).values()):
            alive(second, deadline, "settlement did not finish")
            time.sleep(0.1)
        recovery_s = time.monotonic() - restarted
    finally:
        terminate_group(second.pid)

    # 3. the Marketplace and the receipts file agree, receipt by receipt
    calls = settle_calls(c, start_block)
    assert calls["0x" + bytes(in_flight["hash"]).hex()]  # the dead process's batch settled
    refused = [tx for tx, nos in calls.items() if not nos]
    assert len(refused) == len(resent)  # a batch sent again is refused as a whole
    settled_by: dict[int, list[str]] = {}
    for tx, nos in calls.items():
        for n in nos:
            settled_by.setdefault(n, []).append(tx)
    assert sorted(settled_by) == numbers  # none lost
    assert [n for n, txs in settled_by.items() if len(txs) > 1] == []  # none settled twice
    with c.w3.batch_requests() as batch:  # the Marketplace's bitmap
        for n in numbers:
            batch.add(client.market.market.functions.isSettled(n))
        assert all(batch.execute())
    events = client.market.market.events
    settled_logs = events.Settled().get_logs(from_block=start_block)
    assert sum(e["args"]["receipts"] for e in settled_logs) == RECEIPTS
    assert sum(e["args"]["amount"] for e in settled_logs) == total
    assert list(events.ReceiptFailed().get_logs(from_block=start_block)) == []
    local = file_state(path)
    assert [n for n, mark in local.items() if mark is None or mark == FAILED] == []
    for n, mark in local.items():  # the transaction that settled it, or found settled on a retry
        assert mark in (settled_by[n][0], "already-settled"), (n, mark, settled_by[n])

    # every producer's credit, the treasury and each consumer's deposit moved by what the receipts owe
    assert {a: client.market.credit(a) for a in credits} == dict(credits)
    assert client.tokens.balance(gold) - treasury_before == treasury_fee
    assert sum(credits.values()) + treasury_fee == total
    for key in CONSUMERS:
        spent = sum(r["amount_cents"] for r in receipts if r["consumer"] == address_of(key))
        assert client.market.deposit_of(address_of(key)) == DEPOSIT - spent

    print(
        f"\n{RECEIPTS} receipts, batches of {BATCH}: killed with batch 1 settled and marked, batch 2 in "
        f"the mempool; restarted: {len(resent)} batch sent again and refused, {len(calls) - 2 - len(refused)} "
        f"more settled; all {RECEIPTS} settled once, {recovery_s:.1f} s from restart to none pending "
        f"({(up_since or restarted) - restarted:.1f} s of it starting `pcc serve`)"
    )
