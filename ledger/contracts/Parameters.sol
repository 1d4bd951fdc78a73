// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Platform parameters that only governance changes: the price of each data category,
/// the consortium's share of every settled query and how long a consumer's deposit stays
/// reserved for its unsettled receipts after it asks for it back.
contract Parameters is AccessControl {
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");
    uint16 public constant MAX_BPS = 10_000;

    /// Consortium treasury share of each settled query, in basis points.
    uint16 public feeBps;
    /// Seconds between a consumer's withdrawal request and the moment it may take its deposit;
    /// longer than the serving layer's settlement period, so receipts issued before the request
    /// are settled from the deposit first.
    uint32 public withdrawalDelay;
    /// Price in PCC_token cents per row of a data category (keccak256 of its name).
    mapping(bytes32 => uint256) public pricePerCategory;

    /// A fee above 100 %.
    error FeeTooHigh(uint256 feeBps);

    event FeeChanged(uint16 feeBps);
    event PriceChanged(bytes32 indexed category, uint256 priceCents);
    event WithdrawalDelayChanged(uint32 seconds_);

    constructor(address admin, address governance, uint16 initialFeeBps, uint32 initialWithdrawalDelay) {
        if (initialFeeBps > MAX_BPS) revert FeeTooHigh(initialFeeBps);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GOVERNANCE_ROLE, governance);
        feeBps = initialFeeBps;
        withdrawalDelay = initialWithdrawalDelay;
        emit FeeChanged(initialFeeBps);
        emit WithdrawalDelayChanged(initialWithdrawalDelay);
    }

    function setFeeBps(uint16 newFeeBps) external onlyRole(GOVERNANCE_ROLE) {
        if (newFeeBps > MAX_BPS) revert FeeTooHigh(newFeeBps);
        feeBps = newFeeBps;
        emit FeeChanged(newFeeBps);
    }

    function setPrice(bytes32 category, uint256 priceCents) external onlyRole(GOVERNANCE_ROLE) {
        pricePerCategory[category] = priceCents;
        emit PriceChanged(category, priceCents);
    }

    /// A new delay applies to requests made after it; a pending request keeps its date.
    function setWithdrawalDelay(uint32 seconds_) external onlyRole(GOVERNANCE_ROLE) {
        withdrawalDelay = seconds_;
        emit WithdrawalDelayChanged(seconds_);
    }
}
