"""The consumer's own MQTT session against a real Mosquitto, with paho publishing.

What aiomqtt/paho did for us before and ingest/mqtt/session.py now does itself: CONNECT with the
ingest login and a persistent session, SUBSCRIBE, every PUBLISH framing the broker forwards
(payload sizes across the 1-, 2- and 3-byte remaining lengths, QoS 0 and 1, retained), PUBACK
only for what was reported safe, redelivery of the rest, refusal of a wrong password, and
pausing the socket when too much is unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr

from ingest.mqtt import session as consumer_module
from ingest.mqtt.session import MqttConsumer
from ingest.ops.processes import ManagedProcess
from ingest.settings import Settings
from tests.brokerauth import GATEWAY, INGEST

pytestmark = pytest.mark.integration

Received = list[tuple[str, bytes, int]]


def publish(port: int, messages: list[tuple[str, bytes, int, bool]]) -> None:
    """Publish (topic, payload, qos, retain) as the gateway with paho; wait until sent."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=q, retain=r) for t, p, q, r in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def settings_for(port: int, tmp_path: Path, client_id: str, **extra: object) -> Settings:
    return Settings(mqtt_port=port, mqtt_client_id=client_id, data_dir=tmp_path, **extra)  # type: ignore[arg-type]


@asynccontextmanager
async def consuming(
    settings: Settings, handle: Callable[[str, bytes, int], None]
) -> AsyncIterator[MqttConsumer]:
    consumer = MqttConsumer(settings, handle)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.release()
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s")
        await asyncio.sleep(0.02)


def recorder() -> tuple[Received, Callable[[str, bytes, int], None]]:
    got: Received = []
    return got, lambda topic, payload, token: got.append((topic, payload, token))


async def test_every_framing_arrives_whole_and_as_paho_receives_it(
    mosquitto: ManagedProcess, tmp_path: Path
) -> None:
    # Up to mosquitto.conf's max_packet_size (256 KiB): 1-, 2- and 3-byte remaining lengths.
    sizes = [0, 1, 100, 127, 128, 16_383, 16_384, 70_000, 200_000]
    # The large ones at QoS 1, so the publisher waits until the broker has them.
    sent = [
        (f"iot/river/mqtt-{i}/telemetry", bytes([i % 251]) * size, 1 if size > 50_000 else i % 2)
        for i, size in enumerate(sizes)
    ]
    # A paho subscriber beside ours: the library we replaced must see the same stream.
    theirs: list[tuple[str, bytes]] = []
    reference = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wire-reference")
    reference.username_pw_set(INGEST.username, INGEST.password)
    reference.on_message = lambda _c, _u, m: theirs.append((m.topic, m.payload))
    reference.connect("127.0.0.1", mosquitto.port)
    reference.subscribe("iot/river/+/telemetry", qos=1)
    reference.loop_start()
    got, handle = recorder()
    settings = settings_for(mosquitto.port, tmp_path, f"cs-wire-{uuid.uuid4().hex[:6]}")
    try:
        async with consuming(settings, handle) as consumer:
            await until(lambda: consumer.connected)
            await asyncio.sleep(0.3)  # the reference's SUBACK too
            await asyncio.to_thread(publish, mosquitto.port, [(*m, False) for m in sent])
            await until(lambda: len(got) >= len(sent) and len(theirs) >= len(sent))
            await asyncio.sleep(0.3)
            consumer.acks.safe([token for _, _, token in got])
            qos_of = {t: q for t, _, q in sent}
            assert consumer.acks.acknowledged == sum(qos_of[t] for t, _, _ in got)
    finally:
        reference.disconnect()
        reference.loop_stop()
    ours = [(t, p) for t, p, _ in got]
    assert set(ours) == {(t, p) for t, p, _ in sent}
    assert ours == theirs


async def test_unacknowledged_messages_come_again_and_acknowledged_ones_do_not(
    mosquitto: ManagedProcess, tmp_path: Path
) -> None:
    client_id = f"cs-redo-{uuid.uuid4().hex[:6]}"
    settings = settings_for(mosquitto.port, tmp_path, client_id)
    sent = [(f"iot/gate/redo-{i}/telemetry", f"m{i}".encode(), 1, False) for i in range(50)]

    first, handle = recorder()
    async with consuming(settings, handle) as consumer:
        await until(lambda: consumer.connected)
        await asyncio.to_thread(publish, mosquitto.port, sent)
        await until(lambda: len(first) == 50)
        consumer.acks.safe([token for _, _, token in first[:20]])  # the first 20 are durable
    assert consumer.sessions == 1

    second, handle = recorder()
    async with consuming(settings, handle) as consumer:
        await until(lambda: len(second) == 30)
        consumer.acks.safe([token for _, _, token in second])
        await asyncio.sleep(0.3)  # anything more the broker had would show up now
    assert [p for _, p, _ in second] == [p for _, p, _, _ in sent[20:]]

    third, handle = recorder()
    async with consuming(settings, handle) as consumer:
        await until(lambda: consumer.connected)
        await asyncio.sleep(0.5)
    assert third == []


async def test_a_wrong_password_is_refused_and_retried(
    mosquitto: ManagedProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(
        mosquitto.port, tmp_path, "cs-badpw", mqtt_password=SecretStr("not-the-password")
    )
    _, handle = recorder()
    with caplog.at_level(logging.WARNING, logger="ingest.mqtt.session"):
        async with consuming(settings, handle) as consumer:
            # Mosquitto answers a wrong 3.1.1 password with "not authorised" (code 5).
            await until(lambda: caplog.text.count("broker refused CONNECT: not authorised") >= 2)
            assert not consumer.connected and consumer.sessions == 0


async def test_reading_pauses_when_too_much_is_unacknowledged(
    mosquitto: ManagedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QoS 0 is not limited by the broker's in-flight window: only our pause bounds it.
    monkeypatch.setattr(consumer_module, "PAUSE_ABOVE", 100)
    monkeypatch.setattr(consumer_module, "RESUME_BELOW", 50)
    sent = [(f"iot/gate/pause-{i % 7}/telemetry", b"x" * 2000, 0, False) for i in range(2000)]
    got, handle = recorder()
    settings = settings_for(mosquitto.port, tmp_path, f"cs-pause-{uuid.uuid4().hex[:6]}")
    async with consuming(settings, handle) as consumer:
        await until(lambda: consumer.connected)
        await asyncio.to_thread(publish, mosquitto.port, sent)
        await until(lambda: len(got) > 100)
        await asyncio.sleep(0.3)
        held = len(got)
        # Paused: a socket read gives at most one more chunk past the bound (256 KiB here).
        assert held < 100 + 256 * 1024 // 2000 + 2, held
        consumer.acks.safe([token for _, _, token in got])  # durable: reading resumes
        await until(lambda: len(got) > held)
        while len(got) < len(sent):
            consumer.acks.safe([token for _, _, token in got])
            await asyncio.sleep(0.01)
    assert [p for _, p, _ in got] == [p for _, p, _, _ in sent]
