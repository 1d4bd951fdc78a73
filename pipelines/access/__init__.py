"""Access control and GDPR for protected payload fields (see docs/access.md).

* :mod:`.fields`: seal/open protected fields (AES-256-GCM per vehicle, category, key epoch).
* :mod:`.sealing`: version 2 envelopes sealed at the producer (commitments + sealed values).
* :mod:`.keyservice`: current sealing keys wrapped to producers of other organisations;
  :mod:`.keyclient` is the producer's side.
* :mod:`.keys`: current key epoch and data keys on top of the identity vault.
* :mod:`.wrap`: consumer X25519 key pairs, data keys wrapped with HPKE.
* :mod:`.store`: grant records and the grant store (in memory, SQLite; the ledger's on chain).
* :mod:`.grants`: signed grants and revocations, ownership changes, key release.
* :mod:`.erasure`: crypto-shredding erasure and the data subject's export.
* :mod:`.verify`: a consumer's check of a row against its producer's log.

Pure code: imports nothing from the layers.
"""

from pipelines.access.erasure import (
    ErasableStore,
    ErasureReport,
    SubjectReader,
    erase_vehicle,
    export_subject,
)
from pipelines.access.errors import AccessDenied, TamperedCiphertext
from pipelines.access.fields import (
    KeyFor,
    KeyLookup,
    SealedField,
    is_token,
    needed_keys,
    open_held,
    open_payload,
    row_aad,
    seal_payload,
    sealed_categories,
    sealed_fields,
    token_commitment,
    token_info,
)
from pipelines.access.grants import (
    DEFAULT_GRANTORS,
    AccessService,
    grant_message,
    owner_grantor,
    producer_grantor,
    revoke_message,
)
from pipelines.access.keyclient import KeyClient
from pipelines.access.keys import EpochStore, KeyRing
from pipelines.access.keyservice import KeyService, NoProducerKey, SqliteProducerKeys, UnknownCategory
from pipelines.access.sealing import public_payload, seal_event, stored_payload
from pipelines.access.store import (
    ClosableGrantStore,
    Grant,
    GrantStore,
    InMemoryGrantStore,
    SqliteGrantStore,
    grant_store_kind,
    open_grant_store,
)
from pipelines.access.verify import (
    envelope_from_row,
    public_envelope,
    verify_opened_row,
    verify_public_row,
    verify_row_inclusion,
)
from pipelines.access.views import ParquetRows, check_sealed
from pipelines.access.wrap import (
    ConsumerKeyPair,
    GranteeKeys,
    fingerprint,
    parse_public_key,
    unwrap_key,
    wrap_key,
)

__all__ = [
    "DEFAULT_GRANTORS",
    "AccessDenied",
    "AccessService",
    "ClosableGrantStore",
    "ConsumerKeyPair",
    "EpochStore",
    "ErasableStore",
    "ErasureReport",
    "Grant",
    "GrantStore",
    "GranteeKeys",
    "InMemoryGrantStore",
    "KeyClient",
    "KeyFor",
    "KeyLookup",
    "KeyRing",
    "KeyService",
    "NoProducerKey",
    "ParquetRows",
    "SealedField",
    "SqliteGrantStore",
    "SqliteProducerKeys",
    "SubjectReader",
    "TamperedCiphertext",
    "UnknownCategory",
    "check_sealed",
    "envelope_from_row",
    "erase_vehicle",
    "export_subject",
    "fingerprint",
    "grant_message",
    "grant_store_kind",
    "is_token",
    "needed_keys",
    "open_grant_store",
    "open_held",
    "open_payload",
    "owner_grantor",
    "parse_public_key",
    "producer_grantor",
    "public_envelope",
    "public_payload",
    "revoke_message",
    "row_aad",
    "seal_event",
    "seal_payload",
    "sealed_categories",
    "sealed_fields",
    "stored_payload",
    "token_commitment",
    "token_info",
    "unwrap_key",
    "verify_opened_row",
    "verify_public_row",
    "verify_row_inclusion",
    "wrap_key",
]
