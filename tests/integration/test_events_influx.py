"""``/events`` and ``/events/stats`` on a real InfluxDB 1.6, on events we wrote with the ingest
path's encoder: two years of events placed a minute either side of the day boundaries of
Shanghai (16:00 UTC), New York (04:00/05:00 UTC, across DST) and UTC; every count is checked
against one computed here from what was written."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from devices.kinds import Channel, Kind
from devices.payloads import GateEvent, RoadEvent
from devices.registry import Registry
from ingest.api.tokens import Role, TokenStore
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from tests.inprocess import api_over_influx
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

MINE = "road-dx-0001"  # G207, the grid worker's grid
SAME_ROAD = "road-dx-0002"  # G207, the next grid of the same village
OTHER_COUNTY = "road-xs-0001"  # G207 in another county
OTHER_ROAD = "road-sq-0003"  # X017
ROADS = (MINE, SAME_ROAD, OTHER_COUNTY, OTHER_ROAD)
GATE = "gate-sq-0001"
TYPES = ("accident", "wrong_way", "speeding")


@dataclass(frozen=True)
class Written:
    device: str
    kind: Kind
    type: str
    at: datetime  # UTC, whole seconds


def _written() -> list[Written]:
    """Days around New York's spring change (2026-03-08; 2025-03-09) in both years, events a
    minute either side of 00:00, 04:00, 05:00 and 16:00 UTC; fewer in 2025, so the change is
    not 0; and Feb 28/29 2028 with Feb 28 2027 for the leap day."""
    out: list[Written] = []
    i = 0
    days = [date(2026, 3, 4) + timedelta(days=n) for n in range(9)]
    days += [date(2025, 3, 4) + timedelta(days=n) for n in range(9)]
    days += [date(2028, 2, 28), date(2028, 2, 29), date(2027, 2, 28)]
    for day in days:
        for hour in (0, 4, 5, 16):
            for minutes in (-1, 1):
                i += 1
                if day.year in (2025, 2027) and i % 7 == 0:
                    continue
                at = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
                at += timedelta(minutes=minutes)
                out.append(Written(ROADS[i % 4], Kind.ROAD, TYPES[i % 3], at))
                if i % 5 == 0:
                    out.append(Written(GATE, Kind.GATE, "forced_open", at))
    return out


WRITTEN = _written()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: str
    worker: str  # a grid worker of MINE's grid
    registry: Registry


@pytest.fixture(scope="module")
async def api(
    influxdb: ManagedProcess, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    for device in (MINE, SAME_ROAD, OTHER_COUNTY):
        assert getattr(registry.devices[device], "road", None) == "G207"
    assert getattr(registry.devices[OTHER_ROAD], "road", None) == "X017"
    assert registry.devices[MINE].grid != registry.devices[SAME_ROAD].grid
    assert registry.devices[GATE].kind is Kind.GATE
    database = new_database(influxdb.url, "events")
    encoder = LineEncoder(registry, hash_plate=lambda plate: f"h-{plate}")
    lines = []
    for seq, w in enumerate(WRITTEN):
        message: RoadEvent | GateEvent
        if w.kind is Kind.ROAD:
            message = RoadEvent(ts=_ms(w.at), seq=seq, event=w.type, speed_kmh=70.5, lane=1)  # type: ignore[arg-type]
        else:
            message = GateEvent(ts=_ms(w.at), seq=seq, event=w.type, plate="湘E12345")  # type: ignore[arg-type]
        decoded = Decoded(w.kind, Channel.EVENT, registry.devices[w.device], message, _ms(w.at))
        lines.append(encoder.encode(decoded))
    tmp: Path = tmp_path_factory.mktemp("events")
    tokens = TokenStore.load(tmp / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [registry.devices[MINE].grid])
    async with api_over_influx(
        influxdb.url, database, registry, tokens, tmp, "\n".join(lines)
    ) as c:
        yield Api(c, operator, worker, registry)
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


async def get(api: Api, path: str, token: str | None = None, **params: Any) -> httpx.Response:
    return await api.client.get(
        path, params=params, headers={"Authorization": f"Bearer {token or api.operator}"}
    )


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --- /events/stats --------------------------------------------------------------------------


def pct(now: int, earlier: int) -> float | None:
    return None if earlier == 0 else round((now - earlier) * 100 / earlier, 1)


def year_back(day: date) -> date:
    return day.replace(year=day.year - 1, day=28 if (day.month, day.day) == (2, 29) else day.day)


def check_stats(
    body: dict[str, Any],
    chosen: list[Written],
    key: Callable[[datetime], Hashable],
    back: Callable[[Hashable], Hashable],
    label: Callable[[Hashable], str],
    keys: list[Any],
) -> None:
    """The answer's buckets are ``keys`` (labelled ``label``), with counts from ``chosen``."""
    counts = Counter(key(w.at) for w in chosen)
    expected = [
        {
            "start": label(k),
            "count": counts[k],
            "year_earlier": counts[back(k)],
            "change_pct": pct(counts[k], counts[back(k)]),
        }
        for k in keys
    ]
    assert body["buckets"] == expected
    total = sum(counts[k] for k in keys)
    assert body["total"] == total > 0
    earlier = {back(k) for k in keys}
    total_back = sum(n for k, n in counts.items() if k in earlier)
    assert body["total_year_earlier"] == total_back > 0
    assert body["change_pct"] == pct(total, total_back)


