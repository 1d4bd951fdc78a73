"""The Marketplace (settling query receipts, consumers' deposits) and the AccessRegistry (grants).

Settlement is per receipt: :meth:`MarketApi.settle_receipts` sends a batch and
reads back which receipts the Marketplace left unsettled and why
(``ReceiptFailed``: an unknown or suspended producer, a consumer that cannot
pay).  A consumer's deposit is its reserve for unsettled receipts: it asks for
it back (:meth:`MarketApi.request_withdrawal`) and takes it after the
withdrawal delay (:meth:`MarketApi.withdraw_deposit`); settlements may draw on
it meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from ledger import keys
from ledger.errors import LedgerRuleError
from ledger.tokens import Key

if TYPE_CHECKING:
    from ledger.client import LedgerClient


#: Share key for the consortium's own rows, paid to the treasury (Marketplace.TREASURY_SHARE).
TREASURY = "treasury"
TREASURY_INDEX = 0xFFFF


@dataclass(frozen=True)
class QueryReceipt:
    """What one paid query owes: ``amount_cents`` split by ``shares`` (producer account -> weight).

    The key :data:`TREASURY` stands for rows the consortium itself derived (fraud
    scores, reputations): that share goes to the treasury, i.e. PCC_gold holders.
    """

    receipt_no: int
    consumer: str
    amount_cents: int
    shares: dict[str, int]


#: Why the Marketplace left a receipt unsettled (``Marketplace.FAIL_*`` of ``ReceiptFailed``).
FAIL_REASONS = {1: "unknown_producer", 2: "suspended_producer", 3: "consumer_funds"}
_RECEIPT_FAILED = keccak(text="ReceiptFailed(uint256,uint8,address)")


@dataclass(frozen=True)
class FailedReceipt:
    """A receipt the Marketplace did not settle: ``reason`` (:data:`FAIL_REASONS`) and who caused it."""

    receipt_no: int
    reason: str
    party: str  # the producer's or the consumer's account


@dataclass(frozen=True)
class Settlement:
    """What one settlement transaction did, receipt by receipt."""

    tx_hash: str
    block: int
    gas_used: int
    settled: tuple[int, ...]
    failed: tuple[FailedReceipt, ...]


@dataclass(frozen=True)
class Withdrawal:
    """A consumer's pending request to take ``amount_cents`` of its deposit back from ``ready_at`` (unix s)."""

    amount_cents: int
    ready_at: int


@dataclass(frozen=True)
class Grant:
    allowed: bool
    expiry: int
    epoch: int


