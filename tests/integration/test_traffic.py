"""Congestion per road segment and ``GET /traffic`` on the real stack: camera speeds and
accidents published to Mosquitto and stored by a running service, accidents of a year earlier
written into the same InfluxDB; the ``congestion`` series, the API and the traffic page in
Chromium are each compared with what the test computes from what it sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import httpx
import pytest
from playwright.async_api import Browser, expect

from devices.kinds import Channel, Kind
from devices.payloads import RoadEvent
from devices.registry import Registry, RoadDevice
from ingest.api.tokens import Role, TokenStore, tokens_path
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from rules.congestion import LEVEL_NAMES, congestion_index, level_of
from tests.integration.test_ingest_e2e import make_settings, publish, running_service, settle
from tests.integration.test_web import ARTIFACTS, signed_in
from tests.integration.test_web import browser as browser  # the Chromium fixture, here too
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
MINE, SAME_ROAD = "road-dx-0001", "road-dx-0002"  # G207 Daxiang (g207-dx), limits 70 and 80
STALE, FRESH = "road-sq-0001", "road-sq-0002"  # G320 Shuangqing (g320-sq), limits 60 and 70
X017 = "road-sq-0003"  # X017 Shuangqing (x017-sq), limit 50
OLD_ONLY = "road-sq-0004"  # Y031 (y031-dtq): its only speed is 20 minutes old
S = 1000
MIN = 60 * S


@dataclass(frozen=True)
class Sent:
    device: str
    ts_ms: int
    speed: float | None


@dataclass(frozen=True)
class Accident:
    device: str
    at: datetime  # aware
    type: str = "accident"


def year_back(day: date) -> date:
    return day.replace(year=day.year - 1, day=28 if (day.month, day.day) == (2, 29) else day.day)


def local(day: date, hour: int, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)


@dataclass
class Stack:
    url: str
    influx_url: str
    database: str
    registry: Registry
    operator: str
    worker: str  # bound to MINE's grid
    worker_grid: str
    now_ms: int
    speeds: list[Sent]
    accidents: list[Accident]  # published (this month) and written (a year earlier)
    today: date  # the local day when the test wrote


def plan_speeds(now: int) -> list[Sent]:
    return [
        Sent(MINE, now - 90 * S, 35.0),
        Sent(SAME_ROAD, now - 60 * S, 21.0),  # g207-dx: (35 + 21) / 2 = 28 of 70 → 8.86
        Sent(STALE, now - 4 * MIN, 20.0),  # more than 2 × 60 s before FRESH: left out
        Sent(FRESH, now - 30 * S, 45.0),  # g320-sq: 45 of 60 → 3.0
        Sent(X017, now - 2 * MIN, 50.0),
        Sent(X017, now - 20 * S, 30.0),  # x017-sq: 30 of 50 → 5.2
        Sent(X017, now - 10 * S, None),  # no vehicle seen: no speed, no point
        Sent(OLD_ONLY, now - 20 * MIN, 10.0),  # a point, but older than 15 min
    ]


def plan_accidents(now: datetime, today: date) -> tuple[list[Accident], list[Accident]]:
    """(published now: this month, within 30 days), (written: a year earlier)."""
    this_month = [
        Accident(MINE, now - timedelta(seconds=40)),
        Accident(MINE, now - timedelta(seconds=30)),
        Accident(X017, now - timedelta(seconds=20)),
        Accident(X017, now - timedelta(seconds=10), "wrong_way"),  # not an accident
    ]
    if today.day > 1:  # earlier this month: counted in the month, not today
        this_month.append(Accident(X017, local(today.replace(day=1), 9, 0)))
    back = year_back(today)
    earlier = [
        Accident(MINE, local(back, 0, 1)),
        Accident(X017, local(back, 23, 59)),
        Accident(X017, local(back, 12, 0), "speeding"),
        Accident(MINE, local(back - timedelta(days=1), 23, 59)),  # the day before
        Accident(MINE, local(back + timedelta(days=1), 0, 1)),  # the day after
        Accident(X017, local(back.replace(day=1), 0, 1)),  # the month so far a year earlier
        Accident(X017, local(back.replace(day=1) - timedelta(days=1), 23, 59)),  # month before
    ]
    return this_month, earlier


async def _write(influx_url: str, database: str, lines: list[str]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{influx_url}/write",
            params={"db": database, "precision": "ms"},
            data="\n".join(lines).encode(),
        ) as resp,
    ):
        assert resp.status == 204, await resp.text()


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Any, influxdb: Any, registry: Registry
) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("traffic")
    # Not across a local midnight: "today" must be one day from writing to reading.
    clock = datetime.now(SHANGHAI)
    if (clock + timedelta(minutes=1)).date() != clock.date():
        await asyncio.sleep(61 - clock.second)
    database = new_database(influxdb.url, "traffic")
    settings = make_settings(
        tmp,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        max_age_s=40 * 86400,  # the month's first day may be 31 days back
    )
    tokens = TokenStore.load(tokens_path(settings))
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    grid = registry.devices[MINE].grid
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [grid])
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp()) * S
    today = now.astimezone(SHANGHAI).date()
    speeds = plan_speeds(now_ms)
    this_month, earlier = plan_accidents(now, today)
    encoder = LineEncoder(registry, hash_plate=lambda plate: f"h-{plate}")
    await _write(
        influxdb.url,
        database,
        [
            encoder.encode(
                Decoded(Kind.ROAD, Channel.EVENT, registry.devices[a.device], message, ms)
            )
            for i, a in enumerate(earlier)
            for ms in [int(a.at.timestamp() * S)]
            for message in [RoadEvent(ts=ms, seq=i, event=a.type)]  # type: ignore[arg-type]
        ],
    )
    seqs: dict[str, int] = {}

    def seq(device: str) -> int:
        seqs[device] = seqs.get(device, 0) + 1
        return seqs[device]

    messages: list[tuple[str, bytes]] = []
    for a in sorted(this_month, key=lambda a: a.at):
        body = {"ts": int(a.at.timestamp() * S), "seq": seq(a.device), "event": a.type}
        messages.append((f"iot/road/{a.device}/event", json.dumps(body).encode()))
    for s in speeds:
        body = {"ts": s.ts_ms, "seq": seq(s.device), "vehicle_count": 4 if s.speed else 0}
        if s.speed is not None:
            body["avg_speed_kmh"] = s.speed
        messages.append((f"iot/road/{s.device}/telemetry", json.dumps(body).encode()))
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, messages)
        await settle(state, len(messages))
        assert state.ledger.dead_lettered == 0, state.ledger.summary(0)
        assert state.api_url is not None
        yield Stack(
            state.api_url,
            influxdb.url,
            database,
            registry,
            operator,
            worker,
            grid,
            now_ms,
            speeds,
            [*this_month, *earlier],
            today,
        )
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


def free_flow(registry: Registry, segment: str) -> float:
    return min(
        d.speed_limit_kmh
        for d in registry.devices.values()
        if isinstance(d, RoadDevice) and d.segment == segment
    )


def expected_points(stack: Stack) -> dict[str, list[tuple[int, float, float, int]]]:
    """Per segment, the points the test expects: (time, index, speed, cameras), replaying what
    it sent in order by its own rule (cameras within 2 report intervals of the newest)."""
    segment_of = {
        d.id: d.segment for d in stack.registry.devices.values() if isinstance(d, RoadDevice)
    }
    newest: dict[str, dict[str, tuple[int, float]]] = {}
    points: dict[str, list[tuple[int, float, float, int]]] = {}
    for s in stack.speeds:
        segment = segment_of[s.device]
        if s.speed is None or segment is None:
            continue
        cams = newest.setdefault(segment, {})
        cams[s.device] = (s.ts_ms, s.speed)
        top = max(ts for ts, _ in cams.values())
        recent = [v for ts, v in cams.values() if top - ts <= 120 * S]
        speed = sum(recent) / len(recent)
        index = congestion_index(speed, free_flow(stack.registry, segment))
        points.setdefault(segment, []).append((top, index, speed, len(recent)))
    return points


async def test_the_congestion_series_holds_a_point_per_speed(stack: Stack) -> None:
    series = influx_query(
        stack.influx_url, stack.database, "SELECT * FROM congestion GROUP BY *", epoch="ms"
    )
    stored: dict[str, list[tuple[int, float, float, int]]] = {}
    for s in series:
        columns = s["columns"]
        for values in s["values"]:
            row = dict(zip(columns, values, strict=True))
            assert row["free_flow_kmh"] == free_flow(stack.registry, s["tags"]["segment"])
            stored.setdefault(s["tags"]["segment"], []).append(
                (row["time"], row["index"], pytest.approx(row["speed_kmh"]), row["cameras"])
            )
    assert stored == expected_points(stack)
    # The figures by hand, so the test's replay cannot share a mistake with the service.
    assert stored["g207-dx"][-1][1:] == (8.86, 28.0, 2)
    assert stored["g320-sq"][-1][1:] == (3.0, 45.0, 1)
    assert stored["x017-sq"][-1][1:] == (5.2, 30.0, 1)
    roads = {s["tags"]["segment"]: s["tags"]["road"] for s in series}
    assert roads["g207-dx"] == "g207" and roads["x017-sq"] == "x017"


async def get(stack: Stack, token: str, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
        r = await client.get(
            "/traffic", params=params, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_traffic_shows_each_segments_newest_index(stack: Stack) -> None:
    body = await get(stack, stack.operator)
    registry = stack.registry
    order = [(r.id, s.id) for r in registry.roads.values() for s in r.segments]
    assert [(s["road"], s["segment"]) for s in body["segments"]] == order
    by_id = {s["segment"]: s for s in body["segments"]}
    expected = {seg: pts[-1] for seg, pts in expected_points(stack).items()}
    del expected["y031-dtq"]  # 20 minutes old: no index now
    for segment, item in by_id.items():
        if segment not in expected:
            assert (item["index"], item["level"], item["speed_kmh"]) == (None, None, None)
            continue
        ts, index, speed, cameras = expected[segment]
        level = level_of(index)
        assert item["index"] == index and item["cameras"] == cameras
        assert item["speed_kmh"] == pytest.approx(speed)
        assert (item["level"], item["level_zh"], item["level_en"]) == (level, *LEVEL_NAMES[level])
        assert item["time"] == datetime.fromtimestamp(ts / S, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        )
    g207 = by_id["g207-dx"]
    assert (g207["index"], g207["level"], g207["level_zh"]) == (8.86, "severe", "严重拥堵")
    assert (g207["road_name"], g207["from_km"], g207["to_km"]) == ("G207", 0, 20)
    assert g207["free_flow_kmh"] == 70
    assert by_id["g320-sq"]["level"] == "basically_free"
    assert by_id["x017-sq"]["level"] == "light"
    assert set(expected) == {"g207-dx", "g320-sq", "x017-sq"}


def accident_counts(stack: Stack, devices: set[str] | None = None) -> dict[str, int]:
    """Counted here from what was sent: today, the same day a year earlier, the month so far
    and its days a year earlier."""
    today, back = stack.today, year_back(stack.today)
    chosen = [
        a.at.astimezone(SHANGHAI).date()
        for a in stack.accidents
        if a.type == "accident" and (devices is None or a.device in devices)
    ]
    return {
        "today": sum(1 for d in chosen if d == today),
        "today_back": sum(1 for d in chosen if d == back),
        "month": sum(1 for d in chosen if d.replace(day=1) == today.replace(day=1) <= d <= today),
        "month_back": sum(1 for d in chosen if back.replace(day=1) <= d <= back),
    }


def pct(now: int, earlier: int) -> float | None:
    return None if earlier == 0 else round((now - earlier) * 100 / earlier, 1)


async def test_accidents_today_and_this_month_year_on_year(stack: Stack) -> None:
    body = (await get(stack, stack.operator))["accidents"]
    want = accident_counts(stack)
    assert want["today"] == 3 and want["today_back"] >= 2 and want["month_back"] >= 3
    assert body["tz"] == "Asia/Shanghai"
    assert body["today"] == {
        "start": f"{stack.today}T00:00:00+08:00",
        "count": want["today"],
        "year_earlier": want["today_back"],
        "change_pct": pct(want["today"], want["today_back"]),
    }
    assert body["month_to_date"] == {
        "start": f"{stack.today.replace(day=1)}T00:00:00+08:00",
        "count": want["month"],
        "year_earlier": want["month_back"],
        "change_pct": pct(want["month"], want["month_back"]),
    }
    utc = (await get(stack, stack.operator, tz="UTC"))["accidents"]
    assert utc["tz"] == "UTC" and utc["today"]["start"].endswith("+00:00")


async def test_a_grid_worker_sees_its_own_segments_and_accidents(stack: Stack) -> None:
    body = await get(stack, stack.worker)
    registry = stack.registry
    mine = {
        d.id
        for d in registry.devices.values()
        if stack.worker_grid in {a.id for a in registry.device_path(d.id).areas}
    }
    segments = {
        d.segment for d in registry.devices.values() if isinstance(d, RoadDevice) and d.id in mine
    } - {None}
    assert {s["segment"] for s in body["segments"]} == segments and "g207-dx" in segments
    want = accident_counts(stack, mine)
    assert (body["accidents"]["today"]["count"], body["accidents"]["today"]["year_earlier"]) == (
        want["today"],
        want["today_back"],
    )
    assert want["today"] < accident_counts(stack)["today"]  # X017's are not hers


async def test_the_traffic_page_shows_each_segment_with_its_index(
    stack: Stack, browser: Browser
) -> None:
    page = await signed_in(browser, f"{stack.url}/ui/traffic.html", stack.operator)
    await expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    rows = page.locator("#segments tbody tr")
    segments = [s.id for r in stack.registry.roads.values() for s in r.segments]
    await expect(rows).to_have_count(len(segments))
    shown = {
        await row.get_attribute("data-segment"): (
            await row.get_attribute("data-index"),
            await row.get_attribute("data-level"),
        )
        for row in await rows.all()
    }
    assert set(shown) == set(segments)
    assert shown["g207-dx"] == ("8.86", "severe")
    assert shown["g320-sq"] == ("3", "basically_free")
    assert shown["x017-sq"] == ("5.2", "light")
    assert shown["y031-dtq"] == ("", "none")
    g207 = page.locator('#segments tr[data-segment="g207-dx"]')
    await expect(g207).to_contain_text("严重拥堵")
    await expect(g207.locator(".index")).to_have_text("8.86")
    assert await g207.locator("rect").get_attribute("class") == "lvl-severe"
    assert float(await g207.locator("rect").get_attribute("width") or 0) == pytest.approx(88.6)
    # Worst first.
    assert await rows.first.get_attribute("data-segment") == "g207-dx"
    today = accident_counts(stack)["today"]
    await expect(page.locator("#acc-today")).to_have_text(str(today))
    await page.screenshot(path=ARTIFACTS / "traffic.png", full_page=True)
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()
