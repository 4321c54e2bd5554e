"""Spontaneous road events come at a rate in time, whatever the publishing --rate."""

from pathlib import Path

from devices.kinds import Kind
from devices.registry import load_registry
from simulator import SimulationConfig, dry_run

REGISTRY = load_registry(Path(__file__).resolve().parents[2] / "config" / "registry.yaml")
EIGHT_AM_LOCAL = 1_794_960_000_000  # 2026-11-18T00:00Z = 08:00 in Shaoyang


def road_events_per_camera_hour(rate: float) -> float:
    config = SimulationConfig(rate=rate, duration=3600, kinds=(Kind.ROAD,), seed=3)
    events = sum(
        1
        for _, out in dry_run(config, REGISTRY, EIGHT_AM_LOCAL)
        if out.payload.__dict__.get("event") is not None
    )
    cameras = sum(d.kind is Kind.ROAD for d in REGISTRY.devices.values())
    return events / cameras


def test_event_rate_does_not_follow_the_message_rate() -> None:
    slow, fast = road_events_per_camera_hour(5), road_events_per_camera_hour(50)
    assert 3 <= slow <= 12 and 3 <= fast <= 12  # 3 to 8 an hour expected at the peak
    assert fast / slow < 1.5  # ten times the messages, about the same events
