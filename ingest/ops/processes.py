"""Servers as real background processes: start one, know it answers, stop it, read its log.

The pieces of the local stack (``stack``) and of the test fixtures: Mosquitto, InfluxDB 1.x,
VictoriaMetrics and PostgreSQL (the tests' alert store), each detached in its own session,
writing data and log under an instance directory, reported started only once it answers (an
MQTT CONNACK, ``/ping``, ``/health``, a query).

Everything here is synchronous and blocking: async callers use ``asyncio.to_thread``.

Why one module (about 470 lines): one process type, its start, readiness and stop, and
the four servers' command lines, which differ only in arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
LOG_TAIL_LINES = 20
# Written to a log before each start, so a failure shows this run's lines, not an old run's.
_LOG_MARK = "--- citysense starts "


class StackError(RuntimeError):
    """A server could not be started, did not answer, or is in the way."""


class MissingBinaryError(StackError):
    """A server's program is not installed."""


class PortInUseError(StackError):
    """The port is taken by a program this stack did not start."""


# --- one process -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedProcess:
    """A server process started here, as recorded in ``stack.json``."""

    name: str
    pid: int
    argv: tuple[str, ...]
    port: int
    address: str  # host:port
    log_path: Path
    # Only when this Python process started it: lets us reap it and report its exit code.
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        """``http://host:port``, the base URL of the HTTP servers (InfluxDB, VictoriaMetrics)."""
        return f"http://{self.address}"

    def alive(self) -> bool:
        """Whether it runs and is still the program we started (a reused pid is not ours)."""
        if self._popen is not None:
            # Our own unreaped child: its pid cannot have been reused. (Its cmdline is also
            # briefly empty just after exec, so /proc would say "not ours" for a moment.)
            return self._popen.poll() is None
        # A zombie's cmdline is empty, so an exited but unreaped process is not alive either.
        return _cmdline(self.pid) == self.argv

    def exit_code(self) -> int | None:
        """Its exit code, if this process started it and it has exited."""
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM, then SIGKILL if still running after ``timeout_s``; False if it was not running.

        SIGTERM first because both servers save their state on it (Mosquitto writes its
        persistence file); SIGKILL is the bound on a server that hangs while doing so.
        """
        if not self.alive():
            return False
        self._signal(signal.SIGTERM)
        if not self._gone_within(timeout_s):
            self._signal(signal.SIGKILL)
            if not self._gone_within(STOP_TIMEOUT_S):
                raise StackError(f"{self.name} (pid {self.pid}) is still there after SIGKILL")
        return True

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept in ``stack.json``."""
        return {
            "name": self.name,
            "pid": self.pid,
            "argv": list(self.argv),
            "port": self.port,
            "address": self.address,
            "log_path": str(self.log_path),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ManagedProcess:
        """Read back what ``to_record`` wrote."""
        return cls(
            name=str(record["name"]),
            pid=int(record["pid"]),
            argv=tuple(str(a) for a in record["argv"]),
            port=int(record["port"]),
            address=str(record["address"]),
            log_path=Path(record["log_path"]),
        )

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _gone_within(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True


def _cmdline(pid: int) -> tuple[str, ...] | None:
    """The argv of process ``pid`` from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(os.fsdecode(a) for a in raw.split(b"\0")[:-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def find_binary(name: str, *fallbacks: str) -> str:
    """The path of program ``name``; fail clearly if it is not installed."""
    found = shutil.which(name) or next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if found is None:
        raise MissingBinaryError(
            f"{name} is not installed: `make deps` (or `make test`) installs the Debian packages"
        )
    return found


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines the latest start wrote to log ``path``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    latest = text.rsplit(_LOG_MARK, 1)[-1].split("\n", 1)[-1] if _LOG_MARK in text else text
    return "\n".join(latest.splitlines()[-lines:]) or "(the log is empty)"


def spawn(name: str, argv: list[str], port: int, log_path: Path) -> ManagedProcess:
    """Start ``argv`` detached, stdout and stderr appended to ``log_path``; do not wait."""
    if port_in_use(port):
        raise PortInUseError(
            f"cannot start {name}: {HOST}:{port} is already in use by a program this stack "
            "did not start"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.write(f"{_LOG_MARK}{stamp}: {shlex.join(argv)}\n".encode())
        log.flush()
        # A new session: not in the terminal's process group, so its Ctrl-C does not reach it.
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name, popen.pid, tuple(argv), port, f"{HOST}:{port}", log_path, popen)


def wait_ready(
    proc: ManagedProcess, ready: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S
) -> ManagedProcess:
    """Poll ``ready()`` every 50 ms until it is true; fail with the log's tail if ``proc`` exits
    first or ``timeout_s`` passes (then ``proc`` is stopped). ``ready`` must itself be quick."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not proc.alive():
            code = proc.exit_code()
            how = "exited" if code is None else f"exited with code {code}"
            raise StackError(
                f"{proc.name} {how} before answering; {proc.log_path} ends:\n"
                f"{log_tail(proc.log_path)}"
            )
        if ready():
            return proc
        if time.monotonic() >= deadline:
            proc.stop()
            raise StackError(
                f"{proc.name} did not answer on {proc.address} within {timeout_s:g} s; "
                f"{proc.log_path} ends:\n{log_tail(proc.log_path)}"
            )
        time.sleep(POLL_S)


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """The HTTP status of GET ``url``, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


# --- Mosquitto ---------------------------------------------------------------------------------


def mqtt_answers(port: int, timeout_s: float = 1.0) -> bool:
    """Whether an MQTT 3.1.1 CONNECT to 127.0.0.1:``port`` gets a CONNACK.

    Any return code counts: the broker is up even when it refuses an anonymous client, as it
    will once the security issue turns anonymous access off.
    """
    client_id = f"citysense-probe-{os.getpid()}".encode()
    # Variable header: protocol name "MQTT", level 4 (3.1.1), flags: clean session, keepalive 5 s.
    body = b"\x00\x04MQTT\x04\x02\x00\x05" + len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(body)]) + body  # fits the one-byte remaining length (< 128)
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as s:
            s.sendall(connect)
            connack = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs no unexpected close
    except OSError:
        return False
    return connack[:2] == b"\x20\x02"


def mosquitto_conf(
    port: int, instance_dir: Path, base_conf: Path, listeners: Path | None = None
) -> str:
    """The instance's config: persistence directory, the policy file, then the listeners.

    ``listeners`` (from ``citysense broker-config``) brings the listeners, users, ACL and TLS
    and must come last (its access settings override the policy's); without it the instance
    gets one plain listener and the policy's access rules — no one may connect.
    """
    lines = [
        f"# Generated by citysense for this instance; the policy below is {base_conf}",
        *([] if listeners else [f"listener {port} {HOST}"]),
        f"persistence_location {instance_dir}/",
        # Started as root, Mosquitto switches to user "mosquitto", which cannot write into a
        # data directory made by us: stay the user we are.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "",
    ]
    text = "\n".join(lines) + base_conf.read_text()
    if listeners is not None:
        text += f"\n# --- listeners and access: {listeners}\n" + listeners.read_text()
    return text


def start_mosquitto(
    port: int, instance_dir: Path, base_conf: Path, listeners: Path | None = None
) -> ManagedProcess:
    """Start Mosquitto on 127.0.0.1:``port`` with ``base_conf``'s policy; wait for a CONNACK."""
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    instance_dir = instance_dir.resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)
    conf = instance_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port, instance_dir, base_conf.resolve(), listeners))
    proc = spawn("mosquitto", [binary, "-c", str(conf)], port, instance_dir / "mosquitto.log")
    return wait_ready(proc, lambda: mqtt_answers(port))