class MarketApi:
    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def market(self) -> Contract:
        return self._c.contract("Marketplace")

    @property
    def address(self) -> str:
        return str(self.market.address)

    def encode(self, receipts: Sequence[QueryReceipt]) -> tuple[list[str], list[str], list[int]]:
        """The compact call arguments (consumers, producers, words); see ``Marketplace.sol``."""
        consumers: dict[str, int] = {}
        producers: dict[str, int] = {}
        words: list[int] = []
        for r in sorted(receipts, key=lambda r: r.receipt_no):  # sorted: few bitmap words
            amount = keys.cents(r.amount_cents)
            if not 0 <= r.receipt_no < 2**64:
                raise LedgerRuleError(f"receipt number {r.receipt_no} must be between 0 and 2^64")
            if amount >= 2**96 or not r.shares or len(r.shares) >= 2**16:
                raise LedgerRuleError(
                    f"receipt {r.receipt_no} needs an amount below 2^96 and 1 to 65535 shares"
                )
            consumer = consumers.setdefault(Web3.to_checksum_address(r.consumer), len(consumers))
            words.append(r.receipt_no | amount << 64 | consumer << 160 | len(r.shares) << 176)
            for producer, weight in sorted(r.shares.items()):
                if not 0 <= weight < 2**32:
                    raise LedgerRuleError(f"receipt {r.receipt_no}: share weight {weight} must fit 32 bits")
                if producer == TREASURY:
                    index = TREASURY_INDEX
                else:
                    index = producers.setdefault(Web3.to_checksum_address(producer), len(producers))
                words.append(index | weight << 16)
        if len(consumers) >= 2**16 or len(producers) >= TREASURY_INDEX:
            raise LedgerRuleError("a batch names at most 65535 consumers and 65534 producers")
        return list(consumers), list(producers), words

    def settle(self, receipts: Sequence[QueryReceipt], as_: Key = None) -> TxReceipt:
        """Settle receipts in one transaction (settler role), each on its own (see :meth:`failures`)."""
        if not receipts:
            raise LedgerRuleError("no receipt to settle")
        consumers, producers, words = self.encode(receipts)
        fn = self.market.functions.settle(consumers, producers, words)
        nos = sorted(r.receipt_no for r in receipts)
        return self._c.transact(fn, f"settling {len(receipts)} receipts ({nos[0]}..{nos[-1]})", as_)

    def settle_receipts(self, receipts: Sequence[QueryReceipt], as_: Key = None) -> Settlement:
        """Settle receipts in one transaction; which settled, which failed and why."""
        tx = self.settle(receipts, as_)
        failed = self.failures(tx)
        bad = {f.receipt_no for f in failed}
        return Settlement(
            tx_hash="0x" + bytes(tx["transactionHash"]).hex(),
            block=int(tx["blockNumber"]),
            gas_used=int(tx["gasUsed"]),
            settled=tuple(sorted(r.receipt_no for r in receipts if r.receipt_no not in bad)),
            failed=tuple(failed),
        )

    def failures(self, tx: TxReceipt) -> list[FailedReceipt]:
        """The receipts a settlement transaction left unsettled (its ``ReceiptFailed`` logs), by number."""
        event = self.market.events.ReceiptFailed()
        out = []
        for log in tx["logs"]:
            if Web3.to_checksum_address(log["address"]) != self.market.address:
                continue
            if not log["topics"] or bytes(log["topics"][0]) != _RECEIPT_FAILED:
                continue
            args = event.process_log(log)["args"]
            reason = FAIL_REASONS.get(int(args["reason"]), f"reason {args['reason']}")
            out.append(FailedReceipt(int(args["receiptNo"]), reason, str(args["party"])))
        return sorted(out, key=lambda f: f.receipt_no)

    def is_settled(self, receipt_no: int) -> bool:
        return bool(
            self._c.view(self.market.functions.isSettled(receipt_no), f"reading receipt {receipt_no}")
        )

    def credit(self, producer: str) -> int:
        """Cents credited to ``producer`` and not yet withdrawn."""
        fn = self.market.functions.credits(Web3.to_checksum_address(producer))
        return int(self._c.view(fn, f"reading the credit of {producer}"))

    def deposit_of(self, consumer: str) -> int:
        fn = self.market.functions.deposits(Web3.to_checksum_address(consumer))
        return int(self._c.view(fn, f"reading the deposit of {consumer}"))

    def spendable(self, consumer: str) -> int:
        """Cents of ``consumer``'s deposit that new receipts may use: the deposit less what it asked back."""
        fn = self.market.functions.spendable(Web3.to_checksum_address(consumer))
        return int(self._c.view(fn, f"reading the spendable deposit of {consumer}"))

    def deposit(self, amount_cents: int, as_: Key) -> TxReceipt:
        """Deposit cents for future queries (approve the Marketplace first)."""
        fn = self.market.functions.deposit(keys.cents(amount_cents))
        return self._c.transact(fn, f"depositing {amount_cents} cents", as_)

    def request_withdrawal(self, amount_cents: int, as_: Key) -> Withdrawal:
        """Ask for part of the deposit back; it can be withdrawn after the withdrawal delay."""
        signer = self._c.signer_for(as_)
        fn = self.market.functions.requestWithdrawal(keys.cents(amount_cents))
        self._c.transact(fn, f"asking {amount_cents} cents of the deposit of {signer.address} back", signer)
        pending = self.withdrawal_of(signer.address)
        assert pending is not None
        return pending

    def cancel_withdrawal(self, as_: Key) -> TxReceipt:
        return self._c.transact(
            self.market.functions.cancelWithdrawal(), "cancelling a withdrawal request", as_
        )

    def withdraw_deposit(self, as_: Key) -> int:
        """Take back what was asked for once its delay has passed; returns the cents received."""
        signer = self._c.signer_for(as_)
        before = self.deposit_of(signer.address)
        self._c.transact(
            self.market.functions.withdrawDeposit(), f"withdrawing the deposit of {signer.address}", signer
        )
        return before - self.deposit_of(signer.address)

    def withdrawal_of(self, consumer: str) -> Withdrawal | None:
        """``consumer``'s pending withdrawal request, or None."""
        fn = self.market.functions.withdrawals(Web3.to_checksum_address(consumer))
        amount, ready_at = self._c.view(fn, f"reading the withdrawal request of {consumer}")
        return Withdrawal(int(amount), int(ready_at)) if ready_at else None

    def withdraw(self, as_: Key) -> int:
        """A producer pulls its credits; returns the cents received."""
        signer = self._c.signer_for(as_)
        amount = self.credit(signer.address)
        self._c.transact(
            self.market.functions.withdraw(), f"withdrawing the credit of {signer.address}", signer
        )
        return amount


#: On-chain grantor kinds (``AccessRegistry.GRANTOR_OWNER`` / ``GRANTOR_PRODUCER``).
GRANTOR_KINDS = {"owner": 1, "producer": 2}


