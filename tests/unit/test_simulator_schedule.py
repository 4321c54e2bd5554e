"""Rate spreading, timelines and device selection."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest

from devices.kinds import Channel, Kind
from simulator import SimulationConfig, dry_run, synthetic_registry
from simulator.actions import Emit, Tick
from simulator.schedule import spread, timeline
from simulator.selection import select_devices

START_MS = int(datetime(2024, 7, 1, 12, tzinfo=timezone(timedelta(hours=8))).timestamp() * 1000)


@pytest.mark.parametrize(("devices", "rate"), [(10, 50.0), (60, 10.0), (1000, 200.0), (3, 0.5)])
def test_spread_gives_the_total_rate_within_ten_percent(devices: int, rate: float) -> None:
    duration = 60.0
    plans = spread(devices, rate)
    rng = random.Random(1)
    times = [t for plan in plans for t in _until(plan.times(rng), duration)]
    assert len(times) == pytest.approx(rate * duration, rel=0.1)
    # Spread evenly: every tenth of the run carries about a tenth of the messages.
    tenth = duration / 10
    for k in range(10):
        in_slice = sum(1 for t in times if k * tenth <= t < (k + 1) * tenth)
        assert in_slice == pytest.approx(rate * tenth, rel=0.1, abs=2)


def _until(times: object, end: float) -> list[float]:
    out = []
    for t in times:  # type: ignore[attr-defined]
        if t >= end:
            return out
        out.append(t)
    return out


def test_ticks_are_increasing_and_jittered() -> None:
    (plan,) = spread(1, 1.0)
    ticks = _until(plan.times(random.Random(3)), 100.0)
    assert ticks == sorted(ticks)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert min(gaps) > 0.75 and max(gaps) < 1.25
    assert len({round(g, 3) for g in gaps}) > 10  # not a metronome


def test_dry_run_publishes_the_asked_rate() -> None:
    registry = synthetic_registry(30, seed=2)
    config = SimulationConfig(rate=25.0, duration=120.0)
    messages = [m for _, m in dry_run(config, registry, START_MS)]
    scheduled = [m for m in messages if m.channel is not Channel.STATUS]
    assert len(scheduled) / config.duration == pytest.approx(config.rate, rel=0.1)
    assert sum(m.channel is Channel.STATUS for m in messages) == 2 * 30


def test_timeline_merges_cues_and_stops_at_the_end() -> None:
    merged = list(
        timeline(iter([0.5, 1.5, 2.5, 3.5]), iter([(1.0, Emit("accident")), (3.0, Emit("x"))]), 3.0)
    )
    assert merged == [(0.5, Tick()), (1.0, Emit("accident")), (1.5, Tick()), (2.5, Tick())]
    endless = timeline(iter(float(n) for n in range(10**9)), iter([]), None)
    assert next(endless) == (0.0, Tick())


def test_spread_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        spread(0, 1.0)
    with pytest.raises(ValueError):
        spread(3, 0.0)
    with pytest.raises(ValueError):
        spread(3, 1.0, jitter=0.6)


def test_selection_is_balanced_across_kinds_in_registry_order() -> None:
    # A registry that lists every gate first, then rivers, then roads.
    mixed = synthetic_registry(30, seed=1)
    by_kind = sorted(mixed.devices.values(), key=lambda d: list(Kind).index(d.kind))
    from devices.registry import Registry

    grouped = Registry(mixed.areas.values(), by_kind)
    chosen = select_devices(grouped, list(Kind), 6)
    assert [d.id for d in chosen] == [
        "syn-gate-0001", "syn-gate-0002",
        "syn-river-0001", "syn-river-0002",
        "syn-road-0001", "syn-road-0002",
    ]  # fmt: skip
    assert [d.kind for d in select_devices(grouped, [Kind.ROAD], 2)] == [Kind.ROAD, Kind.ROAD]
    assert len(select_devices(grouped, list(Kind))) == 30
    assert len(select_devices(grouped, list(Kind), 500)) == 30


def test_selection_gives_a_short_kind_s_turns_to_the_others() -> None:
    registry = synthetic_registry(7, [Kind.GATE, Kind.GATE, Kind.GATE, Kind.RIVER], seed=1)
    kinds = [d.kind for d in select_devices(registry, [Kind.GATE, Kind.RIVER, Kind.ROAD], 6)]
    assert kinds.count(Kind.RIVER) == 1 and kinds.count(Kind.GATE) == 5


def test_no_device_ticks_less_often_than_its_report_interval() -> None:
    from simulator.schedule import at_most_every

    slow = spread(60, 0.5)[7]  # 120 s between ticks at this rate
    capped = at_most_every(slow, 30.0)
    assert capped.interval_s == 30.0 and 0 <= capped.phase_s < 30.0
    fast = spread(60, 10.0)[7]
    assert at_most_every(fast, 30.0) is fast
