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
/// storage word per 256 receipts. Each consumer pays once per batch, each producer is credited
/// in storage it later withdraws from (pull), and the treasury is paid once per batch.
contract Marketplace is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    uint256 private constant BPS = 10_000;

    // A batch is encoded compactly: one list of consumers, one of producers, and words.
    // Each receipt is a header word followed by `shares` share words:
    //   header = receiptNo (bits 0-63) | amount in cents (64-159) | consumer index (160-175)
    //            | number of shares (176-191)
    //   share  = producer index (bits 0-15) | weight (16-47), e.g. rows of that producer used;
    //            the index TREASURY_SHARE stands for rows the consortium itself derived
    //            (fraud scores, reputations): that part goes to the treasury.
    uint256 private constant MASK16 = 0xffff;
    uint256 public constant TREASURY_SHARE = 0xffff;
    uint256 private constant MASK32 = 0xffffffff;
    uint256 private constant MASK64 = 0xffffffffffffffff;
    uint256 private constant MASK96 = 0xffffffffffffffffffffffff;

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
    error ProducerIndexOutOfRange(uint256 receiptNo, uint256 index);
    error ConsumerIndexOutOfRange(uint256 receiptNo, uint256 index);
    error TruncatedReceipt(uint256 receiptNo);
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

    /// Running totals of one batch, kept in memory so storage is written once per
    /// consumer, producer and bitmap word rather than once per receipt.
    struct Batch {
        uint256[] owed; // per consumer index
        uint256[] earned; // per producer index
        uint256 word; // bitmap word cached in `bits`
        uint256 bits;
        uint256 amount;
        uint256 fee;
        uint256 receipts;
        uint256 feeBps;
    }

    /// Settle a batch of receipts (see the encoding above); all or nothing.
    function settle(address[] calldata consumers, address[] calldata producers, uint256[] calldata words)
        external
        onlyRole(SETTLER_ROLE)
    {
        for (uint256 p = 0; p < producers.length; ++p) {
            if (!sources.isActiveAccount(producers[p])) revert UnknownProducer(producers[p]);
        }
        Batch memory b;
        b.owed = new uint256[](consumers.length);
        b.earned = new uint256[](producers.length);
        b.feeBps = parameters.feeBps();
        b.word = type(uint256).max;
        for (uint256 i = 0; i < words.length;) {
            i = _settleOne(words, i, b);
        }
        if (b.word != type(uint256).max) _settledWords[b.word] = b.bits;
        for (uint256 p = 0; p < producers.length; ++p) {
            if (b.earned[p] > 0) credits[producers[p]] += b.earned[p];
        }
        for (uint256 c = 0; c < consumers.length; ++c) {
            _collect(consumers[c], b.owed[c]);
        }
        if (b.fee > 0) {
            token.safeTransfer(address(treasury), b.fee);
            treasury.notifyRevenue(b.fee);
        }
        emit Settled(msg.sender, b.receipts, b.amount, b.fee);
    }

    /// Settle the receipt whose header is `words[i]`; returns the index of the next header.
    function _settleOne(uint256[] calldata words, uint256 i, Batch memory b) private returns (uint256 next) {
        uint256 receiptNo;
        uint256 amount;
        {
            uint256 header = words[i];
            receiptNo = header & MASK64;
            amount = (header >> 64) & MASK96;
            uint256 consumer = (header >> 160) & MASK16;
            uint256 n = (header >> 176) & MASK16;
            if (n == 0 || amount == 0) revert EmptyReceipt(receiptNo);
            if (consumer >= b.owed.length) revert ConsumerIndexOutOfRange(receiptNo, consumer);
            next = i + 1 + n;
            if (next > words.length) revert TruncatedReceipt(receiptNo);
            b.owed[consumer] += amount;
        }
        _markSettled(receiptNo, b);
        b.amount += amount;
        b.fee += _credit(receiptNo, amount, words[i + 1:next], b);
        ++b.receipts;
    }

    /// Set the receipt's bit in the cached bitmap word; sorted receipt numbers load few words.
    function _markSettled(uint256 receiptNo, Batch memory b) private {
        uint256 word = receiptNo >> 8;
        if (word != b.word) {
            if (b.word != type(uint256).max) _settledWords[b.word] = b.bits; // flush the previous word
            b.word = word;
            b.bits = _settledWords[word];
        }
        uint256 bit = 1 << (receiptNo & 0xff);
        if (b.bits & bit != 0) revert ReceiptAlreadySettled(receiptNo);
        b.bits |= bit;
    }

    /// Credit the producers' part of one receipt in memory; returns the treasury's part.
    function _credit(uint256 receiptNo, uint256 amount, uint256[] calldata shares, Batch memory b)
        private
        pure
        returns (uint256 fee)
    {
        uint256 totalWeight;
        for (uint256 j = 0; j < shares.length; ++j) {
            totalWeight += (shares[j] >> 16) & MASK32;
        }
        if (totalWeight == 0) revert ZeroWeight(receiptNo);
        fee = (amount * b.feeBps) / BPS;
        uint256 rest = amount - fee;
        uint256 paid;
        for (uint256 j = 0; j < shares.length; ++j) {
            uint256 producer = shares[j] & MASK16;
            uint256 part = (rest * ((shares[j] >> 16) & MASK32)) / totalWeight;
            if (producer == TREASURY_SHARE) {
                fee += part;
            } else {
                if (producer >= b.earned.length) revert ProducerIndexOutOfRange(receiptNo, producer);
                b.earned[producer] += part;
            }
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
