"""The local stack: the fixtures' servers answer, the broker keeps what it promises, `stack up`
is idempotent, two stacks live side by side, `stack down` stops only its own; in nats mode it
also runs PostgreSQL, whose URL `stack_database_url` gives."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy

from ingest.ops import processes, stack
from ingest.ops.processes import ManagedProcess, StackError, free_port, mqtt_answers, port_in_use
from ingest.settings import Settings
from tests.brokerauth import GATEWAY, INGEST, Login, device_login
from tests.services import influx_query, vm_export

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 5.0


# --- small MQTT helpers (paho, threaded loop) ----------------------------------------------------


@dataclass
class Session:
    """A connected paho client, the queue its messages arrive in, and its CONNACK's flag."""

    client: mqtt.Client
    inbox: queue.Queue[mqtt.MQTTMessage]
    session_present: bool


@contextmanager
def mqtt_client(
    port: int, client_id: str = "", clean_session: bool = True, login: Login = INGEST
) -> Iterator[Session]:
    """Connect as ``login`` (waiting for the CONNACK); disconnect afterwards."""
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connacks: queue.Queue[tuple[bool, bool]] = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
    )
    client.username_pw_set(login.username, login.password)
    client.on_message = lambda _c, _u, msg: inbox.put(msg)
    client.on_connect = lambda _c, _u, flags, rc, _p: connacks.put(
        (rc.is_failure, flags.session_present)
    )
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        failed, session_present = connacks.get(timeout=TIMEOUT_S)
        assert not failed, "the broker refused the connection"
        yield Session(client, inbox, session_present)
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client, topic: str) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK."""
    subacks: queue.Queue[int] = queue.Queue()
    client.on_subscribe = lambda _c, _u, mid, _rcs, _p: subacks.put(mid)
    _, mid = client.subscribe(topic, qos=1)
    assert subacks.get(timeout=TIMEOUT_S) == mid


def publish(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1 as the gateway; wait for every PUBACK."""
    with mqtt_client(port, login=GATEWAY) as s:
        infos = [s.client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)
            assert info.is_published()


def take(inbox: queue.Queue[mqtt.MQTTMessage], count: int) -> list[mqtt.MQTTMessage]:
    """Exactly ``count`` messages from ``inbox``; fail if they do not all arrive in time."""
    deadline = time.monotonic() + TIMEOUT_S
    got: list[mqtt.MQTTMessage] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(got)} of {count} messages within {TIMEOUT_S} s"
        try:
            got.append(inbox.get(timeout=remaining))
        except queue.Empty:
            continue
    return got


# --- the fixtures' servers ----------------------------------------------------------------------


def test_influxdb_fixture_is_1x_and_stores_what_it_is_sent(influxdb: ManagedProcess) -> None:
    with urllib.request.urlopen(f"{influxdb.url}/ping", timeout=5) as resp:
        # The writer picks the /write dialect from this header (docs/operations.md).
        assert resp.status == 204
        assert resp.headers["X-Influxdb-Version"].startswith("1.")
    body = (
        b"stack_probe,device=x value=1.5 1700000000000\nstack_probe,device=y value=2 1700000000001"
    )
    url = f"{influxdb.url}/write?db=citysense&precision=ms"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as resp:
        assert resp.status == 204
    series = influx_query(
        influxdb.url, "citysense", "SELECT device, value FROM stack_probe", epoch="ms"
    )
    assert series[0]["values"] == [[1700000000000, "x", 1.5], [1700000000001, "y", 2.0]]


def test_victoria_metrics_takes_v2_line_protocol(victoria_metrics: ManagedProcess) -> None:
    ts = time.time_ns() // 1_000_000 - 60_000
    body = b"stack_probe,device=y value=2.5,other=1i %d" % ts
    url = f"{victoria_metrics.url}/api/v2/write?bucket=b&org=o&precision=ms"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as resp:
        assert resp.status == 204
    deadline = time.monotonic() + TIMEOUT_S
    while not (found := vm_export(victoria_metrics.url, '{__name__="stack_probe_value"}')):
        assert time.monotonic() < deadline, "VictoriaMetrics never showed the sample"
        time.sleep(0.1)
    assert len(found) == 1
    assert found[0]["metric"] == {"__name__": "stack_probe_value", "device": "y"}
    assert (found[0]["values"], found[0]["timestamps"]) == ([2.5], [ts])


