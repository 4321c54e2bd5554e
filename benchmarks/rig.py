"""The benchmark's processes: its own Mosquitto and InfluxDB, ``citysense serve`` as a
subprocess, and the paho clients that queue and drain messages.

Everything runs on 127.0.0.1 on free ports, with data in a temporary directory. Mosquitto runs
the repository's ``mosquitto.conf`` with users, ACL and listeners from the same generator as
``citysense stack up`` (through ``tests/brokerauth.py``: a ``gateway`` login that may publish
``iot/#``, a ``monitor`` login that reads ``alerts/#``, and the ingest login).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.workload import MEASUREMENTS, Message
from devices.topics import DEVICE_TOPIC_FILTER
from ingest.ops.processes import (
    ManagedProcess,
    free_port,
    influx_command,
    start_influxd,
    start_mosquitto,
)
from tests import brokerauth
from tests.serviceproc import HOST, PYTHON, REPO, memory_kb, service_env, spawn_service

MOSQUITTO_CONF = REPO / "mosquitto.conf"
__all__ = ["PYTHON"]  # benchmarks.run starts the monitor with the same interpreter
Login = brokerauth.Login
GATEWAY, MONITOR, INGEST = brokerauth.GATEWAY, brokerauth.MONITOR, brokerauth.INGEST


class BenchError(RuntimeError):
    """A run that could not complete (a process died, a count never came)."""


# --- the servers -------------------------------------------------------------------------------


class Stack:
    """Mosquitto and InfluxDB for the whole benchmark; InfluxDB can be stopped and restarted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mqtt_port = free_port()
        self.influx_port = free_port()
        self.mosquitto: ManagedProcess | None = None
        self.influxdb: ManagedProcess | None = None

    @property
    def influx_url(self) -> str:
        return f"http://{HOST}:{self.influx_port}"

    def start(self) -> None:
        instance = self.root / "mosquitto"
        files = brokerauth.broker_files(instance / "broker", self.mqtt_port, free_port())
        self.mosquitto = start_mosquitto(self.mqtt_port, instance, MOSQUITTO_CONF, files.listeners)
        self.start_influxdb()

    def start_influxdb(self, database: str = "bench") -> None:
        self.influxdb = start_influxd(self.influx_port, self.root / "influxdb", database)

    def stop_influxdb(self) -> None:
        assert self.influxdb is not None
        self.influxdb.stop()
        self.influxdb = None

    def create_database(self, name: str) -> None:
        influx_command(self.influx_url, f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        """Free InfluxDB's memory and disk between runs (not timed)."""
        with contextlib.suppress(Exception):
            influx_command(self.influx_url, f'DROP DATABASE "{name}"', timeout_s=60)

    def close(self) -> None:
        for proc in (self.mosquitto, self.influxdb):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.mosquitto = self.influxdb = None


def stored_count(influx_url: str, database: str, timeout_s: float = 5.0) -> int | None:
    """Points of the device measurements in ``database`` (count of ``seq``, summed over the
    measurements); None if InfluxDB does not answer."""
    q = "SELECT count(seq) FROM " + ", ".join(f'"{m}"' for m in MEASUREMENTS)
    url = f"{influx_url}/query?" + urllib.parse.urlencode({"db": database, "q": q})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            answer = json.load(resp)
    except (OSError, ValueError):
        return None
    total = 0
    for result in answer.get("results", []):
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


# --- the service ---------------------------------------------------------------------------------


class Service:
    """One ``python -m ingest.cli serve`` process (one data directory, one database, one fixed
    client id); its peak RSS is read from ``/proc`` (VmHWM) while it runs."""

    def __init__(self, stack: Stack, root: Path, name: str, **extra_env: str) -> None:
        self.stack = stack
        self.data_dir = root / name / "data"
        self.log_path = root / name / "service.log"
        self.database = f"bench_{name}".replace("-", "_")
        self.client_id = f"citysense-bench-{name}-{uuid.uuid4().hex[:6]}"
        self.extra_env = extra_env
        self.popen: subprocess.Popen[bytes] | None = None
        self.peak_rss_kb = 0
        self.started_at = 0.0  # monotonic, just before the process was created
        self.started_wall = 0.0  # the same moment on the wall clock (the log's clock)
        self._log_offset = 0
        self._sampler: threading.Thread | None = None
        self._sampling = threading.Event()
        stack.create_database(self.database)

    def env(self) -> dict[str, str]:
        env = service_env(
            mqtt_port=self.stack.mqtt_port,
            client_id=self.client_id,
            influx_url=self.stack.influx_url,
            database=self.database,
            data_dir=self.data_dir,
        )
        # The HTTP API on, as `citysense serve` runs by default (start-up counts).
        env.update({"CITYSENSE_API_ENABLED": "true", "CITYSENSE_API_PORT": "0"})
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the process (do not wait); RSS sampling starts with it."""
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.started_at = time.monotonic()
            self.started_wall = time.time()
            self.popen = spawn_service(self.env(), log)
        self.peak_rss_kb = 0
        self._sampling.clear()
        self._sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self._sampler.start()

    def wait_subscribed(self, timeout_s: float = 60.0) -> float:
        """Wait until the log says it subscribed; return the seconds since ``start``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                if b"subscribed to" in f.read():
                    return time.monotonic() - self.started_at
            self.check_alive()
            time.sleep(0.02)
        raise BenchError(f"the service did not subscribe within {timeout_s:g} s:\n{self.tail()}")

    def connected_after(self) -> float:
        """Seconds from ``start`` to the log line saying the broker accepted the connection
        (interpreter start, imports, stores opened, MQTT connect), by the log's timestamp
        (millisecond). Not "subscribed": a resumed session's backlog starts to flow right
        after CONNACK and is read before the SUBACK behind it."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            for raw in f:
                line = raw.decode(errors="replace")
                if "MQTT connected to" in line:
                    stamp, _, millis = line[:23].partition(",")
                    at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
                    return at + int(millis) / 1000 - self.started_wall
        raise BenchError(f"the service never said it connected:\n{self.tail()}")

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.poll()
            raise BenchError(f"the service exited (code {code}):\n{self.tail()}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (its orderly stop), SIGKILL after ``timeout_s``; return the exit code."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.poll()
        self._read_rss()
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
            code = None
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(2)
        return code

    def forget_session(self) -> None:
        """Drop the broker's persistent session of this client id (clean-session connect), so
        later runs' messages are not also queued for it."""
        forget_session(self.stack.mqtt_port, self.client_id, INGEST)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [x for x in text.splitlines() if " INFO ingest.alerts.alerting: " not in x]
        return f"--- {self.log_path} ends:\n" + "\n".join(kept[-lines:])

    def _read_rss(self) -> None:
        if self.popen is None:
            return
        got = memory_kb(self.popen.pid)
        if got is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, *got)

    def _sample(self) -> None:
        while not self._sampling.wait(0.2):
            self._read_rss()


