"""Session fixtures: real Mosquitto, InfluxDB 1.x and VictoriaMetrics on free ports.

Each starts from an empty temporary directory and is stopped at the end of the session.
A missing binary fails loudly: `make test` installs them, nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.registry import Registry, load_registry
from ingest.stack import (
    ManagedProcess,
    free_port,
    start_influxd,
    start_mosquitto,
    start_victoria_metrics,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The example city."""
    return load_registry(REPO / "config" / "registry.yaml")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """Mosquitto with the repository's mosquitto.conf."""
    proc = start_mosquitto(
        free_port(), tmp_path_factory.mktemp("mosquitto"), REPO / "mosquitto.conf"
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """InfluxDB 1.x with an empty database ``citysense``."""
    proc = start_influxd(free_port(), tmp_path_factory.mktemp("influxdb"), "citysense")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """VictoriaMetrics: the server here that accepts /api/v2/write."""
    proc = start_victoria_metrics(free_port(), tmp_path_factory.mktemp("victoria-metrics"))
    yield proc
    proc.stop()
