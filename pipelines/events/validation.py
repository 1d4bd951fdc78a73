"""Validation of envelopes and producer input against the versioned schemas.

Every problem is reported with its JSON path (``$.payload.odometer_km: -5 is
less than the minimum of 0``), never just "invalid".  Validators are compiled
once per schema and reused: this runs on the hot path of the producer and of
the speed layer.

Beyond the schemas: ``schema_version`` must be a version shipped for the event
type, times must be real dates and not in the future beyond a tolerance
(``settings.producer.future_tolerance_s``), ``event_time`` not after
``ingestion_time`` (same tolerance), ``proof.log_index < proof.tree_size``,
and a producer's VIN must pass the ISO 3779 check.  Messages about a VIN or a
protected field (owner identity, precise location, commercial) never echo the
value.

Version 2 (:mod:`pipelines.events.commitments`): a protected payload member
must be its commitment ``cm:<64 hex>`` - one sent in clear is refused naming
its path, without its value - and ``sealed`` must hold exactly one token per
committed member, of the member's category and carrying the same commitment.
A producer's input stays in clear (the SDK seals it): its payload follows the
version 1 rules whatever ``schema_version`` it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.protocols import Validator

from pipelines.errors import PccValidationError, PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES, field_categories
from pipelines.events.commitments import COMMITTED_VERSION
from pipelines.events.envelope import EVENT_TYPES, UUID7, parse_time_ms
from pipelines.events.envelope import now_ms as _now_ms
from pipelines.events.fastcheck import Check, compile_check
from pipelines.events.registry import load_schema, schema_registry, schema_versions
from pipelines.settings import ProducerSettings
from pipelines.vin import validate_vin

#: Default tolerance for times in the future (``settings.producer.future_tolerance_s``).
DEFAULT_FUTURE_TOLERANCE_S: float = ProducerSettings().future_tolerance_s

# JSON integers only: jsonschema would otherwise accept 1.0 as an "integer".
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _checker, x: type(x) is int)
_StrictValidator = validators.extend(Draft202012Validator, type_checker=_TYPES)
_FORMATS = FormatChecker(formats=("date",))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a JSON path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Compiled:
    validator: Validator  # the authority, lists every problem
    accepts: Check | None  # fast yes/no for the common case (see fastcheck)


@cache
def _validator(name: str, version: int, *, core: bool = False) -> _Compiled:
    schema = load_schema(name, version)
    if core:  # the envelope without its payload dispatch; payloads are validated by their own validator
        schema.pop("allOf", None)
    _StrictValidator.check_schema(schema)
    validator = _StrictValidator(schema, registry=schema_registry(), format_checker=_FORMATS)
    return _Compiled(validator, compile_check(schema))


@cache
def _sensitive_paths(name: str, version: int) -> tuple[str, ...]:
    return tuple(p for p, c in field_categories(name, version).items() if c in PROTECTED_CATEGORIES)


@cache
def _committed(event_type: str) -> dict[str, str]:
    """Version 2: each committed payload member by name, and its category."""
    props = load_schema(event_type, COMMITTED_VERSION)["properties"]
    return {n: s["x-pcc-category"] for n, s in props.items() if "x-pcc-value" in s}


def clear_version(version: int) -> int:
    """The payload schema a producer's clear input follows for this contract version."""
    return 1 if version == COMMITTED_VERSION else version


def _schema_problems(
    compiled: _Compiled, obj: Any, prefix: str, sensitive: tuple[str, ...] = ()
) -> list[Problem]:
    if compiled.accepts is not None and compiled.accepts(obj):
        return []
    problems = []
    for error in compiled.validator.iter_errors(obj):
        path = prefix + error.json_path[1:]
        message = error.message
        if sensitive and path.startswith(sensitive):
            message = message.replace(repr(error.instance), "the value")
            if len(message) > 200 or "the value" not in message:
                message = "invalid value (not repeated: a protected field)"
        problems.append(Problem(path, message))
    return problems


