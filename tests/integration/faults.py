"""Fault-injection harness: real Mosquitto, InfluxDB and ``citysense serve`` processes.

Not tests. ``test_faults.py`` builds one ``Rig`` per test:

- ``Stack``: its own Mosquitto (the repository's ``mosquitto.conf``, persistence on, the
  tests' users and ACL from ``tests/brokerauth.py``) and
  InfluxDB on fixed free ports, data under the test's tmp_path, each stoppable and
  restartable on the same port and data directory (the session fixtures cannot be: other
  tests use them);
- ``Service``: ``python -m ingest.cli serve`` as a subprocess configured by ``CITYSENSE_*``
  variables, log to a file, with start / SIGKILL / SIGTERM / restart and a sampler of its
  resident memory (``/proc/<pid>/status``);
- ``Publisher``: a paho client in a thread (QoS 1, persistent session, fixed client id,
  logged in as the tests' gateway account) sending numbered telemetry from many registry
  devices at a steady rate; it records which (device, seq) the broker acknowledged
  (PUBACK). paho keeps every QoS 1 message until its PUBACK and sends it again after a
  reconnect, as a device with a persistent session does, so a message caught in a broker
  restart is retried until acknowledged;
- ``Rig.report``/``Rig.wait_settled``: what InfluxDB holds per (device, seq), what the
  dead-letter store and the alert store hold, compared with what was acknowledged; the
  alerts also with those the service's own rule engine raises for the same messages fed
  once, in order, without faults (``reference_alerts``).

Only acknowledged messages are promised to be kept; the figures count them as ``acked``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from devices.kinds import Channel, Kind
from devices.partitions import partition_of
from devices.payloads import schema_for
from devices.registry import Device, Registry, RiverDevice, load_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.ops.processes import ManagedProcess, free_port, log_tail, start_influxd, start_mosquitto
from ingest.sinks.deadletters import DeadLetterStore, store_path
from rules import Engine, load_rules
from rules.alerts import area_ids
from tests import brokerauth
from tests.serviceproc import (
    HOST,
    REGISTRY_FILE,
    REPO,
    RULES_FILE,
    memory_kb,
    service_env,
    spawn_service,
)
from tests.services import influx_query

MOSQUITTO_CONF = REPO / "mosquitto.conf"

TELEMETRY = ("river", "gate", "road")  # the measurements the publisher writes to
# Device time advances a minute per message, so the threshold rules (for: 2m, 5m) open and
# clear alerts many times within a short test: redelivery that re-raised one would show.
STEP_MS = 60_000
SERVICE_READY_S = 30.0
LOG_TAIL = 40

Key = tuple[str, int]  # (device id, seq)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


def ranges(keys: Iterable[Key], limit: int = 6) -> str:
    """``river-zj-0001 57-63, gate-…-0002 12`` for the first ``limit`` runs of sorted keys."""
    runs: list[tuple[str, int, int]] = []
    for device, seq in sorted(keys):
        if runs and runs[-1][0] == device and runs[-1][2] == seq - 1:
            runs[-1] = (device, runs[-1][1], seq)
        else:
            runs.append((device, seq, seq))
    shown = [f"{d} {a}" if a == b else f"{d} {a}-{b}" for d, a, b in runs[:limit]]
    more = f" (+{len(runs) - limit} more runs)" if len(runs) > limit else ""
    return ", ".join(shown) + more


# --- the servers -------------------------------------------------------------------------------


class Stack:
    """This test's own Mosquitto and InfluxDB, restartable on the same ports and data."""

    def __init__(self, root: Path, database: str = "citysense") -> None:
        self.root = root
        self.database = database
        self.mqtt_port = free_port()
        self.influx_port = free_port()
        self.mosquitto: ManagedProcess | None = None
        self.influxdb: ManagedProcess | None = None
        self._listeners: Path | None = None

    @property
    def influx_url(self) -> str:
        return f"http://{HOST}:{self.influx_port}"

    def start(self) -> None:
        self.start_mosquitto()
        self.start_influxdb()

    def start_mosquitto(self) -> None:
        """Start (or start again) Mosquitto on the same port, data and access files."""
        instance = self.root / "mosquitto"
        if self._listeners is None:
            # The tests' users and ACL (tests/brokerauth.py), generated once: a restart keeps
            # the same listeners, as a real broker's does.
            files = brokerauth.broker_files(instance / "broker", self.mqtt_port, free_port())
            self._listeners = files.listeners
        self.mosquitto = start_mosquitto(self.mqtt_port, instance, MOSQUITTO_CONF, self._listeners)

    def stop_mosquitto(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file), SIGKILL after 10 s."""
        assert self.mosquitto is not None
        self.mosquitto.stop()
        self.mosquitto = None

    def start_influxdb(self) -> None:
        self.influxdb = start_influxd(self.influx_port, self.root / "influxdb", self.database)

    def stop_influxdb(self) -> None:
        assert self.influxdb is not None
        self.influxdb.stop()
        self.influxdb = None

    def close(self) -> None:
        for proc in (self.mosquitto, self.influxdb):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.mosquitto = self.influxdb = None

    def logs(self) -> str:
        parts = []
        for name, path in (
            ("mosquitto", self.root / "mosquitto" / "mosquitto.log"),
            ("influxdb", self.root / "influxdb" / "influxd.log"),
        ):
            parts.append(f"--- {path} ({name}) ends:\n{log_tail(path, 10)}")
        return "\n".join(parts)


# --- the service under test --------------------------------------------------------------------


class Service:
    """``citysense serve`` as a subprocess: start, SIGKILL, SIGTERM, restart; RSS sampled."""

    def __init__(self, stack: Stack, data_dir: Path, log_path: Path, **extra_env: str) -> None:
        self.stack = stack
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_id = f"citysense-faults-{uuid.uuid4().hex[:8]}"
        self.extra_env = extra_env
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.terminations: list[int | None] = []  # exit codes after SIGTERM
        self.peak_rss_kb = 0
        self.samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS kB)
        self._sampler_stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()

    def env(self) -> dict[str, str]:
        # CITYSENSE_MQTT_SHARE_GROUP is left to the service's default: the broker is this
        # test's own, and the subscription mode is part of what is under test.
        env = service_env(
            mqtt_port=self.stack.mqtt_port,
            client_id=self.client_id,
            influx_url=self.stack.influx_url,
            database=self.stack.database,
            data_dir=self.data_dir,
        )
        env.update(
            {
                "CITYSENSE_API_ENABLED": "false",
                "CITYSENSE_STATUS_INTERVAL_S": "1",
                "CITYSENSE_LOG_LEVEL": "INFO",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, wait_subscribed: bool = True, sessions: int = 1) -> None:
        """Start the service; by default wait until it says it subscribed (or fail) — on a
        cluster ``sessions`` times, once per partition it reads: a session that does not exist
        yet when a device publishes never gets that message (nothing was subscribed)."""
        assert not self.alive(), "the service is already running"
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- faults harness: start #{self.starts} at {stamp()}\n".encode())
            log.flush()
            offset = log.tell()
            self.popen = spawn_service(self.env(), log)
        if wait_subscribed:
            self._wait_for_log("subscribed", offset, SERVICE_READY_S, sessions)

    def _wait_for_log(self, needle: str, offset: int, timeout_s: float, times: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                if f.read().lower().count(needle.encode()) >= times:
                    return
            if not self.alive():
                code = self.popen.poll() if self.popen else None
                raise AssertionError(
                    f"the service exited (code {code}) before logging {needle!r}:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"the service did not log {needle!r} within {timeout_s:g} s:\n{self.tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in an OOM kill or a power cut of the process."""
        assert self.popen is not None and self.alive(), "the service is not running"
        self._note(f"SIGKILL pid {self.popen.pid}")
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.kills += 1

    def terminate(self, timeout_s: float = 45.0) -> int | None:
        """SIGTERM and wait for the orderly stop; return the exit code (None: had to SIGKILL)."""
        assert self.popen is not None and self.alive(), "the service is not running"
        self._note(f"SIGTERM pid {self.popen.pid}")
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
            code = None
        self.terminations.append(code)
        return code

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self._sampler_stop.set()
        if self.alive() and self.popen is not None:
            with contextlib.suppress(Exception):
                self.terminate(30)
        self._sampler.join(2)

    def tail(self, lines: int = LOG_TAIL) -> str:
        """The log's last lines, less the alert lines (hundreds, and not what fails here)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no service log)"
        kept = [line for line in text.splitlines() if " INFO ingest.alerts.alerting: " not in line]
        return f"--- {self.log_path} ends (alert lines left out):\n" + "\n".join(kept[-lines:])

    def _note(self, what: str) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- faults harness: {what} at {stamp()}\n".encode())

    def _sample(self) -> None:
        while not self._sampler_stop.wait(0.25):
            pid = self.pid
            if pid is None:
                continue
            got = memory_kb(pid)
            if got is None:
                continue
            rss, hwm = got
            self.peak_rss_kb = max(self.peak_rss_kb, rss, hwm)
            self.samples.append((time.monotonic(), rss))

    def mean_rss_kb(self, start: float, end: float) -> float:
        """Mean sampled VmRSS between two monotonic times (kB)."""
        values = [rss for t, rss in self.samples if start <= t < end]
        if not values:
            raise AssertionError(f"no RSS samples between {start:.1f} and {end:.1f}")
        return sum(values) / len(values)


# --- the devices -------------------------------------------------------------------------------


def telemetry_payload(device: Device, seq: int, ts: int, extra: bool) -> dict[str, Any]:
    """A valid telemetry payload (devices/payloads.py) for message ``seq`` of ``device``.

    River levels and road occupancy alternate between a high and a normal phase so the
    threshold rules open and resolve alerts as device time passes. ``extra``: a river
    message also carries ``turbidity_ntu`` (the field a partial-rejection test makes
    InfluxDB refuse).
    """
    if isinstance(device, RiverDevice):
        high = seq % 40 < 20
        level = device.warning_level_m + 0.3 if high else device.normal_level_m
        payload: dict[str, Any] = {
            "ts": ts,
            "seq": seq,
            "water_level_m": round(level, 3),
            "rainfall_mm": round(0.1 * (seq % 50), 1),
        }
        if extra:
            payload["turbidity_ntu"] = 12.5
        return payload
    if device.kind is Kind.ROAD:
        return {
            "ts": ts,
            "seq": seq,
            "vehicle_count": seq % 97,
            "avg_speed_kmh": round(30.0 + seq % 40, 1),
            "occupancy_pct": 88.0 if seq % 30 < 15 else 35.0,
        }
    return {
        "ts": ts,
        "seq": seq,
        "door": "open" if seq % 2 else "closed",
        "people_in": seq % 11,
        "people_out": seq % 7,
        "vehicles_in": seq % 5,
        "vehicles_out": seq % 3,
    }


class Publisher:
    """Steady QoS 1 publisher for many devices; knows exactly which messages were PUBACKed.

    Message ``k`` goes to device ``k mod n`` with that device's next ``seq`` (from 1) and
    ``ts = base_ms + seq × STEP_MS``: unique per device, in order, old enough to be in the
    past for the whole run and young enough for the service's 30-day window.
    """

    def __init__(
        self,
        port: int,
        devices: list[Device],
        rate: float,
        duration_s: float,
        marked: Callable[[Device, int], bool] | None = None,
    ) -> None:
        self.port = port
        self.devices = devices
        self.rate = rate
        self.duration_s = duration_s
        self.marked = marked or (lambda _d, _s: False)
        per_device = int(duration_s * rate / len(devices)) + 10
        self.span_ms = per_device * STEP_MS  # device time the planned run covers from base_ms
        self.base_ms = now_ms() - self.span_ms - 60 * STEP_MS
        if now_ms() - self.base_ms > 25 * 86_400_000:
            raise ValueError("too long a run for the service's 30-day window: lower the rate")
        self.client_id = f"faults-pub-{uuid.uuid4().hex[:8]}"
        self.sent: dict[Key, int] = {}  # key → ts
        self.bad: set[Key] = set()
        self.acked: set[Key] = set()
        self._pending: list[tuple[Key, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-publisher", daemon=True)
        self._error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self.disconnects = 0
        self.client: Any = None
        self._paused_since: float | None = None
        self._connected = threading.Event()
        self._connack: int | None = None
        self._paused_total = 0.0

    # -- lifecycle --

    def start(self) -> None:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        # A data concentrator's account (tests/brokerauth.py): it may write iot/# for many
        # devices; the service logs in with its settings' default ingest user.
        client.username_pw_set(brokerauth.GATEWAY.username, brokerauth.GATEWAY.password)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)  # unbounded: nothing is dropped while disconnected
        client.reconnect_delay_set(0.1, 1)
        client.on_disconnect = self._on_disconnect
        client.on_connect = self._on_connect
        client.connect(HOST, self.port, keepalive=10)
        client.loop_start()
        self.client = client
        if not self._connected.wait(10) or self._connack != 0:
            client.loop_stop()
            raise AssertionError(f"the publisher could not connect: CONNACK {self._connack!r}")
        self.started_at = time.monotonic()
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait until the planned duration is over (the publishing thread ends)."""
        self._thread.join(timeout_s if timeout_s is not None else self.duration_s + 30)
        if self._error is not None:
            raise AssertionError(f"the publisher failed: {self._error!r}") from self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_acked(self, timeout_s: float) -> int:
        """Wait until every sent message is PUBACKed; return how many are still not."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.collect()
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            self.client.loop_stop()

    def pause(self) -> None:
        """Stop sending until ``resume``; the planned number of messages stays the same."""
        with self._lock:
            if self._paused_since is None:
                self._paused_since = time.monotonic()

    def resume(self) -> None:
        with self._lock:
            if self._paused_since is not None:
                self._paused_total += time.monotonic() - self._paused_since
                self._paused_since = None

    def _active_s(self, now: float) -> float | None:
        """Seconds of publishing so far, pauses left out; None while paused."""
        with self._lock:
            if self._paused_since is not None:
                return None
            return now - self.started_at - self._paused_total

    def is_alive(self) -> bool:
        """Whether it is still publishing."""
        return self._thread.is_alive()

    def collect(self) -> int:
        """Move PUBACKed messages to ``acked``; return how many are still waiting."""
        with self._lock:
            still = []
            for key, info in self._pending:
                # Not info.is_published(): it raises for a message queued while disconnected
                # (rc NO_CONN stays set) even after paho sent it and got its PUBACK.
                if info._published:
                    self.acked.add(key)
                else:
                    still.append((key, info))
            self._pending = still
            return len(still)

    @property
    def acked_rate(self) -> float:
        span = (self.finished_at or time.monotonic()) - self.started_at
        return len(self.sent) / span if span > 0 else 0.0

    # -- the thread --

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnects += 1

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, *_: Any) -> None:
        if not self._connected.is_set():
            self._connack = reason.value if hasattr(reason, "value") else int(reason)
            self._connected.set()

    def _run(self) -> None:
        try:
            seqs = [0] * len(self.devices)
            k = 0
            last_collect = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                active = self._active_s(now)
                if active is not None and active >= self.duration_s:
                    break
                due = k if active is None else int(active * self.rate)
                while k < due:
                    i = k % len(self.devices)
                    seqs[i] += 1
                    self._publish(self.devices[i], seqs[i])
                    k += 1
                if now - last_collect > 0.5:
                    self.collect()
                    last_collect = now
                time.sleep(0.005)
        except BaseException as e:
            self._error = e
        finally:
            self.finished_at = time.monotonic()

    def _publish(self, device: Device, seq: int) -> None:
        ts = self.base_ms + seq * STEP_MS
        extra = self.marked(device, seq)
        payload = telemetry_payload(device, seq, ts, extra)
        topic = f"iot/{device.kind.value}/{device.id}/telemetry"
        # paho queues a QoS 1 message even when disconnected (rc NO_CONN) and sends it after
        # the reconnect; it keeps it until the PUBACK, re-sending with DUP after a reconnect.
        info = self.client.publish(topic, json.dumps(payload).encode(), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"paho refused to queue {topic} seq {seq}: rc {info.rc}")
        key = (device.id, seq)
        with self._lock:
            self.sent[key] = ts
            if extra:
                self.bad.add(key)
            self._pending.append((key, info))


# --- what the stores hold ----------------------------------------------------------------------


def stored_keys(influx_url: str, database: str, since_ms: int) -> dict[Key, list[int]]:
    """Every (device, seq) in the telemetry measurements since ``since_ms``, with its times."""
    found: dict[Key, list[int]] = defaultdict(list)
    for measurement in TELEMETRY:
        series = influx_query(
            influx_url,
            database,
            f'SELECT "seq" FROM "{measurement}" WHERE time >= {since_ms}ms GROUP BY "device"',
            epoch="ms",
        )
        for s in series:
            device = s["tags"]["device"]
            for t, seq in s["values"]:
                if seq is not None:
                    found[(device, int(seq))].append(int(t))
    return found


_LINE_DEVICE = re.compile(r"[ ,]device=([^, ]+)")
_LINE_SEQ = re.compile(r"[ ,]seq=(\d+)i")


def dead_letter_key(topic: str, payload: str) -> Key | None:
    """(device, seq) of a dead letter: from a refused line, or from an MQTT topic and JSON."""
    if topic.startswith("influx:"):
        device, seq = _LINE_DEVICE.search(payload), _LINE_SEQ.search(payload)
        return (device.group(1), int(seq.group(1))) if device and seq else None
    parts = topic.split("/")
    try:
        seq_value = json.loads(payload).get("seq")
    except (ValueError, AttributeError):
        return None
    if len(parts) == 4 and isinstance(seq_value, int):
        return parts[2], seq_value
    return None


@dataclass
class DeadLetters:
    by_key: Counter[Key] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    unknown: list[str] = field(default_factory=list)  # rows whose (device, seq) is unclear

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def read_dead_letters(data_dir: Path) -> DeadLetters:
    out = DeadLetters()
    path = store_path(data_dir)
    if not path.exists():
        return out
    store = DeadLetterStore(path)
    try:
        rows = store.list(limit=10_000_000)
    finally:
        store.close()
    for row in rows:
        out.reasons[row.reason] += 1
        key = dead_letter_key(row.topic, row.payload)
        if key is None:
            out.unknown.append(f"{row.reason} {row.topic} {row.payload[:120]}")
        else:
            out.by_key[(key[0], key[1])] += 1
    return out


AlertKey = tuple[str, str, int]  # (rule, device, opened_ms)


@dataclass
class AlertFigures:
    total: int = 0
    twice: list[str] = field(default_factory=list)  # (rule, device, opened_ms) seen > once
    by_rule: Counter[str] = field(default_factory=Counter)
    states: dict[AlertKey, str] = field(default_factory=dict)


def read_alerts(data_dir: Path) -> AlertFigures:
    """Alerts in the store; an alert raised twice is two with the same rule, device, opening."""
    out = AlertFigures()
    if not (data_dir / "alerts.sqlite3").exists():
        return out
    store = AlertStore(sqlite_url(data_dir))
    try:
        alerts = store.list(limit=10_000_000)
    finally:
        store.close()
    seen: Counter[AlertKey] = Counter()
    for alert in alerts:
        key = (alert.rule_id, alert.device_id, alert.opened_ms)
        seen[key] += 1
        out.by_rule[alert.rule_id] += 1
        out.states[key] = alert.state.value
    out.total = len(alerts)
    out.twice = [f"{r}/{d}@{t} ×{n}" for (r, d, t), n in sorted(seen.items()) if n > 1]
    return out


def reference_alerts(
    registry: Registry,
    sent: dict[Key, int],
    bad: set[Key],
    work_dir: Path,
    partitions: int | None = None,
) -> dict[AlertKey, str]:
    """The alerts an undisturbed run raises for exactly these messages, and their states.

    The service's own rule engine and alert store, fed each device's messages once and in
    order (the rules keep state per (rule, device); along_river's warnings downstream depend
    only on the upstream station's). No clock ticks, as in the service under test, whose
    start-up grace holds deadlines back. ``partitions``: as a cluster judges, where a rule
    relates only the devices of one partition (docs/rules.md, along_river on a cluster).
    """
    rules = load_rules(RULES_FILE, registry)
    engine = Engine(rules, registry)
    work_dir.mkdir(parents=True, exist_ok=True)
    store = AlertStore(sqlite_url(work_dir))
    try:
        for device_id, seq in sorted(sent):
            device = registry.devices[device_id]
            ts = sent[(device_id, seq)]
            payload = telemetry_payload(device, seq, ts, (device_id, seq) in bad)
            schema = schema_for(device.kind, Channel.TELEMETRY)
            assert schema is not None
            message = schema.model_validate_json(json.dumps(payload))
            for t in engine.observe(device, Channel.TELEMETRY, message, ts):
                rule = rules.get(t.rule_id)
                assert rule is not None
                if partitions is not None and partition_of(t.device_id, partitions) != partition_of(
                    device_id, partitions
                ):
                    continue
                told = registry.devices[t.device_id]
                areas = area_ids(registry.device_path(t.device_id))
                store.apply(t, severity=rule.severity, kind=told.kind, areas=areas, now_ms=ts)
        return {
            (a.rule_id, a.device_id, a.opened_ms): a.state.value
            for a in store.list(limit=10_000_000)
        }
    finally:
        store.close()


def alert_differences(
    live: dict[AlertKey, str], reference: dict[AlertKey, str]
) -> tuple[int, list[str]]:
    """How many alerts differ from an undisturbed run's (raised only here, only there, or in
    another state), and what they are."""
    out = []
    extra = sorted(set(live) - set(reference))
    lacking = sorted(set(reference) - set(live))
    state = sorted(k for k in set(live) & set(reference) if live[k] != reference[k])
    if extra:
        out.append(f"{len(extra)} raised that an undisturbed run does not raise: {extra[:3]}")
    if lacking:
        out.append(f"{len(lacking)} not raised that an undisturbed run raises: {lacking[:3]}")
    if state:
        shown = [f"{k} {live[k]} (undisturbed: {reference[k]})" for k in state[:3]]
        out.append(f"{len(state)} in another state than in an undisturbed run: {shown}")
    return len(extra) + len(lacking) + len(state), out


# --- the verdict -------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures of one run and what is wrong with them."""

    name: str
    sent: int
    acked: int
    unacked: int
    stored: int
    missing: list[Key]
    duplicates: dict[Key, list[int]]
    unexpected: list[Key]  # stored but never sent, or bad (should have been refused)
    expected_bad: set[Key]
    dead: DeadLetters
    alerts: AlertFigures
    peak_rss_mb: float
    elapsed_s: float
    alert_diff: list[str] = field(default_factory=list)
    alert_diff_count: int = 0
    reference_alerts: int | None = None  # how many an undisturbed run raises
    strict_alerts: bool = True  # whether alert_diff is a failure or only a figure
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"faults[{self.name}]: sent {self.sent} | acked {self.acked} | stored {self.stored}"
            f" | lost {len(self.missing)} | duplicates {len(self.duplicates)}"
            f" | dead letters {self.dead.total} (expected {len(self.expected_bad)})"
            f" | alerts {self.alerts.total} of {self.reference_alerts} undisturbed"
            f" (raised twice {len(self.alerts.twice)}, differ {self.alert_diff_count}"
            + ("" if self.strict_alerts else " [not asserted]")
            + ")"
            f" | peak RSS {self.peak_rss_mb:.1f} MB | {self.elapsed_s:.1f} s"
            + (f" | {'; '.join(self.notes)}" if self.notes else "")
        )

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.unacked:
            out.append(
                f"the broker never acknowledged {self.unacked} of {self.sent} sent messages "
                "(publisher/broker side, not the service)"
            )
        if self.missing:
            first = min(self.missing)
            out.append(
                f"missing {len(self.missing)} of {self.acked} acknowledged: first missing "
                f"({first[0]}, {first[1]}); runs: {ranges(self.missing)}"
            )
        if self.duplicates:
            key, times = min(self.duplicates.items())
            out.append(
                f"{len(self.duplicates)} (device, seq) stored more than once: first "
                f"({key[0]}, {key[1]}) at {times}"
            )
        if self.unexpected:
            out.append(
                f"{len(self.unexpected)} stored that should not be: {ranges(self.unexpected)}"
            )
        dead_keys = set(self.dead.by_key)
        if dead_keys != self.expected_bad:
            extra = dead_keys - self.expected_bad
            lacking = self.expected_bad - dead_keys
            out.append(
                f"dead letters hold {len(dead_keys)} (device, seq), expected "
                f"{len(self.expected_bad)}: not expected {len(extra)} [{ranges(extra)}], "
                f"not there {len(lacking)} [{ranges(lacking)}]; reasons {dict(self.dead.reasons)}"
            )
        twice_dead = [k for k, n in self.dead.by_key.items() if n > 1]
        if twice_dead:
            out.append(f"{len(twice_dead)} dead-lettered more than once: {ranges(twice_dead)}")
        wrong_reason = {r: n for r, n in self.dead.reasons.items() if r != "write_rejected"}
        if wrong_reason:
            out.append(f"dead letters with other reasons: {wrong_reason}")
        if self.dead.unknown:
            out.append(f"dead letters that name no (device, seq): {self.dead.unknown[:3]}")
        if self.alerts.twice:
            out.append(f"alerts raised twice: {self.alerts.twice[:5]}")
        if self.strict_alerts:
            out.extend(f"alerts: {d}" for d in self.alert_diff)
        return out


