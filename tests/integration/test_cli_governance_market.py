"""pcc governance and pcc market on anvil: the refusals a member or a new consumer meets, and their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.chain import node
from ledger.config import DEV_KEYS
from pipelines.cli.main import main

pytestmark = pytest.mark.integration


@pytest.fixture
def config(anvil_node: node.NodeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PCC_CONFIG", "PCC__LEDGER__RPC_URL", "PCC__LEDGER__CHAIN", "PCC__DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "pcc.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[ledger]\nrpc_url = "{anvil_node.url}"\nchain = "anvil"\n',
        encoding="utf-8",
    )
    assert main(["--config", str(path), "ledger", "deploy"]) == 0
    return path


def pcc(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_a_vote_without_delegated_gold_and_steps_taken_too_early_are_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    member, idle = tmp_path / "member.key", tmp_path / "idle.key"
    member.write_text(DEV_KEYS[1], encoding="ascii")  # a dev member with 500 PCC_gold
    idle.write_text(DEV_KEYS[2], encoding="ascii")  # 300 PCC_gold, never delegated
    assert pcc(config, "governance", "delegate", "--key-file", str(member)) == 0
    assert pcc(config, "governance", "prices", "propose", "fraud_score=12") == 0
    capsys.readouterr()
    assert pcc(config, "governance", "queue", "latest") == 2
    assert "ends after block" in capsys.readouterr().err
    assert pcc(config, "governance", "queue", "latest", "--advance") == 2  # nobody voted: would be defeated
    assert "would defeat it" in capsys.readouterr().err
    assert pcc(config, "governance", "vote", "latest", "for", "--key-file", str(idle), "--advance") == 2
    assert "had no PCC_gold votes at block" in capsys.readouterr().err
    assert pcc(config, "governance", "vote", "latest", "for", "--key-file", str(member)) == 0
    assert pcc(config, "governance", "execute", "latest") == 2
    assert "not Queued: queue it first" in capsys.readouterr().err
    assert pcc(config, "governance", "queue", "latest", "--advance") == 0
    capsys.readouterr()
    assert pcc(config, "governance", "execute", "latest") == 2
    assert "the timelock's delay" in capsys.readouterr().err
    assert pcc(config, "governance", "execute", "latest", "--advance") == 0
    assert "Parameters.setPrice(fraud_score, 12)" in capsys.readouterr().out
    assert pcc(config, "governance", "prices", "show", "--json") == 0
    assert json.loads(capsys.readouterr().out)["fraud_score"] == 12
    assert pcc(config, "governance", "proposals", "--all", "--json") == 0
    (proposal,) = json.loads(capsys.readouterr().out)
    assert proposal["state"] == "Executed" and proposal["votes_for"] == 500 * 10**18
    assert pcc(config, "governance", "vote", "ffff", "for", "--key-file", str(member)) == 3


def test_a_fresh_key_cannot_pay_until_funded_and_its_balance_shows_the_deposit(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    key = tmp_path / "consumer.key"
    assert pcc(config, "market", "keygen", "--out", str(key)) == 0
    address = capsys.readouterr().out.strip()
    assert pcc(config, "market", "deposit", "300", "--key-file", str(key)) == 8  # no ETH for gas
    assert f"pcc chain fund {address} --eth 1" in capsys.readouterr().err
    assert pcc(config, "chain", "fund", address, "--eth", "1") == 0
    assert pcc(config, "market", "deposit", "300", "--key-file", str(key)) == 8  # no PCC_token yet
    assert "holds 0 cents of PCC_token" in capsys.readouterr().err
    assert pcc(config, "chain", "fund", str(key), "--eth", "0", "--pcc", "5") == 0
    assert pcc(config, "market", "approve", "100", "--key-file", str(key)) == 0
    assert pcc(config, "market", "deposit", "300", "--key-file", str(key)) == 0
    capsys.readouterr()
    assert pcc(config, "market", "balance", address, "--json") == 0
    balance = json.loads(capsys.readouterr().out)
    assert balance["wallet_cents"] == 200 and balance["deposit_cents"] == 300
    assert balance["spendable_cents"] == 300 and balance["allowance_cents"] == 0
    assert balance["reserved_unsettled_cents"] is None  # no receipts file here, no key to ask the service
    assert pcc(config, "ledger", "balance", address) == 0
    assert "300 cents deposited on the Marketplace" in capsys.readouterr().out
