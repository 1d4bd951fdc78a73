"""Registering many producers in one process: ``pcc ledger register-sources FILE``.

The file is a CSV with a header (``source_id`` or ``id``, ``kind``, and
optionally ``tier`` (default 2) and ``account``) or the ``fleet.json`` of
``pcc simulate`` (its ``sources``).  Every row is checked first (id, kind,
tier, address; already registered), then the registrations are signed and
sent back to back in batches, and their receipts awaited per batch: one
process, one connection, no per-source start-up.  On a development chain a
source without an account gets one derived from the deployer's key, funded
with gas money, as ``register-source`` does.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.errors import PccValueError

#: registrations signed and sent before their receipts are awaited
BATCH = 64


@dataclass(frozen=True)
class SourceRow:
    """One source to register, as read from the file (``line``: where, for messages)."""

    source_id: str
    kind: str
    tier: int = 2
    account: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Registration:
    """What became of one row: ``registered``, ``already registered`` or ``refused`` (with why)."""

    row: SourceRow
    status: str
    account: str = ""
    tx_hash: str = ""
    block: int = 0
    reason: str = ""


def read_sources(path: Path) -> list[SourceRow]:
    """The rows of a CSV file or a ``fleet.json``; a malformed file names its path and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PccValueError(f"{path}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
            items = doc["sources"] if isinstance(doc, dict) else doc
            return [
                SourceRow(str(s["id"]), str(s["kind"]), int(s.get("tier", 2)), s.get("account"), i)
                for i, s in enumerate(items, start=1)
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise PccValueError(
                f"{path}: not a fleet.json with sources [{{id, kind, tier}}]: {exc}"
            ) from None
    reader = csv.DictReader(text.splitlines())
    fields = {f.strip().lower() for f in reader.fieldnames or []}
    if not ({"source_id", "id"} & fields) or "kind" not in fields:
        raise PccValueError(
            f"{path}: the CSV header must name source_id (or id) and kind, optionally tier, account"
        )
    rows = []
    for number, record in enumerate(reader, start=2):
        r = {k.strip().lower(): (v or "").strip() for k, v in record.items() if k}
        tier = r.get("tier") or "2"
        if not tier.isdigit():
            raise PccValueError(f"{path}:{number}: tier {tier!r} is not a number 1..4")
        rows.append(
            SourceRow(
                r.get("source_id") or r.get("id", ""), r["kind"], int(tier), r.get("account") or None, number
            )
        )
    return rows


def _refusal(row: SourceRow, reason: str) -> Registration:
    return Registration(row, "refused", reason=reason)


def _check(rows: Sequence[SourceRow], client: Any) -> tuple[list[SourceRow], list[Registration]]:
    """Rows that can be registered, and what became of the others."""
    from ledger import keys

    todo: list[SourceRow] = []
    done: list[Registration] = []
    seen: set[str] = set()
    for row in rows:
        try:
            keys.source_key(row.source_id)
            keys.source_kind(row.kind)
        except PccValueError as exc:
            done.append(_refusal(row, str(exc)))
            continue
        if not 1 <= row.tier <= 4:
            done.append(_refusal(row, f"tier {row.tier} is not 1..4"))
        elif row.source_id in seen:
            done.append(_refusal(row, "listed twice in the file"))
        elif client.sources.is_registered(row.source_id):
            info = client.sources.get(row.source_id)
            done.append(Registration(row, "already registered", account=info.account))
        else:
            seen.add(row.source_id)
            todo.append(row)
    return todo, done


def register_sources(settings: Any, rows: Iterable[SourceRow], client: Any = None) -> list[Registration]:
    """Register every row not registered yet, in batches of :data:`BATCH` transactions; in file order."""
    from web3 import Web3

    from ledger import keys
    from ledger.client import LedgerClient
    from ledger.config import LedgerConfig
    from ledger.keys import address_of, dev_source_key
    from ledger.onboarding import DEV_GAS_MONEY
    from ledger.tx import wait_all

    rows = list(rows)
    client = client or LedgerClient.from_settings(settings)
    config = LedgerConfig.from_settings(settings)
    todo, results = _check(rows, client)
    ready: list[SourceRow] = []
    for row in todo:
        if row.account is None:
            if config.chain == "rpc":
                results.append(_refusal(row, "an account is required on chain 'rpc'"))
                continue
            row = replace(
                row, account=address_of(dev_source_key(config.deployer_key.get_secret_value(), row.source_id))
            )
            client.signer.transfer_eth(row.account, DEV_GAS_MONEY)
        elif not Web3.is_address(row.account):
            results.append(_refusal(row, f"account {row.account!r} is not an address"))
            continue
        ready.append(row)
    registry = client.contract("SourceRegistry")
    for start in range(0, len(ready), BATCH):
        batch = ready[start : start + BATCH]
        calls = [
            registry.functions.register(
                r.source_id, keys.source_kind(r.kind), Web3.to_checksum_address(str(r.account)), r.tier
            )
            for r in batch
        ]
        context = f"registering sources {batch[0].source_id}..{batch[-1].source_id}"
        receipts = wait_all(client.w3, client.signer.send_many(calls, context), context)
        for r, receipt in zip(batch, receipts, strict=True):
            results.append(
                Registration(
                    r, "registered", str(r.account), "0x" + bytes(receipt["transactionHash"]).hex(),
                    int(receipt["blockNumber"]),
                )
            )  # fmt: skip
    return sorted(results, key=lambda r: r.row.line)


def register_fleet_file(settings: Any, path: Path) -> list[Registration]:
    """The ``pcc.registrars`` entry point: register the sources a CSV or ``fleet.json`` lists."""
    return register_sources(settings, read_sources(path))