def test_mqtt_round_trip_and_queue_for_an_away_persistent_session(
    mosquitto: ManagedProcess,
) -> None:
    client_id = f"away-{uuid.uuid4().hex[:8]}"
    topic = f"iot/stack/{client_id}/probe"  # where the ACL lets the gateway write
    with mqtt_client(mosquitto.port, client_id, clean_session=False) as sub:
        subscribe(sub.client, topic)
        publish(mosquitto.port, [(topic, b"while-here", False)])
        [msg] = take(sub.inbox, 1)
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"while-here", 1)

    # More than Mosquitto's default queue of 1000: mosquitto.conf must raise it.
    away = [(topic, b"%d" % i, False) for i in range(1500)]
    publish(mosquitto.port, away)

    with mqtt_client(mosquitto.port, client_id, clean_session=False) as sub:
        assert sub.session_present, "the broker forgot the persistent session"
        got = take(sub.inbox, len(away))
        assert [m.payload for m in got] == [p for _, p, _ in away]
        assert sub.inbox.empty()


def test_broker_runs_the_repository_policy(mosquitto: ManagedProcess) -> None:
    conf = (mosquitto.log_path.parent / "mosquitto.conf").read_text()
    policy = (REPO / "mosquitto.conf").read_text()
    # The policy, then the generated listeners and access rules, which must come last.
    assert policy in conf
    listeners = conf[conf.index(policy) + len(policy) :]
    assert f"\nlistener {mosquitto.port} 127.0.0.1\n" in listeners
    assert "allow_anonymous false" in listeners and "password_file" in listeners
    # max_packet_size: a client sending more is cut off, not acknowledged and then dropped.
    disconnected: queue.Queue[object] = queue.Queue()
    with mqtt_client(mosquitto.port, login=GATEWAY) as s:
        s.client.on_disconnect = lambda *args: disconnected.put(args)
        info = s.client.publish("iot/stack/too-big/probe", b"x" * 300_000, qos=1)
        disconnected.get(timeout=TIMEOUT_S)
        assert not info.is_published()


# --- one process: spawn, wait_ready, stop -------------------------------------------------------


