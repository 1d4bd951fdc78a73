"""Honest envelopes with real inclusion proofs, for tests and benches of the speed layer.

A :class:`SyntheticSource` keeps a real :class:`pipelines.merkle.MerkleLog`,
hashes each envelope with :mod:`pipelines.canonical`, checkpoints every
``checkpoint_every`` events and records each checkpoint's root in an
:class:`~speed.roots.InMemoryRoots` (what the ledger would hold).  Until the
producer SDK is used end to end, this is how tests make valid wire events.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from pipelines import canonical, merkle
from pipelines.events import format_time, new_event_id
from speed.roots import InMemoryRoots


class SyntheticSource:
    def __init__(
        self,
        source_id: str,
        roots: InMemoryRoots | None,
        *,
        tier: int = 1,
        reputation: float = 0.9,
        checkpoint_every: int = 256,
        seed: int = 7,
    ) -> None:
        self.source_id = source_id
        self.roots = roots
        self.log = merkle.MerkleLog()
        self.checkpoint_every = checkpoint_every
        self._batch: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        if roots is not None:
            roots.add_source(source_id, tier, reputation)

    def odometer(
        self, vehicle: str, km: int, event_ms: int, *, ingestion_ms: int | None = None
    ) -> dict[str, Any]:
        env: dict[str, Any] = {
            "event_id": new_event_id(),
            "event_type": "odometer_reading",
            "schema_version": 1,
            "source_id": self.source_id,
            "vehicle": vehicle,
            "event_time": format_time(event_ms),
            "ingestion_time": format_time(ingestion_ms if ingestion_ms is not None else event_ms + 1000),
            "payload": {"odometer_km": km, "fuel_level_pct": self._rng.randint(5, 100)},
        }
        return env

    def append(self, env: dict[str, Any]) -> dict[str, Any]:
        """Append to the log; the proof is filled at the next :meth:`checkpoint`."""
        env["proof"] = {"log_index": self.log.append(canonical.leaf_hash(env))}
        self._batch.append(env)
        if len(self._batch) >= self.checkpoint_every:
            self.checkpoint()
        return env

    def checkpoint(self, *, anchor: bool = True) -> list[dict[str, Any]]:
        """Close the batch: fill the proofs, anchor the root (unless told not to); returns the batch."""
        if not self._batch:
            return []
        cp = self.log.checkpoint()
        for env in self._batch:
            index = env["proof"]["log_index"]
            env["proof"] = {
                "log_index": index,
                "tree_size": cp.tree_size,
                "root": cp.root.hex(),
                "path": [h.hex() for h in cp.inclusion_proof(index)],
                "leaf": canonical.leaf_hash(env).hex(),
            }
        if anchor and self.roots is not None:
            self.roots.add_checkpoint(self.source_id, cp.tree_size, cp.root)
        batch, self._batch = self._batch, []
        return batch


def vehicle(n: int) -> str:
    return "v-" + f"{n:032x}"


def wire(env: dict[str, Any]) -> bytes:
    return orjson.dumps(env)
