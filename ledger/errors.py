"""Errors of the ledger: reverts named after the contract rule they break.

A revert's custom error is decoded with the ABIs of every ledger contract (and
OpenZeppelin's errors they inherit), then mapped to a :class:`PccError` whose
message says which rule was broken and with which values.
"""

from __future__ import annotations

from typing import Any

from eth_utils import keccak

from pipelines.errors import (
    PccError,
    PccNotFoundError,
    PccPermissionError,
    PccStateError,
    PccTransientError,
    PccValueError,
)


class LedgerError(PccError):
    """Root of the ledger's errors."""


class LedgerRevert(LedgerError):
    """A transaction or call reverted; ``error_name`` is the contract's custom error."""

    def __init__(self, message: str, error_name: str = "", error_args: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = dict(error_args or {})


class LedgerRuleError(LedgerRevert, PccValueError):
    """The input breaks a contract rule (a checkpoint that does not grow, a receipt settled twice...)."""


class LedgerPermissionError(LedgerRevert, PccPermissionError):
    """The signer lacks the role or is not the account the rule requires."""


class LedgerNotFoundError(LedgerRevert, PccNotFoundError):
    """An unknown source, vehicle pseudonym, grant or producer."""


class LedgerUnavailable(LedgerError, PccTransientError):
    """The JSON-RPC endpoint does not answer."""


class DeploymentError(LedgerError, PccStateError):
    """No deployment manifest, or it does not match the chain."""


#: Custom errors that mean "not permitted" / "not found"; every other one is a rule error.
PERMISSION_ERRORS = frozenset(
    {"AccessControlUnauthorizedAccount", "NotSourceAccount", "OnlySourceRegistry", "SourceSuspended"}
)
NOT_FOUND_ERRORS = frozenset(
    {
        "UnknownSource",
        "UnknownVehicle",
        "NoSuchGrant",
        "NoWithdrawalRequested",
        "NothingToWithdraw",
        "NothingToClaim",
    }
)

#: What each rule means, in words; ``{name}`` fields are the error's arguments.
RULES: dict[str, str] = {
    "AccessControlUnauthorizedAccount": "account {account} lacks the role {neededRole} this action needs",
    "UnknownSource": "source {key} is not registered",
    "SourceSuspended": "source {key} is suspended and may not anchor",
    "NotSourceAccount": "{caller} is not the registered account of source {key}",
    "CheckpointDoesNotGrow": (
        "a checkpoint must grow the tree of source {key}: latest tree size {latestTreeSize}, got {treeSize}"
    ),
    "TreeTooLarge": "tree size {treeSize} does not fit 48 bits",
    "EmptyRoot": "the checkpoint root of source {key} is empty",
    "SourceAlreadyRegistered": "source {key} is already registered",
    "AccountAlreadyUsed": "account {account} already belongs to source {byKey}",
    "InvalidSourceId": "source id {sourceId!r} must be 2 to 63 characters",
    "InvalidKind": "source kind {kind} is unknown",
    "InvalidTier": "quality tier {tier} is not between 1 and 4",
    "InvalidReputation": "reputation {reputationBps} is above 10000 basis points",
    "ReceiptAlreadySettled": "receipt {receiptNo} is already settled",
    "EmptyReceipt": "receipt {receiptNo} has no amount or no producer share",
    "ProducerIndexOutOfRange": "receipt {receiptNo} names producer #{index}, beyond the producer list",
    "ZeroWeight": "receipt {receiptNo} has producer shares that weigh nothing",
    "InsufficientDeposit": "consumer {consumer} has {deposit} cents deposited, {needed} needed",
    "NoWithdrawalRequested": "consumer {consumer} has not asked for its deposit back",
    "WithdrawalNotReady": "the deposit of {consumer} can be withdrawn from unix time {readyAt}, not before",
    "GovernorUnexpectedProposalState": "proposal {proposalId} is in state {current}, not one this step needs",
    "TimelockUnexpectedOperationState": "timelock operation {operationId} is not ready (its delay has not passed) or is done",
    "ERC20InsufficientAllowance": "allowance of {spender} is {allowance} cents, {needed} needed",
    "ERC20InsufficientBalance": "balance of {sender} is {balance} cents, {needed} needed",
    "EnforcedPause": "PCC_token is paused by governance",
    "MissingPaymentReference": "a mint or redemption needs the off-chain payment reference",
    "ZeroAmount": "the amount must be more than zero cents",
    "UnknownVehicle": "vehicle pseudonym {vehicle} is not registered",
    "ExpiryInPast": "grant expiry {expiry} is not after now ({nowSeconds})",
    "ZeroConsumerKey": "the consumer public key is empty",
    "NoSuchGrant": "no grant of category {category} on vehicle {vehicle} to key {consumerKey}",
    "StaleEpoch": "the grant was signed at key epoch {signedEpoch}, the current epoch is {currentEpoch}",
    "InvalidGrantorKind": "grantor kind {grantorKind} is neither owner (1) nor producer (2)",
    "EmptyGrantHash": "a grant needs the hash of the message its grantor signed",
    "FeeTooHigh": "a fee of {feeBps} basis points is above 100 %",
    "NoHolders": "revenue cannot be shared while no PCC_gold exists",
    "NothingToWithdraw": "{account} has no credit to withdraw",
    "NothingToClaim": "{holder} has no revenue to claim",
    "LengthMismatch": "{keys} keys but {values} values",
}


ROLE_NAMES = {
    keccak(text=name): name
    for name in (
        "TREASURY_ROLE",
        "GOVERNANCE_ROLE",
        "MINTER_ROLE",
        "REVENUE_ROLE",
        "REGISTRAR_ROLE",
        "REPUTATION_ROLE",
        "SETTLER_ROLE",
        "GRANTOR_ROLE",
        "PROPOSER_ROLE",
        "CANCELLER_ROLE",
        "EXECUTOR_ROLE",
    )
}
ROLE_NAMES[bytes(32)] = "DEFAULT_ADMIN_ROLE"


def _show(value: Any) -> str:
    if isinstance(value, bytes) and value in ROLE_NAMES:
        return ROLE_NAMES[value]
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def revert_error(error_name: str, args: dict[str, Any], context: str) -> LedgerRevert:
    """The PccError for a decoded custom error raised while doing ``context``."""
    shown = {k: _show(v) for k, v in args.items()}
    template = RULES.get(error_name)
    try:
        detail = template.format(**shown) if template else ""
    except (KeyError, IndexError):
        detail = ""
    if not detail:
        detail = f"{error_name}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
    message = f"{context} reverted: {detail} [{error_name}]"
    cls: type[LedgerRevert] = LedgerRuleError
    if error_name in PERMISSION_ERRORS:
        cls = LedgerPermissionError
    elif error_name in NOT_FOUND_ERRORS:
        cls = LedgerNotFoundError
    return cls(message, error_name, args)
