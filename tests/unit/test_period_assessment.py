"""GB 3838-2002 period assessment (rules/assessment.py) and the /quality report built from it
(ingest/api/qualityquery.py, without InfluxDB), against examples computed by hand from Table 1.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devices.kinds import Level
from devices.registry import Registry, RiverDevice, load_registry
from ingest.api.influxql import QueryRefused, epoch_ns
from ingest.api.qualityquery import (
    build_report,
    means_influxql,
    period_asked,
    sampled_of,
    stations_in_scope,
)
from ingest.cli.quality import report_lines, width
from rules.assessment import (
    DEFAULT_TARGET,
    Sampled,
    assess_station,
    compliance,
    compliance_by,
    parse_period,
    period_containing,
    period_of,
)
from rules.waterquality import WaterClass

SHANGHAI = ZoneInfo("Asia/Shanghai")
REPO = Path(__file__).resolve().parents[2]
# A clean station: every parameter class I or II.
CLEAN = {
    "ph": Sampled(7.4, 24),
    "do_mgl": Sampled(8.1, 24),  # ≥ 7.5: I
    "codmn_mgl": Sampled(3.0, 6),  # ≤ 4: II
    "nh3n_mgl": Sampled(0.3, 6),  # ≤ 0.5: II
    "tp_mgl": Sampled(0.05, 6),  # ≤ 0.1: II
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


# --- one station -----------------------------------------------------------------------------


def test_nh3n_mean_of_1_2_is_class_iv_and_fails_target_iii() -> None:
    # Samples 1.1 and 1.3 mg/L: mean 1.2, over III's 1.0 and within IV's 1.5.
    nh3n = Sampled((1.1 + 1.3) / 2, 2)
    judged = assess_station("s", WaterClass.III, {**CLEAN, "nh3n_mgl": nh3n})
    assert judged.parameters["nh3n_mgl"].mean == 1.2
    assert judged.parameters["nh3n_mgl"].water_class is WaterClass.IV
    assert judged.parameters["nh3n_mgl"].samples == 2
    assert judged.water_class is WaterClass.IV
    assert judged.meets_target is False
    assert judged.over_target == ("nh3n_mgl",)


def test_target_ii_station_whose_do_mean_is_class_iii_fails() -> None:
    # DO 5.5 mg/L: below II's 6, at least III's 5 → class III; everything else I or II.
    judged = assess_station("s", WaterClass.II, {**CLEAN, "do_mgl": Sampled(5.5, 48)})
    assert judged.parameters["do_mgl"].water_class is WaterClass.III
    assert judged.water_class is WaterClass.III
    assert judged.meets_target is False
    assert judged.over_target == ("do_mgl",)
    # The same water against target III meets it.
    same = assess_station("s", WaterClass.III, {**CLEAN, "do_mgl": Sampled(5.5, 48)})
    assert same.meets_target is True and same.over_target == ()


def test_class_is_the_worst_parameter_and_a_limit_meets_its_class() -> None:
    judged = assess_station(
        "s",
        WaterClass.III,
        {
            "ph": Sampled(7.0, 3),
            "do_mgl": Sampled(5.0, 3),  # = III's limit: III
            "codmn_mgl": Sampled(6.0, 3),  # = III's limit: III
            "nh3n_mgl": Sampled(0.5, 3),  # = II's limit: II
            "tp_mgl": Sampled(0.2, 3),  # = III's limit: III
        },
    )
    classes = {f: p.water_class.name for f, p in judged.parameters.items()}
    assert classes == {
        "ph": "I",
        "do_mgl": "III",
        "codmn_mgl": "III",
        "nh3n_mgl": "II",
        "tp_mgl": "III",
    }
    assert judged.water_class is WaterClass.III and judged.meets_target is True


def test_ph_is_judged_in_the_range_6_to_9() -> None:
    inside = assess_station("s", WaterClass.II, {**CLEAN, "ph": Sampled(8.9, 10)})
    assert inside.parameters["ph"].water_class is WaterClass.I
    assert inside.water_class is WaterClass.II
    outside = assess_station("s", WaterClass.II, {**CLEAN, "ph": Sampled(9.2, 10)})
    assert outside.parameters["ph"].water_class is WaterClass.WORSE_THAN_V
    assert outside.water_class is WaterClass.WORSE_THAN_V
    assert outside.water_class.label == "劣Ⅴ"
    assert outside.over_target == ("ph",)


def test_a_mean_is_classed_as_shown_not_as_float_addition_leaves_it() -> None:
    # Six samples whose mean is 1.0 mg/L, but 1.0000000000000002 in floats: class IV unrounded.
    samples = (0.5, 0.53, 0.92, 1.28, 1.31, 1.46)
    raw = sum(samples) / len(samples)
    assert raw > 1.0
    judged = assess_station("s", WaterClass.III, {"nh3n_mgl": Sampled(raw, 6)})
    assert judged.parameters["nh3n_mgl"].mean == 1.0
    assert judged.parameters["nh3n_mgl"].water_class is WaterClass.III
    assert judged.meets_target is True


def test_only_parameters_with_samples_count() -> None:
    judged = assess_station(
        "s",
        WaterClass.III,
        {
            "do_mgl": Sampled(6.5, 12),
            "nh3n_mgl": Sampled(0.0, 0),  # no sample: left out, whatever the mean says
            "tp_mgl": Sampled(float("nan"), 4),
            "water_level_m": Sampled(300.0, 12),  # not a quality parameter
        },
    )
    assert list(judged.parameters) == ["do_mgl"]
    assert judged.water_class is WaterClass.II


def test_a_station_without_samples_is_not_assessed() -> None:
    judged = assess_station("s", WaterClass.III, {})
    assert not judged.assessed
    assert judged.water_class is None and judged.meets_target is None
    assert judged.over_target == ()


def test_a_station_without_target_is_judged_against_class_iii_and_says_so() -> None:
    assert DEFAULT_TARGET is WaterClass.III
    judged = assess_station("s", None, {**CLEAN, "codmn_mgl": Sampled(5.0, 4)})  # III
    assert judged.target is WaterClass.III and judged.target_is_default
    assert judged.meets_target is True
    worse = assess_station("s", None, {**CLEAN, "codmn_mgl": Sampled(7.0, 4)})  # IV
    assert worse.meets_target is False
    assert not assess_station("s", WaterClass.III, CLEAN).target_is_default


# --- groups ----------------------------------------------------------------------------------


def test_rate_counts_assessed_stations_only() -> None:
    stations = [
        assess_station("a", WaterClass.III, CLEAN),  # II: meets
        assess_station("b", WaterClass.III, {"nh3n_mgl": Sampled(1.2, 2)}),  # IV: fails
        assess_station("c", WaterClass.III, {}),  # not assessed
    ]
    group = compliance("zj-dx", stations)
    assert (group.assessed, group.meeting, group.rate) == (2, 1, 50.0)
    assert group.not_assessed == ("c",)
    assert group.stations == ("a", "b", "c")


def test_rate_is_a_percent_to_a_tenth_and_none_without_assessment() -> None:
    stations = [
        assess_station("a", WaterClass.III, CLEAN),
        assess_station("b", WaterClass.III, CLEAN),
        assess_station("c", WaterClass.II, {"do_mgl": Sampled(5.5, 1)}),
    ]
    assert compliance(None, stations).rate == 66.7  # 2 / 3
    empty = compliance("x", [assess_station("d", WaterClass.III, {})])
    assert (empty.assessed, empty.rate, empty.not_assessed) == (0, None, ("d",))


def test_compliance_by_groups_each_station_once() -> None:
    stations = [assess_station(d, WaterClass.III, CLEAN) for d in ("a1", "b1", "a2")]
    stations.append(assess_station("b2", WaterClass.III, {"tp_mgl": Sampled(0.25, 1)}))
    found = compliance_by(stations, lambda d: d[0])
    assert list(found) == ["a", "b"]
    assert (found["a"].assessed, found["a"].meeting, found["a"].rate) == (2, 2, 100.0)
    assert (found["b"].assessed, found["b"].meeting, found["b"].rate) == (2, 1, 50.0)


# --- periods ---------------------------------------------------------------------------------


def test_a_chinese_day_starts_at_16_utc_the_day_before() -> None:
    day = parse_period("day", "2026-06-01", SHANGHAI)
    assert day.start == datetime(2026, 5, 31, 16, tzinfo=UTC)
    assert day.end == datetime(2026, 6, 1, 16, tzinfo=UTC)
    assert day.start.isoformat() == "2026-06-01T00:00:00+08:00"
    assert day.end.isoformat() == "2026-06-02T00:00:00+08:00"
    before = datetime(2026, 5, 31, 15, 59, 59, 999000, tzinfo=UTC)
    assert period_containing("day", before, SHANGHAI).label == "2026-05-31"
    at = datetime(2026, 5, 31, 16, tzinfo=UTC)
    assert period_containing("day", at, SHANGHAI).label == "2026-06-01"
    assert period_containing("day", at, ZoneInfo("UTC")).label == "2026-05-31"


def test_months_are_whole_local_months() -> None:
    feb = parse_period("month", "2026-02", SHANGHAI)
    assert (feb.start, feb.end) == (
        datetime(2026, 1, 31, 16, tzinfo=UTC),
        datetime(2026, 2, 28, 16, tzinfo=UTC),
    )
    assert feb.end - feb.start == timedelta(days=28)
    leap = parse_period("month", "2028-02", SHANGHAI)
    assert leap.end - leap.start == timedelta(days=29)
    dec = parse_period("month", "2026-12", SHANGHAI)
    assert dec.end.isoformat() == "2027-01-01T00:00:00+08:00"
    # A date in the middle of a month (partial days so far) stands for the whole month.
    assert period_of("month", date(2026, 6, 17), SHANGHAI) == parse_period(
        "month", "2026-06", SHANGHAI
    )
    last_moment = datetime(2026, 6, 30, 15, 59, tzinfo=UTC)  # 23:59 on June 30 in China
    assert period_containing("month", last_moment, SHANGHAI).label == "2026-06"
    assert period_containing("month", last_moment + timedelta(minutes=2), SHANGHAI).label == (
        "2026-07"
    )


def test_a_dst_day_is_23_hours() -> None:
    day = parse_period("day", "2026-03-08", ZoneInfo("America/New_York"))
    assert day.end.astimezone(UTC) - day.start.astimezone(UTC) == timedelta(hours=23)
    assert day.start == datetime(2026, 3, 8, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("day", "2026-13-01"),
        ("day", "2026-02-30"),
        ("day", "2026-6-1"),
        ("day", "2026-06"),
        ("month", "2026-06-01"),
        ("month", "1999-12"),
        ("day", "2026-06-01T00:00"),
    ],
)
def test_bad_dates_are_refused(kind: str, text: str) -> None:
    with pytest.raises(ValueError):
        parse_period(kind, text, SHANGHAI)  # type: ignore[arg-type]
    with pytest.raises(QueryRefused) as refused:
        period_asked(kind, text, "Asia/Shanghai", datetime.now(UTC))  # type: ignore[arg-type]
    assert (refused.value.code, refused.value.http_status) == ("bad_date", 422)


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(QueryRefused) as refused:
        period_asked("day", "2026-06-01", "Mars/Olympus", datetime.now(UTC))
    assert refused.value.code == "unknown_tz"


def test_without_a_date_the_current_local_period() -> None:
    now = datetime(2026, 5, 31, 16, 30, tzinfo=UTC)  # 00:30 on June 1 in China
    assert period_asked("day", None, "Asia/Shanghai", now).label == "2026-06-01"
    assert period_asked("month", None, "Asia/Shanghai", now).label == "2026-06"
    assert period_asked("month", None, "UTC", now).label == "2026-05"


# --- the report without InfluxDB -------------------------------------------------------------


def test_the_query_asks_mean_and_count_per_device_over_the_exact_period(
    registry: Registry,
) -> None:
    period = parse_period("day", "2026-06-01", SHANGHAI)
    text = means_influxql(["river-zj-0001", "river-zj-0002"], period)
    assert 'mean("nh3n_mgl") AS "mean_nh3n_mgl"' in text
    assert 'count("ph") AS "count_ph"' in text
    assert "(\"device\" = 'river-zj-0001' OR \"device\" = 'river-zj-0002')" in text
    start = epoch_ns(datetime(2026, 5, 31, 16, tzinfo=UTC))
    assert f"time >= {start} AND time < {start + 86_400 * 10**9}" in text
    assert text.endswith('GROUP BY "device"')
    assert '"device"' not in means_influxql(["x"], period, everyone=True).split("GROUP BY")[0]


def test_rows_become_means_leaving_out_fields_without_samples() -> None:
    rows: list[dict[str, Any]] = [
        {"device": "a", "mean_ph": 7.5, "count_ph": 3, "mean_do_mgl": None, "count_do_mgl": 0},
        {"device": "b", "mean_tp_mgl": 0.1, "count_tp_mgl": None},
        {"mean_ph": 7.0, "count_ph": 1},  # no device tag: not a station's
    ]
    assert sampled_of(rows) == {"a": {"ph": Sampled(7.5, 3)}, "b": {}}


def _river_stations(registry: Registry) -> list[RiverDevice]:
    return [d for d in registry.devices.values() if isinstance(d, RiverDevice)]


def test_scope_follows_the_callers_areas_and_the_river(registry: Registry) -> None:
    everyone = stations_in_scope(registry, None)
    assert {d.id for d in everyone} == {d.id for d in _river_stations(registry)}
    zi = stations_in_scope(registry, None, "zijiang")
    assert zi and all(d.river == "资江" for d in zi)
    assert [d.km for d in zi] == sorted(d.km or 0 for d in zi)  # upstream first
    grid = registry.devices["river-zj-0001"].grid
    mine = stations_in_scope(registry, frozenset({grid}))
    assert [d.id for d in mine] == [
        d.id for d in _river_stations(registry) if d.grid == grid
    ] and "river-zj-0001" in [d.id for d in mine]
    for river in ("nosuch", "shimajiang"):  # unknown, or none of its stations the caller's
        with pytest.raises(QueryRefused) as refused:
            stations_in_scope(registry, frozenset({grid}), river)
        assert (refused.value.code, refused.value.http_status) == ("unknown_river", 404)


def test_report_groups_by_segment_and_county(registry: Registry) -> None:
    stations = [s for s in stations_in_scope(registry, None, "zijiang")]
    in_dx = [s.id for s in stations if s.segment == "zj-dx"]
    assert len(in_dx) >= 3
    bad, good, silent = in_dx[0], in_dx[1], in_dx[2]
    sampled = {
        bad: {**CLEAN, "nh3n_mgl": Sampled(1.2, 4)},
        good: dict(CLEAN),
        "river-zj-0001": dict(CLEAN),
    }
    period = parse_period("month", "2026-06", SHANGHAI)
    now = datetime(2026, 6, 17, tzinfo=UTC)  # half the month so far
    report = build_report(
        registry, stations, period, "Asia/Shanghai", "segment", None, sampled, now
    )
    assert report.period.complete is False
    assert report.period.start == "2026-06-01T00:00:00+08:00"
    dx = next(g for g in report.groups if g.id == "zj-dx")
    assert dx.name == "资江大祥段"
    assert (dx.assessed, dx.meeting, dx.rate) == (2, 1, 50.0)
    assert silent in dx.not_assessed
    assert [g.id for g in report.groups] == [
        s for s in registry.segments if s in {st.segment for st in stations}
    ]
    row = next(s for s in report.stations if s.device == bad)
    body = row.model_dump(by_alias=True)
    assert body["class"] == "IV" and body["meets_target"] is False
    assert body["parameters"]["nh3n_mgl"] == {"mean": 1.2, "class": "IV", "samples": 4}
    assert body["over_target"] == ["nh3n_mgl"] and body["target"] == "III"
    assert body["river"] == "zijiang" and body["segment_name"] == "资江大祥段"
    by_county = build_report(
        registry, stations, period, "Asia/Shanghai", "county", None, sampled, now
    )
    daxiang = registry.device_path(bad).id_at(Level.COUNTY)
    group = next(g for g in by_county.groups if g.id == daxiang)
    assert group.name == registry.areas[daxiang or ""].name
    assert by_county.total.assessed == 3 and by_county.total.meeting == 2
    done = build_report(
        registry,
        stations,
        period,
        "Asia/Shanghai",
        "station",
        None,
        sampled,
        datetime(2026, 7, 1, tzinfo=UTC),
    )
    assert done.groups == [] and done.period.complete is True


def test_the_cli_table_lines_up_chinese_names(registry: Registry) -> None:
    stations = stations_in_scope(registry, None, "zijiang")
    period = parse_period("day", "2026-06-01", SHANGHAI)
    sampled = {stations[0].id: {**CLEAN, "nh3n_mgl": Sampled(1.2, 3)}}
    report = build_report(
        registry, stations, period, "Asia/Shanghai", "segment", None, sampled, datetime.now(UTC)
    )
    lines = report_lines(report)
    header = next(i for i, line in enumerate(lines) if line.startswith("station"))
    rows = lines[header : header + 1 + len(stations)]
    column = rows[0].index("target")
    assert all(width(r[: r.index(" III ") + 1]) == width(rows[0][:column]) for r in rows[1:])
    assert any(stations[0].name in line and "NO 未达标" in line for line in lines)
    assert any("资江大祥段" in line and "%" in line for line in lines)
