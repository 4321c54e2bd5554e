"""Issue 14 item 9 on the real service and a real Mosquitto: a station announces maintenance,
then its power is cut — the connection drops without a DISCONNECT and the broker publishes
the station's last will (``{"online": false}``, no ``ts``). The will is part of the planned
stop: no ``device_silent``. A station whose connection drops without a planned stop before it
is reported offline at once (the control).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.registry import Registry
from ingest.service import ServiceState
from tests.brokerauth import GATEWAY, clear_retained_statuses
from tests.integration.test_ingest_e2e import make_settings, now_ms, running_service
from tests.services import new_database

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_broker(mosquitto: Any, registry: Registry) -> Iterator[None]:
    clear_retained_statuses(mosquitto.port, registry)
    yield
    clear_retained_statuses(mosquitto.port, registry)


def station(port: int, topic: str) -> mqtt.Client:
    """A connected station whose last will is the offline status, as devices set it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"st-{secrets.token_hex(4)}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.will_set(topic, json.dumps({"online": False}), qos=1, retain=True)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def power_cut(client: mqtt.Client) -> None:
    """Drop the connection without a DISCONNECT: the broker publishes the will."""
    client.loop_stop()
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


async def silent_alerts(state: ServiceState, device_id: str) -> list[Any]:
    assert state.alerting is not None
    store = state.alerting._store
    alerts = await asyncio.to_thread(store.list, device_id=device_id, rule_id="device_silent")
    return list(alerts)


async def test_the_will_after_maintenance_opens_nothing_and_without_it_opens_at_once(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry, clean_broker: None
) -> None:
    stopped, control = [d for d in registry.devices.values() if d.kind.value == "river"][:2]
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "will"),
    )
    async with running_service(settings, registry) as state:
        clients = {}
        for device in (stopped, control):
            status = f"iot/river/{device.id}/status"
            client = clients[device.id] = station(mosquitto.port, status)
            hello = json.dumps({"online": True, "ts": now_ms(), "seq": 1})
            client.publish(status, hello, qos=1, retain=True).wait_for_publish(10)
        maintenance = {"online": False, "ts": now_ms(), "seq": 2, "reason": "maintenance"}
        clients[stopped.id].publish(
            f"iot/river/{stopped.id}/status", json.dumps(maintenance), qos=1, retain=True
        ).wait_for_publish(10)
        await asyncio.sleep(0.5)
        for client in clients.values():
            power_cut(client)
        # Both wills read: two hellos, the maintenance status, two wills.
        for _ in range(150):
            if state.ledger.received >= 5 and await silent_alerts(state, control.id):
                break
            await asyncio.sleep(0.1)
        assert state.ledger.received == 5
        [offline] = await silent_alerts(state, control.id)
        assert offline.value == "offline"
        await asyncio.sleep(0.5)  # a store round for anything the stopped one's will caused
        assert await silent_alerts(state, stopped.id) == []
