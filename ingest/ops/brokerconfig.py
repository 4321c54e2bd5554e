"""The broker's users, ACL and listeners, generated from the registry and the workers file.

``write_broker_files`` writes into one directory:

- ``passwords``: Mosquitto 2.0's password file (PBKDF2-SHA512 ``$7$`` hashes, made by
  ``mosquitto_passwd -U``), one user per device (its id), per grid worker and for the ingest
  service; mode 0600, never a plaintext password.
- ``acl``: one block per user. A device may write only ``iot/{its kind}/{its id}/#`` and read
  nothing (there are no command topics yet); the ingest service reads ``iot/#`` and writes
  ``alerts/#`` and ``cases/#``; a person (ingest/people.py) reads ``alerts/{key}`` and
  ``cases/{key}`` of their own posts only (a grid worker ``alerts/{level}/{area}`` of its areas).
- ``listeners.conf``: ``allow_anonymous false``, the two files above, a plain listener and a
  TLS listener. It must come *after* the policy (``mosquitto.conf``) in the broker's config:
  these settings are global and Mosquitto keeps the last value it reads.
- ``clientids.json``: the dynamic-security plugin's config, used for one thing only: it binds
  each device and each grid worker to the client id equal to its username (see below).
- ``tls/``: a local CA and a server certificate for localhost (``ingest.ops.tls``), unless the
  caller brings its own.

Client ids (issue 13, item 1). Mosquitto's password file and ACL tie no client id to a user, so
a device could log in with its own password and the service's client id and wipe (clean
session) or take over (persistent) the service's queue. ``use_username_as_clientid`` would
force one connection per user, which the service (consumer + alert publisher, several
processes) cannot live with. Instead the dynamic-security plugin lists every device and worker
with ``clientid`` = its username and no password and no roles. Measured on Mosquitto 2.0.11:
for such a client the plugin refuses a CONNECT with any other client id ("not authorised"), and
otherwise defers, so the password file and the ACL below still decide everything else. A device
or worker can therefore only ever own the session named after itself; the service and the
``gateway``/``monitor`` accounts (trusted, not listed) may use any client id. The plugin reads
its file at start only: after adding devices or workers, restart the broker (a SIGHUP reloads
passwords and ACL, but a new device stays unbound to its id until the restart).

How Mosquitto 2.0.11 applies the ACL to shared subscriptions, found by testing it: a SUBSCRIBE
is always granted (SUBACK with the QoS asked), and each message is checked on delivery against
the subscriber's ``read`` rules by its real topic, without the ``$share/{group}/`` prefix.
So ``topic read iot/#`` serves both ``iot/+/+/+`` and ``$share/{any group}/iot/+/+/+``,
while a ``topic read $share/citysense/iot/#`` rule matches nothing at all. The broker cannot
bind the ingest user to one share group; the group name is not a security boundary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devices.credentials import (
    INGEST_USER,
    device_password,
    gateway_password,
    gateway_user,
    worker_password,
)
from devices.kinds import Channel, Kind
from devices.registry import Registry
from ingest.ops.processes import HOST, find_binary
from ingest.ops.tls import TlsFiles, ensure_local_tls
from ingest.people import USERNAME_PATTERN, Person

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
# Where Debian's mosquitto package puts the plugin (2.0.11); others as fallbacks.
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)

_HASHED_PREFIX = "$7$"  # Mosquitto 2.0's PBKDF2-SHA512


class BrokerConfigError(RuntimeError):
    """The broker files could not be made."""


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_files`` wrote."""

    directory: Path
    passwords: Path
    acl: Path
    listeners: Path
    clientids: Path
    tls: TlsFiles
    port: int
    tls_port: int
    users: int  # devices + workers + the ingest service


def device_acl(kind: str, device_id: str) -> list[str]:
    """A device's ACL lines: publish under its own kind and id only, read nothing."""
    return [f"topic write iot/{kind}/{device_id}/#"]


def ingest_acl() -> list[str]:
    """The ingest service's ACL lines (``iot/#`` covers its ``$share/...`` form, see above)."""
    return ["topic read iot/#", "topic write alerts/#", "topic write cases/#"]


def worker_acl(worker: Person, registry: Registry) -> list[str]:
    """A person's ACL lines: read the alerts and cases of their own posts, write nothing."""
    topics = [*worker.alert_topics(registry), *worker.case_topics(registry)]
    return [f"topic read {t}" for t in topics]


@dataclass(frozen=True)
class Account:
    """A service account beside devices, workers and the ingest service.

    ``gateway``: a data concentrator publishing for many devices (a county's RTU hub, a test
    harness): writes ``iot/#``, reads nothing; the ingest service still checks each device
    against the registry. ``monitor``: a command-centre screen: reads ``alerts/#`` and ``cases/#``.
    """

    username: str
    password: str = field(repr=False)
    role: Literal["gateway", "monitor"]


