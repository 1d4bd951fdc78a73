// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AccessRegistry: who may read which data category of which vehicle pseudonym.
/// @notice A grant names a consumer's public key (32 bytes), an expiry, the key epoch it was
/// made at, the kind of grantor (the vehicle's owner or a producer) and the hash of the message
/// the grantor signed. Revoking a grant bumps the (vehicle, category) epoch, so the data is
/// re-keyed for the consumers that remain; `rotate` bumps it without a grant (ownership change,
/// erasure). Only pseudonyms registered by the identity vault can be granted or rotated.
/// Vehicles and categories are keccak256 hashes of their text: no VIN, no owner identity here.
contract AccessRegistry is AccessControl {
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    bytes32 public constant GRANTOR_ROLE = keccak256("GRANTOR_ROLE");

    uint8 public constant GRANTOR_OWNER = 1;
    uint8 public constant GRANTOR_PRODUCER = 2;

    struct Grant {
        uint64 expiry; // unix seconds
        uint32 epoch; // key epoch the grant was made at
        uint8 grantorKind; // GRANTOR_OWNER or GRANTOR_PRODUCER
        bool exists;
        bytes32 grantHash; // SHA-256 of the grant message the grantor signed (kept off-chain)
    }

    mapping(bytes32 => bool) public isVehicle;
    mapping(bytes32 => mapping(bytes32 => uint32)) public epochOf;
    mapping(bytes32 => mapping(bytes32 => mapping(bytes32 => Grant))) private _grants;

    error UnknownVehicle(bytes32 vehicle);
    error ExpiryInPast(uint64 expiry, uint256 nowSeconds);
    error ZeroConsumerKey();
    error NoSuchGrant(bytes32 vehicle, bytes32 category, bytes32 consumerKey);
    error StaleEpoch(uint32 signedEpoch, uint32 currentEpoch);
    error InvalidGrantorKind(uint8 grantorKind);
    error EmptyGrantHash();

    event VehicleRegistered(bytes32 indexed vehicle);
    event Granted(
        bytes32 indexed vehicle,
        bytes32 indexed category,
        bytes32 indexed consumerKey,
        uint64 expiry,
        uint32 epoch,
        uint8 grantorKind,
        bytes32 grantHash
    );
    event Revoked(bytes32 indexed vehicle, bytes32 indexed category, bytes32 indexed consumerKey, uint32 newEpoch);
    event Rotated(bytes32 indexed vehicle, bytes32 indexed category, uint32 newEpoch);

    constructor(address admin, address registrar, address grantor) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGISTRAR_ROLE, registrar);
        _grantRole(GRANTOR_ROLE, grantor);
    }

    function registerVehicles(bytes32[] calldata vehicles) external onlyRole(REGISTRAR_ROLE) {
        for (uint256 i = 0; i < vehicles.length; ++i) {
            if (!isVehicle[vehicles[i]]) {
                isVehicle[vehicles[i]] = true;
                emit VehicleRegistered(vehicles[i]);
            }
        }
    }

    /// Grant at `epoch`, which must be the current one (the grantor signed it).
    function grant(
        bytes32 vehicle,
        bytes32 category,
        bytes32 consumerKey,
        uint64 expiry,
        uint32 epoch,
        uint8 grantorKind,
        bytes32 grantHash
    ) external onlyRole(GRANTOR_ROLE) {
        if (!isVehicle[vehicle]) revert UnknownVehicle(vehicle);
        if (consumerKey == bytes32(0)) revert ZeroConsumerKey();
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry, block.timestamp);
        if (grantorKind != GRANTOR_OWNER && grantorKind != GRANTOR_PRODUCER) revert InvalidGrantorKind(grantorKind);
        if (grantHash == bytes32(0)) revert EmptyGrantHash();
        uint32 current = epochOf[vehicle][category];
        if (epoch != current) revert StaleEpoch(epoch, current);
        _grants[vehicle][category][consumerKey] = Grant(expiry, epoch, grantorKind, true, grantHash);
        emit Granted(vehicle, category, consumerKey, expiry, epoch, grantorKind, grantHash);
    }

    function revoke(bytes32 vehicle, bytes32 category, bytes32 consumerKey) external onlyRole(GRANTOR_ROLE) {
        if (!_grants[vehicle][category][consumerKey].exists) revert NoSuchGrant(vehicle, category, consumerKey);
        delete _grants[vehicle][category][consumerKey];
        uint32 epoch = epochOf[vehicle][category] + 1;
        epochOf[vehicle][category] = epoch;
        emit Revoked(vehicle, category, consumerKey, epoch);
    }

    /// Start the next key epoch without revoking a grant (ownership change, erasure).
    function rotate(bytes32 vehicle, bytes32 category) external onlyRole(GRANTOR_ROLE) {
        if (!isVehicle[vehicle]) revert UnknownVehicle(vehicle);
        uint32 epoch = epochOf[vehicle][category] + 1;
        epochOf[vehicle][category] = epoch;
        emit Rotated(vehicle, category, epoch);
    }

    /// Start the next key epoch of several categories of one vehicle in one transaction
    /// (an ownership change rotates every protected category).
    function rotateMany(bytes32 vehicle, bytes32[] calldata categories) external onlyRole(GRANTOR_ROLE) {
        if (!isVehicle[vehicle]) revert UnknownVehicle(vehicle);
        for (uint256 i = 0; i < categories.length; ++i) {
            uint32 epoch = epochOf[vehicle][categories[i]] + 1;
            epochOf[vehicle][categories[i]] = epoch;
            emit Rotated(vehicle, categories[i], epoch);
        }
    }

    /// The stored grant (all zero when there is none).
    function grantOf(bytes32 vehicle, bytes32 category, bytes32 consumerKey) external view returns (Grant memory) {
        return _grants[vehicle][category][consumerKey];
    }

    /// Whether `consumerKey` may read now, the grant's expiry, and the current key epoch.
    function check(bytes32 vehicle, bytes32 category, bytes32 consumerKey)
        external
        view
        returns (bool allowed, uint64 expiry, uint32 epoch)
    {
        Grant memory g = _grants[vehicle][category][consumerKey];
        epoch = epochOf[vehicle][category];
        allowed = g.exists && g.expiry > block.timestamp;
        expiry = g.expiry;
    }
}
