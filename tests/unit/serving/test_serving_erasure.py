"""The serving engine's part of an erasure: it counts a vehicle's rows across the batch version and the
real-time tail, and refuses (it cannot shred them) when one of them holds protected data in clear."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.errors import PccStateError
from serving.access import ServingRows
from serving.config import ServingConfig
from serving.engine.views import ServingStore
from tests.fixtures.serving import make_events, publish_batch, vehicle_id, write_segment


def _store(tmp_path: Path, events: pa.Table) -> ServingStore:
    publish_batch(tmp_path, "v1", events.slice(0, 80))
    write_segment(tmp_path, events.slice(80, 40))
    store = ServingStore(ServingConfig(data_dir=tmp_path))
    store.refresh()
    return store


def test_the_engine_counts_a_vehicles_rows_in_both_layers(tmp_path: Path) -> None:
    events = make_events(120, vehicles=6)
    store = _store(tmp_path, events)
    expected = sum(1 for v in events.column("vehicle").to_pylist() if v == vehicle_id(0))
    assert ServingRows(store).erase_vehicle(vehicle_id(0)) == expected == 20
    assert ServingRows(store).erase_vehicle(vehicle_id(99)) == 0


def test_a_row_with_a_precise_location_in_clear_stops_the_erasure(tmp_path: Path) -> None:
    events = make_events(120, vehicles=6)
    lat = events.column("lat").to_pylist()
    lat[85] = 48.856613  # a real-time row of vehicle 85 % 6, finer than a region
    events = events.set_column(
        events.schema.get_field_index("lat"), "lat", pa.array(lat, events.schema.field("lat").type)
    )
    store = _store(tmp_path, events)
    with pytest.raises(PccStateError, match=r"serving engine: 1 of 20 rows .* plaintext"):
        ServingRows(store).erase_vehicle(events.column("vehicle")[85].as_py())
