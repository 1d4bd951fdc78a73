// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC20Votes} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Votes.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title PCC_gold: governance token of the consortium members, and their revenue share.
/// @notice Votes (ERC20Votes) drive the Governor. Revenue paid in PCC_token is shared pro rata
/// to PCC_gold holdings with a cumulative revenue-per-share accumulator: O(1) per transfer,
/// no loop over holders; each holder pulls its share with `claim()`.
contract PCCGold is ERC20, ERC20Permit, ERC20Votes, AccessControl {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;
    using SafeCast for int256;

    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    bytes32 public constant REVENUE_ROLE = keccak256("REVENUE_ROLE");
    uint256 private constant MAGNITUDE = 1e36; // decimal, so decimal splits (60 % / 40 %) are exact

    IERC20 public immutable payment;
    uint256 public revenuePerShare; // scaled by MAGNITUDE
    uint256 public totalRevenue;
    mapping(address => int256) private _corrections;
    mapping(address => uint256) public claimed;
    uint256 private _totalClaimed;

    /// Revenue arrived while no PCC_gold exists to share it.
    error NoHolders();
    /// Revenue notified that the contract did not receive.
    error RevenueNotReceived(uint256 notified, uint256 unaccounted);
    /// Nothing to claim.
    error NothingToClaim(address holder);

    event RevenueShared(address indexed from, uint256 amount, uint256 revenuePerShare);
    event RevenueClaimed(address indexed holder, uint256 amount);

    constructor(address admin, IERC20 paymentToken) ERC20("PCC gold", "PCCG") ERC20Permit("PCC gold") {
        payment = paymentToken;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// Admit a member or raise its stake (governance).
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /// Share `amount` PCC_token cents, already transferred to this contract, among holders.
    function notifyRevenue(uint256 amount) external onlyRole(REVENUE_ROLE) {
        uint256 supply = totalSupply();
        if (supply == 0) revert NoHolders();
        uint256 unaccounted = payment.balanceOf(address(this)) - (totalRevenue - _totalClaimed);
        if (amount > unaccounted) revert RevenueNotReceived(amount, unaccounted);
        revenuePerShare += (amount * MAGNITUDE) / supply;
        totalRevenue += amount;
        emit RevenueShared(_msgSender(), amount, revenuePerShare);
    }

    /// Cents of revenue `holder` may claim now.
    function claimable(address holder) public view returns (uint256) {
        int256 earned = (revenuePerShare * balanceOf(holder)).toInt256() + _corrections[holder];
        return uint256(earned) / MAGNITUDE - claimed[holder];
    }

    /// Pull the caller's share of the revenue.
    function claim() external returns (uint256 amount) {
        address holder = _msgSender();
        amount = claimable(holder);
        if (amount == 0) revert NothingToClaim(holder);
        claimed[holder] += amount;
        _totalClaimed += amount;
        payment.safeTransfer(holder, amount);
        emit RevenueClaimed(holder, amount);
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Votes) {
        super._update(from, to, value);
        int256 delta = (revenuePerShare * value).toInt256();
        if (from != address(0)) _corrections[from] += delta;
        if (to != address(0)) _corrections[to] -= delta;
    }

    function nonces(address owner) public view override(ERC20Permit, Nonces) returns (uint256) {
        return super.nonces(owner);
    }
}
