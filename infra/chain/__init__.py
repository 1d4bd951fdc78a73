"""Local EVM nodes for the ledger: anvil (default) and the Hardhat 2 node, from npm."""