def station_gateways(registry: Registry) -> dict[str, list[str]]:
    """Each field protocol → the stations its gateway speaks for (ingest/gateway/); the
    gateway logs in as ``gateway_user(protocol)``.

    A station that reports in HJ 212 or SL 651 has no broker account of its own: it never
    speaks MQTT, so a login in its name could only be somebody else's.
    """
    out: dict[str, list[str]] = {}
    for device in registry.devices.values():
        protocol = getattr(device, "protocol", None)
        if protocol is not None:
            out.setdefault(protocol, []).append(device.id)
    return out


def mqtt_devices(registry: Registry) -> list[str]:
    """The devices that log in to the broker as themselves (all but gateways' stations)."""
    return [d.id for d in registry.devices.values() if getattr(d, "protocol", None) is None]


def gateway_acl(stations: Sequence[str]) -> list[str]:
    """A field gateway's ACL lines: publish telemetry of its own stations only, read nothing."""
    return [f"topic write iot/{Kind.RIVER.value}/{d}/{Channel.TELEMETRY.value}" for d in stations]


def account_acl(account: Account) -> list[str]:
    """A service account's ACL lines."""
    if account.role == "gateway":
        return ["topic write iot/#"]
    return ["topic read alerts/#", "topic read cases/#"]


def acl_text(
    registry: Registry,
    workers: Sequence[Person],
    ingest_user: str,
    accounts: Sequence[Account] = (),
) -> str:
    """The whole ACL file: a header, then one ``user`` block per broker user."""
    # No rule before the first `user` line: Mosquitto applies those to anonymous clients.
    blocks = [
        "# Generated by `citysense broker-config` from the registry and the workers file;\n"
        "# regenerate rather than edit. Anything not allowed below is denied. A denied\n"
        "# publish is dropped by the broker and still acknowledged at QoS 1 (MQTT 3.1.1's\n"
        "# PUBACK cannot say no; MQTT 5's carries 'Not authorized'); a denied read is never\n"
        "# delivered, though the SUBSCRIBE itself is granted.\n",
        _block(ingest_user, "the ingest service", ingest_acl()),
    ]
    blocks += [
        _block(w.username, f"grid worker {w.name}", worker_acl(w, registry)) for w in workers
    ]
    blocks += [_block(a.username, a.role, account_acl(a)) for a in accounts]
    blocks += [
        _block(gateway_user(protocol), f"{protocol} field gateway", gateway_acl(stations))
        for protocol, stations in station_gateways(registry).items()
    ]
    blocks += [
        _block(d.id, f"{d.kind.value} device", device_acl(d.kind.value, d.id))
        for d in map(registry.devices.__getitem__, mqtt_devices(registry))
    ]
    return "\n".join(blocks)


def _block(user: str, what: str, rules: list[str]) -> str:
    return "\n".join([f"# {what}", f"user {user}", *rules]) + "\n"


def clientids_json(bound_users: Sequence[str]) -> str:
    """The dynamic-security plugin's config binding each of ``bound_users`` to its own name as
    client id; no passwords, roles or groups, so the plugin defers all else to the files."""
    config = {
        # All false: the plugin then defers every ACL check to acl_file.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [{"username": u, "clientid": u, "roles": []} for u in bound_users],
        "groups": [],
        "roles": [],
    }
    return json.dumps(config, indent=1) + "\n"


def find_dynsec_plugin() -> str:
    """The path of Mosquitto's dynamic-security plugin; fail clearly if it is not installed."""
    found = next((p for p in DYNSEC_PLUGIN_PATHS if os.access(p, os.R_OK)), None)
    if found is None:
        raise BrokerConfigError(
            "mosquitto_dynamic_security.so (part of the mosquitto package, 2.0+) is not in "
            f"{', '.join(DYNSEC_PLUGIN_PATHS)}: it binds device and worker client ids"
        )
    return found


def listeners_text(
    passwords: Path,
    acl: Path,
    tls: TlsFiles,
    *,
    port: int,
    tls_port: int,
    host: str = HOST,
    tls_host: str = HOST,
    clientids: Path | None = None,
    plugin: str | None = None,
) -> str:
    """The listeners and access settings; goes after the policy file in the broker's config."""
    return f"""\
# Generated by `citysense broker-config`; regenerate rather than edit.
# Goes AFTER mosquitto.conf (the policy): with per_listener_settings false (the default, kept on
# purpose: every listener has the same users and ACL) the lines below are global, and Mosquitto
# keeps the last value it reads, so an earlier `allow_anonymous true` is overridden here and a
# later one would undo it.
#
# Size limit: max_packet_size in the policy, not message_size_limit. Mosquitto 2.0 deprecates
# message_size_limit, and it drops a too-large QoS 1 message after acknowledging it; an
# oversized packet is refused outright (the client is disconnected) instead.

# --- access ---
allow_anonymous false
password_file {passwords}
acl_file {acl}
{_plugin_lines(clientids, plugin)}
# --- plain MQTT: for clients on this host (the ingest service, the local simulator) ---
listener {port} {host}

# --- MQTT over TLS: for devices and workers off this host; password auth, no client cert ---
# Bind address: CITYSENSE_MQTT_TLS_BIND (stack up) or --tls-bind (broker-config).
# tls_version is the minimum in Mosquitto 2.0: TLS 1.2 and 1.3 are both served.
listener {tls_port} {tls_host}
cafile {tls.ca_cert}
certfile {tls.server_cert}
keyfile {tls.server_key}
tls_version tlsv1.2
require_certificate false
"""


