"""PCC_token (euro cents) and PCC_gold (votes and revenue share)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from ledger import keys
from ledger.tx import Signer

if TYPE_CHECKING:
    from ledger.client import LedgerClient

Key = SecretStr | str | Signer | None


def _addr(account: str) -> str:
    return str(Web3.to_checksum_address(account))


class TokenApi:
    """Balances, mint against deposits, burn on redemption, approvals, revenue claims."""

    def __init__(self, client: LedgerClient) -> None:
        self._c = client

    @property
    def token(self) -> Contract:
        return self._c.contract("PCCToken")

    @property
    def gold(self) -> Contract:
        return self._c.contract("PCCGold")

    def balance(self, account: str) -> int:
        """PCC_token balance of ``account`` in cents."""
        return int(
            self._c.view(self.token.functions.balanceOf(_addr(account)), f"reading the balance of {account}")
        )

    def total_supply(self) -> int:
        return int(self._c.view(self.token.functions.totalSupply(), "reading the PCC_token supply"))

    def allowance(self, owner: str, spender: str) -> int:
        fn = self.token.functions.allowance(_addr(owner), _addr(spender))
        return int(self._c.view(fn, f"reading the allowance of {owner}"))

    def mint(self, to: str, amount_cents: int, payment_reference: str, as_: Key = None) -> TxReceipt:
        """Mint against the recorded euro deposit ``payment_reference`` (treasury role)."""
        amount = keys.cents(amount_cents)
        fn = self.token.functions.mint(_addr(to), amount, keys.payment_ref(payment_reference))
        return self._c.transact(fn, f"minting {amount} cents to {to} for payment {payment_reference}", as_)

    def redeem(self, holder: str, amount_cents: int, payment_reference: str, as_: Key = None) -> TxReceipt:
        """Burn ``holder``'s tokens (it approved the treasury) when paying out euros."""
        amount = keys.cents(amount_cents)
        fn = self.token.functions.redeem(_addr(holder), amount, keys.payment_ref(payment_reference))
        return self._c.transact(
            fn, f"redeeming {amount} cents of {holder} for payment {payment_reference}", as_
        )

    def approve(self, spender: str, amount_cents: int, as_: Key) -> TxReceipt:
        fn = self.token.functions.approve(_addr(spender), keys.cents(amount_cents))
        return self._c.transact(fn, f"approving {amount_cents} cents to {spender}", as_)

    def transfer(self, to: str, amount_cents: int, as_: Key) -> TxReceipt:
        fn = self.token.functions.transfer(_addr(to), keys.cents(amount_cents))
        return self._c.transact(fn, f"transferring {amount_cents} cents to {to}", as_)

    def paused(self) -> bool:
        return bool(self._c.view(self.token.functions.paused(), "reading the pause flag"))

    def gold_balance(self, account: str) -> int:
        return int(
            self._c.view(self.gold.functions.balanceOf(_addr(account)), f"reading PCC_gold of {account}")
        )

    def delegate(self, delegatee: str, as_: Key) -> TxReceipt:
        """Activate the voting power of a PCC_gold holder (ERC20Votes needs a delegation)."""
        return self._c.transact(
            self.gold.functions.delegate(_addr(delegatee)), f"delegating votes to {delegatee}", as_
        )

    def claimable(self, holder: str) -> int:
        """Revenue in cents that ``holder`` may claim now."""
        return int(
            self._c.view(self.gold.functions.claimable(_addr(holder)), f"reading the revenue of {holder}")
        )

    def claim(self, as_: Key) -> int:
        """Pull the signer's revenue share; returns the cents received."""
        signer = self._c.signer_for(as_)
        amount = self.claimable(signer.address)
        self._c.transact(self.gold.functions.claim(), f"claiming the revenue of {signer.address}", signer)
        return amount
