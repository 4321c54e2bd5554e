"""``GET /quality`` on a real InfluxDB 1.6, on river samples written with the ingest path's
encoder at known times — some a minute either side of the local-day boundary of Shanghai
(16:00 UTC) and of the month's — compared with means, classes and rates computed here from
what was written."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from devices.kinds import Channel, Kind, Level
from devices.payloads import RiverTelemetry
from devices.registry import Registry, RiverDevice
from ingest.api.tokens import Role, TokenStore
from ingest.cli import build_parser
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from rules.waterquality import FIELDS, TABLE, WaterClass
from tests.inprocess import api_over_influx
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

FAILS = "river-zj-0004"  # 资江大祥段, target III: NH3-N 1.1 and 1.3 on the day → IV
MEETS = "river-zj-0003"  # 资江大祥段, target III: DO 5.5 → III
OUTSIDE = "river-zj-0002"  # 资江大祥段: samples only just outside June 1 (local)
SQ = "river-zj-0001"  # 资江双清段: clean; the grid worker's station
SM = "river-sm-0001"  # 石马江, target IV: NH3-N 1.4 → IV, meets
_GOOD = {"ph": 7.4, "do_mgl": 7.8, "codmn_mgl": 3.2, "nh3n_mgl": 0.3, "tp_mgl": 0.08}


@dataclass(frozen=True)
class Sample:
    device: str
    at: datetime  # UTC
    values: dict[str, float]


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _written() -> list[Sample]:
    start, end = _utc(2026, 5, 31, 16), _utc(2026, 6, 1, 16)  # June 1 in China
    minute = timedelta(minutes=1)
    out = [
        # Just inside June 1 (local) at both ends; just outside at both ends, with water that
        # would change the class if it were counted.
        Sample(FAILS, start + minute, {**_GOOD, "nh3n_mgl": 1.1}),
        Sample(FAILS, end - minute, {**_GOOD, "nh3n_mgl": 1.3, "do_mgl": 6.4}),
        Sample(FAILS, start - minute, {"nh3n_mgl": 0.2, "ph": 9.5}),
        Sample(FAILS, end + minute, {"nh3n_mgl": 0.2, "do_mgl": 2.5}),
        # The rest of June, and a minute before and after the local month.
        Sample(FAILS, _utc(2026, 6, 15, 2), {"nh3n_mgl": 0.45, "tp_mgl": 0.12}),
        Sample(FAILS, _utc(2026, 6, 30, 15, 59), {"nh3n_mgl": 0.9, "codmn_mgl": 5.0}),
        Sample(FAILS, _utc(2026, 6, 30, 16, 1), {"nh3n_mgl": 3.0}),  # July 1 in China
        Sample(MEETS, start + 2 * minute, {**_GOOD, "do_mgl": 5.6}),
        Sample(MEETS, _utc(2026, 6, 1, 3), {"do_mgl": 5.4, "ph": 7.0}),
        Sample(OUTSIDE, start - minute, dict(_GOOD)),  # May 31 in China
        Sample(OUTSIDE, end + minute, {**_GOOD, "tp_mgl": 0.35}),  # June 2
        Sample(SQ, _utc(2026, 6, 1, 0), dict(_GOOD)),
        Sample(SQ, _utc(2026, 6, 1, 6), {**_GOOD, "codmn_mgl": 1.8, "tp_mgl": 0.02}),
        Sample(SQ, _utc(2026, 6, 1, 7), {"water_level_m": 208.1}),  # no quality parameter
        Sample(SM, _utc(2026, 6, 1, 1), {**_GOOD, "nh3n_mgl": 1.4}),
        Sample(SM, _utc(2026, 6, 10, 1), {**_GOOD, "nh3n_mgl": 1.9}),  # V, later in June
    ]
    return out


WRITTEN = _written()


def expected_station(device: str, keep: Any) -> dict[str, Any]:
    """Means, counts and classes computed from WRITTEN for the samples ``keep`` accepts."""
    parameters: dict[str, dict[str, Any]] = {}
    for row in TABLE:
        values = [
            s.values[row.field]
            for s in WRITTEN
            if s.device == device and keep(s) and row.field in s.values
        ]
        if values:
            mean = round(statistics.fmean(values), 4)
            parameters[row.field] = {
                "mean": mean,
                "class": row.class_of(mean).label,
                "samples": len(values),
            }
    return parameters


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: str
    worker: str  # a grid worker of SQ's grid
    registry: Registry
    influx_url: str
    database: str


@pytest.fixture(scope="module")
async def api(
    influxdb: ManagedProcess, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    segment = {d: getattr(registry.devices[d], "segment", None) for d in (FAILS, MEETS, OUTSIDE)}
    assert set(segment.values()) == {"zj-dx"}
    assert getattr(registry.devices[SM], "target_class", None) == "IV"
    database = new_database(influxdb.url, "quality")
    encoder = LineEncoder(registry, hash_plate=lambda plate: plate)
    lines = []
    for seq, s in enumerate(WRITTEN):
        ms = int(s.at.timestamp() * 1000)
        message = RiverTelemetry(ts=ms, seq=seq, **s.values)
        device = registry.devices[s.device]
        lines.append(encoder.encode(Decoded(Kind.RIVER, Channel.TELEMETRY, device, message, ms)))
    tmp: Path = tmp_path_factory.mktemp("quality")
    tokens = TokenStore.load(tmp / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [registry.devices[SQ].grid])
    async with api_over_influx(
        influxdb.url, database, registry, tokens, tmp, "\n".join(lines)
    ) as c:
        yield Api(c, operator, worker, registry, influxdb.url, database)
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


async def get(api: Api, token: str | None = None, **params: Any) -> httpx.Response:
    return await api.client.get(
        "/quality", params=params, headers={"Authorization": f"Bearer {token or api.operator}"}
    )


def _stations(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["device"]: s for s in body["stations"]}


def check_against_written(api: Api, body: dict[str, Any], keep: Any) -> None:
    """Every station's parameters, class, verdict, and every group's counts and rate, as
    computed from WRITTEN."""
    by_group: dict[str | None, list[bool | None]] = {}
    for device, station in _stations(body).items():
        parameters = expected_station(device, keep)
        assert station["parameters"] == parameters, device
        target = WaterClass.parse(station["target"])
        classes = [WaterClass.parse(p["class"]) for p in parameters.values()]
        worst = max(classes) if classes else None
        assert station["class"] == (worst.label if worst else None), device
        meets = None if worst is None else worst <= target
        assert station["meets_target"] is meets, device
        over = [
            f
            for f in FIELDS
            if f in parameters and WaterClass.parse(parameters[f]["class"]) > target
        ]
        assert station["over_target"] == over, device
        registry_device = api.registry.devices[device]
        group = (
            getattr(registry_device, "segment", None)
            if body["by"] == "segment"
            else api.registry.device_path(device).id_at(Level.COUNTY)
        )
        by_group.setdefault(group, []).append(meets)
    for g in body["groups"]:
        verdicts = by_group.pop(g["id"])
        assessed = [v for v in verdicts if v is not None]
        assert g["assessed"] == len(assessed), g
        assert g["meeting"] == sum(assessed), g
        rate = round(sum(assessed) * 100 / len(assessed), 1) if assessed else None
        assert g["rate"] == rate, g
        assert len(g["not_assessed"]) == len(verdicts) - len(assessed), g
    assert by_group == {}


async def test_a_chinese_day_counts_what_was_written_inside_it(api: Api) -> None:
    r = await get(api, period="day", date="2026-06-01", by="segment")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period"] == {
        "kind": "day",
        "label": "2026-06-01",
        "tz": "Asia/Shanghai",
        "start": "2026-06-01T00:00:00+08:00",
        "end": "2026-06-02T00:00:00+08:00",
        "complete": True,
    }
    zone = ZoneInfo("Asia/Shanghai")
    check_against_written(api, body, lambda s: s.at.astimezone(zone).date() == date(2026, 6, 1))
    # By hand: NH3-N (1.1 + 1.3) / 2 = 1.2 → IV, worse than target III; the samples a minute
    # outside the day (pH 9.5, DO 2.5) are not in it.
    stations = _stations(body)
    fails = stations[FAILS]
    assert fails["parameters"]["nh3n_mgl"] == {"mean": 1.2, "class": "IV", "samples": 2}
    assert fails["parameters"]["ph"]["class"] == "I"
    assert fails["parameters"]["do_mgl"] == {"mean": 7.1, "class": "II", "samples": 2}
    assert (fails["class"], fails["meets_target"], fails["over_target"]) == (
        "IV",
        False,
        ["nh3n_mgl"],
    )
    assert stations[MEETS]["parameters"]["do_mgl"]["mean"] == 5.5
    assert (stations[MEETS]["class"], stations[MEETS]["meets_target"]) == ("III", True)
    assert stations[OUTSIDE]["class"] is None and stations[OUTSIDE]["meets_target"] is None
    assert (stations[SM]["class"], stations[SM]["target"], stations[SM]["meets_target"]) == (
        "IV",
        "IV",
        True,
    )
    dx = next(g for g in body["groups"] if g["id"] == "zj-dx")
    assert (dx["name"], dx["assessed"], dx["meeting"], dx["rate"]) == ("资江大祥段", 2, 1, 50.0)
    assert OUTSIDE in dx["not_assessed"]
    total = body["total"]
    assert (total["assessed"], total["meeting"], total["rate"]) == (4, 3, 75.0)


async def test_the_same_date_in_utc_is_another_day(api: Api) -> None:
    r = await get(api, period="day", date="2026-06-01", tz="UTC", by="county")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period"]["start"] == "2026-06-01T00:00:00+00:00"
    check_against_written(api, body, lambda s: s.at.date() == date(2026, 6, 1))
    # In UTC the 16:01 sample (NH3-N 0.2, DO 2.5) is June 1, the one at 16:01 the day before
    # (NH3-N 1.1) is May 31: NH3-N (1.3 + 0.2) / 2 = 0.75 → III, DO (6.4 + 2.5) / 2 = 4.45 → IV.
    fails = _stations(body)[FAILS]
    assert fails["parameters"]["nh3n_mgl"] == {"mean": 0.75, "class": "III", "samples": 2}
    assert fails["parameters"]["do_mgl"] == {"mean": 4.45, "class": "IV", "samples": 2}
    assert (fails["class"], fails["over_target"]) == ("IV", ["do_mgl"])
    assert _stations(body)[OUTSIDE]["class"] is not None


async def test_a_month_is_every_sample_of_its_local_days(api: Api) -> None:
    r = await get(api, period="month", date="2026-06", by="county")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["period"]["start"], body["period"]["end"]) == (
        "2026-06-01T00:00:00+08:00",
        "2026-07-01T00:00:00+08:00",
    )
    zone = ZoneInfo("Asia/Shanghai")
    check_against_written(api, body, lambda s: s.at.astimezone(zone).strftime("%Y-%m") == "2026-06")
    fails = _stations(body)[FAILS]
    # 1.1, 1.3, 0.2 (June 2 local), 0.45, 0.9 — not 0.2 of May 31 nor 3.0 of July 1 (local).
    assert fails["parameters"]["nh3n_mgl"] == {"mean": 0.79, "class": "III", "samples": 5}
    sm = _stations(body)[SM]
    assert sm["parameters"]["nh3n_mgl"]["mean"] == 1.65 and sm["class"] == "V"
    assert sm["meets_target"] is False


async def test_a_grid_worker_sees_only_its_stations(api: Api) -> None:
    r = await get(api, api.worker, period="day", date="2026-06-01", by="segment")
    assert r.status_code == 200, r.text
    body = r.json()
    grid = api.registry.devices[SQ].grid
    mine = {
        d.id for d in api.registry.devices.values() if isinstance(d, RiverDevice) and d.grid == grid
    }
    assert set(_stations(body)) == mine and SQ in mine and FAILS not in mine
    zone = ZoneInfo("Asia/Shanghai")
    check_against_written(api, body, lambda s: s.at.astimezone(zone).date() == date(2026, 6, 1))
    assert "zj-dx" not in {g["id"] for g in body["groups"]}
    assert body["total"]["assessed"] == 1 and body["total"]["meeting"] == 1
    other = await get(api, api.worker, date="2026-06-01", river="shimajiang")
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_river"


async def test_the_river_filter_and_refusals(api: Api) -> None:
    r = await get(api, date="2026-06-01", river="zijiang", by="station")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["groups"] == [] and SM not in _stations(body)
    assert {s["river"] for s in body["stations"]} == {"zijiang"}
    for params, status, code in (
        ({"date": "2026-06"}, 422, "bad_date"),
        ({"period": "month", "date": "2026-13"}, 422, "bad_date"),
        ({"date": "2026-06-01", "tz": "Mars/Olympus"}, 422, "unknown_tz"),
        ({"date": "2026-06-01", "river": "nosuch"}, 404, "unknown_river"),
        ({"period": "week"}, 422, "invalid_request"),
    ):
        refused = await get(api, **params)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), params
    unauthorised = await api.client.get("/quality")
    assert unauthorised.status_code == 401


async def test_the_cli_reports_what_the_api_answers(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CITYSENSE_INFLUX_URL", api.influx_url)
    monkeypatch.setenv("CITYSENSE_INFLUX_DATABASE", api.database)
    argv = ["quality", "report", "--period", "month", "--date", "2026-06", "--by", "county"]
    for extra in (["--json"], []):
        args: argparse.Namespace = build_parser().parse_args([*argv, *extra])
        # The command runs its own event loop, as from a shell: in a thread here.
        assert await asyncio.to_thread(args.func, args) == 0
        printed = capsys.readouterr().out
        if extra:
            r = await get(api, period="month", date="2026-06", by="county")
            assert json.loads(printed) == r.json()
        else:
            line = next(x for x in printed.splitlines() if x.startswith(FAILS))
            assert "资江檀江口水文站" in line and "0.79/III" in line
            county = api.registry.device_path(FAILS).id_at(Level.COUNTY) or ""
            assert any(x.startswith(county) and "大祥区" in x for x in printed.splitlines())
