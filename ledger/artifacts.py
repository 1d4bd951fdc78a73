"""The compiled contracts (``ledger/artifacts/*.json``, written by ``ledger/compile.py``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import abi_to_signature, function_signature_to_4byte_selector

from ledger.errors import DeploymentError

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"


@cache
def artifact(name: str) -> dict[str, Any]:
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise DeploymentError(f"contract artifact {path} is missing: run `python -m ledger.compile`")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@cache
def error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    """Selector -> (error name, argument names, argument types) over every artifact."""
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8"))["abi"]:
            if item.get("type") != "error":
                continue
            selector = function_signature_to_4byte_selector(abi_to_signature(item))
            names = [i["name"] or f"arg{n}" for n, i in enumerate(item["inputs"])]
            types = [i["type"] for i in item["inputs"]]
            table[selector] = (item["name"], names, types)
    table[bytes.fromhex("08c379a0")] = ("Error", ["reason"], ["string"])
    table[bytes.fromhex("4e487b71")] = ("Panic", ["code"], ["uint256"])
    return table


def decode_revert(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """Name and arguments of the custom error in revert ``data``; None if unknown."""
    entry = error_table().get(bytes(data[:4]))
    if entry is None:
        return None
    name, names, types = entry
    try:
        values = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed revert data: report the name only
        return name, {}
    return name, dict(zip(names, values, strict=True))
