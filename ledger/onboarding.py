"""Bringing a consortium up: deploy the contracts, register producers, fund consumers.

Library code behind ``pcc ledger deploy`` and ``pcc ledger register-source``,
also used by the demo and the integration tests.
"""

from __future__ import annotations

from collections.abc import Mapping

from ledger.chain import connect
from ledger.client import LedgerClient
from ledger.config import DEV_KEYS, LedgerConfig
from ledger.deploy import Deployment, GovernanceParams, deploy
from ledger.keys import address_of, dev_source_key
from ledger.tx import Signer
from pipelines.errors import PccValueError
from pipelines.settings import Settings

DEV_GAS_MONEY = 10**18  # 1 ether of play money for a source's anchoring account
#: Three consortium members of a dev chain and their PCC_gold (whole tokens).
DEV_MEMBERS = ((1, 500), (2, 300), (3, 200))


def deploy_consortium(
    settings: Settings, members: Mapping[str, int] | None = None, params: GovernanceParams | None = None
) -> Deployment:
    """Deploy every contract to ``settings.ledger`` and write the manifest.

    ``members`` maps addresses to PCC_gold in smallest units; on a dev chain
    three dev accounts become members when none are given.  The operator stays
    admin until :meth:`ledger.governance.GovernanceApi.handover`.
    """
    config = LedgerConfig.from_settings(settings)
    w3 = connect(config)
    if not members and config.chain in ("anvil", "hardhat"):
        members = {address_of(DEV_KEYS[i]): n * 10**18 for i, n in DEV_MEMBERS}
    deployment = deploy(w3, Signer(w3, config.deployer_key), members or {}, params)
    deployment.write(config.manifest)
    return deployment


def register_source(
    settings: Settings,
    source_id: str,
    kind: str,
    tier: int,
    account: str | None = None,
    client: LedgerClient | None = None,
) -> str:
    """Register a producer; on a dev chain its anchoring account is derived and funded.

    Returns the source's account address.
    """
    client = client or LedgerClient.from_settings(settings)
    if client.sources.is_registered(source_id):
        raise PccValueError(f"source {source_id} is already registered")
    if account is None:
        config = LedgerConfig.from_settings(settings)
        if config.chain == "rpc":
            raise PccValueError("--account is required on chain 'rpc'")
        account = address_of(dev_source_key(config.deployer_key.get_secret_value(), source_id))
        client.signer.transfer_eth(account, DEV_GAS_MONEY)
    client.sources.register(source_id, kind, account, tier)
    return account
