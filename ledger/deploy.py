"""Deploy every ledger contract, wire their roles, and keep a deployment manifest.

The manifest (JSON) records the chain id, the block of the deployment, the
operator address and each contract's address; clients load it instead of
redeploying.  Roles after :func:`deploy`:

- the operator (deployer) is PCC_token treasury, source registrar, reputation
  publisher, query settler, vehicle registrar and grantor, and, until
  :func:`ledger.governance.handover`, the bootstrap admin of every contract;
- the PCCTimelock holds every GOVERNANCE role (pause, fee, prices, withdrawal
  delay, tiers) and admits members (mints PCC_gold); it runs what the Governor
  (PCC_gold votes) accepted, once the timelock delay has passed; the Governor is
  its only proposer, canceller and executor;
- the Marketplace may notify revenue to PCC_gold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from ledger.artifacts import artifact
from ledger.errors import DeploymentError
from ledger.tx import Signer, wait
from pipelines.files import atomic_write

GOVERNANCE_ROLE = keccak(text="GOVERNANCE_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")
REVENUE_ROLE = keccak(text="REVENUE_ROLE")
PROPOSER_ROLE = keccak(text="PROPOSER_ROLE")
CANCELLER_ROLE = keccak(text="CANCELLER_ROLE")
EXECUTOR_ROLE = keccak(text="EXECUTOR_ROLE")


@dataclass(frozen=True)
class GovernanceParams:
    voting_delay_blocks: int = 1
    voting_period_blocks: int = 20
    quorum_percent: int = 10
    fee_bps: int = 1_000  # the consortium keeps 10 % of each settled query
    #: an accepted proposal waits this long in the PCCTimelock before it can run
    timelock_delay_s: int = 60
    #: a consumer's deposit stays reserved this long after it asks for it back (longer than
    #: the serving layer's settlement period, `serving.settle_every_s`)
    withdrawal_delay_s: int = 86_400


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    block: int
    operator: str
    contracts: dict[str, str]
    deployed_at: float = field(default_factory=time.time)

    def address(self, name: str) -> str:
        try:
            return self.contracts[name]
        except KeyError:
            raise DeploymentError(f"the deployment has no {name} contract") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> Path:
        return atomic_write(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Deployment:
        if not path.is_file():
            raise DeploymentError(f"no deployment manifest at {path}: run `pcc ledger deploy` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"deployment manifest {path} is unreadable: {exc}") from None

    def check(self, w3: Web3) -> None:
        """Raise unless this deployment is live on ``w3``'s chain."""
        chain_id = w3.eth.chain_id
        if chain_id != self.chain_id:
            raise DeploymentError(
                f"the manifest is for chain {self.chain_id}, the node runs chain {chain_id}"
            )
        for name, address in self.contracts.items():
            if not w3.eth.get_code(Web3.to_checksum_address(address)):
                raise DeploymentError(
                    f"no code at {address} ({name}) on chain {chain_id}: the chain was reset, redeploy"
                )


def contract(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(name)["abi"])


def _deploy_one(w3: Web3, signer: Signer, name: str, *args: Any) -> Contract:
    art = artifact(name)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    ctor = factory.constructor(*args)
    receipt = wait(w3, signer.send(ctor, f"deploying {name}"), f"deploying {name}")  # type: ignore[arg-type]
    return contract(w3, name, str(receipt["contractAddress"]))


def _call(w3: Web3, signer: Signer, fn: Any, context: str) -> None:
    wait(w3, signer.send(fn, context), context)


def deploy(
    w3: Web3,
    signer: Signer,
    members: Mapping[str, int] | None = None,
    params: GovernanceParams | None = None,
) -> Deployment:
    """Deploy and wire all contracts; ``members`` get their PCC_gold (smallest units) at once."""
    params = params or GovernanceParams()
    op = signer.address
    start_block = w3.eth.block_number
    token = _deploy_one(w3, signer, "PCCToken", op, op, op)
    gold = _deploy_one(w3, signer, "PCCGold", op, token.address)
    timelock = _deploy_one(w3, signer, "PCCTimelock", params.timelock_delay_s, [], [], op)
    governor = _deploy_one(
        w3,
        signer,
        "PCCGovernor",
        gold.address,
        timelock.address,
        params.voting_delay_blocks,
        params.voting_period_blocks,
        params.quorum_percent,
    )
    gov = timelock.address  # what governance decides runs from the timelock
    parameters = _deploy_one(w3, signer, "Parameters", op, gov, params.fee_bps, params.withdrawal_delay_s)
    sources = _deploy_one(w3, signer, "SourceRegistry", op, op, gov, op)
    anchors = _deploy_one(w3, signer, "AnchorRegistry", sources.address)
    market = _deploy_one(
        w3, signer, "Marketplace", op, op, token.address, parameters.address, sources.address, gold.address
    )
    access = _deploy_one(w3, signer, "AccessRegistry", op, op, op)

    for role, what in ((PROPOSER_ROLE, "propose"), (CANCELLER_ROLE, "cancel"), (EXECUTOR_ROLE, "execute")):
        _call(
            w3,
            signer,
            timelock.functions.grantRole(role, governor.address),
            f"letting the Governor {what} in the timelock",
        )
    _call(w3, signer, sources.functions.setAnchorRegistry(anchors.address), "linking the AnchorRegistry")
    _call(w3, signer, token.functions.grantRole(GOVERNANCE_ROLE, gov), "granting governance of PCC_token")
    _call(w3, signer, token.functions.revokeRole(GOVERNANCE_ROLE, op), "handing PCC_token governance over")
    _call(
        w3,
        signer,
        gold.functions.grantRole(REVENUE_ROLE, market.address),
        "letting the Marketplace share revenue",
    )
    for member, amount in (members or {}).items():
        _call(
            w3,
            signer,
            gold.functions.mint(Web3.to_checksum_address(member), amount),
            f"minting PCC_gold to {member}",
        )
    _call(w3, signer, gold.functions.grantRole(MINTER_ROLE, gov), "letting governance admit members")
    _call(w3, signer, gold.functions.renounceRole(MINTER_ROLE, op), "handing PCC_gold minting over")

    return Deployment(
        chain_id=w3.eth.chain_id,
        block=start_block + 1,
        operator=op,
        contracts={
            "PCCToken": token.address,
            "PCCGold": gold.address,
            "PCCTimelock": timelock.address,
            "PCCGovernor": governor.address,
            "Parameters": parameters.address,
            "SourceRegistry": sources.address,
            "AnchorRegistry": anchors.address,
            "Marketplace": market.address,
            "AccessRegistry": access.address,
        },
    )
