"""Compile the ledger's Solidity contracts with the pinned solc-js and write the artifacts.

Run ``python -m ledger.compile`` after changing a ``.sol`` file (``--check`` only
compares).  The compiler is the npm package ``solc`` pinned in ``ledger/package.json``
(installed offline-friendly into ``ledger/node_modules`` on first use); nothing is
downloaded at run time.  ``evmVersion`` is pinned to the fork our nodes run: anvil is
started with ``--hardfork prague``, the Hardhat node with ``hardfork: "prague"``, and
py-evm's tester chain defaults to Prague.  Bytecode for a newer fork (solc's default
``osaka``) would fail there with ``invalid opcode``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from infra.chain.npm import ensure_npm_packages
from pipelines.errors import PccStateError

LEDGER_DIR = Path(__file__).resolve().parent
CONTRACTS_DIR = LEDGER_DIR / "contracts"
ARTIFACTS_DIR = LEDGER_DIR / "artifacts"
SOLC_VERSION = "0.8.37"
EVM_VERSION = "prague"
OPTIMIZER_RUNS = 200
GENERATED_BY = "ledger/compile.py (solc-js {solc}, evmVersion {evm}, optimizer runs {runs}); do not edit"

#: The contracts that get an artifact, in deployment order.
CONTRACTS = (
    "PCCToken",
    "PCCGold",
    "PCCTimelock",
    "PCCGovernor",
    "Parameters",
    "SourceRegistry",
    "AnchorRegistry",
    "Marketplace",
    "AccessRegistry",
)


def standard_input() -> dict[str, Any]:
    """The solc standard-JSON input for every contract under ``contracts/``."""
    sources = {
        f"contracts/{p.name}": {"content": p.read_text(encoding="utf-8")}
        for p in sorted(CONTRACTS_DIR.glob("*.sol"))
    }
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "outputSelection": {name: {"*": ["abi", "evm.bytecode.object"]} for name in sources},
        },
    }


def compile_contracts() -> dict[str, dict[str, Any]]:
    """Compile and return one artifact per contract of :data:`CONTRACTS`."""
    modules = ensure_npm_packages(LEDGER_DIR)
    del modules  # solc_compile.cjs resolves solc and @openzeppelin from ledger/node_modules
    node = shutil.which("node")
    if node is None:
        raise PccStateError("node is not installed: install Node.js 20+ to compile the contracts")
    with tempfile.TemporaryDirectory(prefix="pcc-solc-") as tmp:
        out_file = Path(tmp) / "output.json"
        proc = subprocess.run(
            [node, str(LEDGER_DIR / "solc_compile.cjs"), str(out_file)],
            cwd=LEDGER_DIR,
            input=json.dumps(standard_input()),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not out_file.is_file():
            raise PccStateError(f"solc-js failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        output = json.loads(out_file.read_text(encoding="utf-8"))
    if not proc.stdout.startswith(f"solc {SOLC_VERSION}+"):
        raise PccStateError(f"expected solc {SOLC_VERSION}, ledger/node_modules has {proc.stdout.strip()}")
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise PccStateError(
            "Solidity compilation failed:\n" + "\n".join(e["formattedMessage"] for e in errors)
        )
    header = GENERATED_BY.format(solc=SOLC_VERSION, evm=EVM_VERSION, runs=OPTIMIZER_RUNS)
    artifacts: dict[str, dict[str, Any]] = {}
    for name in CONTRACTS:
        out = output["contracts"][f"contracts/{name}.sol"][name]
        artifacts[name] = {
            "generated_by": header,
            "contract": name,
            "source": f"ledger/contracts/{name}.sol",
            "compiler": {"solc": SOLC_VERSION, "evmVersion": EVM_VERSION, "optimizerRuns": OPTIMIZER_RUNS},
            "abi": out["abi"],
            "bytecode": "0x" + out["evm"]["bytecode"]["object"],
        }
    return artifacts


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=1, sort_keys=False) + "\n"


def stale_artifacts(artifacts: dict[str, dict[str, Any]], folder: Path = ARTIFACTS_DIR) -> list[str]:
    """Names whose file in ``folder`` differs from a fresh compile (or is missing)."""
    stale = []
    for name, artifact in artifacts.items():
        path = folder / f"{name}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(artifact):
            stale.append(name)
    return stale


def write_artifacts(artifacts: dict[str, dict[str, Any]], folder: Path = ARTIFACTS_DIR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, artifact in artifacts.items():
        (folder / f"{name}.json").write_text(render(artifact), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if an artifact is out of date")
    args = parser.parse_args(argv)
    artifacts = compile_contracts()
    if args.check:
        stale = stale_artifacts(artifacts)
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python -m ledger.compile)", file=sys.stderr)
            return 1
        return 0
    write_artifacts(artifacts)
    print(f"wrote {len(artifacts)} artifacts to {ARTIFACTS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
