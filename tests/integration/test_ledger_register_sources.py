"""``pcc ledger register-sources FILE`` on a real anvil node: many sources in one process, in batched
transactions, from a CSV or a simulated fleet's fleet.json; a second run finds them registered; a bad
row is refused by name while the others are registered."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from web3 import Web3

from infra.chain.node import NodeInfo
from ledger.client import LedgerClient
from ledger.config import LedgerConfig
from ledger.keys import address_of, dev_source_key
from ledger.onboarding import deploy_consortium
from pipelines.cli.main import main
from pipelines.settings import LedgerSettings, Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def config_file(anvil_node: NodeInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("register-sources")
    path = data / "pcc.toml"
    path.write_text(f'data_dir = "{data}"\n[ledger]\nrpc_url = "{anvil_node.url}"\nchain = "anvil"\n')
    deploy_consortium(Settings(data_dir=data, ledger=LedgerSettings(rpc_url=anvil_node.url, chain="anvil")))
    return path


def _settings(config_file: Path) -> Settings:
    from pipelines.settings import load_settings

    return load_settings(config_file)


def test_a_csv_of_sources_is_registered_in_one_run(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = uuid.uuid4().hex[:6]
    ids = [f"garage-{prefix}-{i:03d}" for i in range(70)]  # more than one batch of 64
    own = "0x" + "12" * 20
    rows = ["source_id,kind,tier,account"] + [f"{s},garage,{1 + i % 4}," for i, s in enumerate(ids)]
    rows.append(f"insurer-{prefix},insurer,1,{own}")
    csv_file = tmp_path / "sources.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    assert main(["--config", str(config_file), "ledger", "register-sources", str(csv_file)]) == 0
    out = capsys.readouterr().out
    assert "71 registered, 0 already registered, 0 refused" in out
    settings = _settings(config_file)
    client = LedgerClient.from_settings(settings)
    deployer = LedgerConfig.from_settings(settings).deployer_key.get_secret_value()
    for i, source_id in enumerate(ids):
        info = client.sources.get(source_id)
        assert info.kind == "garage" and info.tier == 1 + i % 4 and info.active
        assert info.account == address_of(dev_source_key(deployer, source_id))
        assert (
            client.w3.eth.get_balance(Web3.to_checksum_address(info.account)) > 0
        )  # gas money to anchor with
    assert client.sources.get(f"insurer-{prefix}").account.lower() == own
    # a second run registers nothing and says so
    assert main(["--config", str(config_file), "ledger", "register-sources", str(csv_file)]) == 0
    assert "0 registered, 71 already registered, 0 refused" in capsys.readouterr().out


def test_a_fleet_json_with_a_bad_row_registers_the_rest_and_fails(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = uuid.uuid4().hex[:6]
    sources = [
        {"id": f"cc-{prefix}", "kind": "connected_car", "tier": 1, "in_network": False},
        {"id": f"ic-{prefix}", "kind": "inspection_centre", "tier": 1, "in_network": False},
        {"id": f"bad-{prefix}", "kind": "car_wash", "tier": 3, "in_network": False},
    ]
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"seed": 1, "sources": sources}))
    code = main(["--config", str(config_file), "ledger", "register-sources", str(fleet)])
    captured = capsys.readouterr()
    assert code != 0 and "1 source(s) refused" in captured.err
    assert "2 registered, 0 already registered, 1 refused" in captured.out
    assert "car_wash" in captured.out
    client = LedgerClient.from_settings(_settings(config_file))
    assert client.sources.is_registered(f"cc-{prefix}") and client.sources.is_registered(f"ic-{prefix}")
    assert not client.sources.is_registered(f"bad-{prefix}")


def test_scripts_get_json_or_silence(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = uuid.uuid4().hex[:6]
    csv_file = tmp_path / "sources.csv"
    csv_file.write_text(f"source_id,kind,tier\ngarage-{prefix}-a,garage,3\ngarage-{prefix}-b,garage,1\n")
    base = ["--config", str(config_file), "ledger"]
    assert main([*base, "register-sources", str(csv_file), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*base, "register-sources", str(csv_file), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["source_id"], r["tier"], r["status"]) for r in rows] == [
        (f"garage-{prefix}-a", 3, "already registered"),
        (f"garage-{prefix}-b", 1, "already registered"),
    ]
    assert main([*base, "source", f"garage-{prefix}-a", "--json"]) == 0
    source = json.loads(capsys.readouterr().out)
    assert source["kind"] == "garage" and source["tier"] == 3 and source["active"] is True
    assert main([*base, "balance", source["account"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["account"] == source["account"]
    assert main([*base, "status", "--json"]) == 0
    assert "Marketplace" in json.loads(capsys.readouterr().out)["contracts"]