# --- InfluxDB 1.x ------------------------------------------------------------------------------


def influxd_conf(port: int, rpc_port: int, instance_dir: Path) -> str:
    """An InfluxDB 1.x config with all its state under ``instance_dir``, listening on loopback."""
    return f"""\
# Generated by citysense for this instance.
# Both spellings: upstream 1.x reads reporting-disabled, Debian's build reads reporting-enabled;
# each ignores the other's key.
reporting-disabled = true
reporting-enabled = false
# The backup/restore RPC port: the default 8088 would clash between two instances.
bind-address = "{HOST}:{rpc_port}"

[meta]
  dir = "{instance_dir}/meta"
  logging-enabled = false

[data]
  dir = "{instance_dir}/data"
  wal-dir = "{instance_dir}/wal"
  query-log-enabled = false

[http]
  bind-address = "{HOST}:{port}"
  auth-enabled = false
  log-enabled = false

[monitor]
  # Otherwise it writes its own metrics into an _internal database every 10 s.
  store-enabled = false

[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, so any database name is taken literally."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influx_command(url: str, statement: str, timeout_s: float = 10.0) -> None:
    """POST an InfluxQL statement (``CREATE DATABASE`` and the like) to ``/query``."""
    data = urllib.parse.urlencode({"q": statement}).encode()
    try:
        with urllib.request.urlopen(f"{url}/query", data=data, timeout=timeout_s) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as e:
        raise StackError(f"InfluxDB at {url} refused {statement!r}: HTTP {e.code}") from e
    except OSError as e:
        raise StackError(f"InfluxDB at {url} did not take {statement!r}: {e}") from e
    errors = [r["error"] for r in answer.get("results", []) if "error" in r]
    if errors:
        raise StackError(f"InfluxDB at {url} refused {statement!r}: {errors[0]}")


def start_influxd(port: int, instance_dir: Path, database: str) -> ManagedProcess:
    """Start InfluxDB 1.x on 127.0.0.1:``port``, wait for ``/ping``, create ``database``."""
    binary = find_binary("influxd")
    instance_dir = instance_dir.resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)
    conf = instance_dir / "influxd.conf"
    conf.write_text(influxd_conf(port, free_port(), instance_dir))
    proc = spawn("influxdb", [binary, "-config", str(conf)], port, instance_dir / "influxd.log")
    wait_ready(proc, lambda: http_status(f"{proc.url}/ping") == 204)
    try:
        influx_command(proc.url, f"CREATE DATABASE {quote_ident(database)}")
    except StackError:
        proc.stop()
        raise
    return proc


# --- VictoriaMetrics ---------------------------------------------------------------------------


def start_victoria_metrics(port: int, instance_dir: Path) -> ManagedProcess:
    """Start VictoriaMetrics (it accepts ``/api/v2/write``) on 127.0.0.1:``port``."""
    binary = find_binary("victoria-metrics")
    instance_dir = instance_dir.resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        f"-storageDataPath={instance_dir}/data",
        f"-httpListenAddr={HOST}:{port}",
        # The default keeps one month: tests write fixed old timestamps, which would be dropped.
        "-retentionPeriod=100y",
        "-loggerLevel=WARN",
        # Queries see samples at once rather than 30 s later, and are not served from a cache
        # filled before the write the test is looking for.
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]
    proc = spawn("victoria-metrics", argv, port, instance_dir / "victoria-metrics.log")
    return wait_ready(proc, lambda: http_status(f"{proc.url}/health") == 200)


# --- PostgreSQL --------------------------------------------------------------------------------

# Debian's PostgreSQL 15 keeps its programs here, off PATH (only pg_wrapper's clients are on it).
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_USER = "postgres"  # the superuser, and the system user the server runs as under root


def postgres_answers(port: int, database: str = "postgres", timeout_s: int = 2) -> bool:
    """Whether PostgreSQL on 127.0.0.1:``port`` takes a connection and answers a query."""
    import psycopg  # here, not at the top: `citysense stack` and the CLI never need it

    try:
        with psycopg.connect(
            host=HOST, port=port, user=POSTGRES_USER, dbname=database, connect_timeout=timeout_s
        ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except (psycopg.Error, OSError):
        return False


def start_postgres(port: int, instance_dir: Path, database: str = "citysense") -> ManagedProcess:
    """Start PostgreSQL on 127.0.0.1:``port`` from ``instance_dir/data`` (``initdb`` first if
    there is none), wait until it answers a query, create ``database`` if missing.

    Trust authentication for TCP from 127.0.0.1 only (user ``postgres``, no password), its
    Unix socket inside ``instance_dir``, fsync on. C collation: strings sort by their bytes,
    as on SQLite. PostgreSQL refuses to run as root: under root both ``initdb`` and the server
    run as the system user ``postgres`` (Debian's package makes it), so ``instance_dir`` is
    handed to it and its parents must let it in (a directory of ``tempfile.mkdtemp()`` does).

    ``stop()``'s SIGTERM is PostgreSQL's smart shutdown: it waits for open sessions to end
    (past ``STOP_TIMEOUT_S``, SIGKILL; the sessions then exit on their own). SIGINT first
    makes it a fast shutdown that ends them.
    """
    import psycopg
    from psycopg import sql

    server = find_binary("postgres", str(POSTGRES_BIN / "postgres"))
    initdb = find_binary("initdb", str(POSTGRES_BIN / "initdb"))
    as_user: list[str] = []
    instance_dir = instance_dir.resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # setpriv execs the program (runuser would stay as its parent, between us and it).
        as_user = [find_binary("setpriv", "/usr/bin/setpriv"), f"--reuid={POSTGRES_USER}"]
        as_user += [f"--regid={POSTGRES_USER}", "--init-groups", "--"]
        shutil.chown(instance_dir, POSTGRES_USER, POSTGRES_USER)
    data = instance_dir / "data"
    if not (data / "PG_VERSION").exists():
        argv = [initdb, "-D", str(data), "-U", POSTGRES_USER, "-E", "UTF8", "--no-locale"]
        done = subprocess.run(
            [*as_user, *argv], cwd=instance_dir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            who = f" as user {POSTGRES_USER}, who must reach {instance_dir}" if as_user else ""
            raise StackError(f"initdb{who} failed (code {done.returncode}):\n{done.stderr.strip()}")
    hba = instance_dir / "pg_hba.conf"
    hba.write_text(f"# Generated by citysense for this instance.\nhost all all {HOST}/32 trust\n")
    argv = [server, "-D", str(data), "-p", str(port), "-c", f"listen_addresses={HOST}"]
    argv += ["-c", f"unix_socket_directories={instance_dir}", "-c", f"hba_file={hba}"]
    proc = spawn("postgres", [*as_user, *argv], port, instance_dir / "postgres.log")
    # setpriv execs the server: /proc then shows the server's argv, which alive() compares
    # against once another process reads this record back from stack.json.
    proc = dataclasses.replace(proc, argv=tuple(argv))
    wait_ready(proc, lambda: postgres_answers(port))
    try:
        with psycopg.connect(
            host=HOST, port=port, user=POSTGRES_USER, dbname="postgres", autocommit=True
        ) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as e:
        proc.stop()
        raise StackError(f"PostgreSQL on {proc.address} did not create {database!r}: {e}") from e
    return proc
