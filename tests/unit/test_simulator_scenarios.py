"""Each scenario produces the anomaly its alert rule will look for, on a deterministic device."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from devices.kinds import Channel, Kind
from devices.payloads import GateEvent, RiverTelemetry, RoadEvent, RoadTelemetry
from devices.registry import Registry, RiverDevice, RoadDevice
from simulator import SCENARIOS, ScenarioError, SimulationConfig, dry_run, synthetic_registry
from simulator.device import Outgoing
from simulator.scenarios import assign
from simulator.selection import select_devices

CST = timezone(timedelta(hours=8))
START_MS = int(datetime(2024, 7, 1, 10, tzinfo=CST).timestamp() * 1000)
AT_S = 20.0


@pytest.fixture(scope="module")
def city() -> Registry:
    return synthetic_registry(9, seed=4)  # 3 gates, 3 rivers, 3 roads, interleaved


def run(registry: Registry, scenario: str, **options: Any) -> list[tuple[float, Outgoing]]:
    options.setdefault("duration", 240.0)
    options.setdefault("rate", 9 / 2)  # every device every 2 s
    options.setdefault("seed", 11)
    config = SimulationConfig(scenarios=(scenario,), scenario_at=AT_S, **options)
    return list(dry_run(config, registry, START_MS))


def payloads(messages: list[tuple[float, Outgoing]], device_id: str, channel: Channel) -> list[Any]:
    return [
        (t, m.payload) for t, m in messages if m.device_id == device_id and m.channel is channel
    ]


def level(reading: RiverTelemetry) -> float:
    assert reading.water_level_m is not None
    return reading.water_level_m


def test_flood_crosses_warning_then_guarantee_within_about_a_minute(city: Registry) -> None:
    station = city.devices["syn-river-0001"]
    assert isinstance(station, RiverDevice)
    readings: list[tuple[float, RiverTelemetry]] = payloads(
        run(city, "flood"), station.id, Channel.TELEMETRY
    )
    before = [r for t, r in readings if t < AT_S]
    assert before and max(map(level, before)) < station.warning_level_m
    warning_at = next(t for t, r in readings if level(r) >= station.warning_level_m)
    guarantee_at = next(t for t, r in readings if level(r) >= station.guarantee_level_m)
    assert AT_S < warning_at < guarantee_at <= AT_S + 65
    # Far more than the 0.3 m/h a rate-of-change rule looks for, measured on device time.
    first = before[-1]
    crossed = next(r for t, r in readings if t == guarantee_at)
    rise_m_per_h = (level(crossed) - level(first)) / ((crossed.ts - first.ts) / 3.6e6)
    assert rise_m_per_h > 0.3
    # The level stays up, it keeps raining hard, and the flow follows the level.
    after = [r for t, r in readings if t > AT_S + 70]
    assert all(level(r) > station.guarantee_level_m for r in after)
    assert sum(r.rainfall_mm or 0.0 for r in after) > 1.0
    assert (after[0].flow_m3s or 0.0) > 2 * (first.flow_m3s or 0.0)


def test_flood_leaves_other_stations_alone(city: Registry) -> None:
    messages = run(city, "flood")
    other = city.devices["syn-river-0002"]
    assert isinstance(other, RiverDevice)
    levels = [r.water_level_m for _, r in payloads(messages, other.id, Channel.TELEMETRY)]
    assert max(levels) < other.warning_level_m


def test_pollution_is_worse_than_class_v(city: Registry) -> None:
    readings: list[tuple[float, RiverTelemetry]] = payloads(
        run(city, "pollution"), "syn-river-0001", Channel.TELEMETRY
    )
    before = [r for t, r in readings if t < AT_S]
    after = [r for t, r in readings if t >= AT_S]
    assert before and after
    for r in before:  # class III or better before the spill
        assert r.nh3n_mgl is not None and r.nh3n_mgl <= 1.0
        assert r.tp_mgl is not None and r.tp_mgl <= 0.2
        assert r.codmn_mgl is not None and r.codmn_mgl <= 6.0
        assert r.do_mgl is not None and r.do_mgl >= 5.0
    for r in after:  # GB 3838-2002 class V limits: NH3-N 2.0, TP 0.4, CODMn 15, DO 2
        assert r.nh3n_mgl is not None and r.nh3n_mgl > 2.0
        assert r.tp_mgl is not None and r.tp_mgl > 0.4
        assert r.codmn_mgl is not None and r.codmn_mgl > 15.0
        assert r.do_mgl is not None and r.do_mgl < 2.0


def test_pollution_forces_an_analyser_on_a_level_only_station() -> None:
    rivers = synthetic_registry(20, [Kind.RIVER], seed=3)
    baseline = list(dry_run(SimulationConfig(rate=20, duration=1.5), rivers, START_MS))
    hydro = [
        m.device_id
        for _, m in baseline
        if m.channel is Channel.TELEMETRY and m.payload.ph is None  # type: ignore[union-attr]
    ]
    assert hydro
    config = SimulationConfig(
        rate=20,
        duration=10,
        scenarios=("pollution",),
        scenario_at=1,
        scenario_device={"pollution": hydro[0]},
    )
    spilled = [
        m.payload
        for t, m in dry_run(config, rivers, START_MS)
        if m.device_id == hydro[0] and m.channel is Channel.TELEMETRY and t >= 1
    ]
    assert spilled and all(p.nh3n_mgl > 2.0 for p in spilled)  # type: ignore[union-attr]


def test_accident_then_speeds_collapse_queue_grows_and_congestion(city: Registry) -> None:
    messages = run(city, "accident", duration=300.0)
    events: list[tuple[float, RoadEvent]] = payloads(messages, "syn-road-0001", Channel.EVENT)
    accidents = [t for t, e in events if e.event == "accident"]
    assert accidents == [AT_S]
    congestion = [t for t, e in events if e.event == "congestion"]
    assert len(congestion) >= 5 and min(congestion) > AT_S
    reports: list[tuple[float, RoadTelemetry]] = payloads(
        messages, "syn-road-0001", Channel.TELEMETRY
    )
    normal = [r for t, r in reports if t < AT_S and r.avg_speed_kmh is not None]
    stalled = [r for t, r in reports if t > AT_S + 100]
    assert min(r.avg_speed_kmh for r in normal) > 20  # type: ignore[type-var]
    assert all(r.avg_speed_kmh is not None and r.avg_speed_kmh < 12 for r in stalled)
    assert all(r.occupancy_pct is not None and r.occupancy_pct > 60 for r in stalled)
    queue = [r.queue_length_m for t, r in reports if t > AT_S]
    assert queue == sorted(queue) and queue[-1] > 1000  # type: ignore[type-var]


def test_wrong_way_sightings_on_the_first_road_while_traffic_goes_on(city: Registry) -> None:
    messages = run(city, "wrong_way")
    camera = city.devices["syn-road-0001"]
    assert isinstance(camera, RoadDevice)
    events: list[tuple[float, RoadEvent]] = payloads(messages, camera.id, Channel.EVENT)
    sightings = [(t, e) for t, e in events if e.event == "wrong_way"]
    assert [t for t, _ in sightings] == [AT_S, AT_S + 25]
    for _, e in sightings:  # what the traffic police need: where, how fast, who
        assert e.lane is not None and 1 <= e.lane <= camera.lanes
        assert e.plate and e.confidence is not None
        # Slow, well under the limit: nothing here reads as speeding.
        assert e.speed_kmh is not None and 0 < e.speed_kmh < camera.speed_limit_kmh
    # Only this camera, and nothing that a congestion or accident rule would take up.
    others = [m for _, m in messages if m.channel is Channel.EVENT and m.device_id != camera.id]
    assert all(m.payload.event != "wrong_way" for m in others)  # type: ignore[union-attr]
    assert not {e.event for _, e in events} & {"accident", "congestion"}
    # Traffic goes on: after the sightings the camera keeps reporting free-flowing traffic.
    reports: list[tuple[float, RoadTelemetry]] = payloads(messages, camera.id, Channel.TELEMETRY)
    after = [r for t, r in reports if t > AT_S]
    assert len(after) > 50
    assert all(r.occupancy_pct is not None and r.occupancy_pct < 60 for r in after)
    speeds = [r.avg_speed_kmh for r in after if r.avg_speed_kmh is not None]
    assert speeds and min(speeds) > 20


def test_wrong_way_is_the_same_run_for_the_same_seed(city: Registry) -> None:
    first = [(t, m.device_id, m.body()) for t, m in run(city, "wrong_way", duration=60.0)]
    again = [(t, m.device_id, m.body()) for t, m in run(city, "wrong_way", duration=60.0)]
    assert first == again
    other = [(t, m.device_id, m.body()) for t, m in run(city, "wrong_way", duration=60.0, seed=12)]
    assert other != first


def test_tailgating_three_times_within_a_minute_then_forced_open(city: Registry) -> None:
    events: list[tuple[float, GateEvent]] = payloads(
        run(city, "tailgating"), "syn-gate-0001", Channel.EVENT
    )
    tailgating = [t for t, e in events if e.event == "tailgating"]
    assert len(tailgating) >= 3
    assert any(sum(1 for t in tailgating if start <= t < start + 60) >= 3 for start in tailgating)
    forced = [t for t, e in events if e.event == "forced_open"]
    assert len(forced) == 1 and AT_S < forced[0] < AT_S + 60
    assert all(e.direction == "in" for _, e in events if e.event == "tailgating")


def test_silent_device_publishes_nothing_after_the_start(city: Registry) -> None:
    messages = run(city, "silent")
    target = "syn-gate-0001"  # the first device in registry order
    after = [(t, m) for t, m in messages if m.device_id == target and t >= AT_S]
    # Hung, though still connected: nothing at all, not even the clean stop's offline status
    # (a planned stop would excuse its silence).
    assert after == []
    before = [m for t, m in messages if m.device_id == target and 0 < t < AT_S]
    assert sum(m.channel is not Channel.STATUS for m in before) > 3


def test_offline_device_stops_and_sends_no_goodbye(city: Registry) -> None:
    messages = run(city, "offline")
    target = [m for t, m in messages if m.device_id == "syn-gate-0001"]
    assert all(t < AT_S for t, m in messages if m.device_id == "syn-gate-0001")
    assert target[-1].channel is not Channel.STATUS  # the broker's will says offline, not us
    others = [m for _, m in messages if m.device_id == "syn-gate-0002"]
    assert others[-1].channel is Channel.STATUS


def test_default_targets_are_first_of_kind_and_distinct_for_any_kind(city: Registry) -> None:
    devices = select_devices(city, list(Kind))
    names = ["silent", "flood", "offline", "accident", "wrong_way", "pollution", "tailgating"]
    assigned = {a.scenario.name: a.device_id for a in assign(names, devices, 5.0)}
    assert assigned == {
        "flood": "syn-river-0001",
        "pollution": "syn-river-0001",
        "accident": "syn-road-0001",
        "wrong_way": "syn-road-0001",
        "tailgating": "syn-gate-0001",
        # Scenarios for any device avoid the devices already taken, in registry order.
        "silent": "syn-gate-0002",
        "offline": "syn-river-0002",
    }
    assert [a.scenario.name for a in assign(names, devices, 5.0)] == names


def test_scenario_device_can_be_chosen_and_is_checked(city: Registry) -> None:
    devices = select_devices(city, list(Kind))
    chosen = assign(
        ["flood", "silent"], devices, 0.0, {"flood": "syn-river-0003", "*": "syn-road-0002"}
    )
    assert {a.scenario.name: a.device_id for a in chosen} == {
        "flood": "syn-river-0003",
        "silent": "syn-road-0002",
    }
    with pytest.raises(ScenarioError, match="needs a river device; syn-gate-0001 is a gate"):
        assign(["flood"], devices, 0.0, {"*": "syn-gate-0001"})
    with pytest.raises(ScenarioError, match="not being simulated"):
        assign(["silent"], devices, 0.0, {"silent": "nope"})
    with pytest.raises(ScenarioError, match="needs a road device; none is simulated"):
        assign(["accident"], select_devices(city, [Kind.GATE]), 0.0)


def test_scenario_start_defaults() -> None:
    assert SimulationConfig(duration=300, scenarios=("flood",)).scenario_start_s == 30.0
    assert SimulationConfig(duration=0, scenarios=("flood",)).scenario_start_s == 5.0
    assert SimulationConfig(scenario_at=7, scenarios=("flood",)).scenario_start_s == 7.0
    with pytest.raises(ValueError, match="after the run ends"):
        SimulationConfig(duration=10, scenario_at=10, scenarios=("flood",))
    with pytest.raises(ValueError, match="unknown scenario"):
        SimulationConfig(scenarios=("meteor",))


def test_every_scenario_is_described() -> None:
    assert set(SCENARIOS) == {
        "flood",
        "pollution",
        "accident",
        "wrong_way",
        "tailgating",
        "silent",
        "offline",
        "flood_wave",
        "pollution_plume",
        "accident_two_cameras",
    }
    for scenario in SCENARIOS.values():
        assert scenario.summary and scenario.name
