"""Events as data (ingest/api/eventquery.py, events.py): local calendar buckets computed by
hand, year-earlier mapping, the InfluxQL built, refusals, and the routes on a stand-in InfluxDB."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import httpx
import pytest
from aiohttp import web

from devices.kinds import Kind
from devices.registry import parse_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.eventquery import (
    MAX_BUCKETS,
    Bucket,
    EventQueryRefused,
    Scope,
    buckets,
    change_pct,
    count_statement,
    counts_of,
    event_fields,
    event_types,
    events_influxql,
    stats_statements,
    where_scope,
    year_back,
    zone,
)
from ingest.api.tokens import Role, TokenStore
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def hours(bucket: Bucket) -> float:
    # Real hours: aware datetimes in one zone subtract as wall clocks, so through UTC.
    return (bucket.end.astimezone(UTC) - bucket.start.astimezone(UTC)).total_seconds() / 3600


# --- buckets --------------------------------------------------------------------------------


def test_a_shanghai_day_starts_at_16_utc_the_day_before() -> None:
    days = buckets(utc(2026, 11, 19, 0), utc(2026, 11, 20, 0), SHANGHAI, "day")
    # 00:00Z on the 19th is 08:00 on the 19th in Shanghai; 23:59Z on the 19th is the 20th.
    assert [b.start.astimezone(UTC) for b in days] == [utc(2026, 11, 18, 16), utc(2026, 11, 19, 16)]
    assert [b.start.isoformat() for b in days] == [
        "2026-11-19T00:00:00+08:00",
        "2026-11-20T00:00:00+08:00",
    ]
    assert days[0].end.astimezone(UTC) == utc(2026, 11, 19, 16)
    assert days[0].earlier_start.astimezone(UTC) == utc(2025, 11, 18, 16)
    assert days[0].earlier_end.astimezone(UTC) == utc(2025, 11, 19, 16)


def test_a_new_york_day_across_dst_is_23_or_25_hours() -> None:
    spring = buckets(utc(2026, 3, 7, 12), utc(2026, 3, 9, 12), NEW_YORK, "day")
    assert [b.start.isoformat() for b in spring] == [
        "2026-03-07T00:00:00-05:00",
        "2026-03-08T00:00:00-05:00",  # clocks go 02:00 → 03:00 this day
        "2026-03-09T00:00:00-04:00",
    ]
    assert [hours(b) for b in spring] == [24, 23, 24]
    autumn = buckets(utc(2026, 11, 1, 12), utc(2026, 11, 1, 13), NEW_YORK, "day")
    assert [hours(b) for b in autumn] == [25]
    assert autumn[0].start.astimezone(UTC) == utc(2026, 11, 1, 4)
    assert autumn[0].end.astimezone(UTC) == utc(2026, 11, 2, 5)
    # A year earlier is 2025-11-01, an ordinary EDT day (that year's change was on the 2nd).
    assert autumn[0].earlier_start.astimezone(UTC) == utc(2025, 11, 1, 4)
    assert autumn[0].earlier_end.astimezone(UTC) == utc(2025, 11, 2, 4)


def test_hour_buckets_through_the_repeated_hour_are_real_hours() -> None:
    local_day = buckets(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), NEW_YORK, "hour")
    assert len(local_day) == 25
    assert all(hours(b) == 1 for b in local_day)
    labels = [b.start.isoformat() for b in local_day[1:3]]
    assert labels == ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
    # Both 01:00s map to the one 01:00 a year earlier; each year-earlier bucket is one hour.
    assert local_day[1].earlier_start == local_day[2].earlier_start
    assert local_day[1].earlier_start.astimezone(UTC) == utc(2025, 11, 1, 5)
    assert all(
        (b.earlier_end.astimezone(UTC) - b.earlier_start.astimezone(UTC)) == timedelta(hours=1)
        for b in local_day
    )


def test_hour_buckets_in_a_zone_with_a_quarter_hour_offset() -> None:
    # Kathmandu is +05:45: local hours begin at :15 UTC.
    found = buckets(utc(2026, 6, 1, 0, 20), utc(2026, 6, 1, 2), ZoneInfo("Asia/Kathmandu"), "hour")
    assert [b.start.astimezone(UTC) for b in found] == [
        utc(2026, 6, 1, 0, 15),
        utc(2026, 6, 1, 1, 15),
    ]


def test_month_buckets_start_at_local_month_starts() -> None:
    months = buckets(utc(2027, 12, 31, 16), utc(2028, 3, 5), SHANGHAI, "month")
    assert [b.start.isoformat() for b in months] == [
        "2028-01-01T00:00:00+08:00",  # 2027-12-31T16:00Z is already January in Shanghai
        "2028-02-01T00:00:00+08:00",
        "2028-03-01T00:00:00+08:00",
    ]
    assert months[0].start.astimezone(UTC) == utc(2027, 12, 31, 16)
    assert [hours(b) / 24 for b in months] == [31, 29, 31]
    assert months[1].earlier_start.astimezone(UTC) == utc(2027, 1, 31, 16)
    assert months[1].earlier_end.astimezone(UTC) == utc(2027, 2, 28, 16)  # 28 days in 2027


def test_year_earlier_of_feb_29_is_feb_28() -> None:
    assert year_back(date(2028, 2, 29)) == date(2027, 2, 28)
    assert year_back(date(2028, 3, 1)) == date(2027, 3, 1)
    leap = buckets(utc(2028, 2, 28, 16), utc(2028, 2, 29, 16), SHANGHAI, "day")
    assert [b.start.date() for b in leap] == [date(2028, 2, 29)]
    assert leap[0].earlier_start.astimezone(UTC) == utc(2027, 2, 27, 16)  # Feb 28, 2027 local
    assert leap[0].earlier_end.astimezone(UTC) == utc(2027, 2, 28, 16)  # Mar 1, 2027 local
    # Feb 28, 2028 ends where Feb 29 begins; a year earlier it is still all of Feb 28, 2027.
    both = buckets(utc(2028, 2, 28, 0), utc(2028, 3, 1, 0), UTC_ZONE, "day")
    assert [(b.earlier_start.date(), b.earlier_end.date()) for b in both] == [
        (date(2027, 2, 28), date(2027, 3, 1)),
        (date(2027, 2, 28), date(2027, 3, 1)),
    ]
    hour = buckets(utc(2028, 2, 29, 2), utc(2028, 2, 29, 3), SHANGHAI, "hour")
    assert hour[0].earlier_start.isoformat() == "2027-02-28T10:00:00+08:00"


def test_at_most_400_buckets() -> None:
    start = utc(2026, 1, 1)
    assert len(buckets(start, start + timedelta(hours=MAX_BUCKETS), UTC_ZONE, "hour")) == 400
    with pytest.raises(EventQueryRefused) as refused:
        buckets(start, start + timedelta(hours=MAX_BUCKETS + 1), UTC_ZONE, "hour")
    assert refused.value.code == "too_many_buckets" and refused.value.http_status == 422
    assert len(buckets(start, start + timedelta(days=16), SHANGHAI, "hour")) <= 400
    assert len(buckets(utc(2040, 1, 1), utc(2073, 1, 1), SHANGHAI, "month")) == 397  # 33 years
    with pytest.raises(EventQueryRefused):
        buckets(utc(2026, 1, 1), utc(2027, 3, 1), SHANGHAI, "day")


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus", "../../etc/passwd", "", "x" * 65, "Asia/", "Asia", "zone.tab", "UTC\x00"],
)
def test_an_unknown_zone_is_refused(name: str) -> None:
    with pytest.raises(EventQueryRefused) as refused:
        zone(name)
    assert refused.value.code == "unknown_tz" and refused.value.http_status == 422


def test_change_pct() -> None:
    assert change_pct(9, 10) == -10.0
    assert change_pct(3, 0) is None
    assert change_pct(0, 3) == -100.0
    assert change_pct(2, 3) == -33.3


# --- InfluxQL -------------------------------------------------------------------------------

AREAS = [
    *SMALL_AREAS,
    {"id": "v2", "name": "村", "level": "village", "parent": "t"},
    {"id": "g2", "name": "网格二", "level": "grid", "parent": "v2"},
]
ROAD = SMALL_DEVICES[2]
DEVICES = [
    *SMALL_DEVICES,
    {**ROAD, "id": "d2", "grid": "g2"},  # also on S219, in the other grid
    {**ROAD, "id": "d3", "grid": "g2", "road": "X'017"},
    {**SMALL_DEVICES[1], "id": "g9", "grid": "g2"},
]
REGISTRY = parse_registry({"areas": AREAS, "devices": DEVICES})
T0 = utc(2026, 11, 19)
T1 = utc(2026, 11, 20)


def where(allowed: frozenset[str] | None = None, **scope: Any) -> str:
    return where_scope(Scope(**{"kind": Kind.ROAD, **scope}), REGISTRY, allowed)


def test_event_names_and_fields_come_from_the_schemas() -> None:
    assert "accident" in event_types(Kind.ROAD) and "forced_open" in event_types(Kind.GATE)
    assert event_types(Kind.RIVER) == ()
    assert event_fields(Kind.ROAD) == ("confidence", "lane", "plate_hash", "seq", "speed_kmh")
    assert event_fields(Kind.GATE) == ("direction", "method", "plate_hash", "seq")


def test_the_events_query_is_exact() -> None:
    scope = Scope(Kind.ROAD, "accident")
    text = events_influxql(scope, where_scope(scope, REGISTRY, None), T0, T1, 50)
    assert text == (
        'SELECT "device", "event", "grid", "village", "township", "county", "confidence", '
        '"lane", "plate_hash", "seq", "speed_kmh", "n" FROM "road_event" '
        "WHERE \"event\" = 'accident' AND time >= 1795046400000000000 "
        "AND time < 1795132800000000000 ORDER BY time DESC LIMIT 50"
    )


def test_conditions_for_area_road_device_and_a_grid_worker() -> None:
    assert where() == ""
    assert where(area="v2") == "\"village\" = 'v2'"
    assert where(area="c") == "(\"county\" = 'co')"  # the city: its counties
    assert where(road="S219") == "(\"device\" = 'd1' OR \"device\" = 'd2')"
    assert where(road="X'017") == "(\"device\" = 'd3')"  # the registry's string, quoted
    assert where(device="d2", event_type="wrong_way") == (
        "\"event\" = 'wrong_way' AND \"device\" = 'd2'"
    )
    mine = frozenset({"g", "v"})
    assert where(mine) == "(\"grid\" = 'g' OR \"village\" = 'v')"
    # A road seen by a grid worker is only its own cameras on that road.
    assert where(mine, road="S219") == (
        "(\"device\" = 'd1') AND (\"grid\" = 'g' OR \"village\" = 'v')"
    )
    nothing = where(frozenset({"gone"}))
    assert nothing == "(\"device\" = '' AND \"device\" != '')"


HOSTILE = ["accident' OR 1=1 --", 'x" FROM gate; DROP DATABASE citysense', "accident\n", "ACCIDENT"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_type_or_road_is_refused_and_never_queried(value: str) -> None:
    with pytest.raises(EventQueryRefused) as refused:
        where(event_type=value)
    assert refused.value.code == "unknown_type" and refused.value.http_status == 422
    with pytest.raises(EventQueryRefused) as refused:
        where(road=value)
    assert refused.value.code == "unknown_road" and refused.value.http_status == 422


def test_refusals_for_names_and_visibility() -> None:
    def code(allowed: frozenset[str] | None = None, **scope: Any) -> str:
        with pytest.raises(EventQueryRefused) as refused:
            where(allowed, **scope)
        return f"{refused.value.code} {refused.value.http_status}"

    assert code(device="nope") == "unknown_device 404"
    assert code(frozenset({"g"}), device="d2") == "unknown_device 404"  # not hers: as unknown
    assert code(device="g1") == "device_kind_mismatch 422"
    assert code(area="nope") == "unknown_area 404"
    assert code(frozenset({"g"}), area="v2") == "unknown_area 404"
    assert code(frozenset({"g"}), road="X'017") == "unknown_road 422"  # only d3, elsewhere
    assert code(event_type="forced_open") == "unknown_type 422"  # a gate event, not a road's
    with pytest.raises(EventQueryRefused) as refused:
        where_scope(Scope(Kind.GATE, road="S219"), REGISTRY, None)
    assert refused.value.code == "unknown_road"  # roads are for road cameras only


def test_events_range_and_window_refusals() -> None:
    scope = Scope(Kind.ROAD)
    with pytest.raises(EventQueryRefused) as refused:
        events_influxql(scope, "", T0, T0 + timedelta(days=31, seconds=1), 10)
    assert refused.value.code == "range_too_long" and refused.value.http_status == 400
    events_influxql(scope, "", T0, T0 + timedelta(days=31), 10)
    with pytest.raises(EventQueryRefused) as refused:
        events_influxql(scope, "", utc(1999, 1, 1), T0, 10)
    assert refused.value.code == "bad_window"
    with pytest.raises(EventQueryRefused):
        events_influxql(scope, "", T1, T0, 10)


def test_stats_statements_count_each_bucket_then_a_year_earlier_then_the_whole() -> None:
    found = buckets(T0, T1, SHANGHAI, "day")
    statements = stats_statements(Kind.ROAD, "\"event\" = 'accident'", found)
    assert len(statements) == 2 * len(found) + 1
    assert statements[0] == (
        'SELECT count("n") FROM "road_event" WHERE "event" = \'accident\' AND '
        f"time >= {int(utc(2026, 11, 18, 16).timestamp()) * 10**9} AND "
        f"time < {int(utc(2026, 11, 19, 16).timestamp()) * 10**9}"
    )
    assert statements[-1] == count_statement(
        Kind.ROAD, "\"event\" = 'accident'", utc(2025, 11, 18, 16), utc(2025, 11, 20, 16)
    )
    assert count_statement(Kind.GATE, "", T0, T1).startswith(
        'SELECT count("n") FROM "gate_event" WHERE time >= '
    )


def test_counts_of_reads_each_statement() -> None:
    answer = {
        "results": [
            {"statement_id": 0, "series": [{"columns": ["time", "count"], "values": [[0, 4]]}]},
            {"statement_id": 1},
            {"statement_id": 2, "series": [{"columns": ["time", "count"], "values": [[0, 7]]}]},
        ]
    }
    assert counts_of(answer, 3) == [4, 0, 7]


# --- the routes, on a stand-in InfluxDB -----------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], list[str]]]:
    """The app around REGISTRY; InfluxDB answers every count with 3 and records each query."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        q = str(form["q"])
        seen.append(q)
        statements = q.split(";\n")
        if statements[0].startswith("SELECT count"):
            block = {"name": "road_event", "columns": ["time", "count"], "values": [[0, 3]]}
            results = [{"statement_id": i, "series": [block]} for i in range(len(statements))]
            return web.json_response({"results": results})
        row = [1795046400123, "d1", "accident", "g", "v", "t", "co", 0.9, 2, None, 5, 80.5, 1]
        columns = ["time", "device", "event", "grid", "village", "township", "county"]
        columns += ["confidence", "lane", "plate_hash", "seq", "speed_kmh", "n"]
        series = [{"name": "road_event", "columns": columns, "values": [row]}]
        return web.json_response({"results": [{"statement_id": 0, "series": series}]})

    app = web.Application()
    app.router.add_post("/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, ["g"])
    auth = {"operator": operator, "worker": worker}
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path, influx_url=f"http://127.0.0.1:{port}"),
            registry=REGISTRY,
            rules=parse_rules({"rules": []}, "<test>", REGISTRY),
            rules_path=tmp_path / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp_path)),
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c, auth, seen
    await runner.cleanup()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