@pytest.mark.parametrize("tz", ["Asia/Shanghai", "America/New_York", "UTC"])
async def test_daily_counts_in_each_zone_match_what_was_written(api: Api, tz: str) -> None:
    zone = ZoneInfo(tz)
    r = await get(
        api,
        "/events/stats",
        kind="road",
        start="2026-03-05T12:00:00Z",
        end="2026-03-11T12:00:00Z",
        tz=tz,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tz"], body["bucket"]) == (tz, "day")
    first = datetime(2026, 3, 5, 12, tzinfo=UTC).astimezone(zone).date()
    keys = [first + timedelta(days=n) for n in range(7)]
    chosen = [w for w in WRITTEN if w.kind is Kind.ROAD]
    check_stats(
        body,
        chosen,
        key=lambda at: at.astimezone(zone).date(),
        back=lambda d: year_back(d),  # type: ignore[arg-type]
        label=lambda d: datetime.combine(d, datetime.min.time(), zone).isoformat(),  # type: ignore[arg-type]
        keys=keys,
    )
    if tz == "America/New_York":  # the spring change: -05:00 then -04:00
        labels = [b["start"] for b in body["buckets"]]
        assert "2026-03-08T00:00:00-05:00" in labels and "2026-03-09T00:00:00-04:00" in labels


async def test_filtered_counts_by_type_area_and_road(api: Api) -> None:
    zone = ZoneInfo("Asia/Shanghai")
    keys = [date(2026, 3, 6) + timedelta(days=n) for n in range(4)]
    window = {"start": "2026-03-05T16:00:00Z", "end": "2026-03-09T16:00:00Z"}
    county = api.registry.device_path(MINE).areas[3].id
    cases: list[tuple[dict[str, str], Callable[[Written], bool]]] = [
        ({"type": "accident"}, lambda w: w.type == "accident"),
        ({"road": "G207"}, lambda w: w.device in (MINE, SAME_ROAD, OTHER_COUNTY)),
        (
            {"area": county, "type": "wrong_way"},
            lambda w: w.device in (MINE, SAME_ROAD) and w.type == "wrong_way",
        ),
    ]
    for params, keep in cases:
        r = await get(api, "/events/stats", kind="road", **window, **params)
        assert r.status_code == 200, (params, r.text)
        chosen = [w for w in WRITTEN if w.kind is Kind.ROAD and keep(w)]
        check_stats(
            r.json(),
            chosen,
            key=lambda at: at.astimezone(zone).date(),
            back=lambda d: year_back(d),  # type: ignore[arg-type]
            label=lambda d: f"{d}T00:00:00+08:00",
            keys=keys,
        )
    gates = await get(api, "/events/stats", kind="gate", type="forced_open", **window)
    assert gates.json()["total"] == sum(
        1 for w in WRITTEN if w.kind is Kind.GATE and w.at.astimezone(zone).date() in keys
    )


async def test_months_hours_and_the_leap_day(api: Api) -> None:
    zone = ZoneInfo("Asia/Shanghai")
    road = [w for w in WRITTEN if w.kind is Kind.ROAD]
    months = await get(
        api,
        "/events/stats",
        kind="road",
        bucket="month",
        start="2026-01-01T00:00:00+08:00",
        end="2026-05-01T00:00:00+08:00",
    )
    assert months.status_code == 200, months.text
    check_stats(
        months.json(),
        road,
        key=lambda at: at.astimezone(zone).strftime("%Y-%m"),
        back=lambda k: f"{int(str(k)[:4]) - 1}{str(k)[4:]}",
        label=lambda k: f"{k}-01T00:00:00+08:00",
        keys=["2026-01", "2026-02", "2026-03", "2026-04"],
    )
    hours = await get(
        api,
        "/events/stats",
        kind="road",
        bucket="hour",
        start="2026-03-06T23:00:00+08:00",
        end="2026-03-07T02:00:00+08:00",
    )
    assert [(b["start"], b["count"]) for b in hours.json()["buckets"]] == [
        ("2026-03-06T23:00:00+08:00", 1),
        ("2026-03-07T00:00:00+08:00", 1),  # 16:01 UTC
        ("2026-03-07T01:00:00+08:00", 0),
    ]
    leap = await get(
        api,
        "/events/stats",
        kind="road",
        start="2028-02-28T00:00:00Z",
        end="2028-03-01T00:00:00Z",
        tz="UTC",
    )
    by_day = Counter(w.at.date() for w in road)
    assert [(b["start"], b["count"], b["year_earlier"]) for b in leap.json()["buckets"]] == [
        ("2028-02-28T00:00:00+00:00", by_day[date(2028, 2, 28)], by_day[date(2027, 2, 28)]),
        ("2028-02-29T00:00:00+00:00", by_day[date(2028, 2, 29)], by_day[date(2027, 2, 28)]),
    ]
    assert leap.json()["total_year_earlier"] == by_day[date(2027, 2, 28)]  # counted once


async def test_the_largest_answer_is_one_request_that_adds_up(api: Api) -> None:
    # 397 month buckets: 795 count statements in one POST.
    started = time.monotonic()
    r = await get(
        api,
        "/events/stats",
        kind="road",
        bucket="month",
        start="2026-01-01T00:00:00+08:00",
        end="2059-01-01T00:00:00+08:00",
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["buckets"]) == 396
    zone = ZoneInfo("Asia/Shanghai")
    road = [w for w in WRITTEN if w.kind is Kind.ROAD]
    assert body["total"] == sum(1 for w in road if w.at.astimezone(zone).year >= 2026)
    # A year earlier is 2025-01 .. 2058-01: everything written.
    assert body["total_year_earlier"] == len(road)
    assert elapsed < 10, elapsed


# --- /events --------------------------------------------------------------------------------

START, END = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 14, tzinfo=UTC)


