"""The audit's uniqueness checks file by file give the exact counts, or say they cannot."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.filekeys import digests, file_keys, merge

KEYS = [("event_id",), ("vehicle", "seq")]


def _exact(rows: list[dict]) -> dict:
    """What the Spark checks count: rows less distinct values, nulls (or a null part) left out."""
    ids = [r["event_id"] for r in rows if r["event_id"] is not None]
    pairs = [(r["vehicle"], r["seq"]) for r in rows if r["vehicle"] is not None and r["seq"] is not None]
    vehicles = {r["vehicle"] for r in rows if r["vehicle"] is not None}
    return {
        ("event_id",): len(ids) - len(set(ids)),
        ("vehicle", "seq"): len(pairs) - len(set(pairs)),
        "vehicles": len(vehicles),
    }


def _write(tmp: Path, files: list[list[dict]]) -> list[str]:
    schema = pa.schema([("vehicle", pa.string()), ("seq", pa.int64()), ("event_id", pa.string())])
    names = []
    for i, rows in enumerate(files):
        name = str(tmp / f"part-{i}-{uuid.uuid4().hex[:6]}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), name)
        names.append(name)
    return names


ids = st.sampled_from([str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(12)])
rows = st.fixed_dictionaries(
    {
        "vehicle": st.one_of(st.none(), st.sampled_from([f"v-{i:032x}" for i in range(6)])),
        "seq": st.one_of(st.none(), st.integers(0, 4)),
        "event_id": st.one_of(st.none(), ids),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(rows, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4), by_vehicle=st.booleans()
)
def test_what_the_files_vouch_for_is_the_exact_count(tmp_path: Path, data: list[dict], cuts, by_vehicle):
    if by_vehicle:  # the bucketed layout: whole vehicles per file, files in vehicle order
        data = sorted(data, key=lambda r: (r["vehicle"] or "", r["seq"] or 0))
        starts = [i for i in range(1, len(data)) if data[i]["vehicle"] != data[i - 1]["vehicle"]]
        cuts = [starts[c % len(starts)] for c in cuts] if starts else []
    cuts = sorted(set(cuts))
    files = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    parts = [file_keys(name, KEYS) for name in _write(folder, files)]
    merged = merge(parts, KEYS)
    exact = _exact(data)
    for key in KEYS:
        assert merged.repeats[key] in (None, exact[key])
    assert merged.vehicles in (None, exact["vehicles"])


def test_whole_vehicles_per_file_are_vouched_for_without_an_exact_count(tmp_path: Path):
    files = [
        [
            {"vehicle": f"v-{v:032x}", "seq": s, "event_id": str(uuid.uuid4())}
            for v in range(a, a + 5)
            for s in range(4)
        ]
        for a in (0, 5, 10)
    ]
    merged = merge([file_keys(n, KEYS) for n in _write(tmp_path, files)], KEYS)
    assert merged.repeats == {("event_id",): 0, ("vehicle", "seq"): 0} and merged.vehicles == 15


def test_an_event_id_carried_by_two_vehicles_in_two_files_is_left_to_the_exact_count(tmp_path: Path):
    shared = str(uuid.uuid4())
    files = [
        [
            {"vehicle": "v-a", "seq": 0, "event_id": shared},
            {"vehicle": "v-b", "seq": 0, "event_id": str(uuid.uuid4())},
        ],
        [{"vehicle": "v-c", "seq": 0, "event_id": shared}],
    ]
    merged = merge([file_keys(n, KEYS) for n in _write(tmp_path, files)], KEYS)
    assert merged.repeats[("event_id",)] is None  # the audit counts it exactly: 1 repeat, a failure
    assert merged.repeats[("vehicle", "seq")] == 0 and merged.vehicles == 3


def test_a_vehicle_split_over_two_files_leaves_every_count_to_spark(tmp_path: Path):
    files = [
        [
            {"vehicle": "v-a", "seq": 0, "event_id": str(uuid.uuid4())},
            {"vehicle": "v-b", "seq": 0, "event_id": "x"},
        ],
        [{"vehicle": "v-b", "seq": 0, "event_id": str(uuid.uuid4())}],
    ]
    merged = merge([file_keys(n, KEYS) for n in _write(tmp_path, files)], KEYS)
    assert merged.repeats == {("event_id",): None, ("vehicle", "seq"): None} and merged.vehicles is None


@pytest.mark.parametrize(
    ("values", "same"),
    [
        (["ab", "ab"], True),
        (["ab", "ba"], False),
        (["0" * 36, "0" * 35 + "1"], False),
        (["ab", "abc", "ab"], None),  # rows of other lengths between: still the same digest for "ab"
    ],
)
def test_equal_values_give_equal_digests(values: list[str], same: bool | None):
    found = digests(pa.array(values))
    if same is None:
        assert found[0] == found[2] != found[1]
    else:
        assert bool(found[0] == found[1]) is same


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=30))
def test_digests_tell_apart_what_differs_and_never_what_is_equal(values: list[str | None]):
    present = [v for v in values if v is not None]
    found = digests(pa.array(values, pa.string()))
    assert len(found) == len(present)
    for i, a in enumerate(present):
        for j, b in enumerate(present):
            if a == b:
                assert found[i] == found[j]
    # (64-bit digests of a few short strings do not collide: distinct values stay distinct here)
    assert len(set(found.tolist())) == len(set(present))
