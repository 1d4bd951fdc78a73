// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

interface IParameters {
    function feeBps() external view returns (uint16);
}

interface ISourceAccounts {
    function isActiveAccount(address account) external view returns (bool);
}

interface IRevenueShare {
    function notifyRevenue(uint256 amount) external;
}

/// @title Marketplace: settles query receipts in PCC_token.
/// @notice The consumer pays from its escrowed deposit, or else through its allowance to this
/// contract; the amount is split between the producers whose data was used (credited here,
/// withdrawn by them) and the consortium treasury (shared among PCC_gold holders). Receipts are
/// numbered by the serving layer; a bitmap makes settling one twice impossible and costs one
/// storage word per 256 receipts. Receipts of one consumer placed next to each other are
/// collected in one transfer.
contract Marketplace is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    uint256 private constant BPS = 10_000;

    struct Share {
        uint16 producer; // index into the batch's producer list
        uint32 weight; // e.g. rows of that producer used by the query
    }

    struct Receipt {
        uint256 receiptNo;
        address consumer;
        uint256 amount; // cents
        Share[] shares;
    }

    IERC20 public immutable token;
    IParameters public immutable parameters;
    ISourceAccounts public immutable sources;
    IRevenueShare public immutable treasury;

    mapping(uint256 => uint256) private _settledWords;
    mapping(address => uint256) public credits;
    mapping(address => uint256) public deposits;

    error ReceiptAlreadySettled(uint256 receiptNo);
    error EmptyReceipt(uint256 receiptNo);
    error UnknownProducer(address producer);
    error ProducerIndexOutOfRange(uint256 receiptNo, uint16 index);
    error ZeroWeight(uint256 receiptNo);
    error InsufficientDeposit(address consumer, uint256 deposit, uint256 needed);
    error NothingToWithdraw(address account);

    event Settled(address indexed settler, uint256 receipts, uint256 amount, uint256 fee);
    event Deposited(address indexed consumer, uint256 amount);
    event DepositWithdrawn(address indexed consumer, uint256 amount);
    event CreditWithdrawn(address indexed producer, uint256 amount);

    constructor(address admin, address settler, IERC20 token_, IParameters params, ISourceAccounts src, IRevenueShare gold) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(SETTLER_ROLE, settler);
        token = token_;
        parameters = params;
        sources = src;
        treasury = gold;
    }

    /// Escrow `amount` cents for future queries (pulled through the caller's allowance).
    function deposit(uint256 amount) external {
        token.safeTransferFrom(msg.sender, address(this), amount);
        deposits[msg.sender] += amount;
        emit Deposited(msg.sender, amount);
    }

    function withdrawDeposit(uint256 amount) external {
        uint256 have = deposits[msg.sender];
        if (amount > have) revert InsufficientDeposit(msg.sender, have, amount);
        deposits[msg.sender] = have - amount;
        token.safeTransfer(msg.sender, amount);
        emit DepositWithdrawn(msg.sender, amount);
    }

    /// Producers pull what settled queries credited them.
    function withdraw() external returns (uint256 amount) {
        amount = credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        credits[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit CreditWithdrawn(msg.sender, amount);
    }

    function isSettled(uint256 receiptNo) public view returns (bool) {
        return (_settledWords[receiptNo >> 8] >> (receiptNo & 0xff)) & 1 == 1;
    }

    /// Settle a batch of receipts; `producers` are the source accounts the shares index.
    function settle(address[] calldata producers, Receipt[] calldata receipts) external onlyRole(SETTLER_ROLE) {
        for (uint256 p = 0; p < producers.length; ++p) {
            if (!sources.isActiveAccount(producers[p])) revert UnknownProducer(producers[p]);
        }
        uint256 feeBps = parameters.feeBps();
        uint256 totalFee;
        uint256 totalAmount;
        address consumer;
        uint256 owed;
        for (uint256 i = 0; i < receipts.length; ++i) {
            Receipt calldata r = receipts[i];
            _markSettled(r.receiptNo);
            if (r.consumer != consumer) {
                _collect(consumer, owed);
                consumer = r.consumer;
                owed = 0;
            }
            owed += r.amount;
            totalAmount += r.amount;
            totalFee += _credit(r, producers, feeBps);
        }
        _collect(consumer, owed);
        if (totalFee > 0) {
            token.safeTransfer(address(treasury), totalFee);
            treasury.notifyRevenue(totalFee);
        }
        emit Settled(msg.sender, receipts.length, totalAmount, totalFee);
    }

    function _markSettled(uint256 receiptNo) private {
        uint256 word = receiptNo >> 8;
        uint256 bit = 1 << (receiptNo & 0xff);
        uint256 bits = _settledWords[word];
        if (bits & bit != 0) revert ReceiptAlreadySettled(receiptNo);
        _settledWords[word] = bits | bit;
    }

    /// Credit the producers' part of one receipt; returns the treasury's part.
    function _credit(Receipt calldata r, address[] calldata producers, uint256 feeBps)
        private
        returns (uint256 fee)
    {
        uint256 n = r.shares.length;
        if (n == 0 || r.amount == 0) revert EmptyReceipt(r.receiptNo);
        uint256 totalWeight;
        for (uint256 j = 0; j < n; ++j) {
            totalWeight += r.shares[j].weight;
        }
        if (totalWeight == 0) revert ZeroWeight(r.receiptNo);
        fee = (r.amount * feeBps) / BPS;
        uint256 rest = r.amount - fee;
        uint256 paid;
        for (uint256 j = 0; j < n; ++j) {
            Share calldata s = r.shares[j];
            if (s.producer >= producers.length) revert ProducerIndexOutOfRange(r.receiptNo, s.producer);
            uint256 part = (rest * s.weight) / totalWeight;
            credits[producers[s.producer]] += part;
            paid += part;
        }
        fee += rest - paid; // rounding dust goes to the treasury
    }

    function _collect(address consumer, uint256 amount) private {
        if (amount == 0) return;
        uint256 have = deposits[consumer];
        if (have >= amount) {
            deposits[consumer] = have - amount;
        } else {
            token.safeTransferFrom(consumer, address(this), amount);
        }
    }
}
