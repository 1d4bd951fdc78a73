"""The ledger client: one object other layers use to talk to the contracts.

``LedgerClient`` wires a web3 connection, the deployment manifest and a local
signer; its parts are small objects beside it:

- ``client.sources`` / ``client.anchors`` (this module): register producers,
  anchor and read checkpoints;
- ``client.tokens`` (:mod:`ledger.tokens`): PCC_token mint/burn/balances,
  PCC_gold revenue claims;
- ``client.governance`` (:mod:`ledger.governance`): proposals through the
  Governor and its timelock, and the operator's handover of every admin role;
- ``client.market`` / ``client.access`` (:mod:`ledger.market`): settle query
  receipts, access grants.

Token amounts are ``int`` cents.  Reverts raise :class:`ledger.errors.LedgerRevert`
subclasses naming the broken rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from ledger import keys
from ledger.chain import connect
from ledger.config import LedgerConfig
from ledger.deploy import Deployment, contract
from ledger.errors import LedgerRuleError, LedgerUnavailable
from ledger.tx import Signer, translating, wait, wait_all
from pipelines.producer.protocols import AnchorReceipt
from pipelines.settings import Settings

ANCHOR_GAS = 150_000  # fixed limit for pipelined anchors (one costs ~51k)


class LedgerClient:
    """Contracts of one deployment, signing as ``signer`` unless a call names another."""

    def __init__(self, w3: Web3, deployment: Deployment, signer: Signer) -> None:
        from ledger.governance import GovernanceApi
        from ledger.market import AccessApi, MarketApi
        from ledger.tokens import TokenApi

        self.w3 = w3
        self.deployment = deployment
        self.signer = signer
        self._contracts: dict[str, Contract] = {}
        self._signers: dict[str, Signer] = {signer.address: signer}
        self.sources = SourcesApi(self)
        self.anchors = AnchorsApi(self)
        self.tokens = TokenApi(self)
        self.governance = GovernanceApi(self)
        self.market = MarketApi(self)
        self.access = AccessApi(self)

    @classmethod
    def from_settings(cls, settings: Settings, w3: Web3 | None = None) -> LedgerClient:
        config = LedgerConfig.from_settings(settings)
        w3 = w3 or connect(config)
        deployment = Deployment.read(config.manifest)
        with translating("checking the deployment"):
            deployment.check(w3)
        return cls(w3, deployment, Signer(w3, config.deployer_key))

    def contract(self, name: str) -> Contract:
        if name not in self._contracts:
            self._contracts[name] = contract(self.w3, name, self.deployment.address(name))
        return self._contracts[name]

    def signer_for(self, key: SecretStr | str | Signer | None) -> Signer:
        """The signer of ``key`` (reused, so its nonce counter is shared); None = operator."""
        if key is None:
            return self.signer
        if isinstance(key, Signer):
            return key
        fresh = Signer(self.w3, key)
        return self._signers.setdefault(fresh.address, fresh)

    def transact(self, fn: Any, context: str, as_: SecretStr | str | Signer | None = None) -> TxReceipt:
        """Send one call (gas estimated first: a revert raises before anything is mined)."""
        signer = self.signer_for(as_)
        tx_hash = signer.send(fn, context)
        try:
            return wait(self.w3, tx_hash, context)
        except LedgerUnavailable:
            # sent, but the node went away before its receipt: it may have mined it or lost it;
            # count the nonce again from the chain so that a lost transaction leaves no gap
            signer.reset_nonce()
            raise

    def view(self, fn: Any, context: str) -> Any:
        with translating(context):
            return fn.call({"from": self.signer.address})

    @property
    def block_number(self) -> int:
        with translating("reading the block number"):
            return int(self.w3.eth.block_number)


@dataclass(frozen=True)
class SourceInfo:
    source_id: str | None
    key: bytes
    account: str
    kind: str
    tier: int
    active: bool
    reputation_bps: int


class SourcesApi:
    """The SourceRegistry: who may write."""

    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def _registry(self) -> Contract:
        return self._c.contract("SourceRegistry")

    def register(self, source_id: str, kind: str, account: str, tier: int) -> TxReceipt:
        keys.source_key(source_id)  # validates the id before spending gas
        fn = self._registry.functions.register(
            source_id, keys.source_kind(kind), Web3.to_checksum_address(account), tier
        )
        return self._c.transact(fn, f"registering source {source_id}")

    def set_active(self, source_id: str, active: bool) -> TxReceipt:
        fn = self._registry.functions.setActive(keys.source_key(source_id), active)
        return self._c.transact(fn, f"{'reinstating' if active else 'suspending'} source {source_id}")

    def publish_reputations(self, scores_bps: dict[str, int]) -> TxReceipt:
        ids = sorted(scores_bps)
        fn = self._registry.functions.publishReputations(
            [keys.source_key(i) for i in ids], [scores_bps[i] for i in ids]
        )
        return self._c.transact(fn, f"publishing {len(ids)} reputation scores")

    def get(self, source_id: str) -> SourceInfo:
        key = keys.source_key(source_id)
        s = self._c.view(self._registry.functions.getSource(key), f"reading source {source_id}")
        account, kind, tier, active, reputation = s
        return SourceInfo(source_id, key, str(account), keys.SOURCE_KINDS[kind], tier, active, reputation)

    def is_registered(self, source_id: str) -> bool:
        fn = self._registry.functions.isRegistered(keys.source_key(source_id))
        return bool(self._c.view(fn, f"looking up source {source_id}"))


class AnchorsApi:
    """The AnchorRegistry: checkpoints (tree size, RFC 6962 root) per source."""

    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def _registry(self) -> Contract:
        return self._c.contract("AnchorRegistry")

    def anchor(
        self, source_id: str, tree_size: int, root: bytes, as_: SecretStr | str | Signer
    ) -> AnchorReceipt:
        """Anchor one checkpoint, signed by the source's own key; waits for the receipt."""
        _check_root(root)
        fn = self._registry.functions.anchor(keys.source_key(source_id), tree_size, root)
        receipt = self._c.transact(fn, f"anchoring {source_id} at tree size {tree_size}", as_)
        return _anchor_receipt(tree_size, root, receipt)

    def anchor_many(
        self, source_id: str, checkpoints: Sequence[tuple[int, bytes]], as_: SecretStr | str | Signer
    ) -> list[AnchorReceipt]:
        """Anchor several checkpoints of one source back to back, then await all receipts."""
        key = keys.source_key(source_id)
        for _, root in checkpoints:
            _check_root(root)
        sizes = [size for size, _ in checkpoints]
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise LedgerRuleError(f"checkpoints of {source_id} must grow the tree: sizes {sizes}")
        latest = self.latest(source_id)
        if sizes and latest is not None and sizes[0] <= latest[0]:
            raise LedgerRuleError(
                f"a checkpoint must grow the tree of source {source_id}: latest tree size {latest[0]}, got {sizes[0]}"
            )
        signer = self._c.signer_for(as_)
        fns = [self._registry.functions.anchor(key, size, root) for size, root in checkpoints]
        context = f"anchoring {len(fns)} checkpoints of {source_id}"
        hashes = signer.send_many(fns, context, gas=ANCHOR_GAS)
        try:
            receipts = wait_all(self._c.w3, hashes, context)
        except LedgerUnavailable:
            signer.reset_nonce()  # as in LedgerClient.transact
            raise
        return [_anchor_receipt(s, r, rc) for (s, r), rc in zip(checkpoints, receipts, strict=True)]

    def latest(self, source_id: str) -> tuple[int, bytes] | None:
        """The latest (tree size, root) of ``source_id``; None before its first checkpoint."""
        fn = self._registry.functions.latest(keys.source_key(source_id))
        size, root, _count = self._c.view(fn, f"reading the latest checkpoint of {source_id}")
        return (int(size), bytes(root)) if size else None

    def checkpoint_count(self, source_id: str) -> int:
        fn = self._registry.functions.latest(keys.source_key(source_id))
        return int(self._c.view(fn, f"reading the checkpoints of {source_id}")[2])

    def root_at(self, source_id: str, tree_size: int) -> bytes | None:
        """The root anchored for ``source_id`` at exactly ``tree_size``, or None."""
        return self._root_at(keys.source_key(source_id), tree_size, f"{source_id}@{tree_size}")

    def root_at_key(self, source_key: bytes, tree_size: int) -> bytes | None:
        """Like :meth:`root_at`, for an on-chain source key (as an ``Anchored`` log names it)."""
        return self._root_at(source_key, tree_size, f"0x{bytes(source_key).hex()}@{tree_size}")

    def _root_at(self, key: bytes, tree_size: int, what: str) -> bytes | None:
        fn = self._registry.functions.rootAt(key, tree_size)
        root = bytes(self._c.view(fn, f"reading checkpoint {what}"))
        return None if root == bytes(32) else root


def _check_root(root: bytes) -> None:
    if not isinstance(root, bytes | bytearray) or len(root) != 32:
        raise LedgerRuleError(f"a checkpoint root is 32 bytes (SHA-256), got {root!r:.80}")


def _anchor_receipt(tree_size: int, root: bytes, receipt: TxReceipt) -> AnchorReceipt:
    return AnchorReceipt(
        tree_size=tree_size,
        root=bytes(root),
        tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
        block=int(receipt["blockNumber"]),
        gas_used=int(receipt["gasUsed"]),
    )
