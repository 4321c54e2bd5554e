"""Rivers and roads on a real running service (Mosquitto, InfluxDB, the alert store): ``GET
/ways`` (devices in km order, the worst unresolved alert turning a river critical),
``GET /rivers/{id}/profile`` (the levels written, read back from InfluxDB), and in headless
Chromium the overview map's river and road lines and the river profile chart's warning line.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from devices.alongway import along
from devices.registry import Registry, RiverDevice
from ingest.api.tokens import Role, TokenStore, tokens_path
from ingest.service import ServiceState
from tests.integration.test_alerts_e2e import river_readings
from tests.integration.test_api import bearer
from tests.integration.test_ingest_e2e import (
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.integration.test_web import ARTIFACTS, WARNING_ORANGE, signed_in
from tests.integration.test_web import browser as browser  # the headless Chromium, here too
from tests.services import new_database

pytestmark = pytest.mark.integration

PROFILED = "zijiang"  # its stations report known levels below warning
FLOODED = "river-ss-0002"  # a station of 邵水 (shaoshui) taken over its guarantee level
WORKER_STATION = "river-zj-0001"  # the grid worker's token is bound to this station's grid
READINGS = 5
STEP_MS = 10_000
# overview.js: a way without an alert, and the markers' colours for severities.
WAY_BASE = {"river": "#4dabf7", "road": "#adb5bd"}
COLOUR = {"info": "#5c7cfa", "warning": "#d4a106", "major": "#e8590c", "critical": "#b3261e"}


@dataclass
class Stack:
    """A running service, its tokens, and the newest level and time each station sent."""

    state: ServiceState
    url: str
    mqtt_port: int
    operator: str
    worker: str
    worker_grid: str
    levels: dict[str, float]
    times: dict[str, int]


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Any, influxdb: Any, registry: Registry
) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("ways")
    settings = make_settings(
        tmp,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "ways"),
    )
    grid = registry.devices[WORKER_STATION].grid
    tokens = TokenStore.load(tokens_path(settings))
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [grid])
    base = now_ms() - 300_000
    messages: list[tuple[str, bytes]] = []
    levels: dict[str, float] = {}
    times: dict[str, int] = {}
    for n, station in enumerate(along(registry, registry.rivers[PROFILED])):
        assert isinstance(station, RiverDevice)
        # Distinct per station, rising a little, all well below warning: no alert.
        series = [station.normal_level_m + 0.4 + 0.13 * n + 0.01 * i for i in range(READINGS)]
        assert series[-1] < station.warning_level_m - 1
        messages += river_readings(station.id, series, base, STEP_MS)
        levels[station.id] = series[-1]
        times[station.id] = base + (READINGS - 1) * STEP_MS
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, messages)
        await settle(state, len(messages))
        assert state.api_url is not None
        yield Stack(state, state.api_url, mosquitto.port, operator, worker, grid, levels, times)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        yield c


async def get(client: httpx.AsyncClient, path: str, token: str) -> Any:
    answer = await client.get(path, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return answer.json()


def by_id(ways: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in ways}


async def test_ways_list_every_river_in_km_order_and_one_turns_critical(
    stack: Stack, client: httpx.AsyncClient, registry: Registry
) -> None:
    before = await get(client, "/ways", stack.operator)
    assert [w["id"] for w in before["rivers"]] == list(registry.rivers)
    assert [w["id"] for w in before["roads"]] == list(registry.roads)
    for way in before["rivers"] + before["roads"]:
        kms = [d["km"] for d in way["devices"]]
        assert kms == sorted(kms), way["id"]
    zijiang = by_id(before["rivers"])[PROFILED]
    assert [d["id"] for d in zijiang["devices"]] == [
        "river-zj-0004",
        "river-zj-0003",
        "river-zj-0002",
        "river-zj-0001",
        "river-zj-0005",
        "river-zj-0006",
    ]
    first = registry.devices["river-zj-0004"]
    assert zijiang["devices"][0] | {"state": None} == {
        "id": first.id,
        "name": first.name,
        "name_en": first.name_en,
        "km": 6.0,
        "lat": first.lat,
        "lon": first.lon,
        "segment": "zj-dx",
        "state": None,
    }
    shaoshui = by_id(before["rivers"])["shaoshui"]
    assert shaoshui["state"] == "none"
    assert {s["state"] for s in shaoshui["segments"]} == {"none"}

    # Over its guaranteed level for 2.5 min of device time: river_over_guarantee (critical).
    station = registry.devices[FLOODED]
    assert isinstance(station, RiverDevice)
    flood = [station.guarantee_level_m + 0.5] * 16
    start = now_ms() - 15 * STEP_MS
    await asyncio.to_thread(
        publish, stack.mqtt_port, river_readings(FLOODED, flood, start, STEP_MS)
    )
    deadline = time.monotonic() + 20
    while True:
        after = await get(client, "/ways", stack.operator)
        shaoshui = by_id(after["rivers"])["shaoshui"]
        if shaoshui["state"] == "critical" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert shaoshui["state"] == "critical", shaoshui
    segments = {s["id"]: s["state"] for s in shaoshui["segments"]}
    assert segments[station.segment or ""] == "critical"
    assert next(d for d in shaoshui["devices"] if d["id"] == FLOODED)["state"] == "critical"
    # Only that river: nothing critical was opened anywhere else.
    others = [w for w in after["rivers"] + after["roads"] if w["id"] != "shaoshui"]
    assert [w["id"] for w in others if w["state"] == "critical"] == []
    alerts = await get(client, "/alerts?rule=river_over_guarantee&state=open", stack.operator)
    assert [a["device_id"] for a in alerts] == [FLOODED]


async def test_a_grid_worker_sees_only_the_devices_of_its_areas(
    stack: Stack, client: httpx.AsyncClient, registry: Registry
) -> None:
    mine = await get(client, "/ways", stack.worker)
    listed = [d["id"] for w in mine["rivers"] + mine["roads"] for d in w["devices"]]
    assert listed == [WORKER_STATION]
    assert [w["id"] for w in mine["rivers"]] == [PROFILED] and mine["roads"] == []
    answer = await client.get("/ways")
    assert answer.status_code == 401


async def test_the_profile_has_the_levels_written_upstream_first(
    stack: Stack, client: httpx.AsyncClient, registry: Registry
) -> None:
    profile = await get(client, f"/rivers/{PROFILED}/profile", stack.operator)
    assert profile["id"] == PROFILED and profile["name"] == registry.rivers[PROFILED].name
    stations = along(registry, registry.rivers[PROFILED])
    assert [s["id"] for s in profile["stations"]] == [d.id for d in stations]
    for got, station in zip(profile["stations"], stations, strict=True):
        assert isinstance(station, RiverDevice)
        assert got["km"] == station.km
        assert got["water_level_m"] == pytest.approx(stack.levels[station.id], abs=1e-9)
        assert got["time_ms"] == stack.times[station.id]
        assert (got["normal_level_m"], got["warning_level_m"], got["guarantee_level_m"]) == (
            station.normal_level_m,
            station.warning_level_m,
            station.guarantee_level_m,
        )
        assert got["state"] in {"none", "info", "warning"}  # below warning: nothing worse
    # A river without readings has its stations, with no level yet.
    quiet = await get(client, "/rivers/yangxi/profile", stack.operator)
    assert [s["water_level_m"] for s in quiet["stations"]] == [None, None]
    # Unknown, or none of its stations in the caller's areas: 404 with a named code.
    for path, token in (
        ("/rivers/nile/profile", stack.operator),
        ("/rivers/shaoshui/profile", stack.worker),
    ):
        answer = await client.get(path, headers=bearer(token))
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "unknown_river"
    own = await get(client, f"/rivers/{PROFILED}/profile", stack.worker)
    assert [s["id"] for s in own["stations"]] == [WORKER_STATION]


async def test_the_map_draws_each_river_and_road_in_its_state(
    stack: Stack, browser: Browser, client: httpx.AsyncClient, registry: Registry
) -> None:
    page = await signed_in(browser, f"{stack.url}/ui/", stack.operator)
    rivers = page.locator('#map-svg polyline[data-kind="river"]')
    await expect(rivers).to_have_count(len(registry.rivers))
    drawn = [await r.get_attribute("data-way") for r in await rivers.all()]
    assert sorted(str(w) for w in drawn) == sorted(registry.rivers)  # one line per river
    roads = page.locator('#map-svg polyline[data-kind="road"]')
    await expect(roads).to_have_count(len(registry.roads))
    # Each line in the state /ways gives it, in that state's colour (alerts may still open
    # meanwhile, e.g. a device falling silent: compare until both agree).
    deadline = time.monotonic() + 15
    while True:
        ways = await get(client, "/ways", stack.operator)
        wanted = {w["id"]: (w["kind"], w["state"]) for w in ways["rivers"] + ways["roads"]}
        shown = await page.eval_on_selector_all(
            "#map-svg polyline[data-way]",
            "els => els.map(e => [e.dataset.way, e.dataset.state, e.getAttribute('stroke')])",
        )
        got = {way: state for way, state, _ in shown}
        if got == {k: s for k, (_, s) in wanted.items()} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert got == {k: s for k, (_, s) in wanted.items()}
    for way, state, stroke in shown:
        kind = wanted[way][0]
        assert stroke == (WAY_BASE[kind] if state == "none" else COLOUR[state]), (way, state)
    # The river's line runs through its stations in order: upstream first, at their markers.
    line = page.locator(f'#map-svg polyline[data-way="{PROFILED}"]')
    points = (await line.get_attribute("points") or "").split()
    stations = along(registry, registry.rivers[PROFILED])
    assert len(points) == len(stations)
    for point, station in zip(points, stations, strict=True):
        marker = page.locator(f'#map-svg a.marker[data-device="{station.id}"] rect')
        x = float(await marker.get_attribute("x") or "nan") + 6
        y = float(await marker.get_attribute("y") or "nan") + 6
        px, py = map(float, point.split(","))
        assert abs(px - x) < 0.1 and abs(py - y) < 0.1, (station.id, point, x, y)
    # A click on the river opens its profile.
    link = page.locator(f'#map-svg a.way-link:has(polyline[data-way="{PROFILED}"])')
    assert await link.get_attribute("href") == f"river.html?id={PROFILED}"
    await expect(page.locator('header a[href="river.html"]')).to_have_count(1)
    await page.screenshot(path=ARTIFACTS / "overview-ways.png", full_page=True)
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()


# The share of probes where the warning colour was found within 2 px of the line's midpoint
# between two stations (a diagonal 2 px line is anti-aliased: look around, not at one pixel).
MIDPOINTS_JS = """([points, rgb]) => {
  const canvas = document.querySelector("#chart canvas");
  const g = canvas.getContext("2d");
  return points.map(([x, y]) => {
    const d = g.getImageData(Math.round(x) - 2, Math.round(y) - 2, 5, 5).data;
    for (let i = 0; i < d.length; i += 4)
      if (rgb.every((c, k) => Math.abs(d[i + k] - c) < 24)) return true;
    return false;
  });
}"""


async def test_the_profile_chart_draws_the_warning_levels(
    stack: Stack, browser: Browser, registry: Registry
) -> None:
    page = await signed_in(browser, f"{stack.url}/ui/river.html?id={PROFILED}", stack.operator)
    chart = page.locator("#chart")
    stations = along(registry, registry.rivers[PROFILED])
    await expect(chart).to_have_attribute("data-stations", str(len(stations)))
    lines = json.loads(await chart.get_attribute("data-lines") or "{}")
    scale = json.loads(await chart.get_attribute("data-scale") or "{}")
    xs = json.loads(await chart.get_attribute("data-xs") or "[]")

    def y_of(value: float) -> float:
        share = (scale["max"] - value) / (scale["max"] - scale["min"])
        return float(scale["top"] + share * scale["height"])

    for i, station in enumerate(stations):
        assert isinstance(station, RiverDevice)
        assert lines["warning"][i] == pytest.approx(y_of(station.warning_level_m), abs=0.5)
        assert lines["guarantee"][i] == pytest.approx(y_of(station.guarantee_level_m), abs=0.5)
        assert lines["level"][i] == pytest.approx(y_of(stack.levels[station.id]), abs=0.5)
        # Higher on the chart (smaller y) the higher the level.
        assert lines["guarantee"][i] < lines["warning"][i] < lines["level"][i]
    # The warning line is on the canvas, in its colour, between every two stations.
    midpoints = [
        [(xs[i] + xs[i + 1]) / 2, (lines["warning"][i] + lines["warning"][i + 1]) / 2]
        for i in range(len(stations) - 1)
    ]
    found = await page.evaluate(MIDPOINTS_JS, [midpoints, list(WARNING_ORANGE)])
    assert all(found), found
    rows = page.locator("#stations tr[data-station]")
    await expect(rows).to_have_count(len(stations))
    assert [await r.get_attribute("data-station") for r in await rows.all()] == [
        s.id for s in stations
    ]
    await page.screenshot(path=ARTIFACTS / "river-profile.png", full_page=True)
    # The picker changes the river.
    await expect(page.locator("#river option")).to_have_count(len(registry.rivers))
    await page.select_option("#river", "shaoshui")
    await expect(chart).to_have_attribute("data-river", "shaoshui")
    await expect(chart).to_have_attribute("data-stations", "4")
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()
