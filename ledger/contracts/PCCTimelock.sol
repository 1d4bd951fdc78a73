// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title The consortium's timelock: every accepted proposal waits `getMinDelay()` seconds here,
/// then runs from this contract, which holds the GOVERNANCE roles and, after `pcc ledger
/// handover`, the admin role of every platform contract.
/// @notice The PCCGovernor is its only proposer, canceller and executor. The deployer is a
/// bootstrap admin (to name the Governor once it exists) until the handover renounces it; the
/// timelock then administers itself, so its delay and roles change only by a proposal.
contract PCCTimelock is TimelockController {
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}