def _payload_problems(obj: dict[str, Any], *, producer_input: bool) -> list[Problem]:
    event_type, version, payload = obj.get("event_type"), obj.get("schema_version"), obj.get("payload")
    if event_type not in EVENT_TYPES or type(version) is not int or not isinstance(payload, dict):
        return []  # already reported by the envelope schema
    if version not in schema_versions(event_type):
        known = ", ".join(map(str, schema_versions(event_type)))
        return [Problem("$.schema_version", f"unknown version {version} of {event_type} (known: {known})")]
    if producer_input:
        version = clear_version(version)
    name = "ownership_change_input" if producer_input and event_type == "ownership_change" else event_type
    if version == COMMITTED_VERSION:
        return _committed_problems(event_type, payload, obj.get("sealed"))
    sensitive = _sensitive_paths(name, version)
    return _schema_problems(_validator(name, version), payload, "$.payload", sensitive)


@cache
def _token_heads(event_type: str) -> tuple[tuple[str, str], ...]:
    """Version 2: each committed member and the head its token must start with (``enc:v2:<category>:``)."""
    return tuple((name, f"enc:v2:{category}:") for name, category in _committed(event_type).items())


def _committed_clean(event_type: str, payload: dict[str, Any], sealed: Any) -> bool:
    """The common case at once: every commitment present has its token, of its category and commitment.

    False sends the payload to the full report, :func:`_committed_report` (the
    schema is checked by the caller either way).
    """
    if type(sealed) is not dict:
        return False
    present = 0
    for name, head in _token_heads(event_type):
        value = payload.get(name)
        if value is None:
            if name in payload:
                return False
            continue
        token = sealed.get(name)
        if (
            type(value) is not str
            or type(token) is not str
            or not value.startswith("cm:")
            or not token.startswith(head)
        ):
            return False
        parts = token.split(":", 5)
        if len(parts) != 6 or parts[4] != value[3:]:
            return False
        present += 1
    return present == len(sealed)


def _committed_problems(event_type: str, payload: dict[str, Any], sealed: Any) -> list[Problem]:
    """A version 2 payload: its schema, no protected value in clear, one matching token per commitment."""
    compiled = _validator(event_type, COMMITTED_VERSION)
    if (
        compiled.accepts is not None
        and _committed_clean(event_type, payload, sealed)
        and compiled.accepts(payload)
    ):
        return []
    return _committed_report(event_type, payload, sealed)


def _committed_report(event_type: str, payload: dict[str, Any], sealed: Any) -> list[Problem]:
    """Every problem of a version 2 payload, each naming its path (the authority behind the fast check)."""
    committed = _committed(event_type)
    problems = []
    for name, category in committed.items():
        value = payload.get(name)
        if name in payload and not (type(value) is str and value.startswith("cm:")):
            problems.append(
                Problem(
                    f"$.payload.{name}",
                    f"a protected field ({category}) sent in clear: version 2 carries its commitment "
                    "cm:<64 hex> here and its sealed value in $.sealed (the producer SDK seals it)",
                )
            )
    clear = {p.path for p in problems}
    for p in _schema_problems(_validator(event_type, COMMITTED_VERSION), payload, "$.payload"):
        if p.path not in clear:
            problems.append(p)
    tokens = sealed if isinstance(sealed, dict) else {}
    for name, category in committed.items():
        if name not in payload or f"$.payload.{name}" in clear:
            continue
        token = tokens.get(name)
        if not isinstance(token, str):
            problems.append(Problem(f"$.sealed.{name}", f"missing: the sealed value of $.payload.{name}"))
            continue
        parts = token.split(":", 5)
        if len(parts) == 6 and parts[2] != category:
            problems.append(
                Problem(f"$.sealed.{name}", f"sealed as {parts[2]!r}, the schema says {category!r}")
            )
        elif len(parts) == 6 and "cm:" + parts[4] != payload[name]:
            problems.append(Problem(f"$.sealed.{name}", f"carries another commitment than $.payload.{name}"))
    for name in tokens:
        if name not in committed or name not in payload:
            problems.append(Problem(f"$.sealed.{name}", "no committed payload member of that name"))
    return problems


def _time_ms(obj: dict[str, Any], key: str, problems: list[Problem]) -> int | None:
    value = obj.get(key)
    if not isinstance(value, str):
        return None
    try:
        return parse_time_ms(value)
    except PccValueError:
        if not any(p.path == f"$.{key}" for p in problems):
            problems.append(Problem(f"$.{key}", f"{value!r} is not a valid date and time"))
        return None


