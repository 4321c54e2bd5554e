"""The generated password file, ACL, listeners and TLS files on a real Mosquitto (issue #6).

The broker here is this module's own: the repository's policy (mosquitto.conf) followed by
the generated listeners.conf, as production would run it, with a secret that is not the local
default, on free ports. Every check uses plain paho-mqtt clients and a positive control: a
message the client may see, sent after the ones it may not, so "nothing arrived" means the
broker dropped them rather than that the test did not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import queue
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from devices.credentials import (
    LOCAL_EXAMPLE_DEV_SECRET,
    device_password,
    gateway_password,
    gateway_user,
    worker_password,
)
from devices.kinds import Kind, Level
from devices.registry import Registry, RiverDevice
from ingest.alerts.outbox import MqttOutbox
from ingest.gateway.dialects import dialect
from ingest.gateway.publisher import GatewayPublisher
from ingest.gateway.server import GatewayServer
from ingest.mqtt.session import MqttConsumer
from ingest.mqtt.tls import mqtt_tls_context
from ingest.ops.brokerconfig import BrokerFiles, write_broker_files
from ingest.ops.processes import (
    ManagedProcess,
    find_binary,
    free_port,
    mqtt_answers,
    spawn,
    wait_ready,
)
from ingest.ops.tls import ensure_local_tls
from ingest.people import Person, load_workers
from ingest.settings import Settings
from tests.fakes.gateway import Letters
from tests.fieldframes import hj212_frame
from tests.serviceproc import service_env, spawn_service
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECRET = b"integration-test-provisioning-secret"
INGEST_USER = "citysense-ingest"
INGEST_PASSWORD = "integration-test-ingest-password"
WAIT_S = 5.0
# After a positive control arrived, how long a message the client must not get could still
# be in flight from the same broker loop. Generous: it is one local hop.
SETTLE_S = 0.3


@dataclass
class Broker:
    """The module's broker and what it was made from."""

    proc: ManagedProcess
    files: BrokerFiles
    registry: Registry
    workers: dict[str, Person]

    @property
    def port(self) -> int:
        return self.files.port

    @property
    def tls_port(self) -> int:
        return self.files.tls_port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Broker]:
    """Mosquitto with mosquitto.conf + the generated listeners.conf, on two free ports."""
    instance = tmp_path_factory.mktemp("secure-mosquitto").resolve()
    workers = load_workers(REPO / "config" / "workers.yaml", registry)
    port = free_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    files = write_broker_files(
        instance / "broker",
        registry,
        workers,
        dev_secret=SECRET,
        ingest_password=INGEST_PASSWORD,
        ingest_user=INGEST_USER,
        port=port,
        tls_port=tls_port,
    )
    conf = instance / "mosquitto.conf"
    conf.write_text(
        f"persistence_location {instance}/\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        + (REPO / "mosquitto.conf").read_text()
        + "\n"
        + files.listeners.read_text()
    )
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    proc = spawn("mosquitto", [binary, "-c", str(conf)], port, instance / "mosquitto.log")
    try:
        wait_ready(proc, lambda: mqtt_answers(port))
        yield Broker(proc, files, registry, {w.username: w for w in workers})
    finally:
        proc.stop()


# --- small clients -------------------------------------------------------------------------


def bound_id(username: str | None) -> str:
    """The client id a user may connect with: a device or worker only its own username (issue
    13 item 1); the ingest service any, so here a fresh one per connection."""
    if username is None or username == INGEST_USER:
        return f"t-{uuid.uuid4().hex[:12]}"
    return username


