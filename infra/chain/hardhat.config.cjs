// Hardhat 2 node started by `pcc chain up --kind hardhat`: the same fork and chain id as anvil.
module.exports = {
  networks: {
    hardhat: {
      hardfork: "prague",
      chainId: 31337,
      mining: { auto: true },
    },
  },
};
