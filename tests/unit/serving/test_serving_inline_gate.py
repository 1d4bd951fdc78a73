"""Which query shapes the event loop may answer itself."""

from __future__ import annotations

from serving.inline import RUNS_TO_QUALIFY, InlineGate

ONE = "SELECT * FROM vehicle_history WHERE vehicle = '{v}'"


def _body(sql: str, fmt: str = "arrow") -> tuple[str, str]:
    return sql, fmt


def test_one_shape_whatever_the_string_values_but_not_whatever_the_format() -> None:
    a, b = InlineGate.shape_of(*_body(ONE.format(v="v-1"))), InlineGate.shape_of(*_body(ONE.format(v="v-2")))
    assert a is not None and a == b
    assert InlineGate.shape_of(ONE.format(v="v-1"), "csv") != a


def test_never_inline_a_grant_key_or_an_untemplated_query() -> None:
    assert InlineGate.shape_of(ONE.format(v="v"), "arrow", "ab" * 32) is None
    assert InlineGate.shape_of(*_body("SELECT 1 -- a comment")) is None


def test_a_shape_qualifies_after_its_last_runs_were_fast_and_a_stop_disqualifies_it() -> None:
    gate = InlineGate(budget_s=0.02)
    shape = gate.shape_of(*_body(ONE.format(v="v-1")))
    for k in range(RUNS_TO_QUALIFY):
        assert not gate.eligible(shape), k
        gate.record(shape, 0.004)
    assert gate.eligible(shape)
    gate.record(shape, 0.015)  # over fast_s (half the budget): one slow answer among the last three
    assert not gate.eligible(shape)
    for _ in range(RUNS_TO_QUALIFY):
        gate.record(shape, 0.004)
    assert gate.eligible(shape)
    gate.stopped(shape)
    assert not gate.eligible(shape) and gate.over_budget == 1


def test_a_zero_budget_turns_it_off_and_the_record_stays_bounded() -> None:
    off = InlineGate(budget_s=0)
    shape = off.shape_of(*_body(ONE.format(v="v-1")))
    for _ in range(5):
        off.record(shape, 0.001)
    assert not off.enabled and not off.eligible(shape)
    gate = InlineGate(budget_s=0.02, size=8)
    for k in range(100):
        gate.record((f"SELECT {k}", "arrow"), 0.001)
    assert len(gate._recent) == 8