def _plugin_lines(clientids: Path | None, plugin: str | None) -> str:
    if clientids is None:
        return ""
    return (
        "# Binds each device and worker to the client id equal to its username (module doc);\n"
        "# defers passwords and ACL to the two files above.\n"
        f"plugin {plugin or find_dynsec_plugin()}\n"
        f"plugin_opt_config_file {clientids}\n"
    )


def hash_password_file(entries: Sequence[tuple[str, str]], dest: Path) -> None:
    """Write ``user:hash`` lines to ``dest`` (mode 0600), hashing with ``mosquitto_passwd -U``."""
    tool = find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    # A private directory (0700) for the plaintext: `mosquitto_passwd -U FILE` also copies it to
    # FILE.tmp, created under the umask, for a moment. Removed whole, whatever happens.
    workdir = Path(tempfile.mkdtemp(prefix=".passwords-", dir=dest.parent))
    try:
        plain = workdir / "passwords"
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{user}:{password}\n" for user, password in entries)
        try:
            subprocess.run(
                [tool, "-U", str(plain)],
                check=True,
                capture_output=True,
                timeout=120,
                umask=0o077,
            )
        except subprocess.CalledProcessError as e:
            raise BrokerConfigError(
                f"mosquitto_passwd -U failed ({e.returncode}): {e.stderr.decode(errors='replace')}"
            ) from e
        lines = plain.read_text(encoding="utf-8").splitlines()
        # Check rather than trust: a line left as it was would be a plaintext password.
        users = [line.split(":", 1)[0] for line in lines]
        hashed = all(line.split(":", 1)[1].startswith(_HASHED_PREFIX) for line in lines)
        if users != [u for u, _ in entries] or not hashed:
            raise BrokerConfigError("mosquitto_passwd -U did not hash every line")
        os.chmod(plain, 0o600)
        plain.replace(dest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_broker_files(
    out_dir: Path,
    registry: Registry,
    workers: Sequence[Person],
    *,
    dev_secret: bytes | str,
    ingest_password: str,
    ingest_user: str = INGEST_USER,
    port: int = DEFAULT_PORT,
    tls_port: int = DEFAULT_TLS_PORT,
    host: str = HOST,
    tls_host: str = HOST,
    tls: TlsFiles | None = None,
    accounts: Sequence[Account] = (),
) -> BrokerFiles:
    """Write ``passwords``, ``acl`` and ``listeners.conf`` (and ``tls/`` unless ``tls`` is given).

    Device and worker passwords are derived from ``dev_secret`` (``devices.credentials``).
    """
    if not re.fullmatch(USERNAME_PATTERN, ingest_user):
        raise BrokerConfigError(f"ingest user {ingest_user!r} does not match {USERNAME_PATTERN}")
    if not ingest_password:
        raise BrokerConfigError("the ingest password is empty")
    if port == tls_port:
        raise BrokerConfigError(f"the plain and the TLS listener both use port {port}")
    protocols = list(station_gateways(registry))
    gateways = [gateway_user(p) for p in protocols]
    taken = set(registry.devices) | {w.username for w in workers} | set(gateways)
    if ingest_user in taken:
        raise BrokerConfigError(f"ingest user {ingest_user!r} is also a device or a worker")
    for account in accounts:
        if account.username in taken | {ingest_user} or not account.password:
            raise BrokerConfigError(f"account {account.username!r}: name taken or no password")
        taken.add(account.username)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [(ingest_user, ingest_password)]
    entries += [(w.username, worker_password(dev_secret, w.username)) for w in workers]
    entries += [(a.username, a.password) for a in accounts]
    entries += [(gateway_user(p), gateway_password(dev_secret, p)) for p in protocols]
    entries += [(d, device_password(dev_secret, d)) for d in mqtt_devices(registry)]
    passwords = out_dir / "passwords"
    hash_password_file(entries, passwords)
    acl = out_dir / "acl"
    _write_text(acl, acl_text(registry, workers, ingest_user, accounts))
    clientids = out_dir / "clientids.json"
    bound = [*(w.username for w in workers), *gateways, *mqtt_devices(registry)]
    _write_text(clientids, clientids_json(bound))
    tls = tls or ensure_local_tls(out_dir / "tls")
    listeners = out_dir / "listeners.conf"
    text = listeners_text(
        passwords,
        acl,
        tls,
        port=port,
        tls_port=tls_port,
        host=host,
        tls_host=tls_host,
        clientids=clientids,
        plugin=find_dynsec_plugin(),
    )
    _write_text(listeners, text)
    return BrokerFiles(
        out_dir, passwords, acl, listeners, clientids, tls, port, tls_port, len(entries)
    )


def _write_text(path: Path, text: str) -> None:
    """Write whole and rename into place: a broker reloading (SIGHUP) never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
