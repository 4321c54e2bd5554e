"""The live alert feed: each listener gets what it may see, in order; a slow one loses the
oldest changes and is told how many, and never slows the publisher."""

from __future__ import annotations

import asyncio

from devices.kinds import Kind, Level
from ingest.alerts.feed import AlertFeed, Change
from rules.alerts import open_alert
from rules.model import Severity


def change(grid: str, n: int) -> Change:
    alert, event = open_alert(
        rule_id="gate_forced_open",
        severity=Severity.MAJOR,
        device_id=f"g{n}",
        kind=Kind.GATE,
        areas={Level.GRID: grid, Level.CITY: "c"},
        at_ms=1_795_000_000_000 + n,
        value="forced_open",
        detail="",
    )
    return Change(alert, event, f"中文 {n}", f"english {n}")


async def test_listeners_get_only_what_they_may_see_in_order() -> None:
    feed = AlertFeed()
    async with feed.listen(lambda a: a.areas[Level.GRID] == "g1") as mine:
        async with feed.listen(lambda a: True) as everyone:
            assert feed.listeners == 2
            for n, grid in enumerate(["g1", "g2", "g1"]):
                feed.publish(change(grid, n))
            assert [(await mine.next()).alert.device_id for _ in range(2)] == ["g0", "g2"]
            got = [(await everyone.next()).alert.device_id for _ in range(3)]
            assert got == ["g0", "g1", "g2"]
        assert feed.listeners == 1
    assert feed.listeners == 0


async def test_a_slow_listener_loses_the_oldest_and_is_told() -> None:
    feed = AlertFeed(queue_size=3)
    async with feed.listen(lambda a: True) as slow:
        for n in range(5):
            feed.publish(change("g1", n))  # never blocks, whatever the listener does
        assert slow.missed == 2
        kept = [(await slow.next()).alert.device_id for _ in range(3)]
        assert kept == ["g2", "g3", "g4"]
        waiting = asyncio.create_task(slow.next())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing more: it waits
        feed.publish(change("g1", 9))
        assert (await waiting).alert.device_id == "g9"
