"""Batching by size and age, owned by one piece (as Telegraf's running_output does).

Sealed batches wait for the writer. ``add`` never waits: it is called from the consumer's
synchronous hot path. What bounds memory is upstream: every line of a device message is an
unacknowledged QoS 1 message, and the broker sends no more than its in-flight window
(``max_inflight_messages``) of those until we acknowledge — which we do only once the writer
has made them durable (``ingest/mqtt/acks.py``). A slow database therefore slows the broker's
sending, not our memory; the consumer also stops reading the socket past a bound.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class Batch:
    """Lines to write together, and how many of them belong to each measurement."""

    lines: list[str] = field(default_factory=list)
    per_measurement: Counter[str] = field(default_factory=Counter)
    # Per line: the ack token of its message (acks.py), None for citysense's own points.
    tokens: list[int | None] = field(default_factory=list)
    own: int = 0  # lines that are citysense's own points (alerts), not counted per measurement


class Batcher:
    """Collects lines; seals a batch at ``size`` lines or ``interval_s`` after its first."""

    def __init__(self, size: int, interval_s: float) -> None:
        self._size = size
        self._interval_s = interval_s
        self._open = Batch()
        self._opened_at = 0.0
        self._sealed: deque[Batch] = deque()
        self._writing = 0  # lines handed to the writer and not yet done
        self._ready = asyncio.Event()  # a sealed batch is waiting, or we are closing
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Lines accepted and not yet confirmed written or refused."""
        return len(self._open.lines) + sum(len(b.lines) for b in self._sealed) + self._writing

    @property
    def pending_batches(self) -> int:
        """Sealed batches waiting for the writer."""
        return len(self._sealed)

    def add(
        self, line: str, measurement: str, token: int | None = None, *, own: bool = False
    ) -> None:
        """Add a line (never waits; see the module docstring for what bounds memory).

        ``own``: a point of citysense's own (an alert), outside the message ledger.
        """
        batch = self._open
        if not batch.lines:
            self._opened_at = asyncio.get_running_loop().time()
        batch.lines.append(line)
        batch.tokens.append(token)
        if own:
            batch.own += 1
        else:
            batch.per_measurement[measurement] += 1
        if len(batch.lines) >= self._size:
            self._seal()

    def _seal(self) -> None:
        if self._open.lines:
            self._sealed.append(self._open)
            self._open = Batch()
            self._ready.set()

    async def run_timer(self) -> None:
        """Seal the open batch when it is ``interval_s`` old; return once closed."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            due = self._opened_at + self._interval_s
            if self._open.lines and loop.time() >= due:
                self._seal()
                due = loop.time() + self._interval_s
            idle = self._interval_s / 4
            await asyncio.sleep(max(0.01, due - loop.time()) if self._open.lines else idle)

    async def next_batch(self) -> Batch | None:
        """The oldest sealed batch, waiting for one; None once closed and drained."""
        while not self._sealed:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        batch = self._sealed.popleft()
        self._writing += len(batch.lines)
        return batch

    def done(self, batch: Batch) -> None:
        """The writer has finished with ``batch`` (written or refused)."""
        self._writing -= len(batch.lines)

    def close(self) -> None:
        """Seal what is open and let the writer drain; no more lines are expected."""
        self._seal()
        self._closed = True
        self._ready.set()
