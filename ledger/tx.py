"""Signing and sending transactions with a local key; reverts become named PccErrors.

The signer keeps its own nonce, so many transactions can be sent before their
receipts are awaited (anchoring throughput).  Every revert, at estimation or in a
mined transaction, is decoded with the ledger's ABIs (:mod:`ledger.errors`).
"""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from pydantic import SecretStr
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionIndexingInProgress,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxParams, TxReceipt

from ledger.artifacts import decode_revert
from ledger.errors import LedgerError, LedgerRevert, LedgerRuleError, LedgerUnavailable, revert_error

GAS_MARGIN = 1.25


def _revert_data(exc: ContractLogicError) -> bytes | None:
    data: Any = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


def as_pcc_error(exc: ContractLogicError, context: str) -> LedgerRevert:
    data = _revert_data(exc)
    decoded = decode_revert(data) if data else None
    if decoded is None:
        return LedgerRuleError(f"{context} reverted: {exc.message or exc}")
    name, args = decoded
    if name == "Error":
        return LedgerRuleError(f"{context} reverted: {args.get('reason', '')}", name, args)
    return revert_error(name, args, context)


@contextmanager
def translating(context: str) -> Iterator[None]:
    """Turn web3 and connection failures raised inside into PccErrors naming ``context``."""
    try:
        yield
    except LedgerError:
        raise
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise LedgerUnavailable(f"{context}: the JSON-RPC node is unreachable ({exc})") from None
    except TimeExhausted as exc:
        raise LedgerUnavailable(f"{context}: no receipt in time ({exc})") from None
    except ContractLogicError as exc:
        raise as_pcc_error(exc, context) from None
    except Exception as exc:
        if type(exc).__name__ != "TransactionFailed":  # the in-process EVM's revert
            raise
        raise as_pcc_error(
            ContractLogicError(str(exc), data="0x" + _tester_revert_data(exc).hex()), context
        ) from None


def _tester_revert_data(exc: Exception) -> bytes:
    """Revert bytes from the in-process EVM's TransactionFailed (they arrive as a bytes repr)."""
    first = exc.args[0] if exc.args else b""
    if isinstance(first, bytes):
        return first
    text = str(first).removeprefix("execution reverted: ")
    if text[:2] in ("b'", 'b"'):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return b""
        return value if isinstance(value, bytes) else b""
    return b""


#: How many times a transaction is signed again when its nonce was taken by another client of the key.
NONCE_RETRIES = 3


def _nonce_taken(exc: Exception) -> bool:
    text = str(exc).lower()
    return "nonce too low" in text or "nonce has already been used" in text or "already known" in text


class Signer:
    """One local key that signs transactions, with its own nonce counter."""

    def __init__(self, w3: Web3, private_key: SecretStr | str) -> None:
        key = private_key.get_secret_value() if isinstance(private_key, SecretStr) else private_key
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(key)
        self._nonce: int | None = None
        self._lock = threading.Lock()
        self._chain_id: int | None = None

    @property
    def address(self) -> str:
        return str(self.account.address)

    def _next_nonce(self) -> int:
        with self._lock:
            if self._nonce is None:
                self._nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
            nonce = self._nonce
            self._nonce += 1
            return nonce

    def reset_nonce(self) -> None:
        with self._lock:
            self._nonce = None

    def _fees(self) -> dict[str, int]:
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tip = 1_000_000_000
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip, "chainId": self._chain_id}

    def estimate(self, fn: ContractFunction, context: str, value: int = 0) -> int:
        with translating(context):
            gas = fn.estimate_gas({"from": self.account.address, "value": value})  # type: ignore[arg-type]
        return int(gas * GAS_MARGIN) + 10_000

    def send(self, fn: ContractFunction, context: str, *, gas: int | None = None) -> HexBytes:
        """Sign and send one call (estimating gas first, so a revert raises here)."""
        return self.send_many([fn], context, gas=gas)[0]

    def send_many(
        self, fns: Sequence[ContractFunction], context: str, *, gas: int | None = None
    ) -> list[HexBytes]:
        """Sign and send calls back to back without waiting for receipts."""
        with translating(context):  # a node that went away fails here first: LedgerUnavailable
            fees = self._fees()
        hashes = []
        for fn in fns:
            limit = gas if gas is not None else self.estimate(fn, context)
            for attempt in range(NONCE_RETRIES + 1):
                with translating(context):
                    params: TxParams = {
                        "from": self.account.address,
                        "gas": limit,
                        "nonce": self._next_nonce(),
                        **fees,  # type: ignore[typeddict-item]
                    }
                    tx = fn.build_transaction(params)
                signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
                try:
                    with translating(context):
                        hashes.append(self.w3.eth.send_raw_transaction(signed.raw_transaction))
                    break
                except (LedgerError, Web3RPCError, ValueError) as exc:
                    self.reset_nonce()
                    # another client signing with the same key (a second process, the grant
                    # store) took this nonce: count again from the chain and sign anew
                    if attempt < NONCE_RETRIES and _nonce_taken(exc):
                        continue
                    raise
        return hashes

    def transfer_eth(self, to: str, wei: int) -> TxReceipt:
        """Fund an account with gas money (development chains)."""
        with translating(f"funding {to}"):
            fees = self._fees()
            tx = {"to": to, "value": wei, "gas": 21_000, "nonce": self._next_nonce(), **fees}
        signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
        with translating(f"funding {to}"):
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return wait(self.w3, tx_hash, f"funding {to}")


#: receipt polling: the first look after 5 ms, then twice as long each time, at most every 0.5 s
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.5


def _receipt(w3: Web3, tx_hash: HexBytes, timeout_s: float) -> TxReceipt:
    """Poll for the receipt, soon at first and less often as the wait grows.

    web3's own wait polls every 0.1 s: on a development node that mines each
    transaction within milliseconds, every transaction then costs 0.1 s (a
    sale's key rotation, an anchor).  A chain with 12 s blocks gets about 30
    polls a block.
    """
    deadline = time.monotonic() + timeout_s
    delay = FIRST_POLL_S
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except (TransactionNotFound, TransactionIndexingInProgress):
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeExhausted(f"Transaction {tx_hash.hex()} is not in the chain after {timeout_s} seconds")
        time.sleep(min(delay, left))
        delay = min(delay * 2, MAX_POLL_S)


def wait(w3: Web3, tx_hash: HexBytes, context: str, timeout_s: float = 120.0) -> TxReceipt:
    """The receipt of ``tx_hash``; a failed transaction is replayed to name its revert."""
    with translating(context):
        receipt = _receipt(w3, tx_hash, timeout_s)
    if receipt["status"] == 1:
        return receipt
    tx = w3.eth.get_transaction(tx_hash)
    call: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
    with translating(f"{context} (tx {tx_hash.hex()} in block {receipt['blockNumber']})"):
        w3.eth.call(call, receipt["blockNumber"] - 1)
        # the replay at the previous block may succeed when the failure came from a
        # transaction mined just before it in the same block: say so
        raise LedgerRuleError(
            f"{context} failed in block {receipt['blockNumber']} (tx {tx_hash.hex()}; out of gas?)"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def wait_all(w3: Web3, hashes: Sequence[HexBytes], context: str) -> list[TxReceipt]:
    return [wait(w3, h, context) for h in hashes]
