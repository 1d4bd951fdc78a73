"""A speed worker keeps the cyclic garbage collector off the state it rebuilt (speed.gc_threshold)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from pipelines.settings import Settings
from speed import runtime
from speed.runtime import settle_collector


def _spy(calls: list[str], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def called(*args: Any) -> Any:
        calls.append(name)
        return real(*args)

    return called


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The collector at Python's thresholds; the calls made to it, in order (each still made)."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    calls: list[str] = []
    for name in ("collect", "freeze"):
        monkeypatch.setattr(runtime.gc, name, _spy(calls, name, getattr(gc, name)))
    yield calls
    gc.set_threshold(*saved)


def test_a_worker_freezes_what_it_holds_and_collects_less_often(collector: list[str]) -> None:
    state = [{"vehicle": f"v-{i:032x}", "chains": [i]} for i in range(1000)]  # what a worker holds
    frozen_before = gc.get_freeze_count()
    settle_collector(50_000)
    assert collector == ["collect", "freeze"]  # garbage collected first, then the rest frozen
    assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_freeze_count() > frozen_before and state


def test_none_leaves_the_collector_as_python_sets_it(collector: list[str]) -> None:
    settle_collector(None)
    assert collector == [] and gc.get_threshold() == (700, 10, 10)


def test_a_threshold_below_pythons_own_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCC__SPEED__GC_THRESHOLD", "10")
    with pytest.raises(ValidationError, match=r"speed\.gc_threshold"):
        Settings()
