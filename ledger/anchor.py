"""The producer SDK's anchor backend on the ledger (entry point ``pcc.anchors: ledger``)."""

from __future__ import annotations

from pydantic import SecretStr

from ledger.client import LedgerClient
from ledger.config import LedgerConfig
from ledger.keys import dev_source_key
from pipelines.errors import PccConfigError
from pipelines.producer.protocols import AnchorReceipt
from pipelines.settings import Settings


class LedgerAnchor:
    """Anchors checkpoints on the AnchorRegistry, signed with the source's own key."""

    def __init__(
        self,
        client: LedgerClient,
        source_key: SecretStr | str | None = None,
        dev_deployer_key: str | None = None,
    ) -> None:
        self.client = client
        self._key = source_key
        self._deployer_key = dev_deployer_key  # dev chains: derive each source's key from it

    def _key_for(self, source_id: str) -> SecretStr | str:
        if self._key is not None:
            return self._key
        if self._deployer_key is None:
            raise PccConfigError("ledger.anchor_key (PCC__LEDGER__ANCHOR_KEY) is required on chain 'rpc'")
        return dev_source_key(self._deployer_key, source_id)

    def anchor(self, source_id: str, tree_size: int, root: bytes) -> AnchorReceipt:
        return self.client.anchors.anchor(source_id, tree_size, root, self._key_for(source_id))

    def latest_checkpoint(self, source_id: str) -> tuple[int, bytes] | None:
        return self.client.anchors.latest(source_id)

    def root_at(self, source_id: str, tree_size: int) -> bytes | None:
        return self.client.anchors.root_at(source_id, tree_size)


def anchor_from_settings(settings: Settings) -> LedgerAnchor:
    """The anchor for ``settings``: its deployment, and ``ledger.anchor_key`` (or a dev key)."""
    config = LedgerConfig.from_settings(settings)
    dev = config.deployer_key.get_secret_value() if config.chain != "rpc" else None
    return LedgerAnchor(LedgerClient.from_settings(settings), settings.ledger.anchor_key, dev)