def _client(
    username: str | None,
    password: str | None,
    ca: Path | None,
    client_id: str | None = None,
    clean_session: bool = True,
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or bound_id(username),
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    return client


def try_connect(
    port: int,
    username: str | None = None,
    password: str | None = None,
    *,
    ca: Path | None = None,
    host: str = "127.0.0.1",
    client_id: str | None = None,
    clean_session: bool = True,
) -> ReasonCode | None:
    """The CONNACK's reason code, or None if the broker closed the connection without one."""
    client = _client(username, password, ca, client_id, clean_session)
    answers: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: answers.append(rc)
    client.connect(host, port, keepalive=10)
    try:
        deadline = time.monotonic() + WAIT_S
        while not answers and time.monotonic() < deadline:
            if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection is gone
        return answers[0] if answers else None
    finally:
        sock = client.socket()
        client.disconnect()
        if sock is not None:
            sock.close()


class Session:
    """A connected client that records every message it receives."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        *,
        ca: Path | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
    ):
        self.client = _client(username, password, ca, client_id, clean_session)
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        connected: queue.Queue[ReasonCode] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc)
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        rc = connected.get(timeout=WAIT_S)
        assert not rc.is_failure, f"{username} could not connect: {rc}"

    def subscribe(self, *filters: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        done: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: done.put(rcs)
        self.client.subscribe([(f, 1) for f in filters])
        done.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK (which comes even when the ACL denies)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including ``payload``, then SETTLE_S more."""
        deadline = time.monotonic() + WAIT_S
        while not any(p == payload for _, p in self.seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{payload!r} never arrived; got {self.seen}")
            try:
                self.seen.append(self.received.get(timeout=remaining))
            except queue.Empty:
                continue
        return self.drain()

    def drain(self) -> list[tuple[str, bytes]]:
        """Everything received so far, after waiting SETTLE_S for stragglers."""
        time.sleep(SETTLE_S)
        while not self.received.empty():
            self.seen.append(self.received.get_nowait())
        return list(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    """Sessions a test opens; all closed at its end."""
    opened: list[Session] = []
    yield opened
    for s in opened:
        s.close()


def devices_of(registry: Registry, kind: Kind, n: int) -> list[str]:
    ids = [d.id for d in registry.devices.values() if d.kind is kind]
    assert len(ids) >= n
    return ids[:n]


def nonce() -> bytes:
    return uuid.uuid4().hex.encode()


# --- authentication ------------------------------------------------------------------------


def test_anonymous_is_refused_on_both_listeners(broker: Broker) -> None:
    rc = try_connect(broker.port)
    assert rc is not None and rc.is_failure and rc.getName() == "Not authorized"
    rc = try_connect(broker.tls_port, ca=broker.files.tls.ca_cert, host="localhost")
    assert rc is not None and rc.is_failure


def test_wrong_passwords_are_refused(broker: Broker) -> None:
    a, b = devices_of(broker.registry, Kind.GATE, 2)
    refused = [
        (a, "not-the-password"),
        (a, device_password(SECRET, b)),  # another device's password
        (a, device_password(LOCAL_EXAMPLE_DEV_SECRET, a)),  # derived from the wrong secret
        ("li.na", device_password(SECRET, "li.na")),  # the device derivation, not the worker's
        (INGEST_USER, "wrong"),
        ("nobody", device_password(SECRET, "nobody")),  # no such user
    ]
    for username, password in refused:
        rc = try_connect(broker.port, username, password)
        assert rc is not None and rc.is_failure, f"{username} got in with a wrong password"


def test_right_passwords_are_accepted(broker: Broker) -> None:
    river = devices_of(broker.registry, Kind.RIVER, 1)[0]
    accepted = [
        (river, device_password(SECRET, river)),
        ("li.na", worker_password(SECRET, "li.na")),
        (INGEST_USER, INGEST_PASSWORD),
    ]
    for username, password in accepted:
        rc = try_connect(broker.port, username, password)
        assert rc is not None and not rc.is_failure, f"{username} refused: {rc}"


# --- devices -------------------------------------------------------------------------------


def test_a_device_publishes_only_under_its_own_kind_and_id(
    broker: Broker, sessions: list[Session]
) -> None:
    a, b = devices_of(broker.registry, Kind.GATE, 2)
    river = devices_of(broker.registry, Kind.RIVER, 1)[0]
    plain = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    shared = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions += [plain, shared]
    plain.subscribe("iot/+/+/+")
    shared.subscribe("$share/citysense/iot/+/+/+")
    device = Session(broker.port, a, device_password(SECRET, a))
    sessions.append(device)
    own, last = nonce(), nonce()
    device.publish(f"iot/gate/{a}/telemetry", own)
    device.publish(f"iot/gate/{b}/telemetry", nonce())  # another device's topic
    device.publish(f"iot/river/{a}/telemetry", nonce())  # its own id under another kind
    device.publish(f"iot/river/{river}/event", nonce())  # another kind and device
    device.publish(f"iot/gate/{a}/event", last)
    expected = [(f"iot/gate/{a}/telemetry", own), (f"iot/gate/{a}/event", last)]
    assert plain.until(last) == expected
    assert shared.until(last) == expected


def test_a_device_cannot_plant_a_retained_status_for_another(
    broker: Broker, sessions: list[Session]
) -> None:
    a, b = devices_of(broker.registry, Kind.ROAD, 2)
    device = Session(broker.port, a, device_password(SECRET, a))
    sessions.append(device)
    mine, forged = nonce(), nonce()
    device.publish(f"iot/road/{b}/status", forged, retain=True)
    device.publish(f"iot/road/{a}/status", mine, retain=True)
    late = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions.append(late)
    late.subscribe(f"iot/road/{b}/status", f"iot/road/{a}/status")
    assert late.until(mine) == [(f"iot/road/{a}/status", mine)]
    device.publish(f"iot/road/{a}/status", b"", retain=True)  # leave no retained message


def test_a_device_reads_nothing(broker: Broker, sessions: list[Session]) -> None:
    a, b = devices_of(broker.registry, Kind.GATE, 2)
    reader = Session(broker.port, a, device_password(SECRET, a))
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    other = Session(broker.port, b, device_password(SECRET, b))
    sessions += [reader, ingest, other]
    reader.subscribe("#", "iot/#", "alerts/#")
    ingest.subscribe("iot/#")
    marker = nonce()
    other.publish(f"iot/gate/{b}/telemetry", marker)
    ingest.publish(f"alerts/grid/{broker.registry.devices[a].grid}", nonce())
    assert ingest.until(marker) == [(f"iot/gate/{b}/telemetry", marker)]
    assert reader.drain() == []


# --- grid workers --------------------------------------------------------------------------


def test_a_worker_reads_only_its_own_areas_alerts(broker: Broker, sessions: list[Session]) -> None:
    li_na = broker.workers["li.na"]
    own_1, own_2 = li_na.alert_topics(broker.registry)
    other = broker.workers["wang.fang"].alert_topics(broker.registry)[0]
    own_village = f"alerts/village/{broker.registry.areas[li_na.areas[0]].parent}"
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions.append(ingest)
    # One after the other: a worker has one client id (her username), so one connection.
    for filters, expected in [(["alerts/#"], 2), ([other, own_village, own_1], 1)]:
        worker = Session(broker.port, "li.na", worker_password(SECRET, "li.na"))
        worker.subscribe(*filters)
        first, second = nonce(), nonce()
        ingest.publish(other, nonce())
        ingest.publish(own_village, nonce())  # the village above her grids: not bound to it
        ingest.publish(own_1, first)
        ingest.publish(own_2, second)
        got = worker.until(first if expected == 1 else second)
        worker.close()
        assert got == [(own_1, first), (own_2, second)][:expected]


def test_a_village_worker_reads_the_village_level_only(
    broker: Broker, sessions: list[Session]
) -> None:
    zhang_wei = broker.workers["zhang.wei"]
    village = next(a for a in zhang_wei.areas if broker.registry.areas[a].level is Level.VILLAGE)
    grid_inside = broker.registry.children(village)[0].id
    assert grid_inside not in zhang_wei.areas
    worker = Session(broker.port, "zhang.wei", worker_password(SECRET, "zhang.wei"))
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions += [worker, ingest]
    worker.subscribe("alerts/#")
    escalated = nonce()
    ingest.publish(f"alerts/grid/{grid_inside}", nonce())  # a grid-level alert, not escalated
    ingest.publish(f"alerts/village/{village}", escalated)
    assert worker.until(escalated) == [(f"alerts/village/{village}", escalated)]


def test_only_the_ingest_service_publishes_alerts(broker: Broker, sessions: list[Session]) -> None:
    li_na = broker.workers["li.na"]
    topic = li_na.alert_topics(broker.registry)[0]
    device_id = next(iter(broker.registry.devices))
    listener = Session(broker.port, "li.na", worker_password(SECRET, "li.na"))
    forger = Session(broker.port, "wang.fang", worker_password(SECRET, "wang.fang"))
    device = Session(broker.port, device_id, device_password(SECRET, device_id))
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions += [listener, forger, device, ingest]
    listener.subscribe(topic)
    real = nonce()
    forger.publish(topic, nonce())
    device.publish(topic, nonce())
    ingest.publish(topic, real)
    assert listener.until(real) == [(topic, real)]


# --- TLS -----------------------------------------------------------------------------------


def test_tls_with_the_generated_ca_works(broker: Broker, sessions: list[Session]) -> None:
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    password = device_password(SECRET, device_id)
    ca = broker.files.tls.ca_cert
    for host in ("localhost", "127.0.0.1"):  # both names are in the certificate
        rc = try_connect(broker.tls_port, device_id, password, ca=ca, host=host)
        assert rc is not None and not rc.is_failure, f"TLS to {host}: {rc}"
    rc = try_connect(broker.tls_port, device_id, "wrong", ca=ca, host="localhost")
    assert rc is not None and rc.is_failure
    # And messages flow over it, under the same ACL.
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    device = Session(broker.tls_port, device_id, password, ca=ca)
    sessions += [ingest, device]
    ingest.subscribe("iot/#")
    marker = nonce()
    device.publish(f"iot/river/{device_id}/telemetry", marker)
    assert ingest.until(marker) == [(f"iot/river/{device_id}/telemetry", marker)]


def test_a_plain_connection_to_the_tls_port_fails(broker: Broker) -> None:
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    rc = try_connect(broker.tls_port, device_id, device_password(SECRET, device_id))
    assert rc is None  # no CONNACK: the broker waited for a TLS handshake and hung up


def test_tls_without_the_ca_or_to_the_plain_port_fails(broker: Broker) -> None:
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    password = device_password(SECRET, device_id)
    # The system's trust store does not know the local CA.
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.tls_set()
    client.username_pw_set(device_id, password)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("localhost", broker.tls_port)
    # The plain listener speaks no TLS.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        try_connect(broker.port, device_id, password, ca=broker.files.tls.ca_cert)


# --- client ids are tied to users (issue 13, item 1) ---------------------------------------

QUEUED = 30


def _queue_for(broker: Broker, victim: Session, topic: str, publisher: Session) -> list[bytes]:
    """Leave ``victim``'s persistent session subscribed to ``topic``, offline, with QUEUED
    messages queued for it; return the payloads."""
    victim.subscribe(topic)
    victim.close()
    payloads = [f"queued-{i}-".encode() + nonce() for i in range(QUEUED)]
    for p in payloads:
        publisher.publish(topic, p)
    return payloads


def _attack(broker: Broker, device_id: str, stolen_id: str) -> list[ReasonCode | None]:
    """A device logs in with its own password and ``stolen_id``: clean, then persistent."""
    password = device_password(SECRET, device_id)
    return [
        try_connect(broker.port, device_id, password, client_id=stolen_id, clean_session=clean)
        for clean in (True, False)
    ]


def test_a_device_cannot_take_the_services_session(broker: Broker, sessions: list[Session]) -> None:
    """On ec1dc14 both logins were accepted and the service then got 0 of 30."""
    service_id = f"citysense-ingest-{uuid.uuid4().hex[:6]}"
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    topic = f"iot/river/{device_id}/telemetry"
    service = Session(
        broker.port, INGEST_USER, INGEST_PASSWORD, client_id=service_id, clean_session=False
    )
    device = Session(broker.port, device_id, device_password(SECRET, device_id))
    sessions.append(device)
    payloads = _queue_for(broker, service, topic, device)
    answers = _attack(broker, device_id, service_id)
    assert all(rc is not None and rc.is_failure for rc in answers), answers
    back = Session(
        broker.port, INGEST_USER, INGEST_PASSWORD, client_id=service_id, clean_session=False
    )
    sessions.append(back)
    assert [p for _, p in back.until(payloads[-1])] == payloads  # 30 of 30


def test_a_device_cannot_take_a_workers_session(broker: Broker, sessions: list[Session]) -> None:
    """On ec1dc14 the worker's queued alerts vanished the same way."""
    li_na = broker.workers["li.na"]
    topic = li_na.alert_topics(broker.registry)[0]
    password = worker_password(SECRET, "li.na")
    device_id = devices_of(broker.registry, Kind.GATE, 1)[0]
    worker = Session(broker.port, "li.na", password, clean_session=False)
    ingest = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions.append(ingest)
    payloads = _queue_for(broker, worker, topic, ingest)
    answers = _attack(broker, device_id, "li.na")
    assert all(rc is not None and rc.is_failure for rc in answers), answers
    back = Session(broker.port, "li.na", password, clean_session=False)
    sessions.append(back)
    assert [p for _, p in back.until(payloads[-1])] == payloads
    back.client.unsubscribe(topic)  # leave no queue behind for a later test


def test_devices_and_workers_connect_only_as_themselves(broker: Broker) -> None:
    a, b = devices_of(broker.registry, Kind.GATE, 2)
    password = device_password(SECRET, a)
    assert not _refused(try_connect(broker.port, a, password, client_id=a))
    assert _refused(try_connect(broker.port, a, password, client_id=b))  # another device's id
    assert _refused(try_connect(broker.port, a, password, client_id=f"{a}-2"))
    assert _refused(try_connect(broker.port, a, password, client_id="citysense-ingest-1"))
    worker = worker_password(SECRET, "li.na")
    assert not _refused(try_connect(broker.port, "li.na", worker, client_id="li.na"))
    assert _refused(try_connect(broker.port, "li.na", worker, client_id="citysense-ingest-1"))
    # The service (trusted) picks its ids freely, and still needs its password.
    assert not _refused(try_connect(broker.port, INGEST_USER, INGEST_PASSWORD, client_id="any-id"))


def test_a_field_gateway_publishes_only_its_stations_telemetry(
    broker: Broker, sessions: list[Session]
) -> None:
    """The HJ 212 gateway speaks for its stations, their telemetry only; a station of another
    protocol, a device of ours and any other channel are dropped by the broker."""
    mine = sorted(broker.registry.stations_of("hj212").values(), key=lambda d: d.id)[0].id
    theirs = sorted(broker.registry.stations_of("sl651").values(), key=lambda d: d.id)[0].id
    river = devices_of(broker.registry, Kind.RIVER, 1)[0]
    listener = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    sessions.append(listener)
    listener.subscribe("iot/+/+/+")
    user = gateway_user("hj212")
    gateway = Session(broker.port, user, gateway_password(SECRET, "hj212"))
    sessions.append(gateway)
    own, last = nonce(), nonce()
    gateway.publish(f"iot/river/{mine}/telemetry", own)
    gateway.publish(f"iot/river/{theirs}/telemetry", nonce())  # the SL 651 gateway's station
    gateway.publish(f"iot/river/{river}/telemetry", nonce())  # a device that speaks MQTT
    gateway.publish(f"iot/river/{mine}/status", nonce(), retain=True)  # not telemetry
    gateway.publish(f"iot/river/{mine}/telemetry", last)
    assert listener.until(last) == [
        (f"iot/river/{mine}/telemetry", own),
        (f"iot/river/{mine}/telemetry", last),
    ]
    password = gateway_password(SECRET, "hj212")
    assert _refused(try_connect(broker.port, user, password, client_id=f"{user}-2"))
    # A field station never speaks MQTT: there is no login in its name.
    assert _refused(try_connect(broker.port, mine, device_password(SECRET, mine), client_id=mine))


def _refused(rc: ReasonCode | None) -> bool:
    """Whether the broker refused the CONNECT (or hung up without a CONNACK)."""
    return rc is None or rc.is_failure


# --- TLS 1.2 and 1.3, on the listener and for the service itself (issue 13, item 9) --------

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_tls_listener_serves_tls_1_2_and_1_3(broker: Broker, version: str) -> None:
    """ec1dc14 pinned `tls_version tlsv1.2` and refused a 1.3-only client."""
    context = ssl.create_default_context(cafile=str(broker.files.tls.ca_cert))
    context.minimum_version = context.maximum_version = VERSIONS[version]
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=WAIT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == f"TLSv{version}"


def _tls_settings(broker: Broker, tmp_path: Path, version: str, ca: Path) -> Settings:
    """The service's settings for the TLS listener. The CA is copied to a path of this test
    alone: the service caches one context per CA path, and the test pins its version."""
    own_ca = tmp_path / f"ca-{version}.crt"
    shutil.copy(ca, own_ca)
    settings = Settings(
        mqtt_host="127.0.0.1",
        mqtt_port=broker.tls_port,
        mqtt_username=INGEST_USER,
        mqtt_password=INGEST_PASSWORD,
        mqtt_client_id=f"cs-tls-{uuid.uuid4().hex[:6]}",
        mqtt_tls=True,
        mqtt_ca_file=own_ca,
        data_dir=tmp_path,
    )
    context = mqtt_tls_context(settings)
    assert context is not None
    # Pinned, so the connection below can only have used this version.
    context.minimum_version = context.maximum_version = VERSIONS[version]
    return settings


async def _until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("version", sorted(VERSIONS))
async def test_the_service_consumes_and_publishes_over_tls(
    broker: Broker, tmp_path: Path, sessions: list[Session], version: str
) -> None:
    """ec1dc14 spoke plain MQTT to the TLS port and never connected (no CITYSENSE_MQTT_TLS)."""
    settings = _tls_settings(broker, tmp_path, version, broker.files.tls.ca_cert)
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    li_na = broker.workers["li.na"]
    alert_topic = li_na.alert_topics(broker.registry)[0]
    got: list[tuple[str, bytes, int]] = []
    consumer = MqttConsumer(settings, lambda t, p, token: got.append((t, p, token)))
    outbox = MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts")
    worker = Session(broker.port, "li.na", worker_password(SECRET, "li.na"))
    device = Session(broker.port, device_id, device_password(SECRET, device_id))
    sessions += [worker, device]
    worker.subscribe(alert_topic)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(outbox.run())]
    try:
        await _until(lambda: consumer.connected)
        sent = [nonce() for _ in range(5)]
        for payload in sent:
            await asyncio.to_thread(device.publish, f"iot/river/{device_id}/telemetry", payload)
        await _until(lambda: len(got) >= len(sent))
        consumer.acks.safe([token for _, _, token in got])
        assert [p for _, p, _ in got] == sent
        alert = nonce()
        await outbox.put(alert_topic, alert)
        assert await asyncio.to_thread(worker.until, alert) == [(alert_topic, alert)]
    finally:
        consumer.release()
        await asyncio.wait_for(tasks[0], 10)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)


async def test_a_wrong_ca_is_logged_as_a_tls_error(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = ensure_local_tls(tmp_path / "other-ca")  # a CA the broker's cert is not from
    settings = _tls_settings(broker, tmp_path, "1.3", other.ca_cert)
    consumer = MqttConsumer(settings, lambda _t, _p, _token: None)
    outbox = MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts")
    caplog.set_level(logging.WARNING)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(outbox.run())]

    def said(logger: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == logger and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
        ]

    try:
        await _until(lambda: bool(said("ingest.mqtt.session") and said("ingest.alerts.outbox")))
        assert not consumer.connected
        assert all(
            "retrying in" in m for m in said("ingest.mqtt.session") + said("ingest.alerts.outbox")
        )
    finally:
        consumer.release()
        await asyncio.wait_for(tasks[0], 10)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)


