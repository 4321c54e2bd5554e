"""Session fixtures: real Mosquitto, InfluxDB 1.x, VictoriaMetrics and PostgreSQL (in
tests/postgres.py) on free ports.

Each server fixture starts a throwaway server from an empty temporary directory with
``ingest.ops.processes`` (the code behind ``citysense stack up``), yields its ``ManagedProcess``
(``.port``, ``.address``, ``.url`` for the HTTP ones, ``.log_path``) and stops it at the end of
the session. A missing program fails the test loudly: ``make test`` installs it; nothing is
skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.registry import Registry, load_registry
from ingest.ops.processes import (
    ManagedProcess,
    MissingBinaryError,
    free_port,
    start_influxd,
    start_mosquitto,
    start_victoria_metrics,
)
from tests.brokerauth import broker_files
from tests.postgres import postgres_url  # noqa: F401  (a fixture: PostgreSQL 15 for the session)

REPO = Path(__file__).resolve().parents[1]

# A developer's own ./citysense.toml must not change what the tests (and the services they
# start, which inherit the environment) run with: read no config file unless a test says so.
os.environ["CITYSENSE_CONFIG"] = ""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgresql: runs on a real PostgreSQL 15 (tests/postgres.py); in make test"
    )


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The example city."""
    return load_registry(REPO / "config" / "registry.yaml")


def _serve(start: Callable[[], ManagedProcess]) -> Iterator[ManagedProcess]:
    """Start a server for the session, or fail saying how to install it; stop it afterwards."""
    try:
        proc = start()
    except MissingBinaryError as e:
        pytest.fail(f"{e}. Run `make test`, which installs it first.", pytrace=False)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """Mosquitto with the repository's mosquitto.conf and generated users, ACL and TLS
    (tests/brokerauth.py says who may do what); persistence on."""
    instance = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    files = broker_files(instance / "broker", port, free_port())
    yield from _serve(
        lambda: start_mosquitto(port, instance, REPO / "mosquitto.conf", files.listeners)
    )


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """InfluxDB 1.x (Debian's 1.6) with an empty database ``citysense``."""
    instance = tmp_path_factory.mktemp("influxdb")
    yield from _serve(lambda: start_influxd(free_port(), instance, "citysense"))


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """VictoriaMetrics: the server here that accepts ``/api/v2/write`` (the v2 dialect)."""
    instance = tmp_path_factory.mktemp("victoria-metrics")
    yield from _serve(lambda: start_victoria_metrics(free_port(), instance))
