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
from ledger.errors import DeploymentError, LedgerNotFoundError, LedgerRuleError
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


@dataclass(frozen=True)
class Proposal:
    """A proposal as the Governor's ``ProposalCreated`` log recorded it."""

    proposal_id: int
    proposer: str
    actions: tuple[Action, ...]
    description: str
    vote_start: int  # the snapshot block: votes delegated after it do not count
    vote_end: int  # the last block of the vote
    block: int  # where it was proposed

    @property
    def short_id(self) -> str:
        return f"{self.proposal_id:064x}"[:12]


@dataclass(frozen=True)
class Tally:
    against: int
    for_: int
    abstain: int
    quorum: int | None  # None before the snapshot block


SUPPORT = {"against": 0, "for": 1, "abstain": 2}


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

    # -- proposals, as the chain recorded them -------------------------------------------------

    def proposals(self) -> list[Proposal]:
        """Every proposal since the deployment, oldest first (from ``ProposalCreated`` logs)."""
        from ledger.indexer import LedgerIndexer

        head = self._c.block_number
        out = []
        for e in LedgerIndexer(self._c).events(
            "PCCGovernor", "ProposalCreated", self._c.deployment.block, head
        ):
            a = e.args
            actions = tuple(
                (str(Web3.to_checksum_address(t)), bytes(d))
                for t, d in zip(a["targets"], a["calldatas"], strict=True)
            )
            pid, start, end = int(a["proposalId"]), int(a["voteStart"]), int(a["voteEnd"])
            out.append(Proposal(pid, str(a["proposer"]), actions, str(a["description"]), start, end, e.block))
        return out

    def find(self, ref: str | int) -> Proposal:
        """A proposal by its id: decimal, 0x-hex, a unique hex prefix of at least 4 digits, or ``latest``."""
        found = self.proposals()
        text = str(ref).strip().lower()
        if text == "latest":
            if not found:
                raise LedgerNotFoundError("no proposal on this deployment yet")
            return found[-1]
        if text.isdigit() and len(text) > 16:  # the full decimal id
            matches = [p for p in found if p.proposal_id == int(text)]
        else:
            prefix = text.removeprefix("0x")
            if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
                raise LedgerRuleError(
                    f"proposal {ref!r}: give its id (decimal) or at least 4 hex digits of it"
                )
            matches = [p for p in found if f"{p.proposal_id:064x}".startswith(prefix)]
        if not matches:
            raise LedgerNotFoundError(f"no proposal {ref} on this deployment (pcc governance proposals)")
        if len(matches) > 1:
            raise LedgerRuleError(f"proposal {ref} is ambiguous: {', '.join(p.short_id for p in matches)}")
        return matches[0]

    def tally(self, proposal: Proposal) -> Tally:
        against, for_, abstain = self._c.view(
            self.governor.functions.proposalVotes(proposal.proposal_id), "reading a proposal's votes"
        )
        quorum = None  # the snapshot's supply is only known once the snapshot block is past
        if proposal.vote_start < self._c.block_number:
            fn = self.governor.functions.quorum(proposal.vote_start)
            quorum = int(self._c.view(fn, "reading the quorum"))
        return Tally(int(against), int(for_), int(abstain), quorum)

    def votes_at(self, account: str, block: int) -> int:
        """PCC_gold votes ``account`` had delegated to it at ``block`` (a proposal's snapshot)."""
        fn = self.governor.functions.getVotes(Web3.to_checksum_address(account), block)
        return int(self._c.view(fn, f"reading the votes of {account}"))

    def cast(self, proposal: Proposal, support: str, as_: Key, advance: bool = False) -> int:
        """Vote ``for``, ``against`` or ``abstain``; returns the votes counted.  Refuses, naming why,
        a vote outside the voting window or from an account without votes at the snapshot.

        ``advance`` (development chains): first mine blocks until the vote opens."""
        if support not in SUPPORT:
            raise LedgerRuleError(f"vote {support!r}: expected for, against or abstain")
        signer = self._c.signer_for(as_)
        head = self._c.block_number
        if advance and head <= proposal.vote_start:
            mine(self._c.w3, proposal.vote_start - head + 1)
        state, head = self.state(proposal.proposal_id), self._c.block_number
        if state == "Pending":
            raise LedgerRuleError(
                f"voting on {proposal.short_id} opens after block {proposal.vote_start} (now {head})"
            )
        if state != "Active":
            raise LedgerRuleError(f"proposal {proposal.short_id} is {state}: voting is over")
        weight = self.votes_at(signer.address, proposal.vote_start)
        if weight == 0:
            raise LedgerRuleError(
                f"{signer.address} had no PCC_gold votes at block {proposal.vote_start}, the proposal's "
                "snapshot: delegate first (pcc governance delegate), then vote on later proposals"
            )
        self.vote(proposal.proposal_id, SUPPORT[support], signer)
        return weight

    def queue_proposal(self, proposal: Proposal, advance: bool = False, as_: Key = None) -> int:
        """Queue an accepted proposal in the timelock; returns the unix time it may run from.

        ``advance`` (development chains): first mine blocks until the vote has ended."""
        head = self._c.block_number
        if advance and head <= proposal.vote_end:
            tally = self.tally(proposal)
            if (
                tally.quorum is None
                or tally.for_ <= tally.against
                or tally.for_ + tally.abstain < tally.quorum
            ):
                raise LedgerRuleError(
                    f"ending the vote on {proposal.short_id} now would defeat it (for {tally.for_}, against "
                    f"{tally.against}, abstain {tally.abstain}, quorum {tally.quorum if tally.quorum is not None else 'not yet known'}): not advancing"
                )
            mine(self._c.w3, proposal.vote_end - head + 1)
        state = self.state(proposal.proposal_id)
        if state == "Active" or state == "Pending":
            raise LedgerRuleError(
                f"the vote on {proposal.short_id} ends after block {proposal.vote_end} (now {head}): "
                "queue it then (on a dev chain, --advance mines the blocks)"
            )
        if state != "Succeeded":
            raise LedgerRuleError(
                f"proposal {proposal.short_id} is {state}, not Succeeded: it cannot be queued"
            )
        self.queue(list(proposal.actions), proposal.description, as_)
        return self.eta(proposal.proposal_id)

    def execute_proposal(self, proposal: Proposal, advance: bool = False, as_: Key = None) -> None:
        """Run a queued proposal once its timelock delay has passed.

        ``advance`` (development chains): first move the clock past the delay."""
        state = self.state(proposal.proposal_id)
        if state != "Queued":
            raise LedgerRuleError(f"proposal {proposal.short_id} is {state}, not Queued: queue it first")
        eta = self.eta(proposal.proposal_id)
        now = int(self._c.w3.eth.get_block("latest")["timestamp"])
        if now < eta:
            if not advance:
                raise LedgerRuleError(
                    f"proposal {proposal.short_id} may run {eta - now} s from now (the timelock's delay); "
                    "on a dev chain, --advance moves the clock"
                )
            advance_time(self._c.w3, eta - now + 1)
        self.execute(list(proposal.actions), proposal.description, as_)

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
