"""Ledger benchmarks against a real anvil node started for the run.

Figures (``python -m bench --only ledger [--scale F]``):

- gas per anchored checkpoint, and per anchored event at 1,024-event checkpoints
  (target <= 50 gas per event);
- gas per settled query when receipts are settled in batches of 100 (target
  <= 5,000; a plain ERC-20 transfer, measured in the same run, is the reference);
- anchoring throughput: checkpoints per second pipelined to anvil, and the
  producer events per second that covers at 1,024 events per checkpoint
  (target 10,000 events/s), against plain ETH transfers pipelined the same way.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3

from bench.common import record
from infra.chain import node
from ledger.chain import connect_url
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import deploy
from ledger.keys import address_of
from ledger.market import QueryReceipt
from ledger.tx import Signer, wait_all

EVENTS_PER_CHECKPOINT = 1_024
BATCH = 100
OP, M1, M2, CONSUMER = DEV_KEYS[0], DEV_KEYS[1], DEV_KEYS[2], DEV_KEYS[4]
SOURCE_KEYS = DEV_KEYS[5:10]


def _root(i: int) -> bytes:
    return keccak(text=f"bench-root-{i}")


def _setup(w3: Web3) -> LedgerClient:
    op = Signer(w3, OP)
    deployment = deploy(w3, op, {address_of(M1): 600 * 10**18, address_of(M2): 400 * 10**18})
    client = LedgerClient(w3, deployment, op)
    for n, key in enumerate(SOURCE_KEYS):
        client.sources.register(f"bench-src-{n}", "connected_car", address_of(key), 1)
    return client


def _calldata_gas(data: bytes) -> int:
    """Gas of a transaction's input at the standard price (16 per non-zero byte, 4 per zero)."""
    return sum(16 if b else 4 for b in data)


def _log_gas(receipt: Any) -> int:
    """Gas of the receipt's logs: 375 + 375 per topic + 8 per data byte each."""
    return sum(375 + 375 * len(log["topics"]) + 8 * len(bytes(log["data"])) for log in receipt["logs"])


def bench_anchor_gas(client: LedgerClient) -> None:
    src, key = "bench-src-0", SOURCE_KEYS[0]
    client.anchors.anchor(src, EVENTS_PER_CHECKPOINT, _root(0), key)  # first one of the source
    w3 = client.w3

    def measure(sizes: list[int]) -> tuple[float, float, float]:
        gas, calldata, logs = [], [], []
        for i, size in enumerate(sizes):
            sent = client.anchors.anchor(src, size, _root(size + i), key)
            tx_hash = HexBytes(sent.tx_hash)
            tx = w3.eth.get_transaction(tx_hash)
            gas.append(sent.gas_used)
            calldata.append(_calldata_gas(bytes(tx["input"])))
            logs.append(_log_gas(w3.eth.get_transaction_receipt(tx_hash)))
        n = len(sizes)
        return sum(gas) / n, sum(calldata) / n, sum(logs) / n

    small = [EVENTS_PER_CHECKPOINT * (i + 2) for i in range(5)]
    per_checkpoint, calldata, log = measure(small)
    # a long-lived source: tree sizes near 2^40 carry more non-zero calldata bytes
    large, _, _ = measure([2**40 + EVENTS_PER_CHECKPOINT * (i + 1) * 977 for i in range(5)])
    per_event = per_checkpoint / EVENTS_PER_CHECKPOINT
    # storage on the anchoring path: cold read of the source record, its rewrite, one new slot
    storage = 2_100 + 2_900 + 22_100
    record(
        "ledger.anchor_gas",
        {
            "gas_per_checkpoint": per_checkpoint,
            "gas_per_event_at_1024": per_event,
            "gas_per_checkpoint_tree_near_2^40": large,
            "calldata_gas": calldata,
            "storage_gas": storage,
            "log_gas": log,
            "other_execution_gas": per_checkpoint - 21_000 - calldata - storage - log,
            "ratio_is": "gas per event / 50 gas target",
        },
        {"target_gas_per_event": 50, "base_tx_gas": 21_000, "new_storage_slot_gas": 22_100},
        per_event / 50,
    )


