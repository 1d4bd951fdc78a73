"""Follow the ledger's contract events by explicit block ranges, and look up roots.

``eth_getLogs`` over ``fromBlock``/``toBlock`` ranges in chunks (no filters:
some nodes drop filter logs).  ``Anchored`` is anonymous (topic 0 is the source
key) and carries the tree size only: the root is read from the registry's storage
with ``rootAt`` (an anchored root never changes).  :class:`OnChainRootSource` answers the speed
layer's ``checkpoint(source_id, tree_size) -> root | None`` and caches what it
found (an anchored root never changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3.contract import Contract

from ledger import keys
from ledger.client import LedgerClient
from ledger.errors import LedgerRuleError
from ledger.tx import translating

DEFAULT_CHUNK = 2_000


@dataclass(frozen=True)
class AnchoredCheckpoint:
    source_key: bytes
    tree_size: int
    root: bytes
    block: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class ContractEvent:
    contract: str
    event: str
    args: dict[str, Any]
    block: int
    tx_hash: str
    log_index: int


class LedgerIndexer:
    """Reads decoded events of one deployment over block ranges; ``cursor`` remembers progress."""

    def __init__(self, client: LedgerClient, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk < 1:
            raise LedgerRuleError(f"indexer chunk must be at least 1 block, got {chunk}")
        self._c = client
        self.chunk = chunk
        self.cursor = client.deployment.block  # next block to read in follow()

    def _ranges(self, from_block: int, to_block: int) -> Iterator[tuple[int, int]]:
        if from_block > to_block:
            return
        start = from_block
        while start <= to_block:
            end = min(start + self.chunk - 1, to_block)
            yield start, end
            start = end + 1

    def events(
        self,
        contract_name: str,
        event_name: str,
        from_block: int,
        to_block: int,
        topics: list[Any] | None = None,
    ) -> list[ContractEvent]:
        """Decoded ``event_name`` logs of ``contract_name`` in [from_block, to_block].

        ``topics`` filters the indexed arguments in order.  An anonymous event has no
        signature topic: every log of the contract is taken for it, so such an event
        must be its contract's only one (the AnchorRegistry's ``Anchored`` is).
        """
        contract: Contract = self._c.contract(contract_name)
        event = getattr(contract.events, event_name)()
        topic0 = _event_topic(contract, event_name)
        filters = [*([topic0] if topic0 is not None else []), *(topics or [])]
        out = []
        for lo, hi in self._ranges(from_block, to_block):
            params: dict[str, Any] = {"fromBlock": lo, "toBlock": hi, "address": contract.address}
            if filters:
                params["topics"] = filters
            with translating(f"reading {event_name} logs in blocks {lo}-{hi}"):
                logs = self._c.w3.eth.get_logs(params)  # type: ignore[arg-type]
            for log in logs:
                data = event.process_log(log)
                out.append(
                    ContractEvent(
                        contract_name,
                        event_name,
                        dict(data["args"]),
                        int(log["blockNumber"]),
                        "0x" + bytes(log["transactionHash"]).hex(),
                        int(log["logIndex"]),
                    )
                )
        return out

    def checkpoints(
        self, from_block: int, to_block: int | None = None, source_id: str | None = None
    ) -> list[AnchoredCheckpoint]:
        """Checkpoints anchored in [from_block, to_block] (to the head by default), oldest first.

        The log names source and tree size; each root is read with ``rootAt`` (one call per
        checkpoint found).
        """
        to_block = self._c.block_number if to_block is None else to_block
        topics = ["0x" + keys.source_key(source_id).hex()] if source_id else None
        found = []
        for e in self.events("AnchorRegistry", "Anchored", from_block, to_block, topics):
            key, size = bytes(e.args["source"]), int(e.args["treeSize"])
            root = self._c.anchors.root_at_key(key, size)
            if root is None:  # a log without its stored root: not this registry's doing
                raise LedgerRuleError(f"checkpoint 0x{key.hex()}@{size} is logged but has no stored root")
            found.append(AnchoredCheckpoint(key, size, root, e.block, e.tx_hash, e.log_index))
        return found

    def follow(self, source_id: str | None = None) -> list[AnchoredCheckpoint]:
        """Checkpoints anchored since the last call (starting at the deployment block)."""
        head = self._c.block_number
        found = self.checkpoints(self.cursor, head, source_id)
        self.cursor = head + 1
        return found

    def source_ids(self, to_block: int | None = None) -> dict[bytes, str]:
        """Source key -> source id, from the SourceRegistered events."""
        to_block = self._c.block_number if to_block is None else to_block
        found = self.events("SourceRegistry", "SourceRegistered", self._c.deployment.block, to_block)
        return {bytes(e.args["key"]): str(e.args["sourceId"]) for e in found}


@dataclass(frozen=True)
class SourceFacts:
    """What the speed layer needs of a source (duck-types its ``SourceInfo``)."""

    source_id: str
    tier: int
    reputation: float  # [0, 1]
    active: bool


class OnChainRootSource:
    """Roots and source facts read from the ledger, for the speed layer's ``RootSource``.

    ``checkpoint_root(source_id, tree_size) -> root | None`` (cached: an anchored root never
    changes) and ``source_info(source_id) -> SourceFacts | None``.
    """

    def __init__(self, client: LedgerClient, max_cached: int = 100_000) -> None:
        self._c = client
        self._cache: dict[tuple[str, int], bytes] = {}
        self._max = max_cached

    def checkpoint_root(self, source_id: str, tree_size: int) -> bytes | None:
        return self.checkpoint(source_id, tree_size)

    def source_info(self, source_id: str) -> SourceFacts | None:
        from ledger.errors import LedgerNotFoundError

        try:
            info = self._c.sources.get(source_id)
        except LedgerNotFoundError:
            return None
        return SourceFacts(source_id, info.tier, info.reputation_bps / 10_000, info.active)

    def observe(self, source_id: str, tree_size: int, root: bytes) -> None:
        """Prime the cache with a checkpoint the indexer saw."""
        self._cache[(source_id, tree_size)] = root

    def checkpoint(self, source_id: str, tree_size: int) -> bytes | None:
        hit = self._cache.get((source_id, tree_size))
        if hit is not None:
            return hit
        root = self._c.anchors.root_at(source_id, tree_size)
        if root is not None:  # only found roots are cached: a missing one may be anchored soon
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[(source_id, tree_size)] = root
        return root

    def latest(self, source_id: str) -> tuple[int, bytes] | None:
        return self._c.anchors.latest(source_id)


def _event_topic(contract: Contract, event_name: str) -> str | None:
    """Topic 0 of ``event_name`` (its signature hash), or None for an anonymous event."""
    for item in contract.abi:
        if item.get("type") == "event" and item.get("name") == event_name:
            if item.get("anonymous"):
                return None
            return "0x" + bytes(event_abi_to_log_topic(item)).hex()  # type: ignore[arg-type]
    raise LedgerRuleError(f"{event_name} is not an event of the contract at {contract.address}")
