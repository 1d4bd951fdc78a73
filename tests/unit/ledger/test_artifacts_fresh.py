"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import json

from ledger.compile import (
    ARTIFACTS_DIR,
    CONTRACTS,
    EVM_VERSION,
    SOLC_VERSION,
    compile_contracts,
    stale_artifacts,
)


def test_recompiling_changes_no_artifact():
    fresh = compile_contracts()  # installs the pinned solc-js into ledger/node_modules on first use
    assert sorted(fresh) == sorted(CONTRACTS)
    assert stale_artifacts(fresh) == [], "run `python -m ledger.compile` and commit ledger/artifacts"


def test_artifacts_say_how_they_were_made():
    for name in CONTRACTS:
        art = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        assert art["generated_by"].startswith("ledger/compile.py")
        assert art["compiler"] == {"solc": SOLC_VERSION, "evmVersion": EVM_VERSION, "optimizerRuns": 200}
        # the CBOR metadata at the end of the bytecode names the compiler: "solc" 0.8.37
        assert art["bytecode"].endswith("64736f6c6343000825" + "0033") and art["abi"]