def bench_settle_gas(client: LedgerClient) -> None:
    consumer = address_of(CONSUMER)
    producers = [address_of(k) for k in SOURCE_KEYS]
    client.tokens.mint(consumer, 10_000_000, "bench-deposit")
    client.tokens.approve(client.market.address, 10_000_000, CONSUMER)
    transfer = client.tokens.transfer(address_of(M1), 1, CONSUMER)["gasUsed"]  # to a fresh holder
    transfer_warm = client.tokens.transfer(address_of(M1), 1, CONSUMER)["gasUsed"]

    def batch(start: int, shares: int) -> int:
        receipts = [
            QueryReceipt(
                start + i, consumer, 250, {producers[(i + k) % len(producers)]: 3 - k for k in range(shares)}
            )
            for i in range(BATCH)
        ]
        return int(client.market.settle(receipts)["gasUsed"])

    first = batch(0, 1)  # pays the zero-to-nonzero writes (first credits, first bitmap word)
    one = [batch(BATCH * (k + 1), 1) for k in range(3)]
    two = [batch(BATCH * (k + 4), 2) for k in range(3)]
    per_query = sum(one) / len(one) / BATCH
    record(
        "ledger.settle_gas",
        {
            "gas_per_query_batch_100": per_query,
            "gas_per_query_batch_100_two_producers": sum(two) / len(two) / BATCH,
            "gas_per_query_first_batch": first / BATCH,
            "ratio_is": "gas per settled query (one producer) / one ERC-20 transfer",
        },
        {
            "erc20_transfer_gas_new_holder": transfer,
            "erc20_transfer_gas": transfer_warm,
            "target_gas_per_query": 5_000,
        },
        per_query / transfer_warm,
    )


def bench_anchor_throughput(client: LedgerClient, checkpoints: int) -> None:
    w3 = client.w3
    # reference: plain ETH transfers, signed and pipelined the same way
    ref_signer = Signer(w3, DEV_KEYS[3])
    t0 = time.perf_counter()
    fees = ref_signer._fees()
    hashes = []
    for _ in range(checkpoints):
        tx: dict[str, Any] = {"to": address_of(M2), "value": 1, "gas": 21_000, "nonce": ref_signer._next_nonce(), **fees}
        hashes.append(w3.eth.send_raw_transaction(ref_signer.account.sign_transaction(tx).raw_transaction))
    wait_all(w3, hashes, "reference transfers")
    ref_tps = checkpoints / (time.perf_counter() - t0)

    src, key = "bench-src-1", SOURCE_KEYS[1]
    base = (client.anchors.latest(src) or (0, b""))[0]
    plan = [(base + EVENTS_PER_CHECKPOINT * (i + 1), _root(10_000 + i)) for i in range(checkpoints)]
    t0 = time.perf_counter()
    client.anchors.anchor_many(src, plan, key)
    elapsed = time.perf_counter() - t0
    tps = checkpoints / elapsed
    record(
        "ledger.anchor_throughput",
        {
            "checkpoints": checkpoints,
            "anchors_per_s": tps,
            "events_per_s_at_1024": tps * EVENTS_PER_CHECKPOINT,
            "ratio_is": "anchors per s / plain transfers per s (same node, same pipelining)",
        },
        {"eth_transfers_per_s": ref_tps, "target_events_per_s": 10_000},
        tps / ref_tps,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    checkpoints = max(20, int(300 * args.scale))
    with tempfile.TemporaryDirectory(prefix="pcc-bench-chain-") as tmp:
        state = Path(tmp)
        info = node.start("anvil", node.free_port(), state)
        try:
            client = _setup(connect_url(info.url))
            bench_anchor_gas(client)
            bench_settle_gas(client)
            bench_anchor_throughput(client, checkpoints)
        finally:
            node.stop(state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
