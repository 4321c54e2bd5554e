"""A field gateway's one MQTT connection: publish at QoS 1 and say whether the broker has it.

The gateway answers a station only once ``publish`` returned True, so the broker's PUBACK is
what a station's answer means: a gateway that dies before it leaves the frame unanswered and
the station sends it again (at least once; a repeat is the same point in InfluxDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiomqtt

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
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self.published = 0
        self.failed = 0

    @property
    def connected(self) -> bool:
        """Whether a broker connection is up, as far as this side knows."""
        return self._up.is_set()

    async def run(self) -> None:
        """Keep one connection to the broker until cancelled."""
        attempt = 0
        while True:
            host, port = self._nodes.current
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=self._user,  # the broker binds this account to this client id
                    username=self._user,
                    password=self._password,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=True,  # an unanswered frame is resent by its station, not us
                    max_inflight_messages=IN_FLIGHT,
                    tls_context=mqtt_tls_context(self._settings),
                ) as client:
                    attempt = 0
                    self._client = client
                    self._up.set()
                    log.info("gateway %s connected to the broker at %s:%d", self._user, host, port)
                    with contextlib.suppress(aiomqtt.MqttError):
                        async for _ in client.messages:  # ends when the connection does
                            pass
            except aiomqtt.MqttError as e:
                log.warning("gateway %s lost the broker: %s", self._user, e)
            finally:
                self._up.clear()
                self._client = None
            self._nodes.failed()
            delay = backoff_delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> bool:
        """Publish every message at QoS 1; True once the broker acknowledged them all, False if
        it did not within the timeout (the broker away, the connection lost)."""
        if not messages:
            return True
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._up.wait()
                client = self._client
                if client is None:
                    return self._failed(len(messages))
                await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages))
        except (TimeoutError, aiomqtt.MqttError):
            return self._failed(len(messages))
        self.published += len(messages)
        return True

    def _failed(self, count: int) -> bool:
        self.failed += count
        return False
