"""One device's MQTT connection: will, retained status, QoS 1 publishing, and a hard drop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from contextlib import AsyncExitStack

import aiomqtt

from simulator.config import MqttTarget
from simulator.device import Outgoing

QOS = 1  # SPEC §3: at least once for telemetry, events and status
DISCONNECTION_WAIT_S = 2.0


class DeviceLink:
    """The connection of one simulated device, identified to the broker by its device id."""

    def __init__(self, target: MqttTarget, identifier: str, will: Outgoing, timeout_s: float):
        self._target = target
        self._identifier = identifier
        self._will = will
        self._timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._stack = AsyncExitStack()

    @property
    def is_open(self) -> bool:
        """Whether a connection is up (as far as this side knows)."""
        return self._client is not None

    async def open(self) -> None:
        """Connect with a clean session and the retained offline status as last will."""
        client = aiomqtt.Client(
            self._target.host,
            self._target.port,
            username=self._target.username,
            password=self._target.password,
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
            self._client = await asyncio.shield(entering)
        except asyncio.CancelledError:
            with contextlib.suppress(aiomqtt.MqttError):
                await entering
            await self.close()
            raise

    async def publish(self, message: Outgoing) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raise aiomqtt.MqttError if none."""
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        await self._client.publish(
            message.topic, message.body(), qos=QOS, retain=message.retain, timeout=self._timeout_s
        )

    async def close(self) -> None:
        """Disconnect cleanly (DISCONNECT, so the broker discards the will)."""
        client, self._client = self._client, None
        try:
            await self._stack.aclose()
        except aiomqtt.MqttError:
            # The connection was already broken: nothing left to close.
            if client is not None:
                await _reap(client)
        self._stack = AsyncExitStack()

    async def drop(self) -> None:
        """Lose the connection the way a power cut does: no DISCONNECT, so the will goes out.

        aiomqtt has no public way to do this, so shut the underlying socket down directly;
        the broker then sees the TCP connection end without a DISCONNECT packet.
        """
        client, self._client = self._client, None
        if client is None:
            return
        sock = client._client.socket()  # paho's socket: the only handle on the raw connection
        if isinstance(sock, socket.socket):  # plain TCP; TLS sockets are socket subclasses
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await _reap(client)
        # Leave the client's context: it sees the connection is gone and sends nothing more.
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()
        self._stack = AsyncExitStack()

    async def abandon(self) -> None:
        """Forget a connection that failed, consuming its error so asyncio does not log it."""
        client, self._client = self._client, None
        if client is not None:
            await _reap(client)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()
        self._stack = AsyncExitStack()


async def _reap(client: aiomqtt.Client) -> None:
    """Wait briefly for the client to notice it is disconnected, and retrieve the error.

    aiomqtt stores a lost connection as an exception on a future that only its message
    iterator reads; without this, asyncio logs "Future exception was never retrieved". A
    publisher never subscribes, so the iterator yields nothing and just ends with that error.
    """
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
        async with asyncio.timeout(DISCONNECTION_WAIT_S):
            async for _ in client.messages:
                pass
