"""One setting for the chain endpoint: the local node listens on the port of ledger.rpc_url."""

from __future__ import annotations

import pytest

from infra.chain.node import local_port
from pipelines.errors import PccConfigError
from pipelines.settings import load_settings


def test_the_local_node_listens_on_the_port_of_rpc_url():
    assert local_port("http://127.0.0.1:8601") == 8601
    assert local_port("http://localhost:9545/") == 9545


def test_a_remote_endpoint_is_not_started_here():
    with pytest.raises(PccConfigError, match=r"a local node is started only for http://127\.0\.0\.1:PORT"):
        local_port("https://rpc.example.org")


def test_the_old_port_setting_is_accepted_only_when_it_agrees_with_rpc_url(tmp_path):
    config = tmp_path / "pcc.toml"
    config.write_text('[ledger]\nrpc_url = "http://127.0.0.1:8601"\nport = 8601\n', encoding="utf-8")
    assert load_settings(config).ledger.rpc_url == "http://127.0.0.1:8601"
    config.write_text('[ledger]\nrpc_url = "http://127.0.0.1:8601"\nport = 8545\n', encoding="utf-8")
    with pytest.raises(PccConfigError, match=r"ledger.port \(8545\) is no longer a setting"):
        load_settings(config)
