// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title AnchorRegistry: checkpoints of each source's append-only event log.
/// @notice A checkpoint is (tree size, RFC 6962 root), anchored by the source's own account.
/// Each new checkpoint must grow the tree. Storage per checkpoint is one slot (the root, keyed
/// by source and tree size); the latest size lives packed in the source's record beside the
/// account and status the SourceRegistry mirrors here, so anchoring reads one slot.
contract AnchorRegistry {
    struct Record {
        address account; // 20 bytes
        uint48 treeSize; // 6
        uint32 checkpoints; // 4
        bool active; // 1
    }

    address public immutable sourceRegistry;
    mapping(bytes32 => Record) private _records;
    mapping(bytes32 => mapping(uint256 => bytes32)) private _roots;

    error UnknownSource(bytes32 key);
    error SourceSuspended(bytes32 key);
    error NotSourceAccount(bytes32 key, address caller);
    error CheckpointDoesNotGrow(bytes32 key, uint256 latestTreeSize, uint256 treeSize);
    error TreeTooLarge(uint256 treeSize);
    error EmptyRoot(bytes32 key);
    error OnlySourceRegistry(address caller);

    event Anchored(bytes32 indexed source, uint256 treeSize, bytes32 root);

    constructor(address registry) {
        sourceRegistry = registry;
    }

    /// Mirror of the SourceRegistry's account and status (called by it only).
    function syncSource(bytes32 key, address account, bool active) external {
        if (msg.sender != sourceRegistry) revert OnlySourceRegistry(msg.sender);
        Record storage r = _records[key];
        r.account = account;
        r.active = active;
    }

    /// Anchor the checkpoint (treeSize, root) of the caller's source `key`.
    function anchor(bytes32 key, uint256 treeSize, bytes32 root) external {
        Record memory r = _records[key];
        if (!r.active) {
            if (r.account == address(0)) revert UnknownSource(key);
            revert SourceSuspended(key);
        }
        if (msg.sender != r.account) revert NotSourceAccount(key, msg.sender);
        if (treeSize <= r.treeSize) revert CheckpointDoesNotGrow(key, r.treeSize, treeSize);
        if (treeSize > type(uint48).max) revert TreeTooLarge(treeSize);
        if (root == bytes32(0)) revert EmptyRoot(key);
        _records[key] = Record(r.account, uint48(treeSize), r.checkpoints + 1, true);
        _roots[key][treeSize] = root;
        emit Anchored(key, treeSize, root);
    }

    /// The latest checkpoint of `key`: (tree size, root, number of checkpoints).
    function latest(bytes32 key) external view returns (uint256 treeSize, bytes32 root, uint256 checkpoints) {
        Record memory r = _records[key];
        if (r.account == address(0)) revert UnknownSource(key);
        return (r.treeSize, _roots[key][r.treeSize], r.checkpoints);
    }

    /// The root anchored for `key` at exactly `treeSize`, or zero if none was.
    function rootAt(bytes32 key, uint256 treeSize) external view returns (bytes32) {
        return _roots[key][treeSize];
    }
}
