// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AccessRegistry: who may read which data category of which vehicle pseudonym.
/// @notice A grant names a consumer's public key (32 bytes), an expiry and the key epoch it was
/// made at. Revoking a grant bumps the (vehicle, category) epoch, so the data is re-keyed for
/// the consumers that remain. Only pseudonyms registered by the identity vault can be granted.
contract AccessRegistry is AccessControl {
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    bytes32 public constant GRANTOR_ROLE = keccak256("GRANTOR_ROLE");

    struct Grant {
        uint64 expiry; // unix seconds
        uint32 epoch; // key epoch the grant was made at
        bool exists;
    }

    mapping(bytes32 => bool) public isVehicle;
    mapping(bytes32 => mapping(bytes32 => uint32)) public epochOf;
    mapping(bytes32 => mapping(bytes32 => mapping(bytes32 => Grant))) private _grants;

    error UnknownVehicle(bytes32 vehicle);
    error ExpiryInPast(uint64 expiry, uint256 nowSeconds);
    error ZeroConsumerKey();
    error NoSuchGrant(bytes32 vehicle, bytes32 category, bytes32 consumerKey);

    event VehicleRegistered(bytes32 indexed vehicle);
    event Granted(bytes32 indexed vehicle, bytes32 indexed category, bytes32 indexed consumerKey, uint64 expiry, uint32 epoch);
    event Revoked(bytes32 indexed vehicle, bytes32 indexed category, bytes32 indexed consumerKey, uint32 newEpoch);

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

    function grant(bytes32 vehicle, bytes32 category, bytes32 consumerKey, uint64 expiry)
        external
        onlyRole(GRANTOR_ROLE)
    {
        if (!isVehicle[vehicle]) revert UnknownVehicle(vehicle);
        if (consumerKey == bytes32(0)) revert ZeroConsumerKey();
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry, block.timestamp);
        uint32 epoch = epochOf[vehicle][category];
        _grants[vehicle][category][consumerKey] = Grant(expiry, epoch, true);
        emit Granted(vehicle, category, consumerKey, expiry, epoch);
    }

    function revoke(bytes32 vehicle, bytes32 category, bytes32 consumerKey) external onlyRole(GRANTOR_ROLE) {
        if (!_grants[vehicle][category][consumerKey].exists) revert NoSuchGrant(vehicle, category, consumerKey);
        delete _grants[vehicle][category][consumerKey];
        uint32 epoch = epochOf[vehicle][category] + 1;
        epochOf[vehicle][category] = epoch;
        emit Revoked(vehicle, category, consumerKey, epoch);
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
