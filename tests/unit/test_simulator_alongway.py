"""Scenarios that travel along a river or a road (simulator/scenarios.py ``spreads``), on the
example city's dry run: a flood wave and a pollution plume going down the Zi River at the
hydrology office's travel times (devices/alongway.py), one accident seen by two cameras of
a road segment."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from devices.alongway import along, travel_ms, way_of
from devices.kinds import Channel, Kind
from devices.payloads import RiverTelemetry, RoadEvent
from devices.registry import Registry, RiverDevice, load_registry
from devices.responsibility import River
from rules.waterquality import WaterClass, worst_class
from simulator import SCENARIOS, ScenarioError, SimulationConfig, dry_run, synthetic_registry
from simulator.arguments import add_arguments
from simulator.device import Outgoing
from simulator.hydrology import WAVE_PASSED_S, WaveLevels
from simulator.plan import plan_run
from simulator.water_quality import PLUME_FURTHER, PLUME_NEAREST

ROOT = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
START_MS = int(datetime(2024, 7, 1, 10, tzinfo=CST).timestamp() * 1000)
RATE = 0.2  # so low that every device reports at its own registry interval
SEED = 7
UPSTREAM = "river-zj-0004"  # the Zi River's most upstream station (km 6)
# Downstream of it, nearest first, with km: zj-0003 18, zj-0002 24, zj-0001 34, zj-0005 52,
# zj-0006 62 (6.2 h of travel).
ZI_DOWNSTREAM = [
    "river-zj-0003",
    "river-zj-0002",
    "river-zj-0001",
    "river-zj-0005",
    "river-zj-0006",
]
WAVE_AT_S = 2700.0
WAVE_RUN_S = 29400.0  # the wave has passed the last station (6.2 h + 1 h) before the end
PLUME_AT_S = 60.0
PLUME_RUN_S = 4 * 3600.0


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(ROOT / "config" / "registry.yaml")


@pytest.fixture(scope="module")
def zi(city: Registry) -> River:
    river = way_of(city, UPSTREAM)
    assert isinstance(river, River)
    return river


def rivers_only(scenario: str, duration: float, at: float) -> SimulationConfig:
    return SimulationConfig(
        scenarios=(scenario,),
        duration=duration,
        scenario_at=at,
        rate=RATE,
        seed=SEED,
        kinds=(Kind.RIVER,),
    )


def telemetry(messages: list[tuple[float, Outgoing]], device_id: str) -> list[Any]:
    return [
        (t, m.payload)
        for t, m in messages
        if m.device_id == device_id and m.channel is Channel.TELEMETRY
    ]


def level(reading: RiverTelemetry) -> float:
    assert reading.water_level_m is not None
    return reading.water_level_m


@pytest.fixture(scope="module")
def wave(city: Registry) -> list[tuple[float, Outgoing]]:
    return list(dry_run(rivers_only("flood_wave", WAVE_RUN_S, WAVE_AT_S), city, START_MS))


@pytest.fixture(scope="module")
def plume(city: Registry) -> list[tuple[float, Outgoing]]:
    return list(dry_run(rivers_only("pollution_plume", PLUME_RUN_S, PLUME_AT_S), city, START_MS))


def test_a_river_scenario_starts_upstream_and_reaches_each_station_at_its_travel_time(
    city: Registry, zi: River
) -> None:
    for name in ("flood_wave", "pollution_plume"):
        (assignment,) = plan_run(rivers_only(name, WAVE_RUN_S, WAVE_AT_S), city).assignments
        assert assignment.device_id == UPSTREAM == along(city, zi)[0].id
        assert [r.device_id for r in assignment.reaches] == ZI_DOWNSTREAM
        source = city.devices[UPSTREAM]
        for reach in assignment.reaches:
            station = city.devices[reach.device_id]
            assert isinstance(source, RiverDevice) and isinstance(station, RiverDevice)
            assert source.km is not None and station.km is not None
            assert reach.delay_s * 1000 == travel_ms(zi, source.km, station.km)
    # The farthest is about 6.2 h away (within the 8 h the rules look ahead).
    assert 6 * 3600 < assignment.reaches[-1].delay_s < 6.5 * 3600
    report = plan_run(rivers_only("flood_wave", WAVE_RUN_S, WAVE_AT_S), city).new_report()
    assert list(report.scenarios[0].reaches) == ZI_DOWNSTREAM
    assert "river-zj-0006 +22337.1 s" in report.table()


def test_flood_wave_passes_warning_at_each_station_when_the_water_gets_there(
    city: Registry, zi: River, wave: list[tuple[float, Outgoing]]
) -> None:
    source = city.devices[UPSTREAM]
    assert isinstance(source, RiverDevice) and source.km is not None
    for station in [source, *(city.devices[s] for s in ZI_DOWNSTREAM)]:
        assert isinstance(station, RiverDevice) and station.km is not None
        travel_s = (travel_ms(zi, source.km, station.km) or 0) / 1000
        expected_s = WAVE_AT_S + travel_s
        readings: list[tuple[float, RiverTelemetry]] = telemetry(wave, station.id)
        above = [t for t, r in readings if level(r) > station.warning_level_m]
        assert above, station.id
        # Its own over-warning comes when the water is expected, within one report.
        assert abs(above[0] - expected_s) <= station.report_interval_s, (station.id, above[0])
        # A wave, not a flood that stays: up for about 40 minutes, never to guarantee, then
        # down, the river receding on its own well below warning to the end of the run.
        assert all(expected_s - 40 * 60 < t < expected_s + 50 * 60 for t in above), station.id
        assert max(level(r) for _, r in readings) < station.guarantee_level_m - 0.3
        after = [r for t, r in readings if t > expected_s + WAVE_PASSED_S]
        assert after and all(level(r) < station.warning_level_m - 0.5 for r in after)
        # Its front rises far faster than the 0.3 m/h the rising-fast rule looks for.
        front = [(t, level(r)) for t, r in readings if expected_s - 1800 <= t <= expected_s]
        (t0, l0), (t1, l1) = front[0], front[-1]
        assert (l1 - l0) / ((t1 - t0) / 3600) > 3.0, station.id
        # Before the wave, the river is its usual self.
        before = [level(r) for t, r in readings if t < expected_s - 1800]
        assert before and max(before) < station.warning_level_m - 1.0


def test_flood_wave_crest_and_shape(city: Registry) -> None:
    station = city.devices["river-zj-0001"]
    assert isinstance(station, RiverDevice)
    levels = WaveLevels(station.normal_level_m, station.warning_level_m, station.guarantee_level_m)
    assert levels.warning_m < levels.crest_m < levels.guarantee_m
    assert levels.normal_m < levels.after_m < levels.warning_m


def test_flood_wave_leaves_other_rivers_alone(
    city: Registry, zi: River, wave: list[tuple[float, Outgoing]]
) -> None:
    on_zi = {d.id for d in along(city, zi)}
    # The run simulates the stations reporting over MQTT (--protocol mqtt, the default); those
    # registered with HJ 212 or SL 651 report through a gateway and are not in it.
    others = [
        d
        for d in city.devices.values()
        if isinstance(d, RiverDevice) and d.id not in on_zi and d.protocol is None
    ]
    assert others
    for station in others:
        assert isinstance(station, RiverDevice)
        levels = [level(r) for _, r in telemetry(wave, station.id)]
        assert levels and max(levels) < station.warning_level_m, station.id


def quality(reading: RiverTelemetry) -> WaterClass:
    found = worst_class(reading.model_dump())
    assert found is not None, reading  # a station with an analyser
    return found


def field(reading: RiverTelemetry, name: str) -> float:
    value = getattr(reading, name)
    assert isinstance(value, float), (name, reading)
    return value


def test_pollution_plume_dilutes_downstream(
    city: Registry, zi: River, plume: list[tuple[float, Outgoing]]
) -> None:
    (assignment,) = plan_run(
        rivers_only("pollution_plume", PLUME_RUN_S, PLUME_AT_S), city
    ).assignments
    # The dilution rule: half of the spill at the nearest station, a tenth of that at each
    # further one.
    shares = [r.strength for r in assignment.reaches]
    assert shares == pytest.approx(
        [PLUME_NEAREST * PLUME_FURTHER**n for n in range(len(ZI_DOWNSTREAM))]
    )
    assert shares[:3] == pytest.approx([0.5, 0.05, 0.005])
    arrival = {UPSTREAM: PLUME_AT_S} | {
        r.device_id: PLUME_AT_S + r.delay_s for r in assignment.reaches
    }
    # In the four hours played the plume reaches the three nearest stations.
    reached = [UPSTREAM, *ZI_DOWNSTREAM[:3]]
    assert all(arrival[s] < PLUME_RUN_S - 1800 for s in reached)
    nh3n: dict[str, float] = {}
    for device_id in reached:
        station = city.devices[device_id]
        readings: list[tuple[float, RiverTelemetry]] = telemetry(plume, device_id)
        before = [r for t, r in readings if t < arrival[device_id]]
        after = [r for t, r in readings if t >= arrival[device_id]]
        assert before and after, device_id
        # Every station has an analyser once a plume is coming, and clean water before it.
        assert all(quality(r) <= WaterClass.III for r in before), device_id
        # The first reading after its arrival already carries the plume.
        first_t = next(t for t, _ in readings if t >= arrival[device_id])
        assert first_t - arrival[device_id] <= station.report_interval_s
        nh3n[device_id] = sum(field(r, "nh3n_mgl") for r in after) / len(after)
        classes = {quality(r) for r in after}
        if device_id == UPSTREAM:  # the spill itself: worse than class V
            assert classes == {WaterClass.WORSE_THAN_V}
        elif device_id == ZI_DOWNSTREAM[0]:  # half of it: still worse than its class III
            assert all(c > WaterClass.III for c in classes), classes
            for r in after:
                assert field(r, "nh3n_mgl") > 1.0 and field(r, "codmn_mgl") > 6.0  # class III
        else:  # a twentieth and less: inside class III
            assert all(c <= WaterClass.III for c in classes), (device_id, classes)
    # Concentrations fall station by station.
    means = [nh3n[s] for s in reached]
    assert means == sorted(means, reverse=True)
    assert means[1] < 0.7 * means[0] and means[2] < 0.4 * means[1]


def test_pollution_plume_spares_stations_it_has_not_reached(
    plume: list[tuple[float, Outgoing]],
) -> None:
    for device_id in ZI_DOWNSTREAM[3:]:  # 5 h and more away: not yet reached in 4 h
        readings = telemetry(plume, device_id)
        assert readings and all(quality(r) <= WaterClass.III for _, r in readings)


def accidents(messages: list[tuple[float, Outgoing]]) -> list[tuple[float, str]]:
    return [
        (t, m.device_id)
        for t, m in messages
        if isinstance(m.payload, RoadEvent) and m.payload.event == "accident"
    ]


def test_accident_seen_by_two_cameras_of_a_segment_seconds_apart(city: Registry) -> None:
    config = SimulationConfig(
        scenarios=("accident_two_cameras",), duration=120, scenario_at=30, rate=RATE, seed=SEED
    )
    messages = list(dry_run(config, city, START_MS))
    # The first camera (in km order) of the first segment with two: G320's Shuangqing section.
    assert accidents(messages) == [(30.0, "road-sq-0001"), (33.0, "road-sq-0002")]
    first, second = (city.devices[d] for d in ("road-sq-0001", "road-sq-0002"))
    assert first.segment == second.segment == "g320-sq"  # type: ignore[union-attr]
    # Only the accident: no jam, no congestion reported.
    events = [m.payload.event for _, m in messages if isinstance(m.payload, RoadEvent)]
    assert "congestion" not in events


def test_accident_two_cameras_on_a_chosen_camera(city: Registry) -> None:
    def seen(camera: str) -> list[tuple[float, str]]:
        config = SimulationConfig(
            scenarios=("accident_two_cameras",),
            duration=60,
            scenario_at=10,
            rate=RATE,
            seed=SEED,
            scenario_device={"accident_two_cameras": camera},
        )
        return accidents(list(dry_run(config, city, START_MS)))

    # The next camera along the segment; from the last one, the one before it.
    assert seen("road-dx-0001") == [(10.0, "road-dx-0001"), (13.0, "road-dx-0002")]
    assert seen("road-dx-0002") == [(10.0, "road-dx-0002"), (13.0, "road-dx-0001")]
    with pytest.raises(ScenarioError, match="road-sq-0004 has none simulated"):
        seen("road-sq-0004")  # alone on its township road
    with pytest.raises(ScenarioError, match="another on its segment; none is simulated"):
        plan_run(
            SimulationConfig(scenarios=("accident_two_cameras",), duration=60),
            synthetic_registry(6, seed=1),
        )


def test_river_scenarios_without_placed_stations_stay_on_their_target() -> None:
    registry = synthetic_registry(6, seed=1)  # no rivers in segments, no km
    (assignment,) = plan_run(
        SimulationConfig(scenarios=("flood_wave",), duration=60), registry
    ).assignments
    assert assignment.device_id == "syn-river-0001" and assignment.reaches == ()


def test_help_lists_the_travelling_scenarios() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for name in ("flood_wave", "pollution_plume", "accident_two_cameras", "wrong_way"):
        assert name in SCENARIOS and name in text