def listed(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["time"], e["device"], e["type"]) for e in body["events"]]


def expect(keep: Callable[[Written], bool], kind: Kind = Kind.ROAD) -> list[tuple[str, str, str]]:
    chosen = [w for w in WRITTEN if w.kind is kind and START <= w.at < END and keep(w)]
    chosen.sort(key=lambda w: (w.at, w.device), reverse=True)
    return [(iso(w.at), w.device, w.type) for w in chosen]


def newest_first(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    # Events at the same instant on two devices come in either order.
    return sorted(rows, key=lambda row: (row[0], row[1]), reverse=True)


async def test_events_filters(api: Api) -> None:
    window = {"start": iso(START), "end": iso(END)}
    r = await get(api, "/events", kind="road", **window, limit=10_000)
    assert r.status_code == 200, r.text
    body = r.json()
    assert newest_first(listed(body)) == listed(body) and body["truncated"] is False
    assert newest_first(listed(body)) == expect(lambda w: True)
    first = body["events"][0]
    assert first["kind"] == "road" and set(first["area"]) == {
        "grid",
        "village",
        "township",
        "county",
    }
    assert first["fields"]["speed_kmh"] == 70.5 and first["fields"]["lane"] == 1
    for params, keep in [
        ({"type": "accident"}, lambda w: w.type == "accident"),
        ({"road": "G207"}, lambda w: w.device in (MINE, SAME_ROAD, OTHER_COUNTY)),
        ({"area": api.registry.devices[SAME_ROAD].grid}, lambda w: w.device == SAME_ROAD),
        (
            {"device": OTHER_ROAD, "type": "speeding"},
            lambda w: w.device == OTHER_ROAD and w.type == "speeding",
        ),
    ]:
        r = await get(api, "/events", kind="road", **window, **params)
        assert newest_first(listed(r.json())) == expect(keep), params
    gates = await get(api, "/events", kind="gate", **window)
    assert newest_first(listed(gates.json())) == expect(lambda w: True, Kind.GATE)
    assert gates.json()["events"][0]["fields"]["plate_hash"] == "h-湘E12345"
    limited = await get(api, "/events", kind="road", **window, limit=3)
    assert len(limited.json()["events"]) == 3 and limited.json()["truncated"] is True
    too_long = await get(api, "/events", kind="road", start=iso(START), end="2026-04-05T00:00:00Z")
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "range_too_long"


async def test_a_grid_worker_sees_only_its_devices(api: Api) -> None:
    window = {"start": iso(START), "end": iso(END)}
    r = await get(api, "/events", api.worker, kind="road", **window)
    assert r.status_code == 200
    assert newest_first(listed(r.json())) == expect(lambda w: w.device == MINE)
    on_road = await get(api, "/events", api.worker, kind="road", road="G207", **window)
    assert listed(on_road.json()) == listed(r.json())
    assert (await get(api, "/events", api.worker, kind="gate", **window)).json()["events"] == []
    for params in ({"device": SAME_ROAD}, {"area": api.registry.devices[SAME_ROAD].grid}):
        hidden = await get(api, "/events", api.worker, kind="road", **window, **params)
        assert hidden.status_code == 404, params
    elsewhere = await get(api, "/events", api.worker, kind="road", road="X017", **window)
    assert elsewhere.status_code == 422 and elsewhere.json()["error"]["code"] == "unknown_road"
    stats = await get(
        api,
        "/events/stats",
        api.worker,
        kind="road",
        start="2026-03-05T16:00:00Z",
        end="2026-03-09T16:00:00Z",
    )
    zone = ZoneInfo("Asia/Shanghai")
    keys = {date(2026, 3, 6) + timedelta(days=n) for n in range(4)}
    mine = [w for w in WRITTEN if w.device == MINE and w.at.astimezone(zone).date() in keys]
    assert stats.json()["total"] == len(mine)