def test_nobody_can_rebind_a_client_id_over_the_plugins_control_topic(
    broker: Broker, sessions: list[Session]
) -> None:
    """The dynamic-security plugin takes commands on $CONTROL; the ACL file grants it to no
    user, so a device (or the service) cannot unbind itself and then take the session."""
    a = devices_of(broker.registry, Kind.GATE, 1)[0]
    command = (
        b'{"commands":[{"command":"setClientId","username":"' + a.encode() + b'",'
        b'"clientid":"citysense-ingest-1"},{"command":"deleteClient","username":"'
        + a.encode()
        + b'"}]}'
    )
    for username, password in [
        (a, device_password(SECRET, a)),
        (INGEST_USER, INGEST_PASSWORD),
    ]:
        s = Session(broker.port, username, password)
        sessions.append(s)
        s.publish("$CONTROL/dynamic-security/v1", command)
    rc = try_connect(broker.port, a, device_password(SECRET, a), client_id="citysense-ingest-1")
    assert _refused(rc)
    assert not _refused(try_connect(broker.port, a, device_password(SECRET, a)))


def test_citysense_serve_stores_over_tls(
    broker: Broker, influxdb: ManagedProcess, tmp_path: Path, sessions: list[Session]
) -> None:
    """The real service process, pointed at the TLS listener with CITYSENSE_MQTT_TLS and the
    local CA, stores what a device sends (ec1dc14 had neither setting and never connected)."""
    database = new_database(influxdb.url, "tls")
    env = service_env(
        mqtt_port=broker.tls_port,
        client_id=f"cs-serve-tls-{uuid.uuid4().hex[:6]}",
        influx_url=influxdb.url,
        database=database,
        data_dir=tmp_path / "data",
    )
    env.update(
        {
            "CITYSENSE_MQTT_USERNAME": INGEST_USER,
            "CITYSENSE_MQTT_PASSWORD": INGEST_PASSWORD,
            "CITYSENSE_MQTT_TLS": "true",
            "CITYSENSE_MQTT_CA_FILE": str(broker.files.tls.ca_cert),
            "CITYSENSE_API_ENABLED": "false",
        }
    )
    device_id = devices_of(broker.registry, Kind.RIVER, 1)[0]
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        service = spawn_service(env, log)
    try:
        deadline = time.monotonic() + 30
        while "subscribed to" not in log_path.read_text(errors="replace"):
            assert service.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.1)
        device = Session(broker.port, device_id, device_password(SECRET, device_id))
        sessions.append(device)
        now_ms = int(time.time() * 1000)
        for seq in range(5):
            payload = b'{"ts": %d, "seq": %d, "water_level_m": 1.5}' % (now_ms + seq, seq)
            device.publish(f"iot/river/{device_id}/telemetry", payload)
        query = f"SELECT count(seq) FROM river WHERE device = '{device_id}'"
        deadline = time.monotonic() + 30
        while not (series := influx_query(influxdb.url, database, query)):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        assert series[0]["values"][0][1] == 5
    finally:
        service.terminate()
        service.wait(30)


