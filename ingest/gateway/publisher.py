"""A field gateway's one MQTT connection: publish at QoS 1 and say whether the broker has it.

The gateway answers a station only once ``publish`` returned True, so the broker's PUBACK is
what a station's answer means: a gateway that dies before it leaves the frame unanswered and
the station sends it again (at least once; a repeat is the same point in InfluxDB).

MQTT 5 on Mosquitto, because only there does a PUBACK say no: MQTT 3.1.1's acknowledges a
publish the ACL denied (a station added to the registry before the broker's files were
regenerated), and the station would be answered for data the broker dropped. Mosquitto 2.0
answers such a publish "Not authorized" (0x87): no answer, the station sends it again. NATS
speaks MQTT 3.1.1 only, so there the gateway cannot tell (docs/operations.md).

aiomqtt keeps the connection (and its reconnects); the publishing itself goes to its paho
client, whose PUBACK callback carries the reason code that aiomqtt's ``publish`` drops (and
that costs it a scan of every pending publish per call, a warning per call past ten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from devices.credentials import gateway_password, gateway_user
from ingest.mqtt.nodes import BrokerNodes
from ingest.mqtt.session import backoff_delay
from ingest.mqtt.tls import mqtt_tls_context
from ingest.settings import Settings

log = logging.getLogger(__name__)

# QoS 1 messages paho keeps in flight at once (its default is 20): thousands of stations'
# frames wait for their PUBACKs together, and each waits for its own.
IN_FLIGHT = 500


class GatewayPublisher:
    """Logs in as ``gateway_user(protocol)``; reconnects with jittered backoff until cancelled."""

    def __init__(self, settings: Settings, protocol: str, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._nodes = BrokerNodes(settings)
        self._user = gateway_user(protocol)
        self._password = gateway_password(settings.dev_secret.get_secret_value(), protocol)
        self._timeout_s = timeout_s
        self._v5 = settings.broker != "nats"
        self._paho: paho.Client | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}  # message id → its PUBACK's reason
        self._up = asyncio.Event()
        self.published = 0
        self.failed = 0
        self.refused = 0  # acknowledged with a failure reason (MQTT 5): the ACL said no

    @property
    def connected(self) -> bool:
        """Whether a broker connection is up, as far as this side knows."""
        return self._up.is_set()

    async def wait_connected(self) -> None:
        """Return once a broker connection is up."""
        await self._up.wait()

    async def run(self) -> None:
        """Keep one connection to the broker until cancelled."""
        attempt = 0
        version = aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311
        while True:
            host, port = self._nodes.current
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=self._user,  # the broker binds this account to this client id
                    username=self._user,
                    password=self._password,
                    protocol=version,
                    # A fresh session: an unanswered frame is resent by its station, not us.
                    clean_session=None if self._v5 else True,
                    max_inflight_messages=IN_FLIGHT,
                    tls_context=mqtt_tls_context(self._settings),
                ) as client:
                    attempt = 0
                    self._attach(client)
                    log.info("gateway %s connected to the broker at %s:%d", self._user, host, port)
                    with contextlib.suppress(aiomqtt.MqttError):
                        async for _ in client.messages:  # ends when the connection does
                            pass
            except aiomqtt.MqttError as e:
                log.warning("gateway %s lost the broker: %s", self._user, e)
            finally:
                self._detach()
            self._nodes.failed()
            delay = backoff_delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _attach(self, client: aiomqtt.Client) -> None:
        inner: paho.Client = client._client  # aiomqtt's paho client (see the docstring)
        forward: Any = inner.on_publish  # aiomqtt's own (VERSION2 callback signature)

        def on_publish(c: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            waiting = self._acks.pop(mid, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(reason)
            if forward is not None:
                forward(c, userdata, mid, reason, props)

        inner.on_publish = on_publish
        self._paho = inner
        self._up.set()

    def _detach(self) -> None:
        self._up.clear()
        self._paho = None
        for waiting in self._acks.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the broker connection ended"))
        self._acks.clear()

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        """Publish every message at QoS 1; True once the broker acknowledged them all, False if
        it did not within the timeout (broker away, connection lost) or refused one."""
        if not messages:
            return True
        waiting: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._up.wait()
                client = self._paho
                if client is None:
                    return self._failed(len(messages))
                loop = asyncio.get_running_loop()
                for topic, payload in messages:
                    info = client.publish(topic, payload, qos=1)
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        return self._failed(len(messages))
                    future: asyncio.Future[Any] = loop.create_future()
                    self._acks[info.mid] = future
                    waiting.append(future)
                reasons = await asyncio.gather(*waiting)
        except (TimeoutError, ConnectionError):
            return self._failed(len(messages))
        finally:
            for future in waiting:
                if not future.done():
                    future.cancel()  # its message id is dropped from _acks when acknowledged
        refusals = [r for r in reasons if r is not None and getattr(r, "is_failure", False)]
        if refusals:
            self.refused += len(refusals)
            log.warning("gateway %s: the broker refused a publish: %s", self._user, refusals[0])
            return False
        self.published += len(messages)
        return True

    def _failed(self, count: int) -> bool:
        self.failed += count
        return False
