// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

interface IParameters {
    function feeBps() external view returns (uint16);
    function withdrawalDelay() external view returns (uint32);
}

interface ISourceAccounts {
    function isActiveAccount(address account) external view returns (bool);
    function keyOf(address account) external view returns (bytes32);
}

interface IRevenueShare {
    function notifyRevenue(uint256 amount) external;
}

/// @title Marketplace: settles query receipts in PCC_token.
/// @notice The consumer pays from its deposit, then through its allowance to this contract; the
/// amount is split between the producers whose data was used (credited here, withdrawn by them)
/// and the consortium treasury (shared among PCC_gold holders). Receipts are numbered by the
/// serving layer; a bitmap makes settling one twice impossible and costs one storage word per
/// 256 receipts. Each consumer pays once per batch, each producer is credited in storage it
/// later withdraws from (pull), and the treasury is paid once per batch.
///
/// Settlement is per receipt: a receipt naming a producer that is not an active registered
/// source, or whose consumer cannot pay it, is left unsettled with a `ReceiptFailed` event and
/// the rest of the batch settles. A deposit is the consumer's reserve for its unsettled
/// receipts: it comes back only `Parameters.withdrawalDelay()` seconds after a withdrawal
/// request (longer than the settlement period), and settlements may still draw on it meanwhile.
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
    uint256 private constant NONE = type(uint256).max;

    /// Why a receipt did not settle (`ReceiptFailed.reason`); `party` names the producer or consumer.
    uint8 public constant FAIL_UNKNOWN_PRODUCER = 1;
    uint8 public constant FAIL_SUSPENDED_PRODUCER = 2;
    uint8 public constant FAIL_CONSUMER_FUNDS = 3;

    IERC20 public immutable token;
    IParameters public immutable parameters;
    ISourceAccounts public immutable sources;
    IRevenueShare public immutable treasury;

    /// A consumer's request to take `amount` of its deposit back at `readyAt` (unix seconds).
    struct Withdrawal {
        uint128 amount;
        uint64 readyAt;
    }

    mapping(uint256 => uint256) private _settledWords;
    mapping(address => uint256) public credits;
    mapping(address => uint256) public deposits;
    mapping(address => Withdrawal) public withdrawals;

    error ReceiptAlreadySettled(uint256 receiptNo);
    error EmptyReceipt(uint256 receiptNo);
    error ProducerIndexOutOfRange(uint256 receiptNo, uint256 index);
    error ConsumerIndexOutOfRange(uint256 receiptNo, uint256 index);
    error TruncatedReceipt(uint256 receiptNo);
    error ZeroWeight(uint256 receiptNo);
    error InsufficientDeposit(address consumer, uint256 deposit, uint256 needed);
    error NoWithdrawalRequested(address consumer);
    error WithdrawalNotReady(address consumer, uint256 readyAt);
    error NothingToWithdraw(address account);

    event Settled(address indexed settler, uint256 receipts, uint256 failed, uint256 amount, uint256 fee);
    event ReceiptFailed(uint256 indexed receiptNo, uint8 reason, address party);
    event Deposited(address indexed consumer, uint256 amount);
    event WithdrawalRequested(address indexed consumer, uint256 amount, uint256 readyAt);
    event WithdrawalCancelled(address indexed consumer);
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

    // -- consumers' deposits ------------------------------------------------------------------

    /// Deposit `amount` cents for future queries (pulled through the caller's allowance).
    function deposit(uint256 amount) external {
        token.safeTransferFrom(msg.sender, address(this), amount);
        deposits[msg.sender] += amount;
        emit Deposited(msg.sender, amount);
    }

    /// Ask for `amount` of the deposit back; it can be withdrawn after the withdrawal delay.
    /// A new request replaces a pending one and starts the delay again.
    function requestWithdrawal(uint256 amount) external returns (uint256 readyAt) {
        uint256 have = deposits[msg.sender];
        if (amount == 0 || amount > have) revert InsufficientDeposit(msg.sender, have, amount);
        readyAt = block.timestamp + parameters.withdrawalDelay();
        withdrawals[msg.sender] = Withdrawal(uint128(amount), uint64(readyAt));
        emit WithdrawalRequested(msg.sender, amount, readyAt);
    }

    function cancelWithdrawal() external {
        if (withdrawals[msg.sender].readyAt == 0) revert NoWithdrawalRequested(msg.sender);
        delete withdrawals[msg.sender];
        emit WithdrawalCancelled(msg.sender);
    }

    /// Take back what was requested, once the delay has passed (less what settlements used meanwhile).
    function withdrawDeposit() external returns (uint256 amount) {
        Withdrawal memory w = withdrawals[msg.sender];
        if (w.readyAt == 0) revert NoWithdrawalRequested(msg.sender);
        if (block.timestamp < w.readyAt) revert WithdrawalNotReady(msg.sender, w.readyAt);
        uint256 have = deposits[msg.sender];
        amount = w.amount < have ? w.amount : have;
        delete withdrawals[msg.sender];
        deposits[msg.sender] = have - amount;
        token.safeTransfer(msg.sender, amount);
        emit DepositWithdrawn(msg.sender, amount);
    }

    /// What new receipts of `consumer` may be issued against: its deposit less what it asked back.
    function spendable(address consumer) external view returns (uint256) {
        uint256 have = deposits[consumer];
        uint256 asked = withdrawals[consumer].amount;
        return asked < have ? have - asked : 0;
    }

    // -- producers -----------------------------------------------------------------------------

    /// Producers pull what settled queries credited them.
    function withdraw() external returns (uint256 amount) {
        amount = credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        credits[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit CreditWithdrawn(msg.sender, amount);
    }

    // -- settlement ----------------------------------------------------------------------------

    function isSettled(uint256 receiptNo) public view returns (bool) {
        return (_settledWords[receiptNo >> 8] >> (receiptNo & 0xff)) & 1 == 1;
    }

    /// Running totals of one batch, kept in memory so storage is written once per
    /// consumer, producer and bitmap word rather than once per receipt.
    struct Batch {
        uint256[] owed; // per consumer index: cents of its receipts that settle
        uint256[] earned; // per producer index
        uint8[] failure; // per producer index: 0 if active, else its FAIL_ reason
        bool anyInactive;
        uint256 word; // bitmap word cached in `bits`
        uint256 bits;
        uint256 amount;
        uint256 fee;
        uint256 receipts;
        uint256 failed;
        uint256 feeBps;
    }

    /// Settle a batch of receipts (see the encoding above), each on its own: a receipt that
    /// cannot settle emits `ReceiptFailed` and stays unsettled; the others settle. A malformed
    /// batch or a receipt settled before reverts the whole call (the settler's mistake).
    /// Receipts are settled optimistically; a consumer whose funds do not cover all of its
    /// receipts has those beyond its funds taken back out (in batch order), so the common case
    /// pays one comparison per consumer for the check.
    function settle(address[] calldata consumers, address[] calldata producers, uint256[] calldata words)
        external
        onlyRole(SETTLER_ROLE)
    {
        Batch memory b;
        b.owed = new uint256[](consumers.length);
        b.earned = new uint256[](producers.length);
        b.failure = new uint8[](producers.length);
        for (uint256 p = 0; p < producers.length; ++p) {
            uint8 failure = _producerFailure(producers[p]);
            if (failure != 0) {
                b.failure[p] = failure;
                b.anyInactive = true;
            }
        }
        b.feeBps = parameters.feeBps();
        b.word = type(uint256).max;
        for (uint256 i = 0; i < words.length;) {
            (uint256 next, uint256 inactive) = _settleOne(words, i, b);
            if (inactive != NONE) {
                emit ReceiptFailed(words[i] & MASK64, b.failure[inactive], producers[inactive]);
                ++b.failed;
            }
            i = next;
        }
        if (b.word != type(uint256).max) _settledWords[b.word] = b.bits;
        for (uint256 c = 0; c < consumers.length; ++c) {
            uint256 funds = _fundsCovering(consumers[c], b.owed[c]);
            if (funds < b.owed[c]) _shed(c, consumers[c], funds, words, b);
        }
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
        emit Settled(msg.sender, b.receipts, b.failed, b.amount, b.fee);
    }

    function _producerFailure(address producer) private view returns (uint8) {
        if (sources.isActiveAccount(producer)) return 0;
        return sources.keyOf(producer) == bytes32(0) ? FAIL_UNKNOWN_PRODUCER : FAIL_SUSPENDED_PRODUCER;
    }

    /// Settle the receipt whose header is `words[i]`; returns the index of the next header and
    /// the index of a producer that is not active if the receipt pays one (`NONE` otherwise).
    function _settleOne(uint256[] calldata words, uint256 i, Batch memory b)
        private
        returns (uint256 next, uint256 inactive)
    {
        uint256 header = words[i];
        uint256 receiptNo = header & MASK64;
        uint256 amount = (header >> 64) & MASK96;
        {
            uint256 consumer = (header >> 160) & MASK16;
            uint256 n = (header >> 176) & MASK16;
            if (n == 0 || amount == 0) revert EmptyReceipt(receiptNo);
            if (consumer >= b.owed.length) revert ConsumerIndexOutOfRange(receiptNo, consumer);
            next = i + 1 + n;
            if (next > words.length) revert TruncatedReceipt(receiptNo);
            if (b.anyInactive) {
                inactive = _inactiveProducer(words[i + 1:next], b);
                if (inactive != NONE) {
                    if (_isMarked(receiptNo, b)) revert ReceiptAlreadySettled(receiptNo);
                    return (next, inactive);
                }
            }
            b.owed[consumer] += amount;
        }
        _markSettled(receiptNo, b);
        b.amount += amount;
        b.fee += _credit(receiptNo, amount, words[i + 1:next], b, true);
        ++b.receipts;
        return (next, NONE);
    }

    /// The index of the first producer a receipt gives a positive weight that is not active, or `NONE`.
    function _inactiveProducer(uint256[] calldata shares, Batch memory b) private pure returns (uint256) {
        for (uint256 j = 0; j < shares.length; ++j) {
            uint256 producer = shares[j] & MASK16;
            if (producer == TREASURY_SHARE || producer >= b.failure.length) continue; // range: see _credit
            if ((shares[j] >> 16) & MASK32 != 0 && b.failure[producer] != 0) return producer;
        }
        return NONE;
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

    function _isMarked(uint256 receiptNo, Batch memory b) private view returns (bool) {
        uint256 word = receiptNo >> 8;
        uint256 bits = word == b.word ? b.bits : _settledWords[word];
        return (bits >> (receiptNo & 0xff)) & 1 == 1;
    }

    /// Credit (or, with `add` false, take back) the producers' part of one receipt in memory;
    /// returns the treasury's part.
    function _credit(uint256 receiptNo, uint256 amount, uint256[] calldata shares, Batch memory b, bool add)
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
                if (add) b.earned[producer] += part;
                else b.earned[producer] -= part;
            }
            paid += part;
        }
        fee += rest - paid; // rounding dust goes to the treasury
    }

    /// What `consumer` can pay, if `owed` is more than its deposit: its deposit plus what its
    /// allowance to this contract and its balance both cover.
    function _fundsCovering(address consumer, uint256 owed) private view returns (uint256 funds) {
        funds = deposits[consumer];
        if (funds >= owed) return funds;
        uint256 allowance = token.allowance(consumer, address(this));
        uint256 balance = token.balanceOf(consumer);
        funds += allowance < balance ? allowance : balance;
    }

    /// Take back out of the batch the receipts of consumer `c` beyond its `funds` (in batch order).
    function _shed(uint256 c, address consumer, uint256 funds, uint256[] calldata words, Batch memory b) private {
        uint256 kept;
        for (uint256 i = 0; i < words.length;) {
            uint256 header = words[i];
            uint256 next = i + 1 + ((header >> 176) & MASK16);
            uint256 receiptNo = header & MASK64;
            // the receipt's bit is set only if it settled in this batch (a repeat would have reverted)
            if ((header >> 160) & MASK16 == c && isSettled(receiptNo)) {
                uint256 amount = (header >> 64) & MASK96;
                if (kept + amount <= funds) {
                    kept += amount;
                } else {
                    _settledWords[receiptNo >> 8] &= ~(1 << (receiptNo & 0xff));
                    b.owed[c] -= amount;
                    b.amount -= amount;
                    b.fee -= _credit(receiptNo, amount, words[i + 1:next], b, false);
                    --b.receipts;
                    ++b.failed;
                    emit ReceiptFailed(receiptNo, FAIL_CONSUMER_FUNDS, consumer);
                }
            }
            i = next;
        }
    }

    /// Take what `consumer` owes for the batch: from its deposit, the rest through its allowance.
    function _collect(address consumer, uint256 amount) private {
        if (amount == 0) return;
        uint256 have = deposits[consumer];
        if (have >= amount) {
            deposits[consumer] = have - amount;
        } else {
            deposits[consumer] = 0;
            token.safeTransferFrom(consumer, address(this), amount - have);
        }
    }
}
