"""Nobody can stop the others being paid, on a real anvil node with governance handed over.

The serving side's settler settles one batch holding a receipt of a consumer that tried to take
its deposit back (reserved: it pays), one of a consumer that did take it back after the delay, one
of a suspended producer and one of a producer the registry does not know: everything else settles,
the failed ones are recorded with their reason, reported by ``pcc market receipts --failed``, and
never tried again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.chain import node
from ledger.chain import advance_time, connect_url
from ledger.cli import app as ledger_cli
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import GovernanceParams, deploy
from ledger.errors import LedgerRuleError
from ledger.keys import address_of
from ledger.tx import Signer
from serving.market.chain import ChainBilling
from serving.market.cli import app as market_cli
from serving.market.pricing import Quote
from serving.market.receipts import ReceiptStore
from serving.market.settlement import Settler

pytestmark = pytest.mark.integration

OP, MEMBER, SRC, SRC2, KEEPS, LEAVES, STAYS = (DEV_KEYS[i] for i in (0, 1, 2, 3, 5, 6, 7))
WITHDRAWAL_DELAY_S = 20


@pytest.fixture
def env(
    anvil_node: node.NodeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LedgerClient, Path]]:
    """A fresh deployment on the session's anvil, its manifest and data dir in the environment."""
    w3 = connect_url(anvil_node.url)
    op = Signer(w3, OP)
    params = GovernanceParams(
        voting_period_blocks=3, timelock_delay_s=5, withdrawal_delay_s=WITHDRAWAL_DELAY_S
    )
    deployment = deploy(w3, op, {address_of(MEMBER): 10**18}, params)
    manifest = deployment.write(tmp_path / "ledger" / "deployment.json")
    for name, value in {
        "PCC__DATA_DIR": str(tmp_path),
        "PCC__LEDGER__RPC_URL": anvil_node.url,
        "PCC__LEDGER__CHAIN": "anvil",
        "PCC__LEDGER__MANIFEST": str(manifest),
    }.items():
        monkeypatch.setenv(name, value)
    yield LedgerClient(w3, deployment, op), tmp_path


def run(app, *args: str) -> str:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_one_batch_settles_around_a_withdrawing_consumer_and_a_suspended_producer(
    env: tuple[LedgerClient, Path],
):
    client, data = env
    assert "handed over: PCCToken, PCCGold, PCCTimelock" in run(ledger_cli, "handover", "--yes")
    assert "governance: handed over" in run(ledger_cli, "status")
    client.sources.register("cc-aurora", "connected_car", address_of(SRC), 1)
    client.sources.register("garage-net-03", "garage", address_of(SRC2), 2)
    for key in (KEEPS, LEAVES, STAYS):
        client.tokens.mint(address_of(key), 5_000, f"SEPA-{address_of(key)}")
        key_file = data / f"{address_of(key)}.key"
        key_file.write_text(key, encoding="ascii")
        assert "deposited 1000 cents; 1000 spendable" in run(
            market_cli, "deposit", "1000", "--key-file", str(key_file)
        )
    billing = ChainBilling(client)
    billing.require_active_producers(["cc-aurora", "garage-net-03"])  # checked when receipts are issued
    store = ReceiptStore(data / "serving" / "receipts.sqlite", "0x" + "44" * 32)
    try:

        def issue(key: str, cents: int, producer: str = "cc-aurora") -> int:
            quote = Quote(cents, 1000, {producer: {"rows": cents, "cents": cents}}, "rows", "v1")
            return int(
                store.issue(address_of(key), f"n-{key[-6:]}-{cents}-{producer}", "ab" * 32, quote)[
                    "receipt_no"
                ]
            )

        paid = [issue(KEEPS, 100), issue(STAYS, 200), issue(STAYS, 300)]
        keeps, leaves = issue(KEEPS, 400), issue(LEAVES, 500)
        suspended, unknown = issue(STAYS, 150, "garage-net-03"), issue(STAYS, 50, "ins-nobody")

        # KEEPS asks its whole deposit back and tries to take it at once: refused, it stays reserved
        run(market_cli, "request-withdrawal", "1000", "--key-file", str(data / f"{address_of(KEEPS)}.key"))
        assert client.market.spendable(address_of(KEEPS)) == 0
        with pytest.raises(LedgerRuleError, match="WithdrawalNotReady"):
            client.market.withdraw_deposit(KEEPS)
        # LEAVES waits out the delay (the settler was down that long) and takes its deposit back
        client.market.request_withdrawal(1_000, LEAVES)
        advance_time(client.w3, WITHDRAWAL_DELAY_S)
        assert client.market.withdraw_deposit(LEAVES) == 1_000
        client.sources.set_active("garage-net-03", False)

        hashes = Settler(store, billing).settle_pending()

        assert len(hashes) == 1
        assert all(client.market.is_settled(n) for n in [*paid, keeps])
        assert not any(client.market.is_settled(n) for n in (leaves, suspended, unknown))
        assert client.market.deposit_of(address_of(KEEPS)) == 1_000 - 100 - 400  # paid from the reserve
        assert client.market.credit(address_of(SRC)) == (100 + 200 + 300 + 400) * 9 // 10
        assert client.market.credit(address_of(SRC2)) == 0
        failed = {f["receipt_no"]: (f["reason"], f["party"]) for f in store.failed()}
        assert failed == {
            leaves: ("consumer_funds", address_of(LEAVES)),
            suspended: ("suspended_producer", address_of(SRC2)),
            unknown: ("unknown_producer", "ins-nobody"),
        }
        assert store.pending() == [] and Settler(store, billing).settle_pending() == []  # never again

        report = run(market_cli, "receipts", "--failed")  # read while the service holds the file
        for no, (reason, party) in failed.items():
            assert f"receipt {no}: " in report and f"{reason} ({party})" in report
        assert "3 failed (700 cents)" in run(market_cli, "receipts")
        assert "4 settled (1000 cents)" in run(market_cli, "receipts")
        shown = run(market_cli, "funds", address_of(KEEPS))
        assert "500 cents deposited, 0 spendable" in shown and "asked back: 1000 cents" in shown
    finally:
        store.close()