def test_wait_ready_reports_the_log_of_a_server_that_exits(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(3)"]
    proc = processes.spawn("broken", argv, free_port(), tmp_path / "broken.log")
    with pytest.raises(StackError, match=r"(?s)exited with code 3.*bad config line 3"):
        processes.wait_ready(proc, lambda: False, timeout_s=TIMEOUT_S)


def test_wait_ready_gives_up_in_time_and_stops_the_server(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = processes.spawn("mute", argv, free_port(), tmp_path / "mute.log")
    started = time.monotonic()
    with pytest.raises(StackError, match="did not answer"):
        processes.wait_ready(proc, lambda: False, timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    assert not proc.alive()


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = processes.spawn(
        "stubborn", [sys.executable, "-c", code], free_port(), tmp_path / "s.log"
    )
    time.sleep(0.3)  # let it install its handler
    started = time.monotonic()
    assert proc.stop(timeout_s=0.3) is True
    assert not proc.alive()
    assert time.monotonic() - started < 2.0
    assert proc.exit_code() == -9
    assert proc.stop() is False  # nothing left to stop


# --- the stack: up, down, status ----------------------------------------------------------------


def _settings(root: Path) -> Settings:
    return Settings(
        mqtt_port=free_port(),
        mqtt_tls_port=free_port(),
        influx_url=f"http://127.0.0.1:{free_port()}",
        influx_database="stacktest",
        data_dir=root / "data",
    )


def test_up_reuses_two_stacks_run_side_by_side_down_stops_only_its_own(tmp_path: Path) -> None:
    first, second = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    try:
        procs = stack.up(first, REPO)
        assert [p.name for p in procs] == ["mosquitto", "influxdb"]
        assert [p.port for p in procs] == [first.mqtt_port, first.influx_port]
        recorded = json.loads((first.data_dir / "stack.json").read_text())
        assert [r["pid"] for r in recorded] == [p.pid for p in procs]

        again = stack.up(first, REPO)
        assert [p.pid for p in again] == [p.pid for p in procs]  # reused, not restarted

        others = stack.up(second, REPO)
        assert {p.pid for p in others}.isdisjoint(p.pid for p in procs)
        assert mqtt_answers(first.mqtt_port) and mqtt_answers(second.mqtt_port)
        for settings in (first, second):
            databases = influx_query(settings.influx_url, "", "SHOW DATABASES")
            assert ["stacktest"] in databases[0]["values"]

        assert sorted(stack.down(first)) == ["influxdb", "mosquitto"]
        # down() judged them gone from /proc (their command line is empty once they exit);
        # our Popen handles see the exit a moment later, when the kernel has finished it.
        deadline = time.monotonic() + 2
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(p.alive() for p in procs)
        assert not (first.data_dir / "stack.json").exists()
        assert not port_in_use(first.mqtt_port) and not port_in_use(first.influx_port)
        assert [alive for _, alive in stack.status(second)] == [True, True]
        assert mqtt_answers(second.mqtt_port)
        assert stack.down(first) == []  # nothing left to stop
        assert stack.status(first) == []
    finally:
        stack.down(first)
        stack.down(second)


def test_data_survives_down_and_up(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    # A broker from `stack up` knows the example city's devices and the ingest service.
    status_topic = "iot/river/river-zj-0001/status"
    try:
        _, influxdb = stack.up(settings, REPO)
        river = device_login("river-zj-0001")
        # A device may connect only with its own id as client id (issue 13 item 1).
        with mqtt_client(settings.mqtt_port, river.username, login=river) as s:
            s.client.publish(
                status_topic, b'{"online": true}', qos=1, retain=True
            ).wait_for_publish(TIMEOUT_S)
        line = b"stack_probe,device=r1 level=3.25 1700000000000"
        url = f"{influxdb.url}/write?db=stacktest&precision=ms"
        with urllib.request.urlopen(urllib.request.Request(url, data=line), timeout=5):
            pass

        stack.down(settings)  # SIGTERM: Mosquitto saves its database on the way out
        stack.up(settings, REPO)

        with mqtt_client(settings.mqtt_port) as s:
            subscribe(s.client, status_topic)
            [msg] = take(s.inbox, 1)
        assert (msg.payload, msg.retain) == (b'{"online": true}', True)
        series = influx_query(influxdb.url, "stacktest", "SELECT level FROM stack_probe")
        assert series[0]["values"] == [["2023-11-14T22:13:20Z", 3.25]]
    finally:
        stack.down(settings)


def test_up_refuses_ports_taken_by_others_and_leaves_nothing_behind(
    tmp_path: Path, mosquitto: ManagedProcess, victoria_metrics: ManagedProcess
) -> None:
    taken_mqtt = _settings(tmp_path / "a").model_copy(update={"mqtt_port": mosquitto.port})
    with pytest.raises(StackError, match=r"(?s)already in use.*CITYSENSE_MQTT_PORT"):
        stack.up(taken_mqtt, REPO)
    assert mosquitto.alive()
    assert stack.status(taken_mqtt) == []

    # Mosquitto starts, then InfluxDB's port turns out taken: the new Mosquitto is stopped again.
    taken_influx = _settings(tmp_path / "b").model_copy(update={"influx_url": victoria_metrics.url})
    with pytest.raises(StackError, match=r"(?s)already in use.*CITYSENSE_INFLUX_URL"):
        stack.up(taken_influx, REPO)
    assert not port_in_use(taken_influx.mqtt_port)
    assert stack.status(taken_influx) == []
    assert victoria_metrics.alive()


def test_down_leaves_alone_a_recorded_pid_that_is_now_another_program(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    other = processes.spawn("other", sleeper, free_port(), tmp_path / "other.log")
    try:
        # As if `up` had once started a mosquitto whose pid the kernel has since given away.
        record = {
            "name": "mosquitto",
            "pid": other.pid,
            "argv": ["/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
            "port": settings.mqtt_port,
            "address": f"127.0.0.1:{settings.mqtt_port}",
            "log_path": str(tmp_path / "mosquitto.log"),
        }
        settings.data_dir.mkdir(parents=True)
        (settings.data_dir / "stack.json").write_text(json.dumps([record]))
        assert [alive for _, alive in stack.status(settings)] == [False]
        assert stack.down(settings) == []
        assert other.alive()
    finally:
        other.stop()


@pytest.fixture
def reachable_root() -> Iterator[Path]:
    """A temporary directory that user ``postgres`` may enter: as root, the stack's PostgreSQL
    runs as that user, and pytest's ``tmp_path`` lies in root's 0700 ``/tmp/pytest-of-root``."""
    root = Path(tempfile.mkdtemp(prefix="citysense-stack-"))
    root.chmod(0o711)  # mkdtemp makes it 0700
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fake_postgresql(settings: Settings, proc: ManagedProcess) -> None:
    """A stack.json recording ``proc`` as the stack's PostgreSQL."""
    record = {**proc.to_record(), "name": "postgresql"}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "stack.json").write_text(json.dumps([record]))


def test_stack_database_url_is_the_recorded_running_postgresql_in_nats_mode(
    tmp_path: Path,
) -> None:
    nats_mode = _settings(tmp_path).model_copy(update={"broker": "nats"})
    mosquitto_mode = nats_mode.model_copy(update={"broker": "mosquitto"})
    assert stack.stack_database_url(nats_mode) is None  # no stack.json
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    port = free_port()
    fake = processes.spawn("fake", sleeper, port, tmp_path / "fake.log")
    try:
        # Until it has exec'd, /proc shows our own command line, not the recorded one.
        deadline = time.monotonic() + TIMEOUT_S
        while not ManagedProcess.from_record(fake.to_record()).alive():
            assert time.monotonic() < deadline, "the fake never showed its command line"
            time.sleep(0.01)
        _fake_postgresql(nats_mode, fake)
        # The recorded port, where the server is, whatever CITYSENSE_POSTGRES_PORT says now.
        assert nats_mode.postgres_port != port
        url = stack.stack_database_url(nats_mode)
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{port}/citysense"
        assert stack.stack_database_url(mosquitto_mode) is None
    finally:
        fake.stop()
    assert stack.stack_database_url(nats_mode) is None  # recorded, but no longer running


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as `postgres`")
def test_up_in_nats_mode_refuses_a_data_dir_user_postgres_cannot_reach(tmp_path: Path) -> None:
    # tmp_path is in /tmp/pytest-of-root, mode 0700.
    settings = _settings(tmp_path).model_copy(update={"broker": "nats", "broker_nodes": 1})
    with pytest.raises(StackError, match=r"user 'postgres', which may not enter /tmp/pytest-of"):
        stack.up(settings, REPO)
    assert stack.status(settings) == []  # refused before anything started
    assert not port_in_use(settings.mqtt_port)


@pytest.mark.postgresql
def test_up_in_nats_mode_starts_a_cluster_and_postgresql_switching_back_stops_them(
    reachable_root: Path,
) -> None:
    """CITYSENSE_BROKER=nats: three clustered nodes, node 1's MQTT on CITYSENSE_MQTT_PORT, a
    device's own login works, PostgreSQL on CITYSENSE_POSTGRES_PORT answers through
    stack_database_url; a failed step leaves what runs recorded; up again reuses them; back to
    mosquitto stops the nodes (one port) and PostgreSQL; down stops PostgreSQL promptly even
    with a session open."""
    settings = _settings(reachable_root).model_copy(
        update={"broker": "nats", "partitions": 4, "postgres_port": free_port()}
    )
    try:
        # PostgreSQL's port is taken: up fails and stops the InfluxDB it started, but the NATS
        # nodes run on, recorded (`down` can stop them), and the next up reuses them.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", settings.postgres_port))
            taken.listen()
            with pytest.raises(StackError, match=r"(?s)already in use.*CITYSENSE_POSTGRES_PORT"):
                stack.up(settings, REPO)
        survivors = stack.status(settings)
        assert [(p.name, alive) for p, alive in survivors] == [
            ("nats-1", True),
            ("nats-2", True),
            ("nats-3", True),
        ]
        assert stack.stack_database_url(settings) is None

        procs = stack.up(settings, REPO)
        names = ["nats-1", "nats-2", "nats-3", "influxdb", "postgresql"]
        assert [p.name for p in procs] == names
        assert [p.pid for p in procs[:3]] == [p.pid for p, _ in survivors]
        assert procs[0].port == settings.mqtt_port
        assert procs[4].port == settings.postgres_port
        assert len({p.port for p in procs}) == 5
        for node in procs[:3]:
            with mqtt_client(node.port, login=device_login("gate-sq-0001")) as s:
                assert not s.session_present
        # status reads stack.json back, as `citysense stack status` in another process would.
        assert [(p.name, p.pid, p.port, alive) for p, alive in stack.status(settings)] == [
            (p.name, p.pid, p.port, True) for p in procs
        ]
        url = stack.stack_database_url(settings)
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{settings.postgres_port}/citysense"
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.begin() as conn:
                assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
                conn.execute(sqlalchemy.text("CREATE TABLE kept (n int)"))
        finally:
            engine.dispose()
        assert [p.pid for p in stack.up(settings, REPO)] == [p.pid for p in procs]

        mosquitto = settings.model_copy(update={"broker": "mosquitto"})
        again = stack.up(mosquitto, REPO)
        assert [p.name for p in again] == ["mosquitto", "influxdb"]
        assert again[1].pid == procs[3].pid  # InfluxDB kept
        assert not any(p.alive() for p in procs[:3] + procs[4:])
        assert stack.stack_database_url(settings) is None
        assert not port_in_use(settings.postgres_port)

        # Back to nats: PostgreSQL starts again on its data in DATA_DIR/postgresql.
        procs = stack.up(settings, REPO)
        assert [p.name for p in procs] == names
        engine = sqlalchemy.create_engine(url)
        held = engine.connect()  # a session open across down: the fast shutdown ends it
        try:
            assert held.execute(sqlalchemy.text("SELECT count(*) FROM kept")).scalar() == 0
            held.commit()
            started = time.monotonic()
            assert sorted(stack.down(settings)) == sorted(names)
            # SIGTERM alone (a smart shutdown) would wait for the session until SIGKILL.
            assert time.monotonic() - started < processes.STOP_TIMEOUT_S
        finally:
            held.invalidate()  # its server is gone: close it without a ROLLBACK
            engine.dispose()
        assert not port_in_use(settings.postgres_port)
        assert stack.stack_database_url(settings) is None
    finally:
        stack.down(settings)
