"""EIP-712 signed requests against a real ``pcc serve``: a consumer in JavaScript (Node 20 and the
``ethers`` npm package, pinned in tests/js) signs requests the service accepts, and one signed for
another chain is refused; the Python client learns the service's domain and can pin it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from infra.chain.npm import ensure_npm_packages
from serving.auth import ZERO_ADDRESS, RequestDomain, request_digest, sign_request, typed_request
from serving.client import PccClient
from serving.errors import AuthenticationError
from tests.fixtures.serving import CONSUMER_KEY, RunningServer, vehicle_id

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SQL = f"SELECT event_id, odometer_km FROM vehicle_history WHERE vehicle = '{vehicle_id(2)}'"


@pytest.fixture(scope="module")
def node() -> str:
    """``node`` with tests/js's pinned packages installed (``npm ci`` once per lock file)."""
    binary = shutil.which("node")
    assert binary is not None, "Node.js 20+ is needed (it also runs the anvil and solc npm packages)"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 20, f"Node.js 20+ is needed, found {version}"
    ensure_npm_packages(JS_DIR)
    return binary


def _js(node: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [node, str(JS_DIR / "consumer.mjs"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=JS_DIR,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_an_ethers_signed_query_is_accepted_and_billed(node: str, serving_service: RunningServer) -> None:
    body = orjson.dumps({"sql": SQL, "format": "json"}).decode()
    out = _js(node, "request", serving_service.url, CONSUMER_KEY, "POST", "/v1/query", body)
    assert out["status"] == 200, out["body"]
    assert out["body"]["rows"] and out["body"]["receipt"]["consumer"] == out["account"]
    assert out["body"]["receipt"]["amount_cents"] > 0
    # ethers hashed the typed data exactly as the service does
    with PccClient(serving_service.url, CONSUMER_KEY) as client:
        domain = client.domain()
        receipts = {r["receipt_no"] for r in client.receipts()}
    assert out["body"]["receipt"]["receipt_no"] in receipts
    message = out["message"]
    ours = request_digest(
        domain, "POST", "/v1/query", body.encode(), message["nonce"], int(message["expires"])
    )
    assert out["digest"] == "0x" + ours.hex()


def test_an_ethers_signed_get_is_accepted(node: str, serving_service: RunningServer) -> None:
    out = _js(node, "request", serving_service.url, CONSUMER_KEY, "GET", "/v1/receipts?limit=3")
    assert out["status"] == 200, out["body"]
    assert out["body"]["consumer"] == out["account"]


def test_a_request_ethers_signed_for_another_chain_is_refused(
    node: str, serving_service: RunningServer
) -> None:
    body = orjson.dumps({"sql": SQL}).decode()
    out = _js(
        node, "request", serving_service.url, CONSUMER_KEY, "POST", "/v1/query", body, "--chain-id", "1"
    )
    assert out["status"] == 401
    assert "another deployment" in out["body"]["message"]
    assert "chain id 1 (this service: 31337)" in out["body"]["message"]


def test_ethers_recovers_the_python_clients_signature(node: str, serving_service: RunningServer) -> None:
    with PccClient(serving_service.url, CONSUMER_KEY) as client:
        domain = client.domain()
    body = b'{"sql": "SELECT 1"}'
    headers = sign_request(CONSUMER_KEY, "POST", "/v1/quote", body, domain=domain, nonce="js-check-0001")
    typed = typed_request(domain, "POST", "/v1/quote", body, "js-check-0001", int(headers["X-PCC-Expires"]))
    out = _js(node, "verify", json.dumps(typed), headers["X-PCC-Signature"])
    assert out["account"] == headers["X-PCC-Account"]


def test_the_python_client_learns_the_domain_and_can_pin_its_chain(serving_service: RunningServer) -> None:
    document = httpx.get(serving_service.url + "/v1/domain").json()
    assert document["domain"]["chainId"] == 31337 and document["domain"]["verifyingContract"] == ZERO_ADDRESS
    assert document["host"] == "127.0.0.1:8600"  # the fixture's settings: no public_host, default port
    with PccClient(serving_service.url, CONSUMER_KEY, chain_id=31337) as client:
        assert client.domain() == RequestDomain.from_document(document)
        assert client.quote("SELECT count(*) FROM vehicle_history")["amount_cents"] >= 0
    with (
        PccClient(serving_service.url, CONSUMER_KEY, chain_id=1) as pinned,
        pytest.raises(AuthenticationError, match="refusing to sign for another deployment"),
    ):
        pinned.quote("SELECT count(*) FROM vehicle_history")
    elsewhere = RequestDomain(31337, ZERO_ADDRESS, "staging.pcc.example")
    with (
        PccClient(serving_service.url, CONSUMER_KEY, domain=elsewhere) as wrong_host,
        pytest.raises(
            AuthenticationError, match=r"host staging\.pcc\.example \(this service: 127\.0\.0\.1:8600\)"
        ),
    ):
        wrong_host.quote("SELECT count(*) FROM vehicle_history")
