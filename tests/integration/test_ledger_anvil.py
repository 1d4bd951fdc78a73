"""The ledger's contract tests on a real anvil node, plus what only a node shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import Web3

from infra.chain import node
from ledger.chain import connect_url
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import deploy
from ledger.keys import address_of
from ledger.tx import Signer
from pipelines.errors import PccStateError
from tests.unit.ledger.test_ledger_contract import ADDR, SRC, LedgerContractTests, root

pytestmark = pytest.mark.integration


class TestLedgerAnvil(LedgerContractTests):
    """Every contract test, against anvil (fresh contracts per test on one session node)."""

    @pytest.fixture
    def w3(self, anvil_node: node.NodeInfo) -> Web3:
        return connect_url(anvil_node.url)

    def test_many_pipelined_anchors_land_without_waiting_one_by_one(self, client: LedgerClient):
        checkpoints = [(1024 * (i + 1), root(i)) for i in range(40)]
        receipts = client.anchors.anchor_many("cc-aurora", checkpoints, SRC)
        assert len({r.tx_hash for r in receipts}) == 40
        assert client.anchors.latest("cc-aurora") == checkpoints[-1]
        assert client.anchors.checkpoint_count("cc-aurora") == 40

    def test_two_clients_signing_with_one_key_do_not_refuse_each_other(self, client: LedgerClient):
        """The operator key is shared (grant store, batch publisher, demo): a nonce taken by the
        other client is counted again from the chain, not an error."""
        first = client.signer
        second = Signer(first.w3, DEV_KEYS[0])
        accounts = [Web3.to_checksum_address(f"0x{i:040x}") for i in (0xA1, 0xA2, 0xA3)]
        client.sources.register("cc-borealis", "connected_car", accounts[0], 1)  # first's nonce cached
        other = LedgerClient(first.w3, client.deployment, second)
        other.sources.register("cc-cassini", "connected_car", accounts[1], 1)  # takes that nonce
        client.sources.register("ins-allianz", "insurer", accounts[2], 2)  # stale: signs anew
        assert client.sources.get("ins-allianz").tier == 2


def test_node_lifecycle_is_idempotent_and_checks_its_port(anvil_node: node.NodeInfo, tmp_path):
    state = tmp_path / "chain"
    info = node.start("anvil", node.free_port(), state)
    try:
        assert node.start("anvil", info.port, state) == info  # already running: same node
        assert node.status(state) == info and node.rpc_chain_id(info.url) == node.CHAIN_ID
        with pytest.raises(PccStateError, match=f"port {anvil_node.port} is already in use"):
            node.start("anvil", anvil_node.port, tmp_path / "other")
    finally:
        assert node.stop(state) == info
    assert node.status(state) is None and node.rpc_chain_id(info.url) is None
    assert node.stop(state) is None


def test_a_long_running_node_writes_nothing_outside_its_state_dir(tmp_path):
    """Thousands of blocks (a day of anchoring) cost no disk outside the node's own directory,
    and the chain's first events stay readable."""
    spill = Path.home() / ".foundry" / "anvil" / "tmp"
    before = set(spill.iterdir()) if spill.is_dir() else set()
    state = tmp_path / "chain"
    info = node.start("anvil", node.free_port(), state)
    try:
        w3 = connect_url(info.url)
        op = Signer(w3, DEV_KEYS[0])
        client = LedgerClient(w3, deploy(w3, op, {}), op)
        client.sources.register("cc-aurora", "connected_car", address_of(SRC), 1)
        w3.provider.make_request("anvil_mine", [hex(3 * node.KEPT_STATES)])
        client.anchors.anchor("cc-aurora", 1024, root(1), SRC)
        assert w3.eth.block_number > 3 * node.KEPT_STATES
        registered = w3.eth.get_logs({"fromBlock": 0, "address": client.contract("SourceRegistry").address})
        assert registered, "the source registered before the mined blocks is still on record"
        assert client.anchors.latest("cc-aurora") == (1024, root(1))
    finally:
        node.stop(state)
    after = set(spill.iterdir()) if spill.is_dir() else set()
    assert after - before == set()
    assert sum(f.stat().st_size for f in state.rglob("*") if f.is_file()) < 20 * 2**20


def test_hardhat_node_runs_the_same_contracts(hardhat_node: node.NodeInfo):
    w3 = connect_url(hardhat_node.url)
    op = Signer(w3, DEV_KEYS[0])
    client = LedgerClient(w3, deploy(w3, op, {ADDR[DEV_KEYS[1]]: 10**18}), op)
    client.sources.register("cc-aurora", "connected_car", address_of(SRC), 1)
    receipt = client.anchors.anchor("cc-aurora", 1024, root(1), SRC)
    assert receipt.gas_used > 21_000
    assert client.anchors.latest("cc-aurora") == (1024, root(1))
    assert "hardhat" in str(w3.client_version).lower()
