"""Connect web3 to the configured chain: any JSON-RPC endpoint, or the in-process EVM."""

from __future__ import annotations

from web3 import Web3
from web3.providers.rpc import HTTPProvider

from ledger.config import DEV_KEYS, LedgerConfig
from ledger.errors import LedgerUnavailable


def in_process_web3() -> Web3:
    """A fresh in-process EVM (py-evm, Prague) whose funded accounts are the dev accounts.

    For small unit tests only: py-evm slows down sharply as blocks accumulate.
    """
    try:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3.providers.eth_tester import EthereumTesterProvider
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise LedgerUnavailable(
            f"the in-process EVM needs the 'evm' extra (pip install 'pcc[evm]'): {exc}"
        ) from None
    from eth_keys import keys
    from eth_tester.backends.pyevm.main import generate_genesis_state_for_keys

    dev_keys = [keys.PrivateKey(bytes.fromhex(k[2:])) for k in DEV_KEYS]
    genesis = generate_genesis_state_for_keys(dev_keys, overrides={"balance": 10**24})
    backend = PyEVMBackend(genesis_state=genesis)
    return Web3(EthereumTesterProvider(EthereumTester(backend)))


def connect(config: LedgerConfig) -> Web3:
    """Web3 for ``config``; raises :class:`LedgerUnavailable` when the endpoint does not answer."""
    if config.chain == "evm":
        return in_process_web3()
    return connect_url(config.rpc_url)


def connect_url(url: str, timeout_s: float = 30.0) -> Web3:
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s}))
    if not w3.is_connected():
        raise LedgerUnavailable(f"no JSON-RPC node answers at {url} (start one with `pcc chain up`)")
    return w3


def mine(w3: Web3, blocks: int = 1) -> None:
    """Mine ``blocks`` empty blocks on a development chain (to pass voting delays)."""
    version = str(w3.client_version).lower()
    if "anvil" in version:
        w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]
    elif "hardhat" in version:
        w3.provider.make_request("hardhat_mine", [hex(blocks)])  # type: ignore[arg-type]
    else:
        for _ in range(blocks):
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def advance_time(w3: Web3, seconds: int) -> None:
    """Move a development chain's clock ``seconds`` ahead and mine a block there (timelock delays)."""
    version = str(w3.client_version).lower()
    if "anvil" in version or "hardhat" in version:
        w3.provider.make_request("evm_increaseTime", [int(seconds)])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    else:  # the in-process EVM
        latest = int(w3.eth.get_block("latest")["timestamp"])
        w3.provider.make_request("testing_timeTravel", [latest + int(seconds)])  # type: ignore[arg-type]
        mine(w3)