@dataclass(frozen=True)
class GrantRecord:
    """A grant as the AccessRegistry stores it (hashes and kinds only, no personal data)."""

    expiry: int
    epoch: int
    grantor_kind: str
    grant_hash: bytes


class AccessApi:
    """Per vehicle pseudonym and data category: grants to a consumer public key."""

    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def registry(self) -> Contract:
        return self._c.contract("AccessRegistry")

    def register_vehicles(self, pseudonyms: Sequence[str], as_: Key = None) -> TxReceipt:
        fn = self.registry.functions.registerVehicles([keys.vehicle_key(p) for p in pseudonyms])
        return self._c.transact(fn, f"registering {len(pseudonyms)} vehicle pseudonyms", as_)

    def is_vehicle(self, pseudonym: str) -> bool:
        fn = self.registry.functions.isVehicle(keys.vehicle_key(pseudonym))
        return bool(self._c.view(fn, f"looking up vehicle {pseudonym}"))

    def grant(
        self,
        pseudonym: str,
        category: str,
        consumer_key: bytes,
        expiry: int,
        *,
        epoch: int,
        grantor_kind: str,
        grant_hash: bytes,
        as_: Key = None,
    ) -> TxReceipt:
        """Record a grant made at key ``epoch`` by an ``owner`` or ``producer`` (hash of its signed message)."""
        if grantor_kind not in GRANTOR_KINDS:
            raise LedgerRuleError(f"grantor kind {grantor_kind!r} must be one of {', '.join(GRANTOR_KINDS)}")
        fn = self.registry.functions.grant(
            keys.vehicle_key(pseudonym),
            keys.category_key(category),
            _key32(consumer_key),
            expiry,
            epoch,
            GRANTOR_KINDS[grantor_kind],
            _hash32(grant_hash),
        )
        return self._c.transact(fn, f"granting {category} of {pseudonym}", as_)

    def revoke(self, pseudonym: str, category: str, consumer_key: bytes, as_: Key = None) -> TxReceipt:
        fn = self.registry.functions.revoke(
            keys.vehicle_key(pseudonym), keys.category_key(category), _key32(consumer_key)
        )
        return self._c.transact(fn, f"revoking {category} of {pseudonym}", as_)

    def rotate(self, pseudonym: str, category: str, as_: Key = None) -> TxReceipt:
        """Start the next key epoch of (vehicle, category) without revoking a grant."""
        fn = self.registry.functions.rotate(keys.vehicle_key(pseudonym), keys.category_key(category))
        return self._c.transact(fn, f"rotating the {category} key of {pseudonym}", as_)

    def rotate_many(self, pseudonym: str, categories: Sequence[str], as_: Key = None) -> TxReceipt:
        """Start the next key epoch of each of ``categories`` of one vehicle, in one transaction."""
        fn = self.registry.functions.rotateMany(
            keys.vehicle_key(pseudonym), [keys.category_key(c) for c in categories]
        )
        return self._c.transact(fn, f"rotating the {', '.join(categories)} keys of {pseudonym}", as_)

    def epoch(self, pseudonym: str, category: str) -> int:
        fn = self.registry.functions.epochOf(keys.vehicle_key(pseudonym), keys.category_key(category))
        return int(self._c.view(fn, f"reading the {category} key epoch of {pseudonym}"))

    def grant_of(self, pseudonym: str, category: str, consumer_key: bytes) -> GrantRecord | None:
        """The stored grant, or None."""
        fn = self.registry.functions.grantOf(
            keys.vehicle_key(pseudonym), keys.category_key(category), _key32(consumer_key)
        )
        expiry, epoch, kind, exists, grant_hash = self._c.view(
            fn, f"reading the grant of {category} of {pseudonym}"
        )
        if not exists:
            return None
        return GrantRecord(int(expiry), int(epoch), _KIND_NAMES[int(kind)], bytes(grant_hash))

    def check(self, pseudonym: str, category: str, consumer_key: bytes) -> Grant:
        fn = self.registry.functions.check(
            keys.vehicle_key(pseudonym), keys.category_key(category), _key32(consumer_key)
        )
        allowed, expiry, epoch = self._c.view(fn, f"checking {category} of {pseudonym}")
        return Grant(bool(allowed), int(expiry), int(epoch))


_KIND_NAMES = {v: k for k, v in GRANTOR_KINDS.items()}


def _hash32(grant_hash: bytes) -> bytes:
    if not isinstance(grant_hash, bytes | bytearray) or len(grant_hash) != 32:
        raise LedgerRuleError("a grant hash is 32 bytes (SHA-256 of the signed grant message)")
    return bytes(grant_hash)


def _key32(consumer_key: bytes) -> bytes:
    if not isinstance(consumer_key, bytes | bytearray) or len(consumer_key) != 32:
        raise LedgerRuleError("a consumer public key is 32 bytes (X25519/Ed25519)")
    return bytes(consumer_key)
