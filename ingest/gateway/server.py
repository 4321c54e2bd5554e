"""The field gateway: a TCP server per protocol that publishes stations' frames as their devices.

For each frame a station sends: publish its readings at QoS 1 on the station's own topic,
wait for the broker's PUBACK, and only then answer the station. A frame that is refused
(bad CRC, unknown station, wrong password, …) is answered not at all, counted, logged and kept
as a dead letter under its reason with the raw frame (password masked), and the connection
goes on; a connection that sends nothing usable ``MAX_REFUSALS`` times in a row is closed.

One ``asyncio.TaskGroup`` owns the broker connection, the dead-letter commits and the status
line; the listening socket stops first at shutdown, then the stations' connections (a frame
caught half-way is not answered, so its station sends it again), then the dead letters flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from ingest.gateway.dialects import Dialect
from ingest.gateway.guesses import PasswordGuesses
from ingest.gateway.publisher import GatewayPublisher
from ingest.gateway.translate import Accepted, Refused
from ingest.settings import Settings
from ingest.sinks.deadletters import NewDeadLetter

log = logging.getLogger(__name__)

READ_BYTES = 16_384  # per read and per connection's buffer: 10,000 stations hold ≤ 160 MB
MAX_REFUSALS = 32  # refusals in a row on one connection, with nothing accepted between
# A connection must bring a frame we accept this soon, or it is closed: a station sends as
# soon as it connects, and idle sockets that never identify themselves would otherwise hold
# the gateway's connection slots for gateway_idle_s each.
FIRST_FRAME_S = 60.0
ANSWER_S = 30.0  # how long an answer may wait for the station to read it
MAX_WAITING_DEAD_LETTERS = 10_000  # beyond: counted and dropped (a junk flood, memory bound)


class DeadLetterSink(Protocol):
    """Where refused frames go: ``add`` never waits (``ingest.sinks.deadletters`` buffer)."""

    def add(self, row: NewDeadLetter) -> None: ...

    @property
    def pending(self) -> int: ...


class GatewayServer:
    """Serves one protocol's stations; counts what it did (``counts``)."""

    def __init__(
        self,
        settings: Settings,
        dialect: Dialect,
        publisher: GatewayPublisher,
        dead_letters: DeadLetterSink,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._dialect = dialect
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._clock = clock
        self._connections: set[asyncio.Task[None]] = set()
        self._guesses = PasswordGuesses()
        self._stopping = False
        self.counts: Counter[str] = Counter()

    async def serve(self, port: int, stop: asyncio.Event, on_ready: Callable[[int], None]) -> None:
        """Listen on ``port`` (0: any free one) until ``stop``; ``on_ready(port)`` once bound."""
        server = await asyncio.start_server(
            self._accept,
            self._settings.gateway_bind,
            port,
            ssl=self._tls(),
            ssl_handshake_timeout=10.0 if self._settings.gateway_tls_cert_file else None,
            limit=READ_BYTES,
        )
        bound = server.sockets[0].getsockname()[1]
        log.info(
            "gateway %s listening on %s:%d for %d stations",
            self._dialect.protocol,
            self._settings.gateway_bind,
            bound,
            self._dialect.stations,
        )
        on_ready(bound)
        try:
            await stop.wait()
        finally:
            self._stopping = True  # a connection accepted from here on is closed at once
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    def _tls(self) -> ssl.SSLContext | None:
        s = self._settings
        if s.gateway_tls_cert_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(s.gateway_tls_cert_file), s.gateway_tls_key_file)
        return context

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else "?"
        where = f"{host}:{peer[1]}" if isinstance(peer, tuple) else "?"
        refused = self._refused_at_connect(host)
        if refused:
            self.counts[refused] += 1
            writer.close()
            return
        self._connections.add(task)
        self.counts["connections"] += 1
        try:
            await self._station(reader, writer, host, where)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as e:
            log.debug("station %s: connection ended: %s", where, e)
        except asyncio.CancelledError:
            pass  # the gateway stops: this task is its own (start_server's), it ends here
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _refused_at_connect(self, host: str) -> str | None:
        """Why a new connection from ``host`` is closed at once, if it is."""
        if self._stopping:
            return "connections_refused_stopping"
        if len(self._connections) >= self._settings.gateway_max_stations:
            return "connections_refused"
        if self._guesses.shut_out(host):
            return "connections_refused_guessing"
        return None

    async def _station(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, where: str
    ) -> None:
        splitter = self._dialect.splitter()
        refusals = 0
        loop = asyncio.get_running_loop()
        identify_by: float | None = loop.time() + min(FIRST_FRAME_S, self._settings.gateway_idle_s)
        while True:
            idle_by = loop.time() + self._settings.gateway_idle_s
            try:
                async with asyncio.timeout_at(min(idle_by, identify_by or idle_by)):
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                self.counts["idle_closed" if identify_by is None else "never_identified"] += 1
                return
            if not data:
                return
            for item in splitter.feed(data):
                outcome = self._dialect.read(item, self._clock())
                if isinstance(outcome, Refused):
                    self._refuse(outcome, where)
                    if outcome.reason == "bad_password" and self._guesses.wrong(host):
                        log.warning("peer %s: too many wrong passwords; shut out", host)
                        return
                    refusals += 1
                    if refusals >= MAX_REFUSALS:
                        log.warning("station %s: %d refusals in a row; closing", where, refusals)
                        self.counts["junk_closed"] += 1
                        return
                    continue
                refusals = 0
                identify_by = None
                await self._accepted(outcome, writer, where)

    async def _accepted(self, outcome: Accepted, writer: asyncio.StreamWriter, where: str) -> None:
        self.counts["frames"] += 1
        self.counts["readings_left_out"] += outcome.left_out
        if not await self._publisher.publish(outcome.messages):
            # Not answered: the station sends the frame again (and the broker may be back).
            self.counts["unanswered"] += 1
            log.warning("station %s (%s): broker did not acknowledge", where, outcome.device_id)
            return
        self.counts["messages"] += len(outcome.messages)
        if outcome.answer is not None:
            writer.write(outcome.answer)
            async with asyncio.timeout(ANSWER_S):  # a peer that never reads is let go
                await writer.drain()
            self.counts["answered"] += 1

    def _refuse(self, refused: Refused, where: str) -> None:
        self.counts[f"refused_{refused.reason}"] += 1
        log.info("station %s: refused %s: %s", where, refused.reason, refused.detail)
        if self._dead_letters.pending >= MAX_WAITING_DEAD_LETTERS:
            self.counts["dead_letters_dropped"] += 1
            return
        who = refused.device_id or where
        self._dead_letters.add(
            NewDeadLetter(
                received_ms=int(time.time() * 1000),
                topic=f"gateway/{self._dialect.protocol}/{who}",
                # Under the protocol's own name: a flood of refused frames, which anyone who
                # reaches the port can send, prunes only its own kind, never the service's
                # dead letters of the same reason (out_of_range) from devices.
                reason=f"{self._dialect.protocol}.{refused.reason}",
                detail=refused.detail,
                payload=self._dialect.kept(refused.raw),
                size=len(refused.raw),
            )
        )

    def status(self, *, stopped: bool = False) -> str:
        """One log line of what has happened so far."""
        parts = [f"{k}={v}" for k, v in sorted(self.counts.items())]
        state = (
            "stopped" if stopped else "broker up" if self._publisher.connected else "broker DOWN"
        )
        return f"gateway {self._dialect.protocol}: {state}, " + " ".join(parts)
