"""The local stack: throwaway Mosquitto, InfluxDB 1.x and VictoriaMetrics processes.

Used by ``citysense stack up/down/status`` and by the test fixtures. Each server runs
detached, with its data and log under an instance directory, and is only reported started
once it answers (an MQTT CONNACK, ``/ping``, ``/health``). These are plain synchronous
functions: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ingest.settings import Settings

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class StackError(RuntimeError):
    """A server could not be started or is in the way."""


@dataclass(frozen=True)
class ManagedProcess:
    """A server process started by us."""

    name: str
    pid: int
    argv: list[str]
    port: int
    address: str
    log_path: str

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (for the HTTP servers)."""
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Whether the process runs and is still the program we started (pid not reused)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(cmdline) and Path(cmdline[0].decode()).name == Path(self.argv[0]).name

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not gone within ``timeout_s``."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        _reap(self.pid)


def _reap(pid: int) -> None:
    # Our own children become zombies until waited for; /proc still lists them.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        raise StackError(f"{name} is not installed: run `make deps` (apt-get installs it)")
    return found


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _start(
    name: str, argv: list[str], port: int, log_path: Path, ready: Callable[[], bool]
) -> ManagedProcess:
    """Start ``argv`` detached and wait until ``ready()``; fail with the log's tail."""
    if _port_in_use(port):
        raise StackError(f"cannot start {name}: port {port} is already in use")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # A new session: Ctrl-C in the terminal that ran `stack up` must not stop the stack.
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    managed = ManagedProcess(name, proc.pid, argv, port, f"127.0.0.1:{port}", str(log_path))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode}:\n{_log_tail(log_path)}")
        if ready():
            return managed
        time.sleep(0.05)
    managed.stop()
    raise StackError(
        f"{name} did not answer within {READY_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}"
    )


def mqtt_answers(port: int) -> bool:
    """True when an MQTT CONNECT on ``port`` gets a CONNACK (any return code)."""
    # CONNECT, MQTT 3.1.1, clean session, keepalive 5 s, client id "citysense-probe".
    client_id = b"citysense-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x05"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(packet)
            reply = s.recv(4)
            s.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(reply) >= 2 and reply[0] == 0x20


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def mosquitto_conf(port: int, instance_dir: Path, base_conf: Path) -> str:
    """The instance's config: its listener and persistence directory, then the repo's policy."""
    lines = [
        f"listener {port} 127.0.0.1",
        f"persistence_location {instance_dir}/",
        # Started as root, Mosquitto switches to user "mosquitto", which cannot write here.
        f"user {getpass.getuser()}",
        "",
    ]
    return "\n".join(lines) + base_conf.read_text()


def start_mosquitto(port: int, instance_dir: Path, base_conf: Path) -> ManagedProcess:
    """Start Mosquitto on 127.0.0.1:``port`` with ``base_conf``'s policy."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    conf = instance_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port, instance_dir, base_conf))
    argv = [_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)]
    return _start(
        "mosquitto", argv, port, instance_dir / "mosquitto.log", lambda: mqtt_answers(port)
    )


def influxd_conf(port: int, rpc_port: int, instance_dir: Path) -> str:
    """A minimal InfluxDB 1.x config with everything under ``instance_dir``."""
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{instance_dir}/meta"

[data]
  dir = "{instance_dir}/data"
  wal-dir = "{instance_dir}/wal"
  query-log-enabled = false

[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false

[monitor]
  store-enabled = false

[logging]
  level = "warn"
"""


def influx_query(url: str, query: str, database: str = "") -> None:
    """POST an InfluxQL statement (CREATE DATABASE and the like); raise on an error."""
    data = urllib.parse.urlencode({"q": query, "db": database}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as resp:
        answer = json.load(resp)
    errors = [r["error"] for r in answer.get("results", []) if "error" in r]
    if errors:
        raise StackError(f"InfluxDB refused {query!r}: {errors[0]}")


def start_influxd(port: int, instance_dir: Path, database: str) -> ManagedProcess:
    """Start InfluxDB 1.x on 127.0.0.1:``port`` and create ``database``."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    conf = instance_dir / "influxd.conf"
    # The RPC port (default 8088) would clash between instances: give each its own.
    conf.write_text(influxd_conf(port, free_port(), instance_dir))
    argv = [_binary("influxd"), "-config", str(conf)]
    url = f"http://127.0.0.1:{port}"
    proc = _start(
        "influxdb",
        argv,
        port,
        instance_dir / "influxd.log",
        lambda: _http_status(f"{url}/ping") == 204,
    )
    influx_query(url, f'CREATE DATABASE "{database}"')
    return proc


def start_victoria_metrics(port: int, instance_dir: Path) -> ManagedProcess:
    """Start VictoriaMetrics (a server that accepts /api/v2/write) on 127.0.0.1:``port``."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        _binary("victoria-metrics"),
        f"-storageDataPath={instance_dir}/data",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        "-loggerLevel=ERROR",
        # Make new samples searchable at once rather than after the default 30 s cache.
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]
    return _start(
        "victoria-metrics",
        argv,
        port,
        instance_dir / "victoria-metrics.log",
        lambda: _http_status(f"http://127.0.0.1:{port}/health") == 200,
    )


# --- the stack recorded in DATA_DIR/stack.json ------------------------------------------------


def _state_file(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def _recorded(settings: Settings) -> list[ManagedProcess]:
    try:
        raw = json.loads(_state_file(settings).read_text())
    except (OSError, ValueError):
        return []
    return [ManagedProcess(**entry) for entry in raw]


def _record(settings: Settings, procs: list[ManagedProcess]) -> None:
    path = _state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(p) for p in procs], indent=2))


def up(settings: Settings, repo_root: Path) -> list[ManagedProcess]:
    """Start Mosquitto and InfluxDB for ``settings`` unless already running; record them."""
    data_dir = settings.data_dir.resolve()
    running = {p.name: p for p in _recorded(settings) if p.alive()}
    procs: list[ManagedProcess] = []
    mosquitto = running.get("mosquitto")
    if mosquitto is None or mosquitto.port != settings.mqtt_port:
        mosquitto = start_mosquitto(
            settings.mqtt_port, data_dir / "mosquitto", repo_root / "mosquitto.conf"
        )
    procs.append(mosquitto)
    influxdb = running.get("influxdb")
    if influxdb is None or influxdb.port != settings.influx_port:
        influxdb = start_influxd(
            settings.influx_port, data_dir / "influxdb", settings.influx_database
        )
    else:
        influx_query(influxdb.url, f'CREATE DATABASE "{settings.influx_database}"')
    procs.append(influxdb)
    _record(settings, procs)
    return procs


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` recorded for these settings (and nothing else); return their names."""
    stopped = []
    for proc in _recorded(settings):
        if proc.alive():
            proc.stop()
            stopped.append(proc.name)
    with contextlib.suppress(FileNotFoundError):
        _state_file(settings).unlink()
    return stopped


def status(settings: Settings) -> list[tuple[ManagedProcess, bool]]:
    """What ``up`` recorded, and whether each is still running."""
    return [(p, p.alive()) for p in _recorded(settings)]
