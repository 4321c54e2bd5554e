"""Units of every field, and time-series queries: exact InfluxQL, refusals, limits, shaping."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import devices.payloads as payloads
from devices.kinds import Channel, Kind
from devices.payloads import RIVER_FIELDS, SCHEMAS, Payload
from devices.registry import parse_registry
from devices.units import UNITS, integer_fields, numeric_fields, unit_of
from ingest.api.influxql import (
    EVERY_SECONDS,
    Every,
    InfluxQueryError,
    QueryRefused,
    SeriesQuery,
    build_influxql,
    epoch_ns,
    estimate_points,
    quote_ident,
    quote_string,
    window_count,
)
from ingest.api.series import influxql_rows, run_series, shape_result, to_csv
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

REPO = Path(__file__).resolve().parents[2]

# --- units ----------------------------------------------------------------------------------


def missing_units() -> list[str]:
    """Every numeric field of every payload schema that has no unit."""
    return [
        f"{kind.value}/{channel.value}/{name}"
        for kind, channel in SCHEMAS
        for name in numeric_fields(kind, channel)
        if name not in UNITS
    ]


def test_every_numeric_field_of_every_schema_has_a_unit() -> None:
    assert missing_units() == []
    every_numeric = {n for k, c in SCHEMAS for n in numeric_fields(k, c)}
    assert every_numeric == set(UNITS)  # and no unit is left for a field that went away


def test_a_new_field_without_a_unit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    class Newer(Payload):
        salinity_psu: float | None = None

    monkeypatch.setitem(payloads.SCHEMAS, (Kind.RIVER, Channel.EVENT), Newer)
    assert missing_units() == ["river/event/salinity_psu"]


def test_numeric_fields_are_found_through_optional_and_annotated() -> None:
    assert numeric_fields(Kind.RIVER) == RIVER_FIELDS
    assert numeric_fields(Kind.GATE) == (
        "people_in",
        "people_out",
        "vehicles_in",
        "vehicles_out",
        "battery_v",
    )  # not door (a Literal), not ts/seq (the envelope)
    assert numeric_fields(Kind.ROAD, Channel.EVENT) == ("speed_kmh", "lane", "confidence")
    assert numeric_fields(Kind.GATE, Channel.EVENT) == ()  # event, plate, direction: text
    assert numeric_fields(Kind.GATE, Channel.STATUS) == ()  # online is a bool, not a number
    assert integer_fields(Kind.GATE) == {"people_in", "people_out", "vehicles_in", "vehicles_out"}
    assert integer_fields(Kind.RIVER) == frozenset()


@pytest.mark.parametrize(
    ("kind", "field", "unit"),
    [
        (Kind.RIVER, "water_level_m", "m"),
        (Kind.RIVER, "flow_m3s", "m³/s"),
        (Kind.RIVER, "rainfall_mm", "mm"),
        (Kind.RIVER, "water_temp_c", "°C"),
        (Kind.RIVER, "ph", "pH"),
        (Kind.RIVER, "do_mgl", "mg/L"),
        (Kind.RIVER, "tp_mgl", "mg/L"),
        (Kind.RIVER, "turbidity_ntu", "NTU"),
        (Kind.RIVER, "battery_v", "V"),
        (Kind.GATE, "battery_v", "V"),
        (Kind.GATE, "vehicles_in", "count"),
        (Kind.ROAD, "avg_speed_kmh", "km/h"),
        (Kind.ROAD, "speed_kmh", "km/h"),  # an event field
        (Kind.ROAD, "occupancy_pct", "%"),
        (Kind.ROAD, "queue_length_m", "m"),
        (Kind.ROAD, "vehicle_count", "count"),
    ],
)
def test_unit_of(kind: Kind, field: str, unit: str) -> None:
    assert unit_of(kind, field) == unit


@pytest.mark.parametrize(
    ("kind", "field"),
    [(Kind.GATE, "ph"), (Kind.RIVER, "door"), (Kind.RIVER, "ts"), (Kind.ROAD, "nope")],
)
def test_unit_of_a_field_the_kind_does_not_report_is_a_key_error(kind: Kind, field: str) -> None:
    with pytest.raises(KeyError):
        unit_of(kind, field)


def test_devices_imports_nothing_from_ingest_or_rules() -> None:
    for path in (REPO / "devices").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"ingest", "rules"}, f"{path.name}: {name}"


def test_series_module_has_no_fastapi() -> None:
    text = (REPO / "ingest" / "api" / "series.py").read_text(encoding="utf-8")
    assert "fastapi" not in text.lower()


# --- building queries -----------------------------------------------------------------------

# The small city plus a second village (v2 → grid g2, river r2) for area and visibility tests.
AREAS = [
    *SMALL_AREAS,
    {"id": "v2", "name": "村", "level": "village", "parent": "t"},
    {"id": "g2", "name": "网格二", "level": "grid", "parent": "v2"},
    {"id": "c2", "name": "空市", "level": "city"},  # a city with nothing under it
]
R2 = {**SMALL_DEVICES[0], "id": "r2", "grid": "g2"}
REGISTRY = parse_registry({"areas": AREAS, "devices": [*SMALL_DEVICES, R2]})

T0 = datetime(2026, 11, 19, tzinfo=UTC)
T0_NS = 1_795_046_400_000_000_000


def query(**overrides: Any) -> SeriesQuery:
    params: dict[str, Any] = {
        "kind": "river",
        "fields": ["water_level_m"],
        "device": "r1",
        "start": T0,
        "end": T0 + timedelta(hours=1),
    }
    params.update(overrides)
    return SeriesQuery.model_validate(params)


def build(**overrides: Any) -> str:
    return build_influxql(query(**overrides), REGISTRY)


def refused(code: str, allowed: frozenset[str] | None = None, **overrides: Any) -> QueryRefused:
    with pytest.raises(QueryRefused) as info:
        build_influxql(query(**overrides), REGISTRY, allowed_areas=allowed)
    assert info.value.code == code, info.value
    return info.value


def test_epoch_nanoseconds_are_exact() -> None:
    assert epoch_ns(T0) == T0_NS
    assert epoch_ns(datetime(2026, 11, 19, 8, tzinfo=timezone(timedelta(hours=8)))) == T0_NS
    assert epoch_ns(T0 + timedelta(microseconds=1)) == T0_NS + 1000  # no float rounding


def test_a_device_raw() -> None:
    assert build(fields=["water_level_m", "ph"]) == (
        'SELECT "water_level_m", "ph" FROM "river" WHERE "device" = \'r1\' '
        f"AND time >= {T0_NS} AND time < {T0_NS + 3_600 * 10**9} "
        "ORDER BY time ASC LIMIT 10000"
    )


def test_a_device_aggregated_defaults_to_mean() -> None:
    assert build(every="5m") == (
        'SELECT mean("water_level_m") AS "water_level_m" FROM "river" '
        f"WHERE \"device\" = 'r1' AND time >= {T0_NS} AND time < {T0_NS + 3_600 * 10**9} "
        "GROUP BY time(300s) fill(null) tz('Asia/Shanghai')"
    )
    assert query(every="5m").aggregate == "mean"
    assert query().aggregate is None


@pytest.mark.parametrize("fn", ["mean", "min", "max", "sum", "count", "last"])
def test_each_function(fn: str) -> None:
    assert f'SELECT {fn}("ph") AS "ph" FROM "river"' in build(fields=["ph"], every="1h", fn=fn)


@pytest.mark.parametrize(
    ("area", "condition"),
    [
        ("g", "\"grid\" = 'g'"),
        ("v", "\"village\" = 'v'"),
        ("t", "\"township\" = 't'"),
        ("co", "\"county\" = 'co'"),
        ("c", "(\"county\" = 'co')"),  # the city is no tag: its counties are
        ("c2", "(\"county\" = '' AND \"county\" != '')"),  # nothing under it: matches nothing
    ],
)
def test_an_area_at_each_level_selects_on_that_levels_tag(area: str, condition: str) -> None:
    assert f"WHERE {condition} AND time >= " in build(device=None, area=area, every="1m")


def test_an_area_grouped_by_device_and_raw() -> None:
    grouped = build(device=None, area="t", every="1m", group_by_device=True)
    assert grouped.endswith("GROUP BY time(60s), \"device\" fill(null) tz('Asia/Shanghai')")
    raw = build(device=None, area="t", fields=["ph", "flow_m3s"], limit=50)
    assert raw.startswith('SELECT "device", "ph", "flow_m3s" FROM "river" WHERE "township" = \'t\'')
    assert raw.endswith("ORDER BY time ASC LIMIT 50")
    assert query(device=None, area="t").per_device
    assert not query(device=None, area="t", every="1m").per_device


def test_gate_and_road_use_their_measurements() -> None:
    gate = build(kind="gate", device="g1", fields=["people_in"], every="1d", fn="sum")
    assert gate.startswith('SELECT sum("people_in") AS "people_in" FROM "gate" WHERE')
    road = build(kind="road", device="d1", fields=["avg_speed_kmh"])
    assert 'FROM "road" WHERE "device" = \'d1\'' in road


def test_every_text_and_seconds_agree() -> None:
    assert set(get_args(Every)) == set(EVERY_SECONDS)
    assert EVERY_SECONDS["1m"] == 60 and EVERY_SECONDS["1d"] == 86_400


def test_quoting_escapes_quotes_backslashes_and_newlines() -> None:
    assert quote_ident('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert quote_string("it's\\\n") == "'it\\'s\\\\\\n'"


# --- malformed parameters: pydantic, before any query -----------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"device": None},  # neither device nor area
        {"area": "v"},  # both
        {"start": datetime(2026, 11, 19)},  # naive
        {"end": T0},  # end == start
        {"end": T0 - timedelta(seconds=1)},
        {"fn": "mean"},  # fn without every
        {"every": "2m"},
        {"every": "1m; DROP DATABASE x"},
        {"every": 60},
        {"fn": "median", "every": "1m"},
        {"fn": "mean) FROM x; --", "every": "1m"},
        {"kind": "river; DROP"},
        {"fields": []},
        {"fields": [f"f{i}" for i in range(11)]},
        {"fields": ["ph", "ph"]},
        {"fields": ["x" * 65]},
        {"fields": "water_level_m"},
        {"device": "x" * 65},
        {"limit": 0},
        {"limit": 100_001},
        {"group_by_device": True},  # only for areas
        {"q": "SELECT 1"},  # extra keys are refused
    ],
)
def test_malformed_parameters_fail_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        query(**overrides)


def test_limit_boundaries() -> None:
    assert query(limit=1).limit == 1
    assert query(limit=100_000).limit == 100_000
    assert query().limit == 10_000


# --- refusals ---------------------------------------------------------------------------------


def test_fields_are_checked_against_the_kinds_schema() -> None:
    assert "water_level_m" in refused("unknown_field", fields=["nope"]).message
    refused("unknown_field", kind="gate", device="g1", fields=["ph"])  # another kind's field
    refused("unknown_field", kind="gate", device="g1", fields=["door"])  # not a number
    refused("unknown_field", fields=["seq"])  # the envelope, not a measurement
    refused("unknown_field", fields=["ts"])
    refused("unknown_field", kind="road", device="d1", fields=["speed_kmh"])  # events: no


def test_devices_and_areas_are_checked_against_the_registry() -> None:
    refused("unknown_device", device="r9")
    refused("unknown_device", device="R1")  # ids are case-sensitive
    mismatch = refused("device_kind_mismatch", kind="gate", device="r1", fields=["people_in"])
    assert mismatch.http_status == 422
    refused("unknown_area", device=None, area="nowhere")
    assert refused("unknown_area", device=None, area="x").http_status == 404


def test_allowed_areas_refuse_what_is_outside_as_if_it_did_not_exist() -> None:
    worker = frozenset({"g"})  # r1, g1, d1 are in g; r2 is in g2
    build_influxql(query(device="r1"), REGISTRY, allowed_areas=worker)
    build_influxql(query(device=None, area="g"), REGISTRY, allowed_areas=worker)
    refused("unknown_device", worker, device="r2")
    refused("unknown_area", worker, device=None, area="g2")
    refused("unknown_area", worker, device=None, area="v")  # above the worker's grid
    # Outside and of another kind: still unknown, so kinds do not leak either.
    refused("unknown_device", worker, kind="gate", device="r2", fields=["people_in"])
    # A village worker sees the grids and devices below the village.
    village = frozenset({"v2"})
    build_influxql(query(device="r2"), REGISTRY, allowed_areas=village)
    build_influxql(query(device=None, area="g2"), REGISTRY, allowed_areas=village)
    refused("unknown_device", frozenset(), device="r1")


def test_the_range_limit_is_inclusive() -> None:
    start = T0
    build_influxql(query(start=start, end=start + timedelta(days=31), limit=1), REGISTRY)
    refused("range_too_long", start=start, end=start + timedelta(days=31, microseconds=1))
    short = query(end=T0 + timedelta(hours=2))
    build_influxql(short, REGISTRY, max_range=timedelta(hours=2))
    with pytest.raises(QueryRefused, match="range_too_long"):
        build_influxql(short, REGISTRY, max_range=timedelta(hours=2) - timedelta(microseconds=1))


def test_times_outside_the_supported_span_are_refused() -> None:
    refused(
        "bad_window",
        start=datetime(1999, 12, 31, 23, tzinfo=UTC),
        end=datetime(2000, 1, 1, 1, tzinfo=UTC),
    )
    refused(
        "bad_window",
        start=datetime(2099, 12, 31, 23, tzinfo=UTC),
        end=datetime(2100, 1, 1, 1, tzinfo=UTC),
    )


def test_window_count_follows_epoch_alignment() -> None:
    assert window_count(T0, T0 + timedelta(minutes=1), 60) == 1
    assert window_count(T0, T0 + timedelta(minutes=1, microseconds=1), 60) == 2
    assert window_count(T0 + timedelta(seconds=30), T0 + timedelta(seconds=90), 60) == 2
    assert window_count(T0, T0 + timedelta(days=31), 60) == 44_640


def test_the_point_budget_has_an_exact_boundary() -> None:
    # 31 days of 1 min windows = 44 640 rows; two fields are 89 280 values.
    month: dict[str, Any] = {"end": T0 + timedelta(days=31), "every": "1m"}
    two = query(fields=["ph", "do_mgl"], **month)
    assert estimate_points(two, REGISTRY) == 89_280
    build_influxql(two, REGISTRY, max_points=89_280)
    with pytest.raises(QueryRefused) as info:
        build_influxql(two, REGISTRY, max_points=89_279)
    assert info.value.code == "too_many_rows" and info.value.http_status == 400
    refused("too_many_rows", fields=["ph", "do_mgl", "tp_mgl"], **month)  # 133 920 > 100 000
    # Per device, each device of the kind in the area is a series: r1 and r2 under t.
    per_device = query(device=None, area="t", group_by_device=True, **month)
    assert estimate_points(per_device, REGISTRY) == 2 * 44_640
    refused(
        "too_many_rows",
        device=None,
        area="t",
        group_by_device=True,
        fields=["ph", "do_mgl"],
        **month,
    )


def test_a_raw_query_is_bounded_by_its_limit() -> None:
    raw = query(fields=["ph", "do_mgl"], limit=50_000)
    assert estimate_points(raw, REGISTRY) == 100_000
    build_influxql(raw, REGISTRY)
    refused("too_many_rows", fields=["ph", "do_mgl"], limit=50_001)


def test_refusal_codes_are_a_closed_set() -> None:
    with pytest.raises(ValueError):
        QueryRefused("oops", "no such code")
    assert QueryRefused("unknown_device", "x").http_status == 404
    assert set(QueryRefused.HTTP_STATUS.values()) <= {400, 404, 422}


# --- hostile input ------------------------------------------------------------------------------

HOSTILE = [
    "r1'",
    "r1' OR '1'='1",
    "r1\\",
    'r1"',
    "r1; DROP DATABASE citysense",
    "; DROP DATABASE x",
    "r1\nDROP DATABASE x",
    "r1\r\n",
    "r1\x00",
    "r.*",
    "/.*/",
    "r1|r2",
    "r[0-9]",
    'water_level_m" FROM x; --',
    "water_level_m) FROM x",
    "*",
    "time",
    "SELECT",
    "r" * 64,
    "r1" * 1000,
    "河流一号",
    "r1\u202e",
    " r1",
    "r1 ",
    "",
]

# Every accepted query has this shape: its words are from schemas, registry ids (whose
# alphabet has no quote, space or backslash), integers and fixed keywords.
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_FIELD = r'"[a-z0-9_]+"'
_PLACE = (
    rf"\"(device|grid|village|township|county)\" = '{_ID}'"
    rf"|\((\"county\" = '{_ID}'( OR \"county\" = '{_ID}')*)\)"
    r"|\(\"county\" = '' AND \"county\" != ''\)"
)
_GRAMMAR = re.compile(
    rf"SELECT ((\"device\", )?{_FIELD}(, {_FIELD})*"
    rf"|(mean|min|max|sum|count|last)\({_FIELD}\) AS {_FIELD}"
    rf"(, (mean|min|max|sum|count|last)\({_FIELD}\) AS {_FIELD})*)"
    rf" FROM \"(gate|river|road)\" WHERE ({_PLACE}) AND time >= \d+ AND time < \d+ "
    r"(ORDER BY time ASC LIMIT \d+"
    r"|GROUP BY time\(\d+s\)(, \"device\")? fill\(null\) tz\('[A-Za-z]+(/[A-Za-z_]+)*'\))"
)


def outcome(**overrides: Any) -> str | None:
    """The query, or None if validation or the registry refused the parameters."""
    try:
        return build_influxql(query(**overrides), REGISTRY)
    except (ValidationError, QueryRefused):
        return None


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_never_reaches_a_query(text: str) -> None:
    assert outcome(device=text) is None
    assert outcome(device=None, area=text) is None
    assert outcome(fields=[text]) is None
    assert outcome(fields=["ph", text]) is None
    assert outcome(every=text) is None
    assert outcome(every="1m", fn=text) is None
    assert outcome(kind=text) is None


KNOWN_TEXT = {*REGISTRY.devices, *REGISTRY.areas, *numeric_fields(Kind.RIVER)}


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.sampled_from(sorted(KNOWN_TEXT)).map(lambda s: s + "'"),
        st.sampled_from(sorted(KNOWN_TEXT)),
    ),
    where=st.sampled_from(["device", "area", "field", "every", "fn"]),
)
def test_any_text_is_refused_or_a_known_name(text: str, where: str) -> None:
    choices: dict[str, dict[str, Any]] = {
        "device": {"device": text},
        "area": {"device": None, "area": text, "every": "1m"},
        "field": {"fields": ["ph", text]},
        "every": {"every": text},
        "fn": {"every": "1h", "fn": text},
    }
    overrides = choices[where]
    built = outcome(**overrides)
    if built is None:
        return
    # Accepted: the text was a validated name, and the query is in the safe grammar.
    allowed = {
        "device": set(REGISTRY.devices),
        "area": set(REGISTRY.areas),
        "field": set(numeric_fields(Kind.RIVER)) - {"ph"},
        "every": set(EVERY_SECONDS),
        "fn": {"mean", "min", "max", "sum", "count", "last"},
    }[where]
    assert text in allowed
    assert _GRAMMAR.fullmatch(built), built


def test_typical_queries_match_the_grammar() -> None:
    # The grammar is not vacuous: every shape the builder makes matches it, tampering does not.
    shapes = [
        build(),
        build(fields=["ph", "do_mgl"], every="1d", fn="last"),
        build(device=None, area="c", every="1m"),
        build(device=None, area="c2", every="1m"),
        build(device=None, area="v", every="1m", group_by_device=True),
        build(device=None, area="v"),
    ]
    for text in shapes:
        assert _GRAMMAR.fullmatch(text), text
        assert not _GRAMMAR.fullmatch(text + "; DROP DATABASE x")
        tampered = re.sub(r"'([^']*)'", r"'\1' OR '1'='1'", text, count=1)
        assert tampered != text and not _GRAMMAR.fullmatch(tampered), tampered


# --- shaping the answer -------------------------------------------------------------------------


def answer(*series: dict[str, Any]) -> dict[str, Any]:
    return {"results": [{"statement_id": 0, "series": list(series)}]}


T0_MS = T0_NS // 1_000_000


def test_a_device_answer_has_units_and_iso_times() -> None:
    q = query(fields=["water_level_m", "ph"], every="1m")
    result = shape_result(
        q,
        answer(
            {
                "name": "river",
                "columns": ["time", "water_level_m", "ph"],
                "values": [[T0_MS, 211, 7.25], [T0_MS + 60_000, None, None]],
            }
        ),
    )
    assert result.model_dump(mode="json") == {
        "kind": "river",
        "device": "r1",
        "area": None,
        "start": "2026-11-19T00:00:00.000Z",
        "end": "2026-11-19T01:00:00.000Z",
        "every": "1m",
        "every_s": 60,
        "fn": "mean",
        "fields": [{"name": "water_level_m", "unit": "m"}, {"name": "ph", "unit": "pH"}],
        "per_device": False,
        "series": [
            {
                "device": "r1",
                "points": [
                    {
                        "time": "2026-11-19T00:00:00.000Z",
                        "values": {"water_level_m": 211.0, "ph": 7.25},
                    },
                    {
                        "time": "2026-11-19T00:01:00.000Z",
                        "values": {"water_level_m": None, "ph": None},
                    },
                ],
            }
        ],
        "truncated": False,
    }
    assert isinstance(result.series[0].points[0].values["water_level_m"], float)
    assert to_csv(result) == (
        "time,water_level_m[m],ph[pH]\r\n"
        "2026-11-19T00:00:00.000Z,211.0,7.25\r\n"
        "2026-11-19T00:01:00.000Z,,\r\n"
    )


def test_counts_stay_integers_and_an_empty_answer_has_one_empty_series() -> None:
    q = query(kind="gate", device="g1", fields=["people_in", "battery_v"], every="1h", fn="max")
    row = {"name": "gate", "columns": ["time", "people_in", "battery_v"]}
    result = shape_result(q, answer({**row, "values": [[T0_MS, 12, 12]]}))
    values = result.series[0].points[0].values
    assert values == {"people_in": 12, "battery_v": 12.0}
    assert isinstance(values["people_in"], int) and isinstance(values["battery_v"], float)
    empty = shape_result(q, {"results": [{"statement_id": 0}]})
    assert [(s.device, s.points) for s in empty.series] == [("g1", [])]
    assert to_csv(empty) == "time,people_in[count],battery_v[V]\r\n"


def test_a_raw_area_answer_is_split_by_device_and_flags_truncation() -> None:
    q = query(device=None, area="t", fields=["flow_m3s"], limit=3)
    rows = [[T0_MS, "r2", 1.5], [T0_MS + 1, "r1", 2.5], [T0_MS + 2, "r2", 3.5]]
    result = shape_result(
        q, answer({"name": "river", "columns": ["time", "device", "flow_m3s"], "values": rows})
    )
    assert result.per_device and result.truncated
    assert [(s.device, [p.values["flow_m3s"] for p in s.points]) for s in result.series] == [
        ("r1", [2.5]),
        ("r2", [1.5, 3.5]),
    ]
    assert to_csv(result).splitlines() == [
        "time,device,flow_m3s[m³/s]",
        "2026-11-19T00:00:00.001Z,r1,2.5",
        "2026-11-19T00:00:00.000Z,r2,1.5",
        "2026-11-19T00:00:00.002Z,r2,3.5",
    ]


def test_a_grouped_answer_takes_the_device_from_the_series_tags() -> None:
    q = query(device=None, area="v", every="1m", fn="count", group_by_device=True)
    columns = ["time", "water_level_m"]
    result = shape_result(
        q,
        answer(
            {"name": "river", "tags": {"device": "r1"}, "columns": columns, "values": [[T0_MS, 3]]}
        ),
    )
    assert [(s.device, s.points[0].values) for s in result.series] == [("r1", {"water_level_m": 3})]
    assert not result.truncated  # only raw queries truncate


def test_an_influx_error_is_raised() -> None:
    with pytest.raises(InfluxQueryError, match="boom"):
        shape_result(query(), {"results": [{"statement_id": 0, "error": "boom"}]})


# --- running ------------------------------------------------------------------------------------


@pytest.fixture
async def fake_influx() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in /query that records its parameters; db "broken" answers HTTP 500."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if request.query["db"] == "broken":
            return web.Response(status=500, text="internal")
        if request.query["db"] == "grouped":
            block = {"name": "river", "columns": ["time", "ph"]}
            return web.json_response(
                answer(
                    {**block, "tags": {"device": "r1"}, "values": [[T0_MS, 7.0]]},
                    {**block, "tags": {"device": "r2"}, "values": [[T0_MS, 8.0], [T0_MS + 1, 8.5]]},
                )
            )
        if request.query["db"] == "failing":
            return web.json_response({"results": [{"statement_id": 0, "error": "bad"}]})
        return web.json_response(
            answer({"name": "river", "columns": ["time", "water_level_m"], "values": [[T0_MS, 5]]})
        )

    app = web.Application()
    app.router.add_get("/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_run_series_sends_the_query_and_parses_the_answer(
    fake_influx: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = fake_influx
    q = query()
    text = build_influxql(q, REGISTRY)
    async with aiohttp.ClientSession() as session:
        result = await run_series(session, url, "citysense", text, q)
        assert seen == [{"db": "citysense", "q": text, "epoch": "ms"}]
        assert result.series[0].points[0].values == {"water_level_m": 5.0}
        with pytest.raises(InfluxQueryError, match="HTTP 500"):
            await run_series(session, url, "broken", text, q)


async def test_influxql_rows_flattens_series_with_their_tags(
    fake_influx: tuple[str, list[dict[str, str]]],
) -> None:
    url, _ = fake_influx
    async with aiohttp.ClientSession() as session:
        rows = await influxql_rows(session, url, "grouped", "SELECT ph FROM river GROUP BY device")
        assert rows == [
            {"device": "r1", "time": T0_MS, "ph": 7.0},
            {"device": "r2", "time": T0_MS, "ph": 8.0},
            {"device": "r2", "time": T0_MS + 1, "ph": 8.5},
        ]
        with pytest.raises(InfluxQueryError, match="bad"):
            await influxql_rows(session, url, "failing", "SELECT 1")


def test_windows_align_in_the_asked_zone_and_only_a_listed_zone() -> None:
    built = build_influxql(query(every="1d", tz="Europe/Berlin"), REGISTRY)
    assert built.endswith("fill(null) tz('Europe/Berlin')")
    for bad in ["Asia/Nowhere", "UTC') DROP", "../../etc/passwd", ""]:
        with pytest.raises(ValidationError):
            query(every="1d", tz=bad)
