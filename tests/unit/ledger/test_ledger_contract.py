"""The ledger's contract tests, run against each backend.

``LedgerContractTests`` holds every test; a subclass per backend provides the
``w3`` fixture: the in-process EVM here, anvil in
``tests/integration/test_ledger_anvil.py``.  Each test deploys fresh contracts.
"""

from __future__ import annotations

import os
import time

import pytest
from eth_utils import keccak
from web3 import Web3
from web3.logs import DISCARD

from ledger.chain import advance_time, in_process_web3, mine
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS
from ledger.deploy import Deployment, GovernanceParams, deploy
from ledger.errors import (
    DeploymentError,
    LedgerNotFoundError,
    LedgerPermissionError,
    LedgerRevert,
    LedgerRuleError,
)
from ledger.governance import ADMIN_ROLE, ROLE_CONTRACTS
from ledger.indexer import LedgerIndexer, OnChainRootSource
from ledger.keys import address_of, source_key
from ledger.market import TREASURY, FailedReceipt, QueryReceipt
from ledger.tx import Signer
from pipelines.errors import PccNotFoundError, PccPermissionError, PccValueError

OP, M1, M2, SRC, SRC2, CONSUMER, OUTSIDER, CONSUMER2 = (DEV_KEYS[i] for i in range(8))
ADDR = {k: address_of(k) for k in DEV_KEYS}
GOLD = 10**18
#: small delays: anvil's clock only moves forward, and the session's other tests share it
TIMELOCK_DELAY_S, WITHDRAWAL_DELAY_S = 5, 30


def root(n: int) -> bytes:
    return keccak(text=f"root-{n}")


