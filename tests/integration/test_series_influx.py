"""Time-series queries (ingest/api/series.py) against the real InfluxDB 1.6, on points we wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from devices.kinds import Channel, Kind
from devices.payloads import RiverTelemetry
from devices.registry import Registry
from ingest.api.influxql import QueryRefused, SeriesQuery, build_influxql
from ingest.api.series import SeriesResult, run_series
from ingest.api.series import to_csv as series_csv
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 19, 0, 0, tzinfo=UTC)  # minute-aligned
VILLAGE = "430502100001"  # 渡头桥镇's first village: river-ss-0002 (grid -01), river-ss-0003 (-02)
TOWNSHIP = "430502100"  # adds river-sm-0001 in the next village
A, B, OTHER = "river-ss-0002", "river-ss-0003", "river-sm-0001"

# (device, seconds after T0, water level, pH or None)
WRITTEN: list[tuple[str, int, float, float | None]] = [
    (A, 10, 210.0, 7.0),
    (A, 40, 212.0, 7.5),
    (A, 70, 215.0, None),
    (B, 20, 200.0, 6.5),
    (B, 80, 201.0, 6.0),
    (OTHER, 30, 300.0, 8.0),
]


def _ms(seconds: int) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def _iso(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture(scope="module")
async def db(influxdb: ManagedProcess, registry: Registry) -> AsyncIterator[str]:
    """A fresh database holding WRITTEN, encoded as the ingest path encodes it."""
    for device_id in (A, B, OTHER):
        assert registry.devices[device_id].kind is Kind.RIVER
    assert registry.devices[A].grid != registry.devices[B].grid  # same village, two grids
    database = new_database(influxdb.url, "series")
    encoder = LineEncoder(registry, hash_plate=lambda plate: plate)
    lines = []
    for device_id, second, level, ph in WRITTEN:
        message = RiverTelemetry(ts=_ms(second), seq=second, water_level_m=level, ph=ph)
        decoded = Decoded(
            Kind.RIVER, Channel.TELEMETRY, registry.devices[device_id], message, _ms(second)
        )
        lines.append(encoder.encode(decoded))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{influxdb.url}/write",
            params={"db": database, "precision": "ms"},
            data="\n".join(lines).encode(),
        ) as resp,
    ):
        assert resp.status == 204, await resp.text()
    yield database
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


async def run(
    influxdb: ManagedProcess,
    database: str,
    registry: Registry,
    allowed_areas: frozenset[str] | None = None,
    **params: Any,
) -> SeriesResult:
    query = SeriesQuery.model_validate(
        {"kind": "river", "start": T0, "end": T0 + timedelta(minutes=3), **params}
    )
    text = build_influxql(query, registry, allowed_areas=allowed_areas)
    async with aiohttp.ClientSession() as session:
        return await run_series(session, influxdb.url, database, text, query)


def table(result: SeriesResult) -> list[tuple[str | None, str, list[float | int | None]]]:
    """(device, time, values in field order) for every point, for compact assertions."""
    names = [f.name for f in result.fields]
    return [
        (s.device, p.time, [p.values[n] for n in names]) for s in result.series for p in s.points
    ]


async def test_a_device_raw_returns_what_was_written(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(influxdb, db, registry, device=A, fields=["water_level_m", "ph"])
    assert table(result) == [
        (A, _iso(10), [210.0, 7.0]),
        (A, _iso(40), [212.0, 7.5]),
        (A, _iso(70), [215.0, None]),
    ]
    assert [(f.name, f.unit) for f in result.fields] == [("water_level_m", "m"), ("ph", "pH")]
    assert result.per_device is False and result.truncated is False
    assert result.fn is None and result.every is None


async def test_a_raw_limit_truncates_and_says_so(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(influxdb, db, registry, device=A, fields=["water_level_m"], limit=2)
    assert [p.time for p in result.series[0].points] == [_iso(10), _iso(40)]
    assert result.truncated is True


async def test_a_device_aggregated_in_minute_windows(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(influxdb, db, registry, device=A, fields=["water_level_m", "ph"], every="1m")
    assert result.fn == "mean" and result.every_s == 60
    assert table(result) == [
        (A, _iso(0), [211.0, 7.25]),
        (A, _iso(60), [215.0, None]),
        (A, _iso(120), [None, None]),  # fill(null): an empty window is still a row
    ]


async def test_windows_stay_on_the_minute_when_start_is_not(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    # Start at :30: the first window is still labelled :00 and holds only the point at :40.
    result = await run(
        influxdb,
        db,
        registry,
        device=A,
        fields=["water_level_m"],
        every="1m",
        fn="max",
        start=T0 + timedelta(seconds=30),
        end=T0 + timedelta(seconds=90),
    )
    assert table(result) == [(A, _iso(0), [212.0]), (A, _iso(60), [215.0])]


async def test_count_and_last_per_window(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    counted = await run(influxdb, db, registry, device=A, fields=["ph"], every="1m", fn="count")
    assert [p.values["ph"] for p in counted.series[0].points][:2] == [2, 0]
    last = await run(
        influxdb, db, registry, device=A, fields=["water_level_m"], every="5m", fn="last"
    )
    assert table(last) == [(A, _iso(0), [215.0])]


async def test_an_area_aggregates_across_its_devices(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(influxdb, db, registry, area=VILLAGE, fields=["water_level_m"], every="1m")
    # The mean of every reading in the window, not of device means; OTHER is elsewhere.
    assert table(result) == [
        (None, _iso(0), [pytest.approx((210.0 + 212.0 + 200.0) / 3)]),
        (None, _iso(60), [pytest.approx((215.0 + 201.0) / 2)]),
        (None, _iso(120), [None]),
    ]
    assert result.per_device is False and result.area == VILLAGE


async def test_an_area_grouped_by_device(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(
        influxdb,
        db,
        registry,
        area=VILLAGE,
        fields=["water_level_m", "ph"],
        every="1m",
        fn="sum",
        group_by_device=True,
    )
    assert result.per_device is True
    assert table(result) == [
        (A, _iso(0), [422.0, 14.5]),
        (A, _iso(60), [215.0, None]),
        (A, _iso(120), [None, None]),
        (B, _iso(0), [200.0, 6.5]),
        (B, _iso(60), [201.0, 6.0]),
        (B, _iso(120), [None, None]),
    ]
    csv_lines = series_csv(result).splitlines()
    assert csv_lines[0] == "time,device,water_level_m[m],ph[pH]"
    assert csv_lines[1] == f"{_iso(0)},{A},422.0,14.5"
    assert csv_lines[2] == f"{_iso(60)},{A},215.0,"
    assert len(csv_lines) == 7


async def test_an_area_raw_is_per_device_and_a_township_includes_its_villages(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    result = await run(influxdb, db, registry, area=TOWNSHIP, fields=["water_level_m"])
    assert result.per_device is True
    assert table(result) == [  # series in device id order: river-sm-… before river-ss-…
        (OTHER, _iso(30), [300.0]),
        (A, _iso(10), [210.0]),
        (A, _iso(40), [212.0]),
        (A, _iso(70), [215.0]),
        (B, _iso(20), [200.0]),
        (B, _iso(80), [201.0]),
    ]
    city = await run(influxdb, db, registry, area="430500", fields=["water_level_m"], every="5m")
    expected: list[Any] = [(None, _iso(0), [pytest.approx(sum(w[2] for w in WRITTEN) / 6)])]
    assert table(city) == expected  # the whole city: all three stations


async def test_allowed_areas_hide_other_devices_and_areas(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    worker = frozenset({registry.devices[A].grid})  # a grid worker of A's grid only
    mine = await run(influxdb, db, registry, worker, device=A, fields=["water_level_m"])
    assert len(mine.series[0].points) == 3
    with pytest.raises(QueryRefused) as refused:
        await run(influxdb, db, registry, worker, device=B, fields=["water_level_m"])
    assert refused.value.code == "unknown_device" and refused.value.http_status == 404
    with pytest.raises(QueryRefused) as refused:
        await run(influxdb, db, registry, worker, area=VILLAGE, fields=["water_level_m"])
    assert refused.value.code == "unknown_area"


async def test_a_day_is_a_chinese_day_unless_another_zone_is_asked(
    influxdb: ManagedProcess, db: str, registry: Registry
) -> None:
    # WRITTEN lies just after T0 = 00:00 UTC = 08:00 in Shanghai: in Shanghai's days it is in
    # the day that began at 16:00 UTC the evening before; in UTC days, in the one beginning at T0.
    span = {"start": T0 - timedelta(hours=20), "end": T0 + timedelta(hours=20)}
    for tz, day_start in [("Asia/Shanghai", T0 - timedelta(hours=8)), ("UTC", T0)]:
        query = SeriesQuery.model_validate(
            {
                "kind": "river",
                "device": A,
                "fields": ["water_level_m"],
                "every": "1d",
                "fn": "count",
                "tz": tz,
                **span,
            }
        )
        text = build_influxql(query, registry)
        async with aiohttp.ClientSession() as session:
            result = await run_series(session, influxdb.url, db, text, query)
        counted = {
            datetime.fromisoformat(p.time.replace("Z", "+00:00")): p.values["water_level_m"]
            for s in result.series
            for p in s.points
            if p.values["water_level_m"]
        }
        assert counted == {day_start: 3}, tz
