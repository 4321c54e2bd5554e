"""Small fakes for the field gateway's server (ingest/gateway/server.py): a publisher that
does what the test says instead of a broker, and a dead-letter sink that records."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from devices.registry import Registry, RiverDevice
from ingest.sinks.deadletters import NewDeadLetter


def first_station(city: Registry, protocol: str) -> RiverDevice:
    """The registry's first station (by id) of ``protocol``."""
    return sorted(city.stations_of(protocol).values(), key=lambda d: d.id)[0]


class FakePublisher:
    """Records what it was asked to publish; ``ok`` is the broker's answer, ``release`` when."""

    connected = True

    def __init__(self) -> None:
        self.ok = True
        self.calls: list[Sequence[tuple[str, bytes]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        await self.release.wait()
        self.calls.append(messages)
        return self.ok


class Letters:
    """A dead-letter sink that keeps every row."""

    def __init__(self) -> None:
        self.rows: list[NewDeadLetter] = []

    def add(self, row: NewDeadLetter) -> None:
        self.rows.append(row)

    @property
    def pending(self) -> int:
        return 0
