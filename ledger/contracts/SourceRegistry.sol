// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// The part of the AnchorRegistry the SourceRegistry keeps in step.
interface IAnchorSync {
    function syncSource(bytes32 key, address account, bool active) external;
}

/// @title SourceRegistry: the producers allowed to write (connected-car operators, garages,
/// insurers, inspection centres, manual entry), their on-chain account, the quality tier set
/// by governance and the reputation score the batch layer publishes.
contract SourceRegistry is AccessControl {
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");
    bytes32 public constant REPUTATION_ROLE = keccak256("REPUTATION_ROLE");

    uint8 public constant KIND_COUNT = 5; // connected_car, garage, insurer, inspection_centre, manual_entry
    uint8 public constant WORST_TIER = 4;
    uint16 public constant MAX_REPUTATION = 10_000;

    struct Source {
        address account;
        uint8 kind;
        uint8 tier;
        bool active;
        uint16 reputationBps;
    }

    mapping(bytes32 => Source) private _sources;
    mapping(address => bytes32) public keyOf;
    IAnchorSync public anchors;
    uint256 public sourceCount;

    error UnknownSource(bytes32 key);
    error SourceAlreadyRegistered(bytes32 key);
    error AccountAlreadyUsed(address account, bytes32 byKey);
    error ZeroAccount();
    error InvalidSourceId(string sourceId);
    error InvalidKind(uint8 kind);
    error InvalidTier(uint8 tier);
    error InvalidReputation(uint16 reputationBps);
    error LengthMismatch(uint256 keys, uint256 values);
    error AnchorRegistryAlreadySet(address anchors);

    event SourceRegistered(bytes32 indexed key, string sourceId, uint8 kind, address account, uint8 tier);
    event SourceStatusChanged(bytes32 indexed key, bool active);
    event SourceTierChanged(bytes32 indexed key, uint8 tier);
    event ReputationPublished(bytes32 indexed key, uint16 reputationBps);

    constructor(address admin, address registrar, address governance, address reputationPublisher) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGISTRAR_ROLE, registrar);
        _grantRole(GOVERNANCE_ROLE, governance);
        _grantRole(REPUTATION_ROLE, reputationPublisher);
    }

    /// Link the AnchorRegistry that mirrors each source's account and status (once).
    function setAnchorRegistry(IAnchorSync anchorRegistry) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (address(anchors) != address(0)) revert AnchorRegistryAlreadySet(address(anchors));
        anchors = anchorRegistry;
    }

    /// Register a producer under `keccak256(sourceId)`; it starts active.
    function register(string calldata sourceId, uint8 kind, address account, uint8 tier)
        external
        onlyRole(REGISTRAR_ROLE)
        returns (bytes32 key)
    {
        uint256 n = bytes(sourceId).length;
        if (n < 2 || n > 63) revert InvalidSourceId(sourceId);
        if (kind >= KIND_COUNT) revert InvalidKind(kind);
        if (tier == 0 || tier > WORST_TIER) revert InvalidTier(tier);
        if (account == address(0)) revert ZeroAccount();
        key = keccak256(bytes(sourceId));
        if (_sources[key].account != address(0)) revert SourceAlreadyRegistered(key);
        if (keyOf[account] != bytes32(0)) revert AccountAlreadyUsed(account, keyOf[account]);
        _sources[key] = Source(account, kind, tier, true, 0);
        keyOf[account] = key;
        sourceCount += 1;
        emit SourceRegistered(key, sourceId, kind, account, tier);
        _sync(key, account, true);
    }

    /// Suspend (`false`) or reinstate (`true`) a source.
    function setActive(bytes32 key, bool active) external onlyRole(REGISTRAR_ROLE) {
        Source storage s = _existing(key);
        s.active = active;
        emit SourceStatusChanged(key, active);
        _sync(key, s.account, active);
    }

    function setTier(bytes32 key, uint8 tier) external onlyRole(GOVERNANCE_ROLE) {
        if (tier == 0 || tier > WORST_TIER) revert InvalidTier(tier);
        _existing(key).tier = tier;
        emit SourceTierChanged(key, tier);
    }

    /// Publish reputation scores (basis points, 10000 = best) computed by the batch layer.
    function publishReputations(bytes32[] calldata keys, uint16[] calldata scoresBps)
        external
        onlyRole(REPUTATION_ROLE)
    {
        if (keys.length != scoresBps.length) revert LengthMismatch(keys.length, scoresBps.length);
        for (uint256 i = 0; i < keys.length; ++i) {
            if (scoresBps[i] > MAX_REPUTATION) revert InvalidReputation(scoresBps[i]);
            _existing(keys[i]).reputationBps = scoresBps[i];
            emit ReputationPublished(keys[i], scoresBps[i]);
        }
    }

    function getSource(bytes32 key) external view returns (Source memory) {
        if (_sources[key].account == address(0)) revert UnknownSource(key);
        return _sources[key];
    }

    function isRegistered(bytes32 key) external view returns (bool) {
        return _sources[key].account != address(0);
    }

    /// True when `account` belongs to a registered source that is not suspended.
    function isActiveAccount(address account) external view returns (bool) {
        bytes32 key = keyOf[account];
        return key != bytes32(0) && _sources[key].active;
    }

    function _existing(bytes32 key) private view returns (Source storage s) {
        s = _sources[key];
        if (s.account == address(0)) revert UnknownSource(key);
    }

    function _sync(bytes32 key, address account, bool active) private {
        if (address(anchors) != address(0)) anchors.syncSource(key, account, active);
    }
}
