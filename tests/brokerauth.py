"""The broker identities the integration tests use, from the same generator as `stack up`.

The session's Mosquitto gets the password file, ACL and listeners that ``citysense
broker-config`` writes, for the example city plus the synthetic devices the simulator tests
run. Tests then log in as what they stand for: a device (its derived password), the ingest
service (the settings' user), a ``gateway`` account publishing for many devices (as a data
concentrator would; the ACL lets it write ``iot/#`` only), a ``monitor`` account reading
``alerts/#`` (a command-centre screen). No anonymous access, no all-powerful test user.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.credentials import (
    INGEST_USER,
    LOCAL_EXAMPLE_DEV_SECRET,
    LOCAL_EXAMPLE_INGEST_PASSWORD,
    device_password,
)
from devices.registry import Registry, load_registry
from ingest.ops.brokerconfig import Account, BrokerFiles, write_broker_files
from ingest.people import load_workers
from simulator import synthetic_registry

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_DEVICES = 200  # the simulator tests' synthetic devices: syn-{kind}-0001 …


@dataclass(frozen=True)
class Login:
    """A username and password."""

    username: str
    password: str


GATEWAY = Login("test-gateway", secrets.token_urlsafe(16))
MONITOR = Login("test-monitor", secrets.token_urlsafe(16))
INGEST = Login(INGEST_USER, LOCAL_EXAMPLE_INGEST_PASSWORD)
DEV_SECRET = LOCAL_EXAMPLE_DEV_SECRET


def device_login(device_id: str) -> Login:
    """A device's own login."""
    return Login(device_id, device_password(DEV_SECRET, device_id))


def known_registry() -> Registry:
    """Every device the test broker knows: the example city and the synthetic pool."""
    city = load_registry(REPO / "config" / "registry.yaml")
    synthetic = synthetic_registry(SYNTHETIC_DEVICES)
    areas = {**synthetic.areas, **city.areas}
    return Registry(areas.values(), [*city.devices.values(), *synthetic.devices.values()])


def broker_files(
    out_dir: Path, port: int, tls_port: int, registry: Registry | None = None
) -> BrokerFiles:
    """Generate the test broker's files (the generator of `citysense broker-config`), for
    ``registry`` (default: ``known_registry()``; ``make bench-gateway`` passes its own
    thousands of stations, which must include the example city the workers file names)."""
    registry = registry if registry is not None else known_registry()
    city = load_registry(REPO / "config" / "registry.yaml")
    return write_broker_files(
        out_dir,
        registry,
        load_workers(REPO / "config" / "workers.yaml", city),
        dev_secret=DEV_SECRET,
        ingest_password=INGEST.password,
        port=port,
        tls_port=tls_port,
        accounts=[
            Account(GATEWAY.username, GATEWAY.password, "gateway"),
            Account(MONITOR.username, MONITOR.password, "monitor"),
        ],
    )


def clear_retained_statuses(port: int, registry: Registry) -> None:
    """Delete the retained statuses of ``registry``'s devices (an empty retained message),
    so a later test's service is not handed another test's device statuses on subscribe."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"clr-{secrets.token_hex(4)}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [
            client.publish(f"iot/{d.kind.value}/{d.id}/status", b"", qos=1, retain=True)
            for d in registry.devices.values()
        ]
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