class LedgerContractTests:
    """Every rule of the contracts, seen through the Python client."""

    @pytest.fixture
    def w3(self) -> Web3:
        raise NotImplementedError

    @pytest.fixture
    def client(self, w3: Web3) -> LedgerClient:
        op = Signer(w3, OP)
        params = GovernanceParams(
            voting_delay_blocks=1,
            voting_period_blocks=5,
            quorum_percent=10,
            fee_bps=1_000,
            timelock_delay_s=TIMELOCK_DELAY_S,
            withdrawal_delay_s=WITHDRAWAL_DELAY_S,
        )
        deployment = deploy(w3, op, {ADDR[M1]: 600 * GOLD, ADDR[M2]: 400 * GOLD}, params)
        c = LedgerClient(w3, deployment, op)
        c.sources.register("cc-aurora", "connected_car", ADDR[SRC], 1)
        c.sources.register("garage-ind-12", "garage", ADDR[SRC2], 3)
        return c

    def expect(self, error: type[LedgerRevert], name: str, call, *args, **kwargs) -> LedgerRevert:
        with pytest.raises(error) as info:
            call(*args, **kwargs)
        assert info.value.error_name == name, str(info.value)
        return info.value

    # -- deployment ------------------------------------------------------------------

    def test_manifest_round_trips_and_is_checked_against_the_chain(self, client: LedgerClient, tmp_path):
        path = client.deployment.write(tmp_path / "deployment.json")
        loaded = Deployment.read(path)
        assert loaded == client.deployment
        loaded.check(client.w3)
        wrong = Deployment(loaded.chain_id + 1, loaded.block, loaded.operator, loaded.contracts)
        with pytest.raises(DeploymentError, match="chain"):
            wrong.check(client.w3)

    # -- sources ---------------------------------------------------------------------

    def test_registered_source_reads_back(self, client: LedgerClient):
        info = client.sources.get("garage-ind-12")
        assert (info.kind, info.tier, info.active, info.account) == ("garage", 3, True, ADDR[SRC2])
        assert info.key == source_key("garage-ind-12")

    def test_only_the_registrar_registers_sources(self, client: LedgerClient):
        err = self.expect(
            LedgerPermissionError,
            "AccessControlUnauthorizedAccount",
            client.transact,
            client.contract("SourceRegistry").functions.register("ins-mutua", 2, ADDR[OUTSIDER], 2),
            "registering ins-mutua",
            OUTSIDER,
        )
        assert "REGISTRAR_ROLE" in str(err)
        assert isinstance(err, PccPermissionError)
        assert not client.sources.is_registered("ins-mutua")

    def test_registration_rejects_bad_tier_and_reused_account(self, client: LedgerClient):
        self.expect(
            LedgerRuleError, "InvalidTier", client.sources.register, "ins-mutua", "insurer", ADDR[OUTSIDER], 5
        )
        self.expect(
            LedgerRuleError,
            "AccountAlreadyUsed",
            client.sources.register,
            "ins-mutua",
            "insurer",
            ADDR[SRC],
            2,
        )
        assert not client.sources.is_registered("ins-mutua")

    def test_reputation_is_published_by_the_publisher_only(self, client: LedgerClient):
        client.sources.publish_reputations({"cc-aurora": 9_250})
        assert client.sources.get("cc-aurora").reputation_bps == 9_250
        facts = OnChainRootSource(client).source_info("cc-aurora")
        assert facts is not None and facts.reputation == pytest.approx(0.925) and facts.tier == 1
        assert OnChainRootSource(client).source_info("nobody-here") is None
        fn = client.contract("SourceRegistry").functions.publishReputations([source_key("cc-aurora")], [1])
        self.expect(
            LedgerPermissionError,
            "AccessControlUnauthorizedAccount",
            client.transact,
            fn,
            "publishing",
            OUTSIDER,
        )
        assert client.sources.get("cc-aurora").reputation_bps == 9_250

    # -- anchoring -------------------------------------------------------------------

    def test_anchored_checkpoints_read_back_and_are_indexed(self, client: LedgerClient):
        first = client.anchors.anchor("cc-aurora", 1024, root(1), SRC)
        second = client.anchors.anchor("cc-aurora", 2048, root(2), SRC)
        client.anchors.anchor("garage-ind-12", 10, root(3), SRC2)
        assert client.anchors.latest("cc-aurora") == (2048, root(2))
        assert client.anchors.root_at("cc-aurora", 1024) == root(1)
        assert client.anchors.root_at("cc-aurora", 1500) is None
        assert client.anchors.checkpoint_count("cc-aurora") == 2
        assert first.block < second.block and first.gas_used > 0
        indexer = LedgerIndexer(client, chunk=1)  # one block per eth_getLogs range
        found = indexer.checkpoints(client.deployment.block, source_id="cc-aurora")
        assert [(c.tree_size, c.root) for c in found] == [(1024, root(1)), (2048, root(2))]
        every = indexer.follow()
        assert {(c.source_key, c.tree_size) for c in every} == {
            (source_key("cc-aurora"), 1024),
            (source_key("cc-aurora"), 2048),
            (source_key("garage-ind-12"), 10),
        }
        assert indexer.follow() == []  # nothing new since
        assert indexer.source_ids()[source_key("garage-ind-12")] == "garage-ind-12"
        roots = OnChainRootSource(client)
        assert roots.checkpoint_root("cc-aurora", 2048) == root(2)
        assert roots.checkpoint("cc-aurora", 4096) is None

    def test_the_anchored_log_names_source_and_size_and_the_root_is_in_storage(self, client: LedgerClient):
        receipt = client.anchors.anchor("cc-aurora", 1024, root(1), SRC)
        registry = client.contract("AnchorRegistry")
        events = [item for item in registry.abi if item["type"] == "event"]
        assert [e["name"] for e in events] == ["Anchored"]  # the indexer reads every log of it as one
        logs = client.w3.eth.get_logs(
            {
                "address": registry.address,
                "fromBlock": receipt.block,
                "toBlock": receipt.block,
                "topics": ["0x" + source_key("cc-aurora").hex()],
            }
        )
        assert len(logs) == 1 and [bytes(t) for t in logs[0]["topics"]] == [source_key("cc-aurora")]
        assert int.from_bytes(bytes(logs[0]["data"]), "big") == 1024
        assert client.view(registry.functions.rootAt(source_key("cc-aurora"), 1024), "root") == root(1)

    def test_checkpoint_bounds_grow_by_one_up_to_48_bits(self, client: LedgerClient):
        client.anchors.anchor("cc-aurora", 1, root(1), SRC)
        client.anchors.anchor("cc-aurora", 2, root(2), SRC)  # growing by a single event is growth
        err = self.expect(
            LedgerRuleError, "TreeTooLarge", client.anchors.anchor, "cc-aurora", 2**48, root(3), SRC
        )
        assert str(2**48) in str(err)
        client.anchors.anchor("cc-aurora", 2**48 - 1, root(4), SRC)
        assert client.anchors.latest("cc-aurora") == (2**48 - 1, root(4))
        assert client.anchors.root_at("cc-aurora", 2) == root(2)
        assert client.anchors.checkpoint_count("cc-aurora") == 3

    def test_an_empty_root_is_rejected(self, client: LedgerClient):
        self.expect(LedgerRuleError, "EmptyRoot", client.anchors.anchor, "cc-aurora", 8, bytes(32), SRC)
        assert (
            client.anchors.latest("cc-aurora") is None and client.anchors.checkpoint_count("cc-aurora") == 0
        )

    def test_suspension_keeps_the_checkpoints_of_a_source(self, client: LedgerClient):
        client.anchors.anchor_many("cc-aurora", [(1024, root(1)), (2048, root(2))], SRC)
        client.anchors.anchor("garage-ind-12", 10, root(3), SRC2)
        client.sources.set_active("cc-aurora", False)
        client.sources.set_active("cc-aurora", True)
        assert client.anchors.latest("cc-aurora") == (2048, root(2))
        assert client.anchors.checkpoint_count("cc-aurora") == 2
        self.expect(
            LedgerRuleError, "CheckpointDoesNotGrow", client.anchors.anchor, "cc-aurora", 2048, root(9), SRC
        )
        client.anchors.anchor("cc-aurora", 3072, root(4), SRC)
        assert client.anchors.checkpoint_count("cc-aurora") == 3
        assert client.anchors.latest("garage-ind-12") == (10, root(3))  # the other source is untouched
        assert client.anchors.checkpoint_count("garage-ind-12") == 1

    @pytest.mark.parametrize("size", [1024, 1000], ids=["repeat", "shrink"])
    def test_a_checkpoint_must_grow_the_tree(self, client: LedgerClient, size: int):
        client.anchors.anchor("cc-aurora", 1024, root(1), SRC)
        err = self.expect(
            LedgerRuleError, "CheckpointDoesNotGrow", client.anchors.anchor, "cc-aurora", size, root(9), SRC
        )
        assert "latest tree size 1024" in str(err) and isinstance(err, PccValueError)
        assert client.anchors.latest("cc-aurora") == (1024, root(1))
        assert client.anchors.checkpoint_count("cc-aurora") == 1

    def test_an_unregistered_source_cannot_anchor(self, client: LedgerClient):
        err = self.expect(
            LedgerNotFoundError, "UnknownSource", client.anchors.anchor, "ins-mutua", 8, root(1), OUTSIDER
        )
        assert isinstance(err, PccNotFoundError)
        assert client.anchors.root_at("ins-mutua", 8) is None

    def test_a_suspended_source_cannot_anchor_until_reinstated(self, client: LedgerClient):
        client.sources.set_active("cc-aurora", False)
        assert client.sources.get("cc-aurora").active is False
        self.expect(
            LedgerPermissionError, "SourceSuspended", client.anchors.anchor, "cc-aurora", 8, root(1), SRC
        )
        assert client.anchors.latest("cc-aurora") is None
        client.sources.set_active("cc-aurora", True)
        client.anchors.anchor("cc-aurora", 8, root(1), SRC)
        assert client.anchors.latest("cc-aurora") == (8, root(1))

    def test_only_the_source_account_anchors_for_it(self, client: LedgerClient):
        self.expect(
            LedgerPermissionError, "NotSourceAccount", client.anchors.anchor, "cc-aurora", 8, root(1), SRC2
        )
        assert client.anchors.latest("cc-aurora") is None

    def test_pipelined_anchors_all_land_in_order(self, client: LedgerClient):
        checkpoints = [(1024 * (i + 1), root(i)) for i in range(5)]
        receipts = client.anchors.anchor_many("cc-aurora", checkpoints, SRC)
        assert [r.tree_size for r in receipts] == [c[0] for c in checkpoints]
        assert client.anchors.latest("cc-aurora") == checkpoints[-1]
        with pytest.raises(LedgerRuleError, match="must grow"):
            client.anchors.anchor_many("cc-aurora", [(5000, root(7))], SRC)

    # -- PCC_token -------------------------------------------------------------------

    def test_minting_needs_the_treasury_role(self, client: LedgerClient):
        err = self.expect(
            LedgerPermissionError,
            "AccessControlUnauthorizedAccount",
            client.tokens.mint,
            ADDR[OUTSIDER],
            500,
            "SEPA-1",
            OUTSIDER,
        )
        assert "TREASURY_ROLE" in str(err)
        assert client.tokens.balance(ADDR[OUTSIDER]) == 0 and client.tokens.total_supply() == 0

    def test_mint_and_redeem_carry_the_payment_reference(self, client: LedgerClient):
        assert client.view(client.tokens.token.functions.decimals(), "decimals") == 2
        client.tokens.mint(ADDR[CONSUMER], 12_345, "SEPA-2026-001")
        assert client.tokens.balance(ADDR[CONSUMER]) == 12_345
        indexer = LedgerIndexer(client)
        minted = indexer.events("PCCToken", "Minted", client.deployment.block, client.block_number)
        assert [(e.args["amount"], e.args["paymentRef"]) for e in minted] == [
            (12_345, keccak(text="SEPA-2026-001"))
        ]
        self.expect(
            LedgerRuleError,
            "ERC20InsufficientAllowance",
            client.tokens.redeem,
            ADDR[CONSUMER],
            345,
            "PAYOUT-1",
        )
        client.tokens.approve(ADDR[OP], 345, CONSUMER)
        client.tokens.redeem(ADDR[CONSUMER], 345, "PAYOUT-1")
        assert client.tokens.balance(ADDR[CONSUMER]) == 12_000 and client.tokens.total_supply() == 12_000

    def test_amounts_are_int_cents(self, client: LedgerClient):
        with pytest.raises(PccValueError, match="int cents"):
            client.tokens.mint(ADDR[CONSUMER], 12.5, "SEPA-3")  # type: ignore[arg-type]
        assert client.tokens.total_supply() == 0

    def test_only_governance_pauses_the_token(self, client: LedgerClient):
        client.tokens.mint(ADDR[CONSUMER], 1_000, "SEPA-4")
        pause = client.tokens.token.functions.pause()
        self.expect(
            LedgerPermissionError, "AccessControlUnauthorizedAccount", client.transact, pause, "pausing"
        )
        client.tokens.delegate(ADDR[M1], M1)
        action = client.governance.call_data("PCCToken", "pause")
        assert client.governance.enact([action], "Pause PCC_token", [M1]) == "Executed"
        assert client.tokens.paused()
        self.expect(LedgerRuleError, "EnforcedPause", client.tokens.transfer, ADDR[OUTSIDER], 10, CONSUMER)
        assert client.tokens.balance(ADDR[CONSUMER]) == 1_000

    # -- marketplace -----------------------------------------------------------------

    def _fund(self, client: LedgerClient, cents: int) -> None:
        client.tokens.mint(ADDR[CONSUMER], cents, "SEPA-consumer")
        client.tokens.approve(client.market.address, cents, CONSUMER)

    def test_token_flow_end_to_end(self, client: LedgerClient):
        self._fund(client, 10_000)
        receipts = [
            QueryReceipt(1, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 3, ADDR[SRC2]: 1}),
            QueryReceipt(2, ADDR[CONSUMER], 2_000, {ADDR[SRC]: 1}),
        ]
        client.market.settle(receipts)
        # 10 % fee: 300 cents to the treasury; producers: 900*3/4 + 1800 = 2475 and 900/4 = 225
        assert client.tokens.balance(ADDR[CONSUMER]) == 7_000
        assert client.market.credit(ADDR[SRC]) == 2_475 and client.market.credit(ADDR[SRC2]) == 225
        assert client.market.is_settled(1) and client.market.is_settled(2) and not client.market.is_settled(3)
        assert client.market.withdraw(SRC) == 2_475
        assert client.tokens.balance(ADDR[SRC]) == 2_475 and client.market.credit(ADDR[SRC]) == 0
        self.expect(LedgerNotFoundError, "NothingToWithdraw", client.market.withdraw, SRC)
        assert client.tokens.claimable(ADDR[M1]) == 180 and client.tokens.claimable(ADDR[M2]) == 120
        assert client.tokens.claim(M1) == 180 and client.tokens.claim(M2) == 120
        assert client.tokens.balance(ADDR[M1]) == 180 and client.tokens.balance(ADDR[M2]) == 120
        self.expect(LedgerNotFoundError, "NothingToClaim", client.tokens.claim, M1)
        assert client.tokens.total_supply() == 10_000  # nothing created or lost on the way

    def test_rows_the_consortium_derived_pay_the_treasury(self, client: LedgerClient):
        self._fund(client, 3_000)
        receipts = [
            QueryReceipt(1, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1, TREASURY: 1}),  # half producer rows
            QueryReceipt(2, ADDR[CONSUMER], 1_000, {TREASURY: 5}),  # only fraud scores
        ]
        client.market.settle(receipts)
        # fees 100 + 100; the rest 900 + 900 split: 450 to the producer, 450 + 900 to the treasury
        assert client.market.credit(ADDR[SRC]) == 450
        assert client.tokens.claimable(ADDR[M1]) + client.tokens.claimable(ADDR[M2]) == 1_550
        assert client.tokens.balance(ADDR[CONSUMER]) == 1_000
        assert client.tokens.total_supply() == 3_000

    def test_revenue_share_follows_gold_transfers(self, client: LedgerClient):
        self._fund(client, 2_000)
        client.market.settle([QueryReceipt(1, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1})])  # 100 cents of fees
        gold = client.tokens.gold.functions.transfer(ADDR[M2], 600 * GOLD)
        client.transact(gold, "moving gold", M1)
        client.market.settle([QueryReceipt(2, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1})])  # 100 more, all to M2
        assert client.tokens.claimable(ADDR[M1]) == 60
        assert client.tokens.claimable(ADDR[M2]) == 40 + 100

    def test_a_receipt_settled_twice_is_rejected(self, client: LedgerClient):
        self._fund(client, 5_000)
        client.market.settle([QueryReceipt(7, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1})])
        again = [
            QueryReceipt(8, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1}),
            QueryReceipt(7, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1}),
        ]
        err = self.expect(LedgerRuleError, "ReceiptAlreadySettled", client.market.settle, again)
        assert "receipt 7" in str(err)
        assert not client.market.is_settled(8)
        assert client.tokens.balance(ADDR[CONSUMER]) == 4_000 and client.market.credit(ADDR[SRC]) == 900

    def test_receipts_across_bitmap_words_and_duplicates_in_one_batch(self, client: LedgerClient):
        self._fund(client, 10_000)
        nos = [255, 256, 600, 3]
        client.market.settle([QueryReceipt(n, ADDR[CONSUMER], 100, {ADDR[SRC]: 1}) for n in nos])
        assert all(client.market.is_settled(n) for n in nos)
        assert not any(client.market.is_settled(n) for n in (254, 257, 599, 601))
        twice = [QueryReceipt(n, ADDR[CONSUMER], 100, {ADDR[SRC]: 1}) for n in (900, 901)]
        twice.append(QueryReceipt(900, ADDR[OUTSIDER], 100, {ADDR[SRC]: 1}))
        self.expect(LedgerRuleError, "ReceiptAlreadySettled", client.market.settle, twice)
        assert not client.market.is_settled(900) and client.tokens.balance(ADDR[CONSUMER]) == 9_600

    def test_receipts_beyond_the_consumer_funds_fail_alone_and_pay_nobody(self, client: LedgerClient):
        self._fund(client, 1_000)
        client.tokens.mint(ADDR[CONSUMER], 1_000, "SEPA-held")  # held, not approved: not collectable
        receipts = [
            QueryReceipt(1, ADDR[CONSUMER], 600, {ADDR[SRC]: 3, ADDR[SRC2]: 1, TREASURY: 1}),
            QueryReceipt(2, ADDR[CONSUMER], 300, {ADDR[SRC]: 1}),
            QueryReceipt(3, ADDR[CONSUMER], 500, {ADDR[SRC2]: 1}),  # 1,400 > 1,000: this one fails
        ]
        outcome = client.market.settle_receipts(receipts)
        assert outcome.settled == (1, 2)
        assert outcome.failed == (FailedReceipt(3, "consumer_funds", ADDR[CONSUMER]),)
        assert [client.market.is_settled(n) for n in (1, 2, 3)] == [True, True, False]
        # receipt 1: fee 60, 540 split 3:1:1 (324, 108, 108 to the treasury); receipt 2: fee 30, 270
        assert client.tokens.balance(ADDR[CONSUMER]) == 2_000 - 900
        assert client.market.credit(ADDR[SRC]) == 324 + 270 and client.market.credit(ADDR[SRC2]) == 108
        assert client.tokens.balance(client.deployment.address("PCCGold")) == 60 + 108 + 30
        client.tokens.approve(client.market.address, 500, CONSUMER)
        # a failed receipt can settle later
        assert client.market.settle_receipts(receipts[2:]).settled == (3,)
        assert client.market.credit(ADDR[SRC2]) == 108 + 450

    def test_escrowed_deposit_pays_first(self, client: LedgerClient):
        self._fund(client, 3_000)
        client.market.deposit(2_000, CONSUMER)
        client.market.settle([QueryReceipt(1, ADDR[CONSUMER], 1_500, {ADDR[SRC]: 1})])
        assert client.market.deposit_of(ADDR[CONSUMER]) == 500
        assert client.tokens.allowance(ADDR[CONSUMER], client.market.address) == 1_000  # untouched

    def test_settling_needs_the_settler_and_a_receipt_of_an_unknown_producer_fails_alone(
        self, client: LedgerClient
    ):
        self._fund(client, 1_000)
        receipt = QueryReceipt(1, ADDR[CONSUMER], 100, {ADDR[SRC]: 1})
        self.expect(
            LedgerPermissionError,
            "AccessControlUnauthorizedAccount",
            client.market.settle,
            [receipt],
            OUTSIDER,
        )
        stranger = QueryReceipt(2, ADDR[CONSUMER], 100, {ADDR[OUTSIDER]: 1})
        outcome = client.market.settle_receipts([receipt, stranger])
        assert outcome.settled == (1,)
        assert outcome.failed == (FailedReceipt(2, "unknown_producer", ADDR[OUTSIDER]),)
        assert client.market.is_settled(1) and not client.market.is_settled(2)
        assert client.tokens.balance(ADDR[CONSUMER]) == 900  # the failed receipt is not charged

    def test_one_batch_settles_around_a_suspended_producer_and_a_consumer_whose_funds_are_gone(
        self, client: LedgerClient
    ):
        """Neither a producer suspended after the query nor a consumer pulling its funds stops the batch."""
        # CONSUMER pays from a deposit and asks for it back; CONSUMER2 pays through an allowance it revokes
        client.tokens.mint(ADDR[CONSUMER], 2_000, "SEPA-consumer")
        client.tokens.approve(client.market.address, 2_000, CONSUMER)
        client.market.deposit(2_000, CONSUMER)
        client.tokens.mint(ADDR[CONSUMER2], 2_000, "SEPA-consumer-2")
        client.tokens.approve(client.market.address, 2_000, CONSUMER2)
        receipts = [
            QueryReceipt(1, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1}),
            QueryReceipt(2, ADDR[CONSUMER2], 500, {ADDR[SRC]: 1}),
            QueryReceipt(3, ADDR[CONSUMER], 500, {ADDR[SRC]: 3, ADDR[SRC2]: 1}),
            QueryReceipt(4, ADDR[CONSUMER], 200, {ADDR[SRC]: 1, TREASURY: 1}),
        ]
        client.market.request_withdrawal(2_000, CONSUMER)
        self.expect(LedgerRuleError, "WithdrawalNotReady", client.market.withdraw_deposit, CONSUMER)
        client.tokens.approve(client.market.address, 0, CONSUMER2)
        client.sources.set_active("garage-ind-12", False)

        tx = client.market.settle(receipts)

        failed = client.market.failures(tx)
        assert failed == [
            FailedReceipt(2, "consumer_funds", ADDR[CONSUMER2]),
            FailedReceipt(3, "suspended_producer", ADDR[SRC2]),
        ]
        settled = client.market.market.events.Settled().process_receipt(tx, errors=DISCARD)[0]["args"]
        assert (settled["receipts"], settled["failed"], settled["amount"]) == (2, 2, 1_200)
        assert [client.market.is_settled(n) for n in (1, 2, 3, 4)] == [True, False, False, True]
        # receipts 1 and 4 came out of the reserved deposit; nothing was taken for 2 and 3
        assert client.market.deposit_of(ADDR[CONSUMER]) == 800
        assert client.tokens.balance(ADDR[CONSUMER2]) == 2_000
        assert client.market.credit(ADDR[SRC]) == 900 + 90 and client.market.credit(ADDR[SRC2]) == 0
        client.sources.set_active("garage-ind-12", True)  # reinstated: its receipt settles on a retry
        assert client.market.settle_receipts([receipts[2]]).settled == (3,)
        assert client.market.credit(ADDR[SRC2]) == 450 // 4

    def test_a_deposit_is_reserved_for_the_withdrawal_delay_and_settlements_may_use_it(
        self, client: LedgerClient
    ):
        self._fund(client, 2_000)
        client.market.deposit(2_000, CONSUMER)
        assert client.market.spendable(ADDR[CONSUMER]) == 2_000
        self.expect(LedgerNotFoundError, "NoWithdrawalRequested", client.market.withdraw_deposit, CONSUMER)
        self.expect(LedgerRuleError, "InsufficientDeposit", client.market.request_withdrawal, 2_001, CONSUMER)
        asked = client.market.request_withdrawal(1_500, CONSUMER)
        assert asked.amount_cents == 1_500
        assert asked.ready_at >= client.w3.eth.get_block("latest")["timestamp"] + WITHDRAWAL_DELAY_S
        assert client.market.spendable(ADDR[CONSUMER]) == 500  # what new receipts may be issued against
        err = self.expect(LedgerRuleError, "WithdrawalNotReady", client.market.withdraw_deposit, CONSUMER)
        assert str(asked.ready_at) in str(err)
        client.market.settle([QueryReceipt(1, ADDR[CONSUMER], 1_000, {ADDR[SRC]: 1})])  # during the delay
        assert client.market.deposit_of(ADDR[CONSUMER]) == 1_000
        advance_time(client.w3, WITHDRAWAL_DELAY_S)
        assert client.market.withdraw_deposit(CONSUMER) == 1_000  # what the settlement left of the 1,500
        assert (
            client.market.deposit_of(ADDR[CONSUMER]) == 0
            and client.market.withdrawal_of(ADDR[CONSUMER]) is None
        )
        assert client.tokens.balance(ADDR[CONSUMER]) == 1_000
        client.tokens.approve(client.market.address, 1_000, CONSUMER)
        client.market.deposit(1_000, CONSUMER)
        client.market.request_withdrawal(1_000, CONSUMER)
        client.market.cancel_withdrawal(CONSUMER)
        assert (
            client.market.spendable(ADDR[CONSUMER]) == 1_000
            and client.market.withdrawal_of(ADDR[CONSUMER]) is None
        )

    # -- governance ------------------------------------------------------------------

    def test_governance_changes_parameters_and_admits_members(self, client: LedgerClient):
        set_fee = client.contract("Parameters").functions.setFeeBps(2_000)
        self.expect(
            LedgerPermissionError,
            "AccessControlUnauthorizedAccount",
            client.transact,
            set_fee,
            "setting the fee",
        )
        client.tokens.delegate(ADDR[M1], M1)
        actions = [
            client.governance.call_data("Parameters", "setFeeBps", 2_000),
            client.governance.call_data("Parameters", "setPrice", keccak(text="mileage"), 25),
            client.governance.call_data("SourceRegistry", "setTier", source_key("garage-ind-12"), 2),
            client.governance.call_data("PCCGold", "mint", ADDR[OUTSIDER], 100 * GOLD),
        ]
        assert (
            client.governance.enact(actions, "Fee 20 %, mileage 25 cents, tier 2, admit a member", [M1])
            == "Executed"
        )
        params = client.contract("Parameters").functions
        assert client.view(params.feeBps(), "fee") == 2_000
        assert client.view(params.pricePerCategory(keccak(text="mileage")), "price") == 25
        assert client.sources.get("garage-ind-12").tier == 2
        assert client.tokens.gold_balance(ADDR[OUTSIDER]) == 100 * GOLD
        self.expect(LedgerRuleError, "FeeTooHigh", client.governance.enact,
                    [client.governance.call_data("Parameters", "setFeeBps", 10_001)], "Fee above 100 %", [M1])  # fmt: skip

    def test_a_parameter_change_goes_propose_vote_queue_execute(self, client: LedgerClient):
        gov = client.governance
        client.tokens.delegate(ADDR[M1], M1)
        actions = [gov.call_data("Parameters", "setWithdrawalDelay", 3_600)]
        about = "Consumers' deposits stay reserved one hour after a withdrawal request"
        pid = gov.propose(actions, about, M1)
        assert gov.state(pid) == "Pending"
        mine(client.w3, 2)
        assert gov.state(pid) == "Active"
        gov.vote(pid, 1, M1)
        # still voting: nothing to queue yet
        self.expect(LedgerRuleError, "GovernorUnexpectedProposalState", gov.queue, actions, about)
        mine(client.w3, 6)
        assert gov.state(pid) == "Succeeded"
        gov.queue(actions, about)
        assert gov.state(pid) == "Queued"
        assert gov.eta(pid) >= client.w3.eth.get_block("latest")["timestamp"] + TIMELOCK_DELAY_S - 1
        # queued, but the timelock delay has not passed
        self.expect(LedgerRuleError, "TimelockUnexpectedOperationState", gov.execute, actions, about)
        advance_time(client.w3, TIMELOCK_DELAY_S)
        gov.execute(actions, about)
        assert gov.state(pid) == "Executed"
        assert client.view(client.contract("Parameters").functions.withdrawalDelay(), "delay") == 3_600
        # the calls ran from the timelock: neither the operator nor the Governor itself may make them
        for who in (OP, M1):
            self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount", client.transact,
                        client.contract("Parameters").functions.setWithdrawalDelay(1), "setting the delay", who)  # fmt: skip
        schedule = gov.timelock.functions.schedule(actions[0][0], 0, actions[0][1], bytes(32), bytes(32), 0)
        self.expect(
            LedgerPermissionError, "AccessControlUnauthorizedAccount", client.transact, schedule, "scheduling"
        )

    def test_after_the_handover_the_operator_cannot_grant_any_role(self, client: LedgerClient):
        gov = client.governance
        assert not gov.handed_over() and all(h.operator and not h.timelock for h in gov.admins()
                                             if h.contract != "PCCTimelock")  # fmt: skip
        assert gov.handover() == list(ROLE_CONTRACTS)
        assert gov.handed_over() and gov.handover() == []
        for name in ROLE_CONTRACTS:
            c = client.contract(name)
            roles = [f["name"] for f in c.abi if f["type"] == "function" and f["name"].endswith("_ROLE")]
            assert "DEFAULT_ADMIN_ROLE" in roles and len(roles) >= 2, name
            for role_name in roles:
                role = client.view(getattr(c.functions, role_name)(), role_name)
                # one admin for every role, so no other role-admin power is left behind
                admin = client.view(c.functions.getRoleAdmin(role), "role admin")
                assert admin == ADMIN_ROLE, (name, role_name)
                self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount", client.transact,
                            c.functions.grantRole(role, ADDR[OP]), f"granting {role_name} on {name}")  # fmt: skip
            self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount", client.transact,
                        c.functions.grantRole(ADMIN_ROLE, ADDR[OUTSIDER]), f"granting admin on {name}")  # fmt: skip
        # the operator still does its daily work with the roles it was given
        client.sources.register("ins-mutua", "insurer", ADDR[OUTSIDER], 2)
        self._fund(client, 100)
        client.market.settle([QueryReceipt(1, ADDR[CONSUMER], 100, {ADDR[SRC]: 1})])
        # and roles change only by a vote: here a second settler is appointed
        client.tokens.delegate(ADDR[M1], M1)
        settler = keccak(text="SETTLER_ROLE")
        appoint = [gov.call_data("Marketplace", "grantRole", settler, ADDR[M2])]
        assert gov.enact(appoint, "A second settler", [M1]) == "Executed"
        client.tokens.approve(client.market.address, 100, CONSUMER)
        client.tokens.mint(ADDR[CONSUMER], 100, "SEPA-more")
        client.market.settle([QueryReceipt(2, ADDR[CONSUMER], 100, {ADDR[SRC]: 1})], M2)
        assert client.market.is_settled(2)

    # -- access grants ---------------------------------------------------------------

    GRANT_HASH = keccak(text="a signed grant message")

    def grant(self, client: LedgerClient, vehicle: str, key: bytes, expiry: int, **kw) -> None:
        args = {"epoch": 0, "grantor_kind": "owner", "grant_hash": self.GRANT_HASH, **kw}
        client.access.grant(vehicle, "mileage", key, expiry, **args)

    def test_grants_expire_and_revocation_bumps_the_epoch(self, client: LedgerClient):
        vehicle = "v-" + "ab" * 16
        consumer_key = os.urandom(32)
        client.access.register_vehicles([vehicle])
        expiry = int(time.time()) + 3_600
        self.grant(client, vehicle, consumer_key, expiry)
        assert client.access.check(vehicle, "mileage", consumer_key).allowed
        assert client.access.check(vehicle, "mileage", consumer_key).epoch == 0
        assert not client.access.check(vehicle, "accident", consumer_key).allowed
        stored = client.access.grant_of(vehicle, "mileage", consumer_key)
        assert stored is not None
        assert (stored.expiry, stored.epoch, stored.grantor_kind, stored.grant_hash) == (
            expiry, 0, "owner", self.GRANT_HASH,
        )  # fmt: skip
        client.access.revoke(vehicle, "mileage", consumer_key)
        after = client.access.check(vehicle, "mileage", consumer_key)
        assert (after.allowed, after.epoch) == (False, 1)
        assert client.access.grant_of(vehicle, "mileage", consumer_key) is None
        self.expect(
            LedgerNotFoundError, "NoSuchGrant", client.access.revoke, vehicle, "mileage", consumer_key
        )
        self.expect(
            LedgerRuleError, "ExpiryInPast", self.grant, client, vehicle, consumer_key, 1_000, epoch=1
        )

    def test_a_grant_names_the_epoch_its_grantor_signed_a_kind_and_a_hash(self, client: LedgerClient):
        vehicle = "v-" + "ab" * 16
        key, expiry = os.urandom(32), int(time.time()) + 3_600
        client.access.register_vehicles([vehicle])
        client.access.rotate(vehicle, "mileage")
        assert client.access.epoch(vehicle, "mileage") == 1
        err = self.expect(LedgerRuleError, "StaleEpoch", self.grant, client, vehicle, key, expiry, epoch=0)
        assert "signed at key epoch 0, the current epoch is 1" in str(err)
        fn = client.access.registry.functions.grant
        vk, ck = keccak(text=vehicle), keccak(text="mileage")
        self.expect(LedgerRuleError, "InvalidGrantorKind", client.transact,
                    fn(vk, ck, key, expiry, 1, 3, self.GRANT_HASH), "granting")  # fmt: skip
        self.expect(LedgerRuleError, "EmptyGrantHash", client.transact,
                    fn(vk, ck, key, expiry, 1, 2, bytes(32)), "granting")  # fmt: skip
        self.grant(client, vehicle, key, expiry, epoch=1, grantor_kind="producer")
        assert client.access.check(vehicle, "mileage", key).allowed

    def test_only_a_grantor_grants_revokes_and_rotates(self, client: LedgerClient):
        vehicle = "v-" + "ab" * 16
        key, expiry = os.urandom(32), int(time.time()) + 3_600
        client.access.register_vehicles([vehicle])
        self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount", self.grant,
                    client, vehicle, key, expiry, as_=OUTSIDER)  # fmt: skip
        self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount",
                    client.access.rotate, vehicle, "mileage", OUTSIDER)  # fmt: skip
        self.grant(client, vehicle, key, expiry)
        self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount",
                    client.access.revoke, vehicle, "mileage", key, OUTSIDER)  # fmt: skip
        assert client.access.epoch(vehicle, "mileage") == 0
        self.expect(LedgerNotFoundError, "UnknownVehicle", client.access.rotate, "v-" + "cd" * 16, "mileage")

    def test_rotate_many_starts_the_next_epoch_of_each_category_in_one_transaction(
        self, client: LedgerClient
    ):
        vehicle = "v-" + "ef" * 16
        client.access.register_vehicles([vehicle])
        client.access.rotate(vehicle, "commercial")
        receipt = client.access.rotate_many(vehicle, ["commercial", "precise_location", "owner_identity"])
        assert [
            client.access.epoch(vehicle, c) for c in ("commercial", "precise_location", "owner_identity")
        ] == [
            2,
            1,
            1,
        ]
        rotated = client.access.registry.events.Rotated().process_receipt(receipt)
        assert [(e["args"]["category"], e["args"]["newEpoch"]) for e in rotated] == [
            (keccak(text="commercial"), 2),
            (keccak(text="precise_location"), 1),
            (keccak(text="owner_identity"), 1),
        ]
        self.expect(LedgerPermissionError, "AccessControlUnauthorizedAccount",
                    client.access.rotate_many, vehicle, ["commercial"], OUTSIDER)  # fmt: skip
        self.expect(LedgerNotFoundError, "UnknownVehicle", client.access.rotate_many, "v-" + "cd" * 16, ["x"])
        assert client.access.epoch(vehicle, "commercial") == 2

    def test_a_grant_for_an_unknown_pseudonym_is_rejected(self, client: LedgerClient):
        unknown = "v-" + "cd" * 16
        key = os.urandom(32)
        err = self.expect(
            LedgerNotFoundError, "UnknownVehicle", self.grant, client, unknown, key, int(time.time()) + 60
        )
        assert "not registered" in str(err)
        assert not client.access.check(unknown, "mileage", key).allowed


class TestLedgerInProcessEVM(LedgerContractTests):
    """The contract tests on py-evm (small and fast: a fresh chain per test)."""

    @pytest.fixture
    def w3(self) -> Web3:
        return in_process_web3()
