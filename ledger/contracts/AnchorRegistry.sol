// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title AnchorRegistry: checkpoints of each source's append-only event log.
/// @notice A checkpoint is (tree size, RFC 6962 root), anchored by the source's own account.
/// Each new checkpoint must grow the tree. Per source, one record slot holds the account and
/// status the SourceRegistry mirrors here, the latest tree size and the number of checkpoints;
/// each checkpoint adds exactly one slot, its full 32-byte root, keyed by tree size. Anchoring
/// reads and rewrites the record and writes the new root slot: nothing else is stored.
/// @dev Gas (Prague, measured by bench/bench_ledger.py): 21,000 base + calldata + 2,100 cold
/// record read + 2,900 record rewrite + 22,100 new root slot + the log. `anchor` runs its
/// successful path in assembly over the layout of `Source` below; any failed check falls back
/// to `_reject`, which names the broken rule.
contract AnchorRegistry {
    /// One storage slot: account bits 0-159, treeSize 160-207, checkpoints 208-247, active 248-255.
    struct Record {
        address account;
        uint48 treeSize; // latest anchored tree size (0 before the first checkpoint)
        uint40 checkpoints; // would need 2^40 anchoring transactions to overflow
        bool active;
    }

    /// `record` at the slot keccak256(key . 0); the root anchored at tree size `n` at
    /// keccak256(n . (that slot + 1)): the ordinary Solidity layout of this struct.
    struct Source {
        Record record;
        mapping(uint256 => bytes32) roots;
    }

    uint256 private constant SIZE_SHIFT = 160;
    uint256 private constant ACTIVE_SHIFT = 248;
    uint256 private constant MAX_SIZE = 0xffffffffffff; // type(uint48).max
    uint256 private constant ACCOUNT_MASK = 0x00ffffffffffffffffffffffffffffffffffffffff;
    uint256 private constant SIZE_CLEAR_MASK = 0xffffffffffff000000000000ffffffffffffffffffffffffffffffffffffffff;
    uint256 private constant ONE_CHECKPOINT = 0x10000000000000000000000000000000000000000000000000000; // 1 << 208

    address public immutable sourceRegistry;
    mapping(bytes32 => Source) private _sources;

    error UnknownSource(bytes32 key);
    error SourceSuspended(bytes32 key);
    error NotSourceAccount(bytes32 key, address caller);
    error CheckpointDoesNotGrow(bytes32 key, uint256 latestTreeSize, uint256 treeSize);
    error TreeTooLarge(uint256 treeSize);
    error EmptyRoot(bytes32 key);
    error OnlySourceRegistry(address caller);

    /// The registry's only event (anonymous: topic 0 is the source key, so `eth_getLogs` on this
    /// address filtered by that topic follows one source). The root is not repeated in the log:
    /// read it with `rootAt(source, treeSize)`; an anchored root never changes.
    event Anchored(bytes32 indexed source, uint256 treeSize) anonymous;

    constructor(address registry) {
        sourceRegistry = registry;
    }

    /// Mirror of the SourceRegistry's account and status (called by it only).
    function syncSource(bytes32 key, address account, bool active) external {
        if (msg.sender != sourceRegistry) revert OnlySourceRegistry(msg.sender);
        Record storage r = _sources[key].record;
        r.account = account;
        r.active = active;
    }

    /// Anchor the checkpoint (treeSize, root) of the caller's source `key`.
    function anchor(bytes32 key, uint256 treeSize, bytes32 root) external {
        uint256 word;
        assembly ("memory-safe") {
            mstore(0x00, key)
            mstore(0x20, _sources.slot)
            let slot := keccak256(0x00, 0x40)
            word := sload(slot)
            // active, called by the source's account, grows the tree, fits 48 bits, non-zero root
            if and(
                and(shr(ACTIVE_SHIFT, word), eq(and(word, ACCOUNT_MASK), caller())),
                and(
                    gt(treeSize, and(shr(SIZE_SHIFT, word), MAX_SIZE)),
                    and(iszero(gt(treeSize, MAX_SIZE)), iszero(iszero(root)))
                )
            ) {
                sstore(slot, add(or(and(word, SIZE_CLEAR_MASK), shl(SIZE_SHIFT, treeSize)), ONE_CHECKPOINT))
                mstore(0x00, treeSize)
                mstore(0x20, add(slot, 1))
                sstore(keccak256(0x00, 0x40), root) // roots[treeSize] = root
                log1(0x00, 0x20, key) // Anchored(key, treeSize)
                stop()
            }
        }
        _reject(key, word, treeSize);
    }

    /// The latest checkpoint of `key`: (tree size, root, number of checkpoints).
    function latest(bytes32 key) external view returns (uint256 treeSize, bytes32 root, uint256 checkpoints) {
        Source storage s = _sources[key];
        Record memory r = s.record;
        if (r.account == address(0)) revert UnknownSource(key);
        return (r.treeSize, s.roots[r.treeSize], r.checkpoints);
    }

    /// The root anchored for `key` at exactly `treeSize`, or zero if none was.
    function rootAt(bytes32 key, uint256 treeSize) external view returns (bytes32) {
        return _sources[key].roots[treeSize];
    }

    /// Revert with the rule `anchor` found broken, checked in this order.
    function _reject(bytes32 key, uint256 word, uint256 treeSize) private view {
        address account = address(uint160(word));
        if (account == address(0)) revert UnknownSource(key);
        if (word >> ACTIVE_SHIFT == 0) revert SourceSuspended(key);
        if (account != msg.sender) revert NotSourceAccount(key, msg.sender);
        uint256 latestSize = (word >> SIZE_SHIFT) & MAX_SIZE;
        if (treeSize <= latestSize) revert CheckpointDoesNotGrow(key, latestSize, treeSize);
        if (treeSize > MAX_SIZE) revert TreeTooLarge(treeSize);
        revert EmptyRoot(key);
    }
}
