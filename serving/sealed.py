"""Sealed answers on the wire: the data keys wrapped to a grantee, and the rows opened on its side.

Rows leave the service as stored: protected payload fields are ``enc:v1``
tokens.  A consumer who sends its X25519 public key (``grant_key`` in the
signed query body) also gets, for the rows of the answer, the data keys its
grants allow, wrapped to that key (HPKE): ``{vehicle: {category: {epoch:
"wk:v1:…"}}}``.  It opens the tokens on its side (:func:`open_rows`, used by
:class:`serving.client.PccClient` and ``pcc query --grant-key``); the service
never holds an opened answer.  To be opened a row needs the columns
``vehicle``, ``event_id``, ``event_type``, ``schema_version`` and ``payload``.

No web framework and no engine here: the client imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pyarrow as pa

from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    GranteeKeys,
    TamperedCiphertext,
    open_held,
    parse_public_key,
    row_aad,
)
from pipelines.errors import PccError, PccNotFoundError, PccValueError
from serving.errors import HTTP_STATUS, ServingError

#: ``{vehicle: {category: {epoch: "wk:v1:…"}}}`` (epochs as strings in JSON)
WrappedKeys = dict[str, dict[str, dict[int, str]]]
OPEN_COLUMNS = ("vehicle", "event_id", "event_type", "schema_version", "payload")
ARROW_METADATA_KEY = b"pcc.wrapped_keys"
HEADER_WRAPPED = "X-PCC-Wrapped-Keys"


def _loads(payload: Any) -> dict[str, Any] | None:
    try:
        value = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


#: The head of a token at the start of a JSON string: ``"enc:v1:<category>:<epoch>:`` (or ``enc:v2``).
_TOKEN_HEAD = re.compile(r'"enc:v[12]:([a-z_]{1,32}:(?:0|[1-9][0-9]{0,9})):')


def needed_by_vehicle(table: pa.Table) -> dict[str, set[tuple[str, int]]]:
    """The (category, epoch) keys each vehicle's rows of an answer need to be opened.

    Read from the payload column's JSON text, not from parsed payloads: the
    head of every ``enc:v1`` token in a row that has the columns to be opened.
    (A regex over the text is several times faster than parsing each payload
    and walking its schema; Arrow's own regex kernels are slower on answers of
    a few hundred rows and no faster on large ones.)  What is found only
    selects which keys to *ask* for: each is still checked against the
    consumer's grants, and opening checks every token against the schema.
    """
    if any(c not in table.column_names for c in OPEN_COLUMNS) or table.num_rows == 0:
        return {}
    pairs: Iterable[tuple[Any, Any]]
    if all(table.column(c).null_count == 0 for c in OPEN_COLUMNS):  # the usual answer: no row to skip
        pairs = zip(table.column("vehicle").to_pylist(), table.column("payload").to_pylist(), strict=True)
    else:
        cols = [table.column(c).to_pylist() for c in OPEN_COLUMNS]
        pairs = zip(
            (v if None not in (v, e, t, n) else None for v, e, t, n in zip(*cols[:4], strict=True)),
            cols[4],
            strict=True,
        )
    findall = _TOKEN_HEAD.findall
    heads: dict[str, set[str]] = {}
    for vehicle, payload in pairs:
        if vehicle is None or payload is None:
            continue
        found = findall(payload if isinstance(payload, str) else bytes(payload).decode(errors="replace"))
        if found:
            held = heads.get(vehicle)
            if held is None:
                held = heads[vehicle] = set()
            held.update(found)
    out: dict[str, set[tuple[str, int]]] = {}
    for vehicle, texts in heads.items():
        keys = out[str(vehicle)] = set()
        for head in texts:
            category, epoch = head.split(":")
            keys.add((category, int(epoch)))
    return out


def wrapped_keys_for(service: AccessService, grant_key: str, table: pa.Table) -> WrappedKeys:
    """The keys the consumer's grants allow for this answer; refused ones are left out (and logged)."""
    grantee = parse_public_key(grant_key)
    out: WrappedKeys = {}
    for vehicle, needed in sorted(needed_by_vehicle(table).items()):
        try:
            wrapped = service.wrapped_keys(grantee, vehicle, needed, strict=False)
        except PccNotFoundError:
            continue  # an erased vehicle: its rows stay sealed
        if wrapped:
            out[vehicle] = wrapped
    return out


def encode_wrapped(wrapped: WrappedKeys) -> str:
    return orjson.dumps(wrapped, option=orjson.OPT_NON_STR_KEYS).decode()


def decode_wrapped(text: str | bytes | None) -> WrappedKeys:
    if not text:
        return {}
    doc = orjson.loads(text)
    return {
        v: {c: {int(e): str(w) for e, w in by_epoch.items()} for c, by_epoch in cats.items()}
        for v, cats in doc.items()
    }


def open_rows(
    rows: Iterable[dict[str, Any]], keys: ConsumerKeyPair | None, wrapped: WrappedKeys
) -> list[dict[str, Any]]:
    """The consumer side: rows with every protected field it holds keys for opened (the rest sealed).

    ``payload`` becomes the (partly) opened object.  A token that does not
    authenticate raises :class:`TamperedCiphertext`.  Without ``keys`` (a
    consumer with no grant key) payloads are only parsed.  Each wrapped key is
    opened once and gets one AES-GCM object for all the rows it opens; each
    payload is parsed once.
    """
    rings: dict[str, GranteeKeys] = {}
    if keys is not None:
        for pseudonym, by_category in wrapped.items():
            rings[pseudonym] = GranteeKeys(keys, pseudonym)
            rings[pseudonym].add_all(by_category)
    elif wrapped:
        raise PccValueError("wrapped keys given without the consumer key pair to open them")
    out = []
    for row in rows:
        row = dict(row)
        sealed = _loads(row.get("payload"))
        if sealed is None:
            out.append(row)
            continue
        vehicle, event_id, event_type, version = (
            row.get("vehicle"), row.get("event_id"), row.get("event_type"), row.get("schema_version")
        )  # fmt: skip
        ring = rings.get(str(vehicle))
        if ring is not None and event_id is not None and event_type is not None and version is not None:
            sealed = open_held(
                str(event_type), int(version), sealed, ring.ciphers, row_aad(ring.vehicle, str(event_id))
            )
        row["payload"] = sealed
        out.append(row)
    return out


class AccessError(ServingError):
    """An access-control refusal on its way to an HTTP answer: its status is its cause's
    (:data:`serving.errors.HTTP_STATUS`: tampered 422, denied 403, unknown 404, malformed 400)."""

    status = 409  # a cause the table does not name (a grant in a state that forbids the act)

    def __init__(self, cause: PccError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.kind = type(cause).__name__

    def detail(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message}


HTTP_STATUS.update({TamperedCiphertext: 422, AccessDenied: 403})


def wrapped_in(metadata: Mapping[bytes, bytes] | None) -> WrappedKeys:
    """The wrapped keys an Arrow answer carries in its schema metadata."""
    return decode_wrapped((metadata or {}).get(ARROW_METADATA_KEY))