# --- MQTT helpers --------------------------------------------------------------------------------


def new_client(client_id: str, login: Login, clean_session: bool) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(login.username, login.password)
    return client


def connect(client: mqtt.Client, port: int, timeout_s: float = 10.0) -> None:
    """Connect, start the network thread and wait for a successful CONNACK."""
    connected = threading.Event()
    codes: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        codes.append(reason)
        connected.set()

    client.on_connect = on_connect
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not connected.wait(timeout_s) or codes[0].is_failure:
        client.loop_stop()
        raise BenchError(f"MQTT connect to port {port} failed: {codes[:1]}")


def subscribe_session(port: int, client_id: str, login: Login) -> None:
    """Create a persistent session subscribed to the device topics at QoS 1, then leave."""
    client = new_client(client_id, login, clean_session=False)
    connect(client, port)
    done = threading.Event()
    client.on_subscribe = lambda *_a: done.set()
    client.subscribe(DEVICE_TOPIC_FILTER, qos=1)
    if not done.wait(10):
        raise BenchError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def forget_session(port: int, client_id: str, login: Login) -> None:
    """Connect with clean session: the broker discards the old session and its queue."""
    client = new_client(client_id, login, clean_session=True)
    connect(client, port)
    client.disconnect()
    client.loop_stop()


def queue_messages(port: int, messages: Iterable[Message], timeout_s: float = 300.0) -> float:
    """Publish ``messages`` at QoS 1 as the gateway login; wait for every PUBACK. Returns s."""
    items = list(messages)
    client = new_client(f"bench-gw-{uuid.uuid4().hex[:8]}", GATEWAY, clean_session=True)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = 0
    all_acked = threading.Event()
    # paho refuses (MQTT_ERR_QUEUE_SIZE) once its message ids (65,535) are all outstanding.
    window = threading.Semaphore(20_000)

    def on_publish(*_a: Any) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == len(items):
            all_acked.set()

    client.on_publish = on_publish
    connect(client, port)
    started = time.monotonic()
    try:
        for m in items:
            if not window.acquire(timeout=timeout_s):
                raise BenchError(f"no PUBACK for {timeout_s:g} s while queueing")
            info = client.publish(m.topic, m.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BenchError(f"paho refused to queue a message: rc {info.rc}")
        if items and not all_acked.wait(timeout_s):
            raise BenchError(f"only {acked} of {len(items)} PUBACKs within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return time.monotonic() - started


def drain_reference(port: int, client_id: str, k: int, timeout_s: float = 300.0) -> float:
    """Resume session ``client_id`` with a plain paho client whose callback does nothing but
    count; return messages/s from the connect call to the ``k``-th message."""
    client = new_client(client_id, INGEST, clean_session=False)
    received = 0
    done = threading.Event()
    finished = 0.0

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal received, finished
        received += 1
        if received == k:
            finished = time.perf_counter()
            done.set()

    client.on_message = on_message
    started = time.perf_counter()
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise BenchError(f"the reference client got {received} of {k} in {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return k / (finished - started)
