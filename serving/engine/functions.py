"""The functions a consumer's SQL may call: an allow-list, grouped as ``GET /v1/catalog`` shows it.

Anything not named here is refused (rule ``allowed_functions``), including every
function DuckDB adds in a later release until someone reads it and adds it.
Left out on purpose: whatever reads the query text, the settings, the catalog,
the session or the environment (``current_query``, ``current_setting``,
``getenv``, ``version``, ``duckdb_*``, ``pg_*``, ``has_*_privilege``), what has
side effects or waits (``nextval``, ``setseed``, ``pg_sleep``, ``write_log``,
``error``), what serialises plans or SQL (``json_serialize_sql``), and what
exports aggregate states.  Operators appear under the name the parser gives them
(``+``, ``~~`` for ``LIKE`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


OPERATORS = _names(
    "!= % & && * ** + - / // < <<= <= <> = == > >= >> << @ ^ ^@ | || ~ "
    "~~ !~~ ~~* !~~* ~~~ !__postfix <-> <@ @> ->> "
    "__between like_escape not_like_escape ilike_escape not_ilike_escape "
    "add subtract multiply divide mod fdiv xor"
)
MATH = _names(
    "abs acos acosh asin asinh atan atan2 atanh bit_count cbrt ceil ceiling cos cosh cot degrees even "
    "exp factorial floor fmod gamma gcd greatest greatest_common_divisor isfinite isinf isnan lcm "
    "least least_common_multiple lgamma ln log log10 log2 nextafter pi pow power radians random round "
    "round_even roundbankers sign signbit sin sinh sqrt tan tanh trunc"
)
TEXT = _names(
    "ascii bar base64 bit_length char_length character_length chr concat concat_ws contains "
    "damerau_levenshtein editdist3 ends_with format from_base64 hamming hex instr jaccard "
    "jaro_similarity jaro_winkler_similarity lcase left left_grapheme len length length_grapheme "
    "levenshtein lower lpad ltrim md5 mismatches nfc_normalize octet_length ord position prefix "
    "printf regexp_escape regexp_extract regexp_extract_all regexp_full_match regexp_matches "
    "regexp_replace regexp_split_to_array repeat replace reverse right right_grapheme rpad rtrim "
    "sha1 sha256 split split_part starts_with str_split str_split_regex string_split "
    "string_split_regex string_to_array strip_accents strlen strpos substr substring "
    "substring_grapheme suffix to_base64 to_hex translate trim ucase unbin unhex unicode upper "
    "url_decode url_encode"
)
TIME = _names(
    "age century current_date date_add date_diff date_part date_sub date_trunc datediff datepart "
    "datesub datetrunc day dayname dayofmonth dayofweek dayofyear days_in_month decade epoch "
    "epoch_ms epoch_ns epoch_us era get_current_time get_current_timestamp hour isodow isoyear "
    "julian last_day make_date make_time make_timestamp make_timestamp_ms make_timestamp_ns "
    "make_timestamptz microsecond millennium millisecond minute month monthname nanosecond now "
    "quarter second strftime strptime time_bucket timezone timezone_hour timezone_minute "
    "to_centuries to_days to_decades to_hours to_microseconds to_millennia to_milliseconds "
    "to_minutes to_months to_quarters to_seconds to_timestamp to_weeks to_years today "
    "transaction_timestamp try_strptime week weekday weekofyear year yearweek"
)
LISTS = _names(
    "array_append array_cat array_concat array_contains array_distinct array_extract array_filter "
    "array_has array_has_all array_has_any array_indexof array_intersect array_length "
    "array_pop_back array_pop_front array_position array_prepend array_push_back "
    "array_push_front array_reverse array_reverse_sort array_select array_slice array_sort "
    "array_to_string array_transform array_unique array_value array_where array_zip "
    "apply cardinality flatten filter generate_series list_aggr list_aggregate list_any_value "
    "list_append list_apply list_avg list_cat list_concat list_contains list_count list_distinct "
    "list_element list_extract list_filter list_first list_grade_up list_has list_has_all "
    "list_has_any list_indexof list_intersect list_last list_max list_median list_min list_mode "
    "list_pack list_position list_prepend list_product list_reduce list_resize list_reverse "
    "list_reverse_sort list_select list_slice list_sort list_stddev_pop list_stddev_samp "
    "list_string_agg list_sum list_transform list_unique list_value list_var_pop list_var_samp "
    "list_where list_zip range reduce unnest"
)
STRUCTS_AND_MAPS = _names(
    "element_at map map_concat map_contains map_contains_entry map_contains_value map_entries "
    "map_extract map_extract_value map_from_entries map_keys map_values row struct_concat "
    "struct_contains struct_extract struct_extract_at struct_has struct_indexof struct_insert "
    "struct_keys struct_pack struct_position struct_update struct_values union_extract union_tag "
    "union_value"
)
JSON = _names(
    "json_array_length json_contains json_exists json_extract json_extract_path "
    "json_extract_path_text json_extract_string json_keys json_type json_valid json_value to_json"
)
CONDITIONAL = _names("coalesce constant_or_null greatest hash if ifnull least nullif typeof")
AGGREGATES = _names(
    "any_value approx_count_distinct approx_quantile arbitrary arg_max arg_min argmax argmin "
    "array_agg avg bit_and bit_or bit_xor bool_and bool_or corr count count_if count_star countif "
    "covar_pop covar_samp entropy favg first fsum geomean geometric_mean group_concat histogram "
    "kahan_sum kurtosis kurtosis_pop last list listagg mad max max_by mean median min min_by mode "
    "product quantile quantile_cont quantile_disc regr_avgx regr_avgy regr_count regr_intercept "
    "regr_r2 regr_slope regr_sxx regr_sxy regr_syy sem skewness stddev stddev_pop stddev_samp "
    "string_agg sum sumkahan var_pop var_samp variance wavg weighted_avg"
)
WINDOWS = _names(
    "cume_dist dense_rank first_value lag last_value lead nth_value ntile percent_rank rank "
    "rank_dense row_number"
)

GROUPS: dict[str, frozenset[str]] = {
    "operators": OPERATORS,
    "math": MATH,
    "text": TEXT,
    "date_time": TIME,
    "lists": LISTS,
    "structs_and_maps": STRUCTS_AND_MAPS,
    "json": JSON,
    "conditional": CONDITIONAL,
    "aggregate": AGGREGATES,
    "window": WINDOWS,
}
ALLOWED: frozenset[str] = frozenset().union(*GROUPS.values())


class FunctionPolicy:
    """The allow-list checked against one engine: what exists there, and which names aggregate."""

    def __init__(self, con: duckdb.DuckDBPyConnection, allowed: Iterable[str] = ALLOWED) -> None:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name), function_type, stability FROM duckdb_functions()"
        ).fetchall()
        present = {name for name, _, _ in rows}
        #: the allowed names this engine knows (``coalesce``, ``unnest`` ... are parser keywords)
        self.allowed = frozenset(n for n in allowed if n in present or n in _KEYWORDS)
        #: every name that is an aggregate in at least one overload: its use makes a query an aggregate
        self.aggregates = frozenset(name for name, kind, _ in rows if kind == "aggregate")
        #: names that give the same answer for the same input within a transaction
        self.consistent = frozenset(
            name for name, _, stability in rows if stability in ("CONSISTENT", "CONSISTENT_WITHIN_QUERY")
        ) | _KEYWORDS - {"unnest"}

        #: names the engine binds to a function when no column has them (``current_user``): a bare
        #: name that is one of these and not allowed is refused like the function call it becomes
        self.bare = frozenset(self._bare_names(con)) - self.allowed

    @staticmethod
    def _bare_names(con: duckdb.DuckDBPyConnection) -> list[str]:
        candidates = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('scalar', 'macro') AND len(parameters) = 0"
        ).fetchall()
        out = []
        cur = con.cursor()
        try:
            for (name,) in candidates:
                if not name.replace("_", "").isalnum():
                    continue
                try:
                    cur.execute(f'SELECT "{name}"').fetchall()
                except duckdb.Error:
                    continue
                out.append(name)
        finally:
            cur.close()
        return out

    def allows(self, name: str) -> bool:
        return name.lower() in self.allowed

    def catalog(self) -> dict[str, list[str]]:
        """The allowed functions by group, as ``GET /v1/catalog`` lists them."""
        return {group: sorted(n for n in names if n in self.allowed) for group, names in GROUPS.items()}


#: names the parser turns into expressions of their own (not catalog functions)
_KEYWORDS = frozenset({"coalesce", "ifnull", "unnest", "row"})
