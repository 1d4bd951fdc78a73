"""The quickstarts run as written: docs/quickstart-producer.md and docs/quickstart-consumer.md.

Every command of their code blocks runs, exactly as written, as a shell line in a fresh
directory whose settings file (PCC_CONFIG) points at free ports: the producer's block starts its
own Kafka broker and anvil node, the operator's block votes prices and starts ``pcc serve`` (in
the background), and the consumer's block goes from a new key to a paid query.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.procs import free_ports, terminate_group
from tests.fixtures.kafka import JAR_CACHE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def code_blocks(doc: str) -> list[list[str]]:
    """The ```sh blocks of a doc, as lists of command lines."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    return [
        [line for line in block.splitlines() if line.strip()]
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    ]


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    serving_port: int
    outputs: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, line: str) -> str:
        proc = subprocess.run(
            ["bash", "-c", line], cwd=self.home, env=self.env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"{line}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        self.outputs[line] = proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def serve(self, line: str) -> None:
        log = (self.home / "serve.log").open("ab")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], cwd=self.home, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.background.append(proc)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.home / "serve.log").read_text()[-3000:]
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.serving_port)) == 0:
                    return
            time.sleep(0.5)
        raise AssertionError("pcc serve did not listen: " + (self.home / "serve.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("quickstart")
    kafka_port, controller, chain_port, serving_port = free_ports(4)
    config = home / "pcc.toml"
    config.write_text(
        f'data_dir = "{home / "data"}"\n'
        f'[kafka]\nbootstrap = "127.0.0.1:{kafka_port}"\ncontroller_port = {controller}\nlibs_dir = "{JAR_CACHE}"\n'
        f'[ledger]\nrpc_url = "http://127.0.0.1:{chain_port}"\nchain = "anvil"\n'
        f'[serving]\nhost = "127.0.0.1"\nport = {serving_port}\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__")}
    env.update(PCC_CONFIG=str(config), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    s = Stack(home, env, serving_port)
    try:
        yield s
    finally:
        for proc in s.background:
            terminate_group(proc.pid)
        for line in ("pcc chain down", "pcc kafka down"):
            subprocess.run(["bash", "-c", line], cwd=home, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def produced(stack: Stack) -> Stack:
    (commands,) = code_blocks("quickstart-producer.md")
    for line in commands:
        stack.run(line)
    return stack


def test_the_producer_quickstart_anchors_every_source_in_six_commands(produced: Stack):
    (commands,) = code_blocks("quickstart-producer.md")
    assert len(commands) <= 6 and all(line.startswith("pcc ") for line in commands)
    fleet = json.loads((produced.home / "fleet" / "fleet.json").read_text(encoding="utf-8"))
    sources = [s["id"] for s in fleet["sources"]]
    produce = produced.outputs["pcc produce --fleet fleet --register"]
    assert f"registered {len(sources)} source(s)" in produce
    checkpoints = produced.outputs["pcc ledger checkpoints"]
    for source in sources:
        events = produced.home / "fleet" / "events" / f"{source}.jsonl"
        if events.exists() and events.read_text(encoding="utf-8").strip():
            assert f": {source} size " in checkpoints, checkpoints
    first = fleet["sources"][0]
    shown = produced.run(f"pcc ledger source {first['id']}")
    assert f"tier {first['tier']}" in shown and "latest checkpoint: size" in shown


def test_the_consumer_quickstart_pays_for_a_query_from_a_fresh_key(produced: Stack):
    consumer, operator = code_blocks("quickstart-consumer.md")
    assert len(consumer) <= 6 and all(line.startswith("pcc ") for line in consumer)
    for line in operator:
        if line.startswith("pcc serve"):
            produced.serve(line)
        else:
            produced.run(line)
    assert "fraud_score          10 cents per row" in produced.run("pcc governance prices show")
    out = [produced.run(line) for line in consumer]
    address = out[0].strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
    assert f"{address}: 1 ETH, 1000 cents PCC_token" in out[1]
    assert "deposited 500 cents; 500 spendable" in out[2]
    paid = re.search(r"(\d+) rows - receipt (\d+): (\d+) cents", out[3])
    assert paid and int(paid[1]) == 5 and int(paid[3]) > 0, out[3]
    balance = out[4]
    assert "wallet      500 cents PCC_token" in balance
    # the service may settle the receipt before the balance is read: then the deposit paid it and
    # nothing is reserved; before, the deposit is whole and the price is reserved
    deposit = re.search(r"deposit     (\d+) cents", balance)
    reserved = re.search(r"reserved    (\d+) cents by unsettled receipts", balance)
    assert deposit and reserved, balance
    assert int(deposit[1]) - int(reserved[1]) == 500 - int(paid[3]), balance
