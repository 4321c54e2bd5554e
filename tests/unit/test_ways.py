"""A way's state on the map (ingest/api/ways.py): the worst unresolved alert of its devices,
per segment and for the whole way; devices in order along it."""

from __future__ import annotations

from devices.alongway import along
from devices.kinds import Kind, Level
from devices.registry import Registry
from ingest.api.ways import device_states, way_of_devices, worst
from rules.alerts import Alert
from rules.model import Severity


def alert(device: str, severity: Severity, n: int = 0) -> Alert:
    return Alert(
        id=f"A-{n:012d}",
        rule_id="r",
        severity=severity,
        device_id=device,
        kind=Kind.RIVER,
        areas={Level.GRID: "g"},
        opened_ms=1,
        updated_ms=1,
    )


def test_worst_ranks_severities_and_none_is_the_least() -> None:
    assert worst([]) == "none"
    assert worst(["none", "none"]) == "none"
    assert worst([Severity.INFO, Severity.CRITICAL, Severity.WARNING]) == "critical"
    assert worst([Severity.WARNING, "none", Severity.MAJOR]) == "major"
    assert worst([Severity.INFO]) == "info"


def test_device_states_keep_each_devices_worst() -> None:
    states = device_states(
        [
            alert("a", Severity.WARNING, 1),
            alert("a", Severity.CRITICAL, 2),
            alert("b", Severity.INFO, 3),
        ]
    )
    assert states == {"a": "critical", "b": "info"}


def test_a_way_is_as_bad_as_its_worst_station_and_only_that_segment_with_it(
    registry: Registry,
) -> None:
    river = registry.rivers["zijiang"]
    stations = along(registry, river)
    assert [d.km for d in stations] == sorted(d.km or 0 for d in stations)
    quiet = way_of_devices(river, "river", stations, {})
    assert quiet.state == "none" and {s.state for s in quiet.segments} == {"none"}
    upstream = stations[0]
    downstream = stations[-1]
    states = device_states(
        [alert(upstream.id, Severity.CRITICAL, 1), alert(downstream.id, Severity.WARNING, 2)]
    )
    way = way_of_devices(river, "river", stations, states)
    assert way.state == "critical"
    assert [d.id for d in way.devices] == [d.id for d in stations]
    by_segment = {s.id: s.state for s in way.segments}
    assert by_segment[upstream.segment or ""] == "critical"
    assert by_segment[downstream.segment or ""] == "warning"
    assert [s for s, st in by_segment.items() if st == "none"] == [
        s.id for s in river.segments if s.id not in {upstream.segment, downstream.segment}
    ]
    assert next(d for d in way.devices if d.id == upstream.id).state == "critical"


def test_devices_not_given_are_not_on_the_way(registry: Registry) -> None:
    road = registry.roads["g207"]
    cameras = along(registry, road)
    shown = cameras[1:]
    states = device_states([alert(cameras[0].id, Severity.CRITICAL)])
    way = way_of_devices(road, "road", shown, states)
    assert [d.id for d in way.devices] == [d.id for d in shown]
    assert way.state == "none"  # the alerted camera is not among those shown
