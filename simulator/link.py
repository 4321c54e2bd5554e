"""One device's MQTT connection: will, retained status, QoS 1 publishing, and a hard drop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack

import aiomqtt

from simulator.config import MqttTarget
from simulator.device import Outgoing

QOS = 1  # docs/payloads.md: at least once for telemetry, events and status
DISCONNECTION_WAIT_S = 2.0  # how long to wait for aiomqtt to notice a connection is gone


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Return when the client's connection ends, however it ends.

    aiomqtt offers no public "disconnected" awaitable, but its message iterator ends with
    MqttError exactly then. Reading the error here also keeps asyncio from logging "Future
    exception was never retrieved" for every lost connection. A publisher never subscribes,
    so the iterator yields nothing before that.
    """
    with contextlib.suppress(aiomqtt.MqttError):
        async for _ in client.messages:
            pass


def _acknowledged(in_flight: asyncio.Future[None]) -> bool:
    return in_flight.done() and not in_flight.cancelled() and in_flight.exception() is None


class DeviceLink:
    """The connection of one simulated device, identified to the broker by its device id."""

    def __init__(self, target: MqttTarget, identifier: str, will: Outgoing, timeout_s: float):
        self._target = target
        self._identifier = identifier
        self._will = will
        self._timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Task[None] | None = None  # ends when the connection does
        self._stack = AsyncExitStack()

    @property
    def is_open(self) -> bool:
        """Whether a connection is up, as far as this side knows."""
        return self._client is not None and self._lost is not None and not self._lost.done()

    async def open(self) -> None:
        """Connect with a clean session and the retained offline status as last will."""
        username, password = self._target.credentials(self._identifier)
        client = aiomqtt.Client(
            self._target.host,
            self._target.port,
            username=username,
            password=password,
            identifier=self._identifier,
            clean_session=True,
            will=aiomqtt.Will(self._will.topic, self._will.body(), qos=QOS, retain=True),
            timeout=self._timeout_s,
        )
        # aiomqtt connects in an executor thread that a cancellation cannot stop: a connect
        # cancelled half-way would leave a live, orphaned connection. Shield it, and if we are
        # cancelled let it finish and disconnect it cleanly before passing the cancellation on.
        # (The shield also makes the cancellation reliable: inside, aiomqtt's asyncio.wait_for
        # can swallow one on Python 3.11, CPython gh-86296.)
        entering = asyncio.ensure_future(self._stack.enter_async_context(client))
        try:
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            with contextlib.suppress(aiomqtt.MqttError):
                await entering
            await self.close()
            raise
        self._client = client
        self._lost = asyncio.ensure_future(_until_disconnected(client))

    async def publish(self, message: Outgoing, acknowledged: Callable[[Outgoing], None]) -> None:
        """Publish at QoS 1 and call ``acknowledged`` when the broker's PUBACK arrives.

        Raises aiomqtt.MqttError without a PUBACK: on timeout, or as soon as the connection is
        lost (aiomqtt alone would wait out the whole timeout on a dead connection).

        A cancellation does not abandon a message in flight: the broker may already have it,
        so its PUBACK is still awaited (bounded as above) and counted before the cancellation
        propagates; a report then matches what subscribers received. Waiting with
        ``asyncio.wait`` rather than inside aiomqtt's ``asyncio.wait_for`` also keeps a
        cancellation from being swallowed (Python 3.11, CPython gh-86296), which would leave
        the device publishing after it was told to stop.
        """
        client, lost = self._client, self._lost
        if client is None or lost is None:
            raise aiomqtt.MqttError("not connected")
        in_flight = asyncio.ensure_future(
            client.publish(
                message.topic,
                message.body(),
                qos=QOS,
                retain=message.retain,
                timeout=self._timeout_s,
            )
        )
        try:
            await asyncio.wait((in_flight, lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._settle(in_flight, lost)
            if _acknowledged(in_flight):
                acknowledged(message)
            raise
        await self._settle(in_flight, lost)
        if not _acknowledged(in_flight):
            failure = None if in_flight.cancelled() else in_flight.exception()
            if isinstance(failure, aiomqtt.MqttError):
                raise failure
            raise aiomqtt.MqttError("connection lost before the PUBACK") from failure
        acknowledged(message)

    @staticmethod
    async def _settle(in_flight: asyncio.Future[None], lost: asyncio.Future[None]) -> None:
        """Wait for the publish to end, or for the connection to; then stop waiting for it."""
        if not in_flight.done():
            await asyncio.wait((in_flight, lost), return_when=asyncio.FIRST_COMPLETED)
        if not in_flight.done():
            in_flight.cancel()
            await asyncio.wait((in_flight,))

    async def close(self) -> None:
        """Disconnect cleanly (DISCONNECT, so the broker discards the will); safe to repeat.

        Also tidies up after a connection that already broke.
        """
        self._client = None
        try:
            await self._stack.aclose()
        except aiomqtt.MqttError:
            pass  # the connection was already broken: nothing left to close
        finally:
            self._stack = AsyncExitStack()
            await self._stop_watching()

    async def drop(self) -> None:
        """Lose the connection the way a power cut does: no DISCONNECT, so the will goes out.

        aiomqtt has no public way to do this, so shut its paho client's socket down directly;
        the broker then sees the TCP connection end without a DISCONNECT packet.
        """
        client, self._client = self._client, None
        if client is None:
            return
        sock = client._client.socket()  # paho's socket: the only handle on the raw connection
        if isinstance(sock, socket.socket):  # plain TCP; TLS sockets are socket subclasses
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        # Once aiomqtt has noticed, leaving its context sends nothing more.
        await self._stop_watching()
        await self.close()

    async def _stop_watching(self) -> None:
        lost, self._lost = self._lost, None
        if lost is None:
            return
        try:
            await asyncio.wait((lost,), timeout=DISCONNECTION_WAIT_S)
        finally:
            if not lost.done():
                lost.cancel()
