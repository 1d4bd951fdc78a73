// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Pausable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Pausable.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title PCC_token: the euro-pegged payment token of the data marketplace.
/// @notice 1 unit = 1 euro cent (2 decimals). The treasury mints against recorded euro
/// deposits and burns on redemption; both carry the off-chain payment reference.
/// Governance may pause every transfer.
contract PCCToken is ERC20, ERC20Pausable, AccessControl {
    bytes32 public constant TREASURY_ROLE = keccak256("TREASURY_ROLE");
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");

    /// A mint or burn without the off-chain payment reference it settles.
    error MissingPaymentReference();
    /// A mint or burn of zero cents.
    error ZeroAmount();

    event Minted(address indexed to, uint256 amount, bytes32 indexed paymentRef);
    event Redeemed(address indexed from, uint256 amount, bytes32 indexed paymentRef);

    constructor(address admin, address treasury, address governance) ERC20("PCC token", "PCC") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(TREASURY_ROLE, treasury);
        _grantRole(GOVERNANCE_ROLE, governance);
    }

    function decimals() public pure override returns (uint8) {
        return 2;
    }

    /// Mint `amount` cents to `to` against the euro deposit `paymentRef`.
    function mint(address to, uint256 amount, bytes32 paymentRef) external onlyRole(TREASURY_ROLE) {
        _checkPayment(amount, paymentRef);
        _mint(to, amount);
        emit Minted(to, amount, paymentRef);
    }

    /// Burn `amount` cents of `from` (who approved the treasury) when paying out euros `paymentRef`.
    function redeem(address from, uint256 amount, bytes32 paymentRef) external onlyRole(TREASURY_ROLE) {
        _checkPayment(amount, paymentRef);
        _spendAllowance(from, _msgSender(), amount);
        _burn(from, amount);
        emit Redeemed(from, amount, paymentRef);
    }

    function pause() external onlyRole(GOVERNANCE_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(GOVERNANCE_ROLE) {
        _unpause();
    }

    function _checkPayment(uint256 amount, bytes32 paymentRef) private pure {
        if (amount == 0) revert ZeroAmount();
        if (paymentRef == bytes32(0)) revert MissingPaymentReference();
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Pausable) {
        super._update(from, to, value);
    }
}