class Rig:
    """One test's servers, service and publisher, and the checks over what they did."""

    def __init__(
        self, root: Path, name: str, *, strict_alerts: bool = True, **service_env: str
    ) -> None:
        """``strict_alerts``: fail when the alerts differ from an undisturbed run's. Off for a
        broker restart (see ``test_mosquitto_restart``); raised twice is always a failure."""
        self.root = root
        self.name = name
        self.strict_alerts = strict_alerts
        self.registry: Registry = load_registry(REGISTRY_FILE)
        self.devices = sorted(self.registry.devices.values(), key=lambda d: d.id)
        self.stack = Stack(root / "stack")
        self.data_dir = root / "data"
        self.service = Service(self.stack, self.data_dir, root / "service.log", **service_env)
        self.publisher: Publisher | None = None
        self.started = time.monotonic()
        self.notes: list[str] = []
        self._reference: dict[AlertKey, str] | None = None
        try:
            self.stack.start()
            self.service.start()
        except BaseException:
            self.close()  # the caller never gets the rig, so nothing else would stop them
            raise

    def publish(
        self,
        rate: float,
        duration_s: float,
        marked: Callable[[Device, int], bool] | None = None,
        prepare: Callable[[Publisher], None] | None = None,
    ) -> Publisher:
        """Start publishing; ``prepare`` runs first (it knows ``base_ms``, the first ts)."""
        self.publisher = Publisher(self.stack.mqtt_port, self.devices, rate, duration_s, marked)
        if prepare is not None:
            prepare(self.publisher)
        self.publisher.start()
        return self.publisher

    def sleep_until(self, t_s: float) -> None:
        """Sleep until ``t_s`` seconds after the publisher started."""
        assert self.publisher is not None
        delay = self.publisher.started_at + t_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  [{stamp()}] {self.name}: {text}", flush=True)

    def report(self) -> Report:
        pub = self.publisher
        assert pub is not None, "nothing was published"
        unacked = pub.collect()
        stored = stored_keys(self.stack.influx_url, self.stack.database, pub.base_ms)
        sent = set(pub.sent)
        acked_good = pub.acked - pub.bad
        alerts = read_alerts(self.data_dir)
        alert_diff: list[str] = []
        alert_diff_count = 0
        if unacked == 0 and not pub.is_alive():
            # Every message sent reached the service's engine (or should have): compare.
            if self._reference is None:
                self._reference = reference_alerts(
                    self.registry, dict(pub.sent), set(pub.bad), self.root / "reference"
                )
            alert_diff_count, alert_diff = alert_differences(alerts.states, self._reference)
        return Report(
            name=self.name,
            sent=len(sent),
            acked=len(pub.acked),
            unacked=unacked,
            stored=len(set(stored) & sent),
            missing=sorted(acked_good - set(stored)),
            duplicates={k: v for k, v in stored.items() if len(v) > 1},
            unexpected=sorted(set(stored) - (sent - pub.bad)),
            expected_bad=pub.bad & pub.acked,
            dead=read_dead_letters(self.data_dir),
            alerts=alerts,
            peak_rss_mb=self.service.peak_rss_kb / 1024,
            elapsed_s=time.monotonic() - self.started,
            alert_diff=alert_diff,
            alert_diff_count=alert_diff_count,
            reference_alerts=None if self._reference is None else len(self._reference),
            strict_alerts=self.strict_alerts,
            notes=list(self.notes),
        )

    def wait_settled(self, timeout_s: float, stall_s: float = 20.0) -> Report:
        """Poll until every acknowledged message is stored, every bad one dead-lettered and
        the alerts match an undisturbed run's (or, not strict, have stopped changing); give up
        after ``timeout_s``, or once nothing changed for ``stall_s``. Return the last report
        either way."""
        started = time.monotonic()
        deadline = started + timeout_s
        last_change, last = started, (-1, -1, -1, -1)
        alerts_changed, alerts_last = started, (-1, -1)
        while True:
            report = self.report()
            now = time.monotonic()
            alerts_now = (report.alerts.total, report.alert_diff_count)
            if alerts_now != alerts_last:
                alerts_changed, alerts_last = now, alerts_now
            # Alert changes are applied after the points are written: wait for them too, to
            # match an undisturbed run (strict) or, when differences are allowed, to be still.
            alerts_done = not report.alert_diff or (
                not self.strict_alerts and now - alerts_changed >= 5
            )
            settled = (
                not report.missing
                and report.expected_bad <= set(report.dead.by_key)
                and alerts_done
            )
            progress = (
                len(report.missing),
                report.dead.total,
                report.alerts.total,
                report.alert_diff_count,
            )
            if progress != last:
                last_change, last = now, progress
            if settled:
                return report
            if now >= deadline or now - last_change >= stall_s:
                why = "stalled" if now < deadline else "timed out"
                report.notes.append(
                    f"not settled: {why} after {now - started:.0f} s of waiting "
                    f"(no change for {now - last_change:.0f} s)"
                )
                return report
            time.sleep(1.0)

    def finish(self, settle_s: float = 60.0, ack_s: float = 30.0, stall_s: float = 20.0) -> Report:
        """End publishing, wait for PUBACKs and for the service to catch up; print figures."""
        assert self.publisher is not None
        self.publisher.join()
        left = self.publisher.wait_acked(ack_s)
        if left:
            self.note(f"{left} messages still without PUBACK after {ack_s:g} s")
        report = self.wait_settled(settle_s, stall_s)
        print(report.line(), flush=True)
        return report

    def verify(self, report: Report) -> None:
        """Fail with every problem, the figures and the logs' tails."""
        problems = report.problems()
        if not self.service.alive():
            code = self.service.popen.poll() if self.service.popen else None
            problems.append(f"the service is not running at the end (exit code {code})")
        if problems:
            raise AssertionError(
                "\n".join([report.line(), *(f"- {p}" for p in problems), self.service.tail(), ""])
                + self.stack.logs()
            )

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.service.close()
        self.stack.close()


def kill_moments(rng: random.Random, duration_s: float, count: int) -> list[float]:
    """``count`` random moments, one in each equal slice of ``duration_s`` (away from its
    edges, so every incarnation runs a while)."""
    width = duration_s / count
    return [i * width + rng.uniform(0.2 * width, 0.8 * width) for i in range(count)]
