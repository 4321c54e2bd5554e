"""Alert changes fanned out to live listeners (the API's Server-Sent Events stream).

Each listener has a small bounded queue of its own. A listener that does not keep up loses
the oldest changes and is told how many it missed, rather than slowing the alert path or
growing memory: the store has the full history for anyone who needs to catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rules.alerts import Alert, AlertEvent


@dataclass(frozen=True, slots=True)
class Change:
    """One alert change as listeners see it."""

    alert: Alert
    event: AlertEvent
    message_zh: str
    message_en: str


class Listener:
    """One live listener: changes it may see, in order, oldest dropped when it lags."""

    def __init__(self, wants: Callable[[Alert], bool], size: int) -> None:
        self._wants = wants
        self._queue: asyncio.Queue[Change] = asyncio.Queue(size)
        self.missed = 0

    def offer(self, change: Change) -> None:
        """Queue the change if the listener may see it; drop the oldest when full."""
        if not self._wants(change.alert):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.missed += 1
        self._queue.put_nowait(change)

    async def next(self) -> Change:
        """The next change, waiting for it."""
        return await self._queue.get()


class AlertFeed:
    """Publish alert changes to every current listener; never blocks the publisher."""

    def __init__(self, queue_size: int = 256) -> None:
        self._listeners: set[Listener] = set()
        self._size = queue_size

    @property
    def listeners(self) -> int:
        """How many listeners are connected."""
        return len(self._listeners)

    def publish(self, change: Change) -> None:
        """Hand a change to every listener that may see it."""
        for listener in self._listeners:
            listener.offer(change)

    @asynccontextmanager
    async def listen(self, wants: Callable[[Alert], bool]) -> AsyncIterator[Listener]:
        """A listener for the duration of the block (e.g. one HTTP stream)."""
        listener = Listener(wants, self._size)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
