"""Query shapes: a query's check and metering rewrite are reused for the same query with other values,
and the reuse changes neither the answer, nor the price, nor what the sandbox refuses."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from serving.config import ServingConfig
from serving.engine.query import OverBudget, QueryRunner
from serving.engine.shapes import fill, split_literals
from serving.engine.views import ServingStore, StoreBusy
from serving.engine.watchdog import Watchdog
from serving.errors import ForbiddenQueryError, InvalidQueryError, QueryTimeoutError
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import PRICES, make_events, publish_batch, vehicle_id, write_segment


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ServingStore:
    data = tmp_path_factory.mktemp("shapes")
    events = make_events(120, vehicles=6, quality=0.5)
    publish_batch(data, "v1", events.slice(0, 80))
    write_segment(data, events.slice(80, 40))
    store = ServingStore(ServingConfig(data_dir=data))
    store.refresh()
    return store


def runner_for(store: ServingStore, **config: object) -> QueryRunner:
    return QueryRunner(
        store, InMemoryBilling(PRICES), ServingConfig(data_dir=store.config.data_dir, **config)
    )  # type: ignore[arg-type]


def test_literals_are_split_out_and_put_back_quoted() -> None:
    split = split_literals("SELECT * FROM t WHERE a = 'x''y' AND \"b'c\" = 'z'")
    assert split is not None
    template, values = split
    assert values == ["x'y", "z"]
    assert "x'y" not in template and '"b\'c"' in template
    assert fill(template, values) == "SELECT * FROM t WHERE a = 'x''y' AND \"b'c\" = 'z'"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT E'a\\'b' FROM t",
        "SELECT 'a' -- ' comment\nFROM t",
        "SELECT 'a' /* ' */ FROM t",
        "SELECT $$a'b$$ FROM t",
        "SELECT X'ff' FROM t",
        "SELECT 'unterminated FROM t",
    ],
)
def test_text_the_splitter_does_not_lex_exactly_is_not_shaped(sql: str) -> None:
    assert split_literals(sql) is None


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
        min_size=1,
        max_size=4,
    ),
    column=st.sampled_from(["vehicle", '"it\'s"', '"a""b"', "source_id"]),
    gap=st.sampled_from([" ", "\n", "\t ", ""]),
)
def test_the_literals_found_are_the_string_constants_duckdb_reads(
    values: list[str], column: str, gap: str
) -> None:
    assume(not any("__pcc_lit_" in v for v in values))  # the sentinels' prefix: such text is never shaped
    sql = "SELECT * FROM t WHERE " + " OR ".join(f"{column} ={gap}{_quoted(v)}{gap}" for v in values)
    split = split_literals(sql)
    assert split is not None
    template, found = split
    assert found == values and fill(template, found) == sql
    assert template.count("__pcc_lit_") == len(values)  # every literal, and nothing else, became a sentinel
    read = duckdb.sql("SELECT " + ", ".join(_quoted(v) for v in values)).fetchall()[0]
    assert list(read) == values  # DuckDB reads each constant as the value split out


QUERIES = [
    "SELECT event_id, odometer_km, source_id FROM vehicle_history WHERE vehicle = '{v}' ORDER BY event_time",
    "SELECT * FROM vehicle_history WHERE vehicle = '{v}' AND event_type <> 'inspection'",
    "SELECT event_type AS t, count(*) AS n FROM vehicle_history WHERE vehicle = '{v}' GROUP BY 1 ORDER BY 1",
    "SELECT lower(source_id) AS s, max(odometer_km) AS km FROM vehicle_history "
    "WHERE s <> 'ins-mutua' AND vehicle <= '{v}' GROUP BY 1 ORDER BY 1",
    "WITH h AS (SELECT * FROM vehicle_history WHERE vehicle = '{v}') SELECT count(*) AS n FROM h",
    "SELECT count(*) AS n FROM mileage_timeline WHERE vehicle = '{v}'",
]


@pytest.mark.parametrize("weight", [0, 5_000])
@pytest.mark.parametrize("sql", QUERIES)
def test_a_shape_answers_and_prices_exactly_like_the_full_path(
    store: ServingStore, sql: str, weight: int
) -> None:
    runner = runner_for(store, quality_weight_bps=weight)
    runner.run(sql.format(v=vehicle_id(0)))  # the shape is built here
    for i in range(1, 6):
        shaped = runner.run(sql.format(v=vehicle_id(i)))
        # a trailing comment keeps the query out of the shape cache: the full path, as before shapes
        full = runner.run(sql.format(v=vehicle_id(i)) + " -- not shaped")
        assert shaped.table.to_pylist() == full.table.to_pylist()
        assert shaped.quote == full.quote and shaped.quote.amount_cents > 0
        assert runner.quote(sql.format(v=vehicle_id(i)))[1] == full.quote
    assert runner.shapes.hits >= 10


def test_a_row_query_is_charged_for_each_row_it_returns(store: ServingStore) -> None:
    runner = runner_for(store)
    sql = "SELECT event_id, event_type, source_id FROM vehicle_history WHERE vehicle = '{v}'"
    runner.run(sql.format(v=vehicle_id(0)))
    result = runner.run(sql.format(v=vehicle_id(4)))
    rows = result.table.to_pylist()
    category = {"odometer_reading": "mileage", "maintenance": "maintenance", "inspection": "inspection",
                "accident_declaration": "accident"}  # fmt: skip
    expected: dict[str, dict[str, int]] = {}
    for r in rows:
        p = expected.setdefault(r["source_id"], {"rows": 0, "cents": 0})
        p["rows"] += 1
        p["cents"] += PRICES[category[r["event_type"]]]
    assert len(rows) == 20 and result.quote.by_producer == expected


def test_a_quote_in_a_value_stays_a_value(store: ServingStore) -> None:
    runner = runner_for(store)
    sql = "SELECT event_id FROM vehicle_history WHERE vehicle = '{v}'"
    assert runner.run(sql.format(v=vehicle_id(1))).table.num_rows == 20
    hostile = runner.run(sql.format(v="x'' OR ''1''=''1"))
    assert hostile.table.num_rows == 0 and hostile.quote.amount_cents == 0


def test_a_shape_never_lets_a_value_become_a_table(store: ServingStore) -> None:
    runner = runner_for(store)
    assert runner.run("SELECT count(*) AS n FROM 'vehicle_history'").table.to_pylist() == [{"n": 120}]
    with pytest.raises(ForbiddenQueryError) as info:
        runner.run("SELECT count(*) AS n FROM '/etc/passwd'")
    assert info.value.rule == "serving_views_only"
    with pytest.raises(ForbiddenQueryError):
        runner.run("SELECT count(*) AS n FROM 'rt'")


#: What a consumer who wants rows for free puts in a value once a shape is cached: multi-byte text before
#: the literal (the tokenizer counts bytes), quotes, a comment opener, a table's name, a sentinel look-alike.
HOSTILE_VALUES = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12),
    st.sampled_from(["' OR '1'='1", "x'' OR ''1''=''1", "é' --", "/* '", "vehicle_history", "__pcc_lit_0__"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(["", "é", "日本", "🚗"]), value=HOSTILE_VALUES)
def test_a_cached_shape_bills_a_hostile_value_as_the_full_path_does(
    store: ServingStore, prefix: str, value: str
) -> None:
    """The attacker: a shape warmed with an honest value, then a value made to shift or escape the literal.
    The shaped answer and its price equal those of the same query checked from scratch, or it is refused alike."""
    runner = runner_for(store)
    sql = (
        "SELECT event_id, source_id FROM vehicle_history WHERE event_type <> '"
        + prefix
        + "x' AND vehicle = '{v}'"
    )
    quoted = value.replace("'", "''")
    runner.run(sql.format(v=vehicle_id(0)))  # the shape is cached here
    try:
        full = runner.run(sql.format(v=quoted) + " -- not shaped")
    except (ForbiddenQueryError, InvalidQueryError) as refused:
        with pytest.raises(type(refused)):
            runner.run(sql.format(v=quoted))
        return
    hits = runner.shapes.hits
    shaped = runner.run(sql.format(v=quoted))
    assert shaped.table.to_pylist() == full.table.to_pylist()
    assert shaped.quote == full.quote
    if split_literals(sql.format(v=quoted)) is not None:
        assert runner.shapes.hits == hits + 1  # the cached shape answered, not the full path


def test_refused_queries_are_not_cached_and_bad_values_stay_invalid(store: ServingStore) -> None:
    runner = runner_for(store)
    for value in ("a", "b"):
        with pytest.raises(ForbiddenQueryError):
            runner.run(f"SELECT getenv('HOME') FROM vehicle_history WHERE vehicle = '{value}'")
    assert len(runner.shapes) == 0
    sql = "SELECT event_id FROM vehicle_history WHERE event_time > TIMESTAMPTZ '{t}'"
    assert runner.run(sql.format(t="2026-03-01 00:01:00+00")).table.num_rows == 59
    with pytest.raises(InvalidQueryError, match="not a time"):
        runner.run(sql.format(t="not a time"))  # the shape is cached; the value still fails (400)
    assert runner.shapes.hits >= 1


def test_the_time_limit_stops_a_slow_query(store: ServingStore) -> None:
    runner = runner_for(store, query_timeout_s=0.3)
    slow = (
        "SELECT count(*) FROM vehicle_history a, vehicle_history b, vehicle_history c, vehicle_history d "
        "WHERE hash(a.event_id || b.event_id || c.event_id || d.event_id) = 0"
    )
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        runner.run(slow)
    assert time.monotonic() - start < 5
    assert runner.run("SELECT count(*) AS n FROM vehicle_history").table.to_pylist() == [{"n": 120}]


_QUADRUPLE = (
    "SELECT count(*) FROM vehicle_history a, vehicle_history b, vehicle_history c, vehicle_history d "
    "WHERE hash(a.event_id || b.event_id || c.event_id || d.event_id) = 0"
)


@pytest.mark.parametrize("limit_s", [0.0005, 0.002, 0.01, 0.05])
def test_a_stopped_query_is_a_time_limit_error_wherever_the_stop_lands(
    store: ServingStore, limit_s: float
) -> None:
    """A stop can land while DuckDB binds (where it is lost: it is repeated), while it runs, or while
    rows stream through Arrow (where it surfaces as an OSError): each is a 408, never a 500."""
    streamed = "SELECT a.event_id, b.event_id FROM vehicle_history a, vehicle_history b, vehicle_history c"
    for sql in (_QUADRUPLE, streamed):
        with pytest.raises(QueryTimeoutError):
            runner_for(store, query_timeout_s=limit_s, max_rows=10**9).run(sql)
    assert runner_for(store).run("SELECT count(*) AS n FROM vehicle_history").table.to_pylist() == [
        {"n": 120}
    ]


@pytest.mark.parametrize("budget_s", [0.0005, 0.005])
def test_a_run_over_its_budget_is_stopped_and_says_so_instead_of_failing(
    store: ServingStore, budget_s: float
) -> None:
    runner = runner_for(store, query_timeout_s=60)
    for _ in range(3):
        with pytest.raises(OverBudget):
            runner.run(_QUADRUPLE, budget_s=budget_s)
    assert runner.run("SELECT count(*) AS n FROM vehicle_history").table.to_pylist() == [{"n": 120}]


def test_a_repeating_limit_interrupts_again_until_its_block_ends() -> None:
    dog = Watchdog()
    fired: list[float] = []
    with dog.limit(0.02, lambda: fired.append(time.monotonic()), repeat_s=0.02):
        time.sleep(0.3)
    ended = len(fired)
    time.sleep(0.1)
    assert ended >= 3 and len(fired) == ended  # again and again while it ran, never after
    assert dog.pending() == 0


def test_one_watchdog_interrupts_only_what_outlives_its_limit() -> None:
    dog = Watchdog()
    fired: list[str] = []
    with dog.limit(0.05, lambda: fired.append("slow")):
        time.sleep(0.3)
    with dog.limit(0.1, lambda: fired.append("fast")):
        pass
    threads = [threading.Thread(target=lambda k=k: _limited(dog, fired, k)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.3)
    assert sorted(fired) == sorted(["slow", *(f"q{k}" for k in range(20) if k % 2)])
    assert dog.pending() == 0


def _limited(dog: Watchdog, fired: list[str], k: int) -> None:
    with dog.limit(0.05 if k % 2 else 5.0, lambda: fired.append(f"q{k}")):
        time.sleep(0.2 if k % 2 else 0.0)


@pytest.mark.parametrize("weight_bps", [0, 5_000])
def test_a_star_query_is_metered_on_its_own_columns_as_a_column_list_is(
    store: ServingStore, weight_bps: int
) -> None:
    runner = runner_for(store, quality_weight_bps=weight_bps)
    star = "SELECT * FROM vehicle_history WHERE vehicle = '{v}' ORDER BY event_time"
    listed = "SELECT event_id, lat, layer FROM vehicle_history WHERE vehicle = '{v}' ORDER BY event_time"
    excluded = "SELECT * EXCLUDE (source_id, quality) FROM vehicle_history WHERE vehicle = '{v}'"
    for i in range(6):
        a, b = runner.run(star.format(v=vehicle_id(i))), runner.run(listed.format(v=vehicle_id(i)))
        c = runner.run(excluded.format(v=vehicle_id(i)))
        assert a.quote == b.quote == c.quote and a.quote.amount_cents > 0
        names = [c for c, _ in store.columns()["vehicle_history"]]
        assert a.table.column_names == names and a.table.num_rows == 20
        assert "source_id" not in c.table.column_names and not any(
            n.startswith("__pcc") for n in c.table.column_names
        )
        assert runner.quote(star.format(v=vehicle_id(i)))[1] == a.quote


def test_a_shorter_limit_after_a_longer_one_still_fires_on_time() -> None:
    dog = Watchdog()
    fired: list[str] = []
    with dog.limit(30.0, lambda: fired.append("long")):
        pass  # the watchdog thread now sleeps towards a deadline 30 s away
    start = time.monotonic()
    with dog.limit(0.05, lambda: fired.append("short")):
        while not fired and time.monotonic() - start < 5:
            time.sleep(0.01)
    assert fired == ["short"] and time.monotonic() - start < 2


def test_a_run_with_a_budget_does_not_wait_for_a_load_and_one_without_does(store: ServingStore) -> None:
    runner = runner_for(store, query_timeout_s=60)
    loading, release = threading.Event(), threading.Event()

    def load() -> None:  # holds the engine as loading a segment or a version does
        with store._lock:
            loading.set()
            release.wait(10)

    loader = threading.Thread(target=load)
    loader.start()
    loading.wait(10)
    try:
        with pytest.raises(StoreBusy), store.pin(wait=False):
            pass
        with pytest.raises(OverBudget):
            runner.run("SELECT count(*) AS n FROM vehicle_history", budget_s=1.0)
        waited: list[object] = []
        waiter = threading.Thread(
            target=lambda: waited.append(runner.run("SELECT count(*) AS n FROM vehicle_history").table)
        )
        waiter.start()
        time.sleep(0.1)
        assert waited == []  # still waiting for the load
    finally:
        release.set()
        loader.join()
    waiter.join(10)
    assert [t.to_pylist() for t in waited] == [[{"n": 120}]]  # type: ignore[attr-defined]
    assert runner.run("SELECT count(*) AS n FROM vehicle_history", budget_s=1.0).table.to_pylist() == [
        {"n": 120}
    ]
