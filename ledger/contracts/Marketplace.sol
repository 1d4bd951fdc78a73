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
        address[] consumers;
        uint256[] owed; // per consumer index: cents of its receipts that settle
        uint256[] funds; // per consumer index: cents it can pay, read on first use
        uint8[] read; // per consumer index: 0 nothing read, 1 its deposit, 2 deposit and allowance
        uint256[] earned; // per producer index
        uint8[] failure; // per producer index: 0 if active, else the FAIL_ reason
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
    function settle(address[] calldata consumers, address[] calldata producers, uint256[] calldata words)
        external
        onlyRole(SETTLER_ROLE)
    {
        Batch memory b;
        b.consumers = consumers;
        b.owed = new uint256[](consumers.length);
        b.funds = new uint256[](consumers.length);
        b.read = new uint8[](consumers.length);
        b.earned = new uint256[](producers.length);
        b.failure = new uint8[](producers.length);
        for (uint256 p = 0; p < producers.length; ++p) {
            b.failure[p] = _producerFailure(producers[p]);
        }
        b.feeBps = parameters.feeBps();
        b.word = type(uint256).max;
        for (uint256 i = 0; i < words.length;) {
            (uint256 next, uint256 failure, uint256 party) = _settleOne(words, i, b);
            if (failure != 0) {
                address who = failure == FAIL_CONSUMER_FUNDS ? consumers[party] : producers[party];
                emit ReceiptFailed(words[i] & MASK64, uint8(failure), who);
                ++b.failed;
            }
            i = next;
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
        emit Settled(msg.sender, b.receipts, b.failed, b.amount, b.fee);
    }

    function _producerFailure(address producer) private view returns (uint8) {
        if (sources.isActiveAccount(producer)) return 0;
        return sources.keyOf(producer) == bytes32(0) ? FAIL_UNKNOWN_PRODUCER : FAIL_SUSPENDED_PRODUCER;
    }

    /// Settle the receipt whose header is `words[i]`; returns the index of the next header and,
    /// if it cannot settle, the reason and the index of the consumer or producer at fault.
    function _settleOne(uint256[] calldata words, uint256 i, Batch memory b)
        private
        returns (uint256 next, uint256 failure, uint256 party)
    {
        uint256 header = words[i];
        uint256 receiptNo = header & MASK64;
        uint256 amount = (header >> 64) & MASK96;
        {
            uint256 n = (header >> 176) & MASK16;
            if (n == 0 || amount == 0) revert EmptyReceipt(receiptNo);
            next = i + 1 + n;
            if (next > words.length) revert TruncatedReceipt(receiptNo);
            party = (header >> 160) & MASK16; // the consumer, until a producer is found at fault
            if (party >= b.owed.length) revert ConsumerIndexOutOfRange(receiptNo, party);
        }
        uint256 bit = _unsettledBit(receiptNo, b);
        (uint256 totalWeight, uint256 inactive) = _weigh(receiptNo, words[i + 1:next], b);
        if (inactive != type(uint256).max) return (next, b.failure[inactive], inactive);
        if (!_affordable(party, amount, b)) return (next, FAIL_CONSUMER_FUNDS, party);
        b.bits |= bit;
        b.owed[party] += amount;
        b.amount += amount;
        b.fee += _credit(amount, totalWeight, words[i + 1:next], b);
        ++b.receipts;
        return (next, 0, 0);
    }

    /// The receipt's bit in the cached bitmap word (flushing the previous word when it moves on);
    /// reverts if the bit is set. Sorted receipt numbers load few words.
    function _unsettledBit(uint256 receiptNo, Batch memory b) private returns (uint256 bit) {
        uint256 word = receiptNo >> 8;
        if (word != b.word) {
            if (b.word != type(uint256).max) _settledWords[b.word] = b.bits;
            b.word = word;
            b.bits = _settledWords[word];
        }
        bit = 1 << (receiptNo & 0xff);
        if (b.bits & bit != 0) revert ReceiptAlreadySettled(receiptNo);
    }

    /// The total weight of a receipt's shares and the index of the first producer with a
    /// positive weight that is not active (`type(uint256).max` if none).
    function _weigh(uint256 receiptNo, uint256[] calldata shares, Batch memory b)
        private
        pure
        returns (uint256 totalWeight, uint256 inactive)
    {
        inactive = type(uint256).max;
        for (uint256 j = 0; j < shares.length; ++j) {
            uint256 producer = shares[j] & MASK16;
            uint256 weight = (shares[j] >> 16) & MASK32;
            totalWeight += weight;
            if (producer == TREASURY_SHARE) continue;
            if (producer >= b.earned.length) revert ProducerIndexOutOfRange(receiptNo, producer);
            if (weight > 0 && b.failure[producer] != 0 && inactive == type(uint256).max) inactive = producer;
        }
        if (totalWeight == 0) revert ZeroWeight(receiptNo);
    }

    /// True if consumer `c` can pay `amount` more in this batch: its deposit first, then what its
    /// allowance to this contract and its balance both cover (read only when the deposit falls short).
    function _affordable(uint256 c, uint256 amount, Batch memory b) private view returns (bool) {
        uint256 need = b.owed[c] + amount;
        if (b.read[c] == 0) {
            b.funds[c] = deposits[b.consumers[c]];
            b.read[c] = 1;
        }
        if (need > b.funds[c] && b.read[c] == 1) {
            address consumer = b.consumers[c];
            uint256 allowance = token.allowance(consumer, address(this));
            uint256 balance = token.balanceOf(consumer);
            b.funds[c] += allowance < balance ? allowance : balance;
            b.read[c] = 2;
        }
        return need <= b.funds[c];
    }

    /// Credit the producers' part of one receipt in memory; returns the treasury's part.
    function _credit(uint256 amount, uint256 totalWeight, uint256[] calldata shares, Batch memory b)
        private
        pure
        returns (uint256 fee)
    {
        fee = (amount * b.feeBps) / BPS;
        uint256 rest = amount - fee;
        uint256 paid;
        for (uint256 j = 0; j < shares.length; ++j) {
            uint256 producer = shares[j] & MASK16;
            uint256 part = (rest * ((shares[j] >> 16) & MASK32)) / totalWeight;
            if (producer == TREASURY_SHARE) fee += part;
            else b.earned[producer] += part;
            paid += part;
        }
        fee += rest - paid; // rounding dust goes to the treasury
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