def _time_problems(
    obj: dict[str, Any], problems: list[Problem], now_ms: int | None, tolerance_s: float
) -> None:
    limit = (_now_ms() if now_ms is None else now_ms) + int(tolerance_s * 1000)
    event_ms, ingestion_ms = _time_ms(obj, "event_time", problems), _time_ms(obj, "ingestion_time", problems)
    for key, ms in (("event_time", event_ms), ("ingestion_time", ingestion_ms)):
        if ms is not None and ms > limit:
            ahead = (ms - limit) / 1000 + tolerance_s
            problems.append(
                Problem(
                    f"$.{key}", f"{obj[key]} is {ahead:.0f} s in the future (tolerance {tolerance_s:g} s)"
                )
            )
    if (
        event_ms is not None
        and ingestion_ms is not None
        and event_ms > ingestion_ms + int(tolerance_s * 1000)
    ):
        problems.append(
            Problem("$.event_time", f"{obj['event_time']} is after ingestion_time {obj['ingestion_time']}")
        )


def validate_envelope(
    obj: Any, *, now_ms: int | None = None, future_tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S
) -> list[Problem]:
    """Every problem of a wire envelope (empty list: valid)."""
    if not isinstance(obj, dict):
        return [Problem("$", f"expected a JSON object, got {type(obj).__name__}")]
    problems = _schema_problems(_validator("envelope", COMMITTED_VERSION, core=True), obj, "$")
    if "sealed" in obj and obj.get("schema_version") != COMMITTED_VERSION:
        problems.append(Problem("$.sealed", "only a version 2 event carries sealed values"))
    problems += _payload_problems(obj, producer_input=False)
    _time_problems(obj, problems, now_ms, future_tolerance_s)
    proof = obj.get("proof")
    if isinstance(proof, dict):
        index, size = proof.get("log_index"), proof.get("tree_size")
        if type(index) is int and type(size) is int and index >= size:
            problems.append(Problem("$.proof.log_index", f"{index} is not below tree_size {size}"))
    return problems


def validate_input(
    obj: Any, *, now_ms: int | None = None, future_tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S
) -> list[Problem]:
    """Every problem of a producer input record (VIN and owner identities, before pseudonymisation)."""
    if not isinstance(obj, dict):
        return [Problem("$", f"expected a JSON object, got {type(obj).__name__}")]
    problems = _schema_problems(_validator("producer_input", 1, core=True), obj, "$", ("$.vin",))
    problems += _payload_problems(obj, producer_input=True)
    _time_problems(obj, problems, now_ms, future_tolerance_s)
    vin = obj.get("vin")
    if isinstance(vin, str) and not any(p.path == "$.vin" for p in problems):
        try:
            validate_vin(vin)
        except PccValueError as exc:  # its message never echoes the VIN
            problems.append(Problem("$.vin", str(exc).removeprefix("vin: ")))
    return problems


def validate_payload(event_type: str, version: int, payload: Any) -> list[Problem]:
    """Problems of a payload alone (paths start at ``$.payload``)."""
    return _payload_problems(
        {"event_type": event_type, "schema_version": version, "payload": payload}, producer_input=False
    ) or ([] if isinstance(payload, dict) else [Problem("$.payload", "expected a JSON object")])


def require_valid(
    obj: Any,
    *,
    kind: Literal["envelope", "input"] = "envelope",
    now_ms: int | None = None,
    future_tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S,
) -> dict[str, Any]:
    """Return ``obj`` if valid, else raise :class:`PccValidationError` listing every problem."""
    check = validate_envelope if kind == "envelope" else validate_input
    problems = check(obj, now_ms=now_ms, future_tolerance_s=future_tolerance_s)
    if problems:
        event_id = obj.get("event_id") if isinstance(obj, dict) else None
        name = f"event {event_id}" if isinstance(event_id, str) and UUID7.match(event_id) else "event"
        raise PccValidationError(f"invalid {name}", [str(p) for p in problems])
    result: dict[str, Any] = obj
    return result