# --- the field gateway: what its answer promises --------------------------------------

GATEWAY_NOW = datetime.now(UTC).replace(microsecond=0)


async def test_a_station_the_broker_acl_does_not_know_gets_no_answer(
    broker: Broker, tmp_path: object
) -> None:
    """A station added to the registry (gateway restarted) before `broker-config` was re-run:
    the broker drops the publish its ACL denies. Over MQTT 3.1.1 it would still PUBACK it and
    the station be answered for data nobody stores; over MQTT 5 the PUBACK says "Not
    authorized", so the station is not answered and sends the frame again."""
    registry = broker.registry
    mqtt_river = next(
        d
        for d in registry.devices.values()
        if isinstance(d, RiverDevice) and d.kind is Kind.RIVER and d.protocol is None
    )
    data = mqtt_river.model_dump(mode="json")
    data |= {"protocol": "hj212", "mn": "NEWSTATION0001", "password": "123456"}
    newcomer = RiverDevice.model_validate(data)
    known = sorted(registry.stations_of("hj212").values(), key=lambda d: d.id)[0]
    gateway_registry = Registry(
        registry.areas.values(),
        [*(d for d in registry.devices.values() if d.id != newcomer.id), newcomer],
    )
    listener = Session(broker.port, INGEST_USER, INGEST_PASSWORD)
    listener.subscribe("iot/#")
    settings = Settings(
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        dev_secret=SECRET.decode(),
        gateway_bind="127.0.0.1",
        gateway_idle_s=30,
    )
    publisher = GatewayPublisher(settings, "hj212", timeout_s=3)
    server = GatewayServer(settings, dialect("hj212", gateway_registry, None), publisher, Letters())
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    broker_task = asyncio.create_task(publisher.run())
    serve_task = asyncio.create_task(server.serve(0, stop, ready.set_result))
    try:
        port = await ready
        await asyncio.wait_for(publisher.wait_connected(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for station, ph in ((newcomer, "7.11"), (known, "7.22")):  # the known one: a control
            writer.write(hj212_frame(station, GATEWAY_NOW, {"ph": ph}))
            await writer.drain()
            try:
                answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
            except TimeoutError:
                answers.append(b"")
        writer.close()
        control = json.dumps(
            {"ts": int(GATEWAY_NOW.timestamp() * 1000), "ph": 7.22}, separators=(",", ":")
        )
        got = await asyncio.to_thread(listener.until, control.encode())
        stored = [t for t, _ in got if newcomer.id in t]
        assert answers[1], "the control station was not answered"
        assert not stored and not answers[0], (answers, got)
        assert publisher.refused == 1 and server.counts["unanswered"] == 1
    finally:
        listener.close()
        stop.set()
        await serve_task
        broker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await broker_task


def test_a_device_cannot_take_the_gateways_client_id(broker: Broker) -> None:
    """The gateway's client id is bound to its account: a device logging in with it (which
    would kick the gateway off, every frame then unanswered) is refused."""
    device = next(
        d.id for d in broker.registry.devices.values() if getattr(d, "protocol", None) is None
    )
    rc = try_connect(
        broker.port, device, device_password(SECRET, device), client_id=gateway_user("hj212")
    )
    assert rc is None or rc.is_failure, rc
