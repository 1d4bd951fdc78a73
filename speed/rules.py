"""The shared rules (``pipelines.rules``) as the speed layer calls them.

The rules themselves are pure functions that the batch layer reuses; this
module only adapts an envelope to their inputs and keeps one compact
:class:`~pipelines.rules.fraud.VehicleState` per vehicle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.rules import fraud, quality
from speed.roots import SourceInfo


class RulesAdapter:
    def __init__(self, params: fraud.FraudParams = fraud.DEFAULT_PARAMS) -> None:
        self._params = params

    def fraud(
        self, state: fraud.VehicleState | None, env: Mapping[str, Any], event_ms: int, verified: bool
    ) -> tuple[fraud.VehicleState, tuple[str, ...]]:
        payload = env["payload"]
        # version 2: the public region (the location is only committed to); version 1: the location
        location = payload.get("region" if env.get("schema_version") == 2 else "location") or {}
        fields = fraud.EventFields(
            event_id=env["event_id"],
            event_type=env["event_type"],
            event_time_ms=event_ms,
            source_id=env["source_id"],
            log_index=env["proof"]["log_index"],
            odometer_km=payload.get("odometer_km"),
            lat=location.get("lat"),
            lon=location.get("lon"),
            verified=verified,
        )
        new_state, flags, _evidence = fraud.check_event(state or fraud.EMPTY_STATE, fields, self._params)
        return new_state, flags

    def quality(
        self,
        env: Mapping[str, Any],
        source: SourceInfo,
        verified: bool,
        flags: tuple[str, ...],
        event_ms: int,
        ingestion_ms: int,
        now_ms: int,
    ) -> dict[str, float]:
        index, components = quality.quality_index(
            source_tier=source.tier,
            reputation=source.reputation,
            proof_verified=verified,
            consistency=quality.consistency_from_flags(flags),
            ingestion_delay_s=(ingestion_ms - event_ms) / 1000,
            completeness=quality.completeness(env["event_type"], env["payload"], env["schema_version"]),
        )
        return {"quality": index, **components}