WINDOW = {"start": "2026-11-19T00:00:00Z", "end": "2026-11-20T00:00:00Z"}


async def test_events_route_answers_rows_with_area_and_fields(
    api: tuple[httpx.AsyncClient, dict[str, str], list[str]],
) -> None:
    c, auth, seen = api
    r = await c.get(
        "/events",
        params={"kind": "road", "type": "accident", **WINDOW},
        headers=bearer(auth["operator"]),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["events"] == [
        {
            "time": "2026-11-19T00:00:00.123Z",
            "device": "d1",
            "kind": "road",
            "type": "accident",
            "area": {"grid": "g", "village": "v", "township": "t", "county": "co"},
            "fields": {"confidence": 0.9, "lane": 2, "seq": 5, "speed_kmh": 80.5},
        }
    ]
    assert body["truncated"] is False
    assert "\"event\" = 'accident'" in seen[-1]


async def test_a_grid_workers_queries_carry_its_areas(
    api: tuple[httpx.AsyncClient, dict[str, str], list[str]],
) -> None:
    c, auth, seen = api
    r = await c.get("/events", params={"kind": "road", **WINDOW}, headers=bearer(auth["worker"]))
    assert r.status_code == 200
    assert "WHERE (\"grid\" = 'g') AND time >=" in seen[-1]
    r = await c.get(
        "/events", params={"kind": "road", "device": "d2", **WINDOW}, headers=bearer(auth["worker"])
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_device"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"type": "accident' OR ''='"}, 422, "unknown_type"),
        ({"road": "S219' OR device =~ /.*/"}, 422, "unknown_road"),
        ({"kind": "river"}, 422, "invalid_request"),
        ({"tz": "Nowhere/City"}, 422, "unknown_tz"),
        ({"bucket": "week"}, 422, "invalid_request"),
        ({"bucket": "hour", "end": "2026-12-19T00:00:00Z"}, 422, "too_many_buckets"),
        ({"start": "2026-11-19T00:00:00"}, 422, "bad_window"),
    ],
)
async def test_stats_refusals_reach_no_query(
    api: tuple[httpx.AsyncClient, dict[str, str], list[str]],
    params: dict[str, str],
    status: int,
    code: str,
) -> None:
    c, auth, seen = api
    query = {"kind": "road", **WINDOW, **params}
    r = await c.get("/events/stats", params=query, headers=bearer(auth["operator"]))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert seen == []


async def test_stats_route_shapes_buckets_in_the_zone(
    api: tuple[httpx.AsyncClient, dict[str, str], list[str]],
) -> None:
    c, auth, seen = api
    r = await c.get(
        "/events/stats",
        params={"kind": "road", "type": "accident", "tz": "America/New_York", **WINDOW},
        headers=bearer(auth["operator"]),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tz"] == "America/New_York" and body["bucket"] == "day"
    assert [b["start"] for b in body["buckets"]] == [
        "2026-11-18T00:00:00-05:00",
        "2026-11-19T00:00:00-05:00",
    ]
    assert body["buckets"][0] == {
        "start": "2026-11-18T00:00:00-05:00",
        "count": 3,
        "year_earlier": 3,
        "change_pct": 0.0,
    }
    assert (body["total"], body["total_year_earlier"], body["change_pct"]) == (6, 3, 100.0)
    assert len(seen) == 1 and len(seen[0].split(";\n")) == 5  # one request: 2 + 2 + 1
    assert all(re.search(r"time >= \d+ AND time < \d+$", s) for s in seen[0].split(";\n"))
