"""One field station's TCP connection to its gateway: send a frame, wait for its answer, resend.

The retry rule is the standards' (HJ 212-2017 OverTime/ReCount; SL 651 stations alike): a
frame that asks for an answer and gets none within ``timeout_s`` is sent again, at most
``resends`` times, then given up. The gateway answers only once the broker has the readings,
so an answer is the station's proof of delivery, as a PUBACK is an MQTT device's.

The gateway may go away at any moment (restarted, killed): a connection that breaks while a
frame waits ends that attempt at once, and the next attempt opens a new connection and sends
the same frame again — the same bytes, so the gateway can tell a copy (same QN, same serial).
An attempt whose connection cannot be opened waits out its timeout before the next, so a
frame is tried for about ``(1 + resends) × timeout_s`` before it is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from simulator.config import GatewayTarget
from simulator.report import StationCounts
from simulator.stationframes import AnswerReader, Frame, StationFramer

READ_BYTES = 4096
CONNECT_TIMEOUT_S = 5.0


class StationLink:
    """The connection of one station; ``send`` is its only way to speak."""

    def __init__(
        self,
        target: GatewayTarget,
        framer: StationFramer,
        counts: StationCounts,
        timeout_s: float,
        resends: int,
    ) -> None:
        self.target = target
        self.framer = framer
        self._counts = counts
        self._timeout_s = timeout_s
        self._resends = resends
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None  # ends when the connection does
        self._waiting_for: str | None = None
        self._answered = asyncio.Event()
        self.opened = 0  # connections opened: more than one means it reconnected
        self.last_answered = False  # whether the last frame sent was answered

    @property
    def is_open(self) -> bool:
        """Whether the connection is up, as far as this side knows."""
        return self._reading is not None and not self._reading.done()

    async def open(self) -> None:
        """Connect; raises OSError (refused, unreachable, timed out)."""
        await self.close()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        except TimeoutError as e:
            raise OSError(f"no connection within {CONNECT_TIMEOUT_S:g} s") from e
        self._writer = writer
        self._reading = asyncio.create_task(self._read(reader, self.framer.reader()))
        self._counts.connections += 1
        self.opened += 1

    async def send(self, frame: Frame) -> bool:
        """Send ``frame`` until it is answered (True) or every resend went unanswered (False).

        A frame that wants no answer is sent once and counts as delivered when written.
        Cancelled while an answer is due, it still waits out the current attempt for it (the
        gateway may have published already), so the report matches what the broker got.
        """
        self._counts.sent += 1
        self.last_answered = False
        self._waiting_for = frame.key
        self._answered.clear()
        loop = asyncio.get_running_loop()
        try:
            for attempt in range(1 + self._resends):
                deadline = loop.time() + self._timeout_s
                if attempt:
                    self._counts.resent += 1
                if not await self._write(frame.data):
                    await asyncio.sleep(max(0.0, deadline - loop.time()))  # wait out the attempt
                    continue
                if not frame.wants_answer:
                    self.last_answered = True
                    return True
                try:
                    answered = await self._answer_or_break(deadline)
                except asyncio.CancelledError:
                    if await asyncio.shield(self._answer_or_break(deadline)):
                        self._answered_now()
                    raise
                if answered:
                    self._answered_now()
                    return True
            self._counts.unanswered += 1
            return False
        finally:
            self._waiting_for = None

    def _answered_now(self) -> None:
        self._counts.answered += 1
        self.last_answered = True

    async def _write(self, data: bytes) -> bool:
        """Write on the connection, opening one first if there is none; False if it failed."""
        if not self.is_open:
            try:
                await self.open()
            except OSError:
                return False
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            await self.close()
            return False
        return True

    async def _answer_or_break(self, deadline: float) -> bool:
        """Wait until the answer comes (True), the connection breaks or the deadline (False)."""
        answered = asyncio.ensure_future(self._answered.wait())
        waits: set[asyncio.Future[Any]] = {answered}
        if self._reading is not None:
            waits.add(self._reading)
        delay = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
        return self._answered.is_set()

    async def _read(self, reader: asyncio.StreamReader, answers: AnswerReader) -> None:
        """Read the gateway's answers until the connection ends; wake the frame waiting."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(READ_BYTES):
                # Every byte goes through the splitter, so frames stay aligned; an answer to
                # a frame already given up, or anything else, is ignored.
                keys = answers.feed(data)
                if self._waiting_for is not None and self._waiting_for in keys:
                    self._answered.set()

    async def drop(self) -> None:
        """Lose the connection the way a power cut does: no orderly close of the stream."""
        writer = self._writer
        if writer is not None:
            writer.transport.abort()
        await self.close()

    async def close(self) -> None:
        """Close the connection; safe to repeat, and after it broke."""
        writer, self._writer = self._writer, None
        reading, self._reading = self._reading, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if reading is not None:
            reading.cancel()
            await asyncio.wait((reading,))  # unlike awaiting it, keeps our own cancellation
