"""Governance: PCC_gold holders' proposals through the Governor and its timelock, and the handover.

A parameter change goes propose → vote → queue → execute: the PCCGovernor counts
PCC_gold votes; an accepted proposal is queued in the PCCTimelock and runs from
there once the timelock's delay (``getMinDelay()``) has passed.  The timelock
holds every GOVERNANCE role.

:meth:`GovernanceApi.handover` (``pcc ledger handover``) makes the timelock the
admin (``DEFAULT_ADMIN_ROLE``, the admin of every other role) of every contract
that has roles, the timelock included, and the operator renounces its own: from
then on the operator key can neither grant nor revoke any role, only a proposal
can.  The operator keeps the working roles it was given (treasury, registrar,
settler, grantor...), which governance may revoke.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from ledger.chain import advance_time, mine
from ledger.deploy import EXECUTOR_ROLE, PROPOSER_ROLE
from ledger.errors import DeploymentError, LedgerRuleError
from ledger.tokens import Key

if TYPE_CHECKING:
    from ledger.client import LedgerClient

ADMIN_ROLE = bytes(32)  # OpenZeppelin's DEFAULT_ADMIN_ROLE: the admin of every role of our contracts
#: The contracts with roles (OpenZeppelin AccessControl), the timelock included.
ROLE_CONTRACTS = (
    "PCCToken",
    "PCCGold",
    "PCCTimelock",
    "Parameters",
    "SourceRegistry",
    "Marketplace",
    "AccessRegistry",
)

Action = tuple[str, bytes]  # (target address, calldata)


@dataclass(frozen=True)
class AdminHolders:
    """Who holds the admin role of one contract."""

    contract: str
    operator: bool
    timelock: bool


class GovernanceApi:
    """Proposals of PCC_gold holders: propose, vote, queue, execute; and the operator's handover."""

    STATES = ("Pending", "Active", "Canceled", "Defeated", "Succeeded", "Queued", "Expired", "Executed")

    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def governor(self) -> Contract:
        return self._c.contract("PCCGovernor")

    @property
    def timelock(self) -> Contract:
        return self._c.contract("PCCTimelock")

    def call_data(self, contract_name: str, function: str, *args: Any) -> Action:
        """(target, calldata) of a call the timelock will make once a proposal passes."""
        target = self._c.contract(contract_name)
        data = target.encode_abi(function, args=list(args))
        return str(target.address), bytes.fromhex(data[2:])

    def _args(self, actions: Sequence[Action]) -> tuple[list[str], list[int], list[bytes]]:
        return [t for t, _ in actions], [0] * len(actions), [d for _, d in actions]

    def propose(self, actions: Sequence[Action], description: str, as_: Key) -> int:
        targets, values, datas = self._args(actions)
        self._c.transact(
            self.governor.functions.propose(targets, values, datas, description),
            f"proposing {description!r}",
            as_,
        )
        return self.proposal_id(actions, description)

    def proposal_id(self, actions: Sequence[Action], description: str) -> int:
        targets, values, datas = self._args(actions)
        fn = self.governor.functions.hashProposal(targets, values, datas, keccak(text=description))
        return int(self._c.view(fn, "hashing a proposal"))

    def vote(self, proposal_id: int, support: int, as_: Key) -> TxReceipt:
        """support: 0 against, 1 for, 2 abstain."""
        return self._c.transact(
            self.governor.functions.castVote(proposal_id, support), f"voting on {proposal_id}", as_
        )

    def state(self, proposal_id: int) -> str:
        return self.STATES[
            int(self._c.view(self.governor.functions.state(proposal_id), "reading a proposal"))
        ]

    def queue(self, actions: Sequence[Action], description: str, as_: Key = None) -> TxReceipt:
        """Put an accepted proposal in the timelock; it may run after :meth:`timelock_delay` seconds."""
        fn = self.governor.functions.queue(*self._args(actions), keccak(text=description))
        return self._c.transact(fn, f"queueing {description!r}", as_)

    def execute(self, actions: Sequence[Action], description: str, as_: Key = None) -> TxReceipt:
        """Run a queued proposal whose delay has passed (the calls come from the timelock)."""
        fn = self.governor.functions.execute(*self._args(actions), keccak(text=description))
        return self._c.transact(fn, f"executing {description!r}", as_)

    def eta(self, proposal_id: int) -> int:
        """Unix time from which a queued proposal may run (0 if not queued)."""
        return int(self._c.view(self.governor.functions.proposalEta(proposal_id), "reading a proposal's eta"))

    def timelock_delay(self) -> int:
        return int(self._c.view(self.timelock.functions.getMinDelay(), "reading the timelock delay"))

    def enact(self, actions: Sequence[Action], description: str, voters: Sequence[Key]) -> str:
        """Propose, vote for with ``voters``, queue and execute, mining blocks and moving the clock.

        For development chains, where blocks are mined and time moves on demand.
        """
        pid = self.propose(actions, description, voters[0])
        delay = int(self._c.view(self.governor.functions.votingDelay(), "reading the voting delay"))
        mine(self._c.w3, delay + 1)
        for voter in voters:
            self.vote(pid, 1, voter)
        period = int(self._c.view(self.governor.functions.votingPeriod(), "reading the voting period"))
        mine(self._c.w3, period + 1)
        state = self.state(pid)
        if state != "Succeeded":
            raise LedgerRuleError(f"proposal {description!r} ended {state}, not Succeeded")
        self.queue(actions, description)
        advance_time(self._c.w3, self.timelock_delay() + 1)
        self.execute(actions, description)
        return self.state(pid)

    # -- the handover -------------------------------------------------------------------------

    def _has(self, contract: Contract, role: bytes, account: str) -> bool:
        fn = contract.functions.hasRole(role, Web3.to_checksum_address(account))
        return bool(self._c.view(fn, f"reading the roles of {contract.address}"))

    def admins(self) -> list[AdminHolders]:
        """For each contract with roles: does the operator, does the timelock hold its admin role?"""
        operator, timelock = self._c.deployment.operator, self.timelock.address
        out = []
        for name in ROLE_CONTRACTS:
            c = self._c.contract(name)
            out.append(
                AdminHolders(name, self._has(c, ADMIN_ROLE, operator), self._has(c, ADMIN_ROLE, timelock))
            )
        return out

    def handed_over(self) -> bool:
        """True once the timelock, and not the operator, is the admin of every contract."""
        return all(h.timelock and not h.operator for h in self.admins())

    def handover(self, as_: Key = None) -> list[str]:
        """Make the timelock admin of every contract and renounce the signer's admin role there.

        Irreversible: checks first that the Governor can propose and execute through the
        timelock.  Returns the contracts whose admin role moved (none if already handed over).
        """
        signer = self._c.signer_for(as_)
        timelock = self.timelock
        governor = self.governor.address
        linked = self._c.view(self.governor.functions.timelock(), "reading the Governor's timelock")
        if Web3.to_checksum_address(linked) != timelock.address or not all(
            self._has(timelock, role, governor) for role in (PROPOSER_ROLE, EXECUTOR_ROLE)
        ):
            raise DeploymentError(
                f"the Governor {governor} cannot propose and execute through the timelock {timelock.address}: "
                "handing the admin roles over would leave nobody able to use them"
            )
        moved = []
        for name in ROLE_CONTRACTS:
            c = self._c.contract(name)
            if not self._has(c, ADMIN_ROLE, signer.address):
                continue
            if not self._has(c, ADMIN_ROLE, timelock.address):
                self._c.transact(
                    c.functions.grantRole(ADMIN_ROLE, timelock.address),
                    f"making the timelock admin of {name}",
                    signer,
                )
            self._c.transact(
                c.functions.renounceRole(ADMIN_ROLE, signer.address),
                f"renouncing the admin role of {signer.address} on {name}",
                signer,
            )
            moved.append(name)
        return moved
