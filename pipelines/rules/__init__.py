"""Quality and fraud rules as pure functions (no I/O, no engine imports).

The speed layer calls them per event with a per-vehicle state, the batch layer
over a vehicle's whole history; both go through the same functions.
"""

from pipelines.rules.fraud import (
    DEFAULT_PARAMS,
    EMPTY_STATE,
    Assessment,
    Checked,
    EventFields,
    FraudParams,
    Score,
    VehicleState,
    apply_sorted,
    assess_vehicle,
    check_event,
    fields_from,
    fraud_score,
    gradual_clocking,
    history_check,
    history_flags,
    rollback_before_sale,
    sort_key,
)
from pipelines.rules.quality import completeness, consistency_from_flags, optional_fields, quality_index

__all__ = [
    "DEFAULT_PARAMS",
    "EMPTY_STATE",
    "Assessment",
    "Checked",
    "EventFields",
    "FraudParams",
    "Score",
    "VehicleState",
    "apply_sorted",
    "assess_vehicle",
    "check_event",
    "completeness",
    "consistency_from_flags",
    "fields_from",
    "fraud_score",
    "gradual_clocking",
    "history_check",
    "history_flags",
    "optional_fields",
    "quality_index",
    "rollback_before_sale",
    "sort_key",
]
