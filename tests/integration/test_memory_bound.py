"""Issue 13 item 7: the memory bound under a QoS 0 flood while the sink is stalled.

QoS 0 messages are outside the broker's window of unacknowledged messages, so only the
consumer's own pause bounds them. InfluxDB is stopped and the spool is capped at 1 MiB, so
nothing becomes durable for minutes; a paho publisher floods QoS 0 readings (and oversize
junk) the whole time. The service must stay up, keep one connection (a paused reader does not
take the broker's unread PINGRESPs for silence) and stay under 250 MB. Three minutes, so
``-m slow``; the mechanism is also tested fast against a scripted broker
(tests/unit/test_consumer_wire.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devices.registry import load_registry
from tests import brokerauth
from tests.integration.faults import Service, Stack
from tests.serviceproc import REGISTRY_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOOD_S = float(os.environ.get("CITYSENSE_FLOOD_S", "180"))
RATE = 4000  # messages a second, QoS 0
LIMIT_MB = 250


def test_a_qos0_flood_with_the_sink_stalled_stays_bounded(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack")
    stack.start()
    stack.stop_influxdb()  # the sink is stalled for the whole run
    service = Service(
        stack,
        tmp_path / "data",
        tmp_path / "service.log",
        CITYSENSE_SPOOL_MAX_BYTES=str(1 << 20),
        CITYSENSE_SPOOL_AFTER_S="1",
    )
    rivers = [d for d in load_registry(REGISTRY_FILE).devices.values() if d.kind == "river"]
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:6]}"
    )
    client.username_pw_set(brokerauth.GATEWAY.username, brokerauth.GATEWAY.password)
    try:
        service.start()
        client.connect("127.0.0.1", stack.mqtt_port)
        client.loop_start()
        began = time.monotonic()
        sent = 0
        junk = b"{" + b'"x": 1,' * 4000  # ~28 KB: rejected too_large, cut as it arrives
        while (elapsed := time.monotonic() - began) < FLOOD_S:
            for _ in range(RATE // 10):
                river = rivers[sent % len(rivers)]
                body = {"ts": int(time.time() * 1000), "seq": sent, "water_level_m": 208.0}
                client.publish(f"iot/river/{river.id}/telemetry", json.dumps(body), qos=0)
                if sent % 50 == 0:
                    client.publish(f"iot/river/{river.id}/telemetry", junk, qos=0)
                sent += 1
            time.sleep(max(0.0, (sent / RATE) - (time.monotonic() - began)))
            assert service.alive(), service.tail()
        assert elapsed >= FLOOD_S and sent > RATE * FLOOD_S * 0.5
        log = service.log_path.read_text(errors="replace")
        assert "nothing from the broker" not in log, service.tail()  # no false keepalive loss
        assert service.peak_rss_kb / 1024 < LIMIT_MB, (
            f"peak RSS {service.peak_rss_kb / 1024:.0f} MB"
        )
        print(f"flooded {sent} in {elapsed:.0f} s; peak RSS {service.peak_rss_kb / 1024:.1f} MB")
    finally:
        client.loop_stop()
        client.disconnect()
        service.close()
        stack.close()
