"""A speed worker keeps the cyclic garbage collector off the state it rebuilt (speed.gc_threshold)."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from pipelines.settings import Settings
from speed.pipeline import settle_collector


@pytest.fixture
def collector():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_worker_freezes_what_it_holds_and_collects_less_often(collector: None) -> None:
    state = [{"vehicle": f"v-{i:032x}", "chains": [i]} for i in range(1000)]  # what a worker holds
    frozen_before = gc.get_freeze_count()
    settle_collector(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_freeze_count() >= frozen_before + len(state)


def test_none_leaves_the_collector_as_python_sets_it(collector: None) -> None:
    frozen_before = gc.get_freeze_count()
    settle_collector(None)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == frozen_before


def test_a_threshold_below_pythons_own_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCC__SPEED__GC_THRESHOLD", "10")
    with pytest.raises(ValidationError, match=r"speed\.gc_threshold"):
        Settings()
