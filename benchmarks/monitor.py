"""A command-centre screen for the alert-latency run: subscribes to ``alerts/#`` and writes
each alert message's arrival time (wall clock) with what identifies its triggering message.

A process of its own, so its receive timestamps do not wait for the publisher's thread (the
GIL) in the benchmark process. ``python -m benchmarks.monitor PORT USER OUT``; the password
comes on stdin; prints ``ready`` once subscribed; on SIGTERM writes OUT (JSON lines) and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, username, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    password = sys.stdin.readline().strip()
    received: list[tuple[float, bytes]] = []
    subscribed = threading.Event()
    stop = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append((time.time(), bytes(msg.payload)))  # first: the time it arrived

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if not reason.is_failure:
            client.subscribe("alerts/#", qos=1)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-monitor-{time.time_ns()}",
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(username, password)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        sys.exit("the monitor could not subscribe to alerts/#")
    print("ready", flush=True)
    while not stop.wait(0.1):
        pass
    client.disconnect()
    client.loop_stop()
    with open(out, "w") as f:
        for at, payload in received:
            body = json.loads(payload)
            alert, event = body["alert"], body["event"]
            row = {
                "received": at,
                "rule": alert["rule_id"],
                "device": alert["device_id"],
                "at_ms": event["at_ms"],
                "action": event["action"],
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
