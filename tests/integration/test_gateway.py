"""Field stations through the gateway: TCP → ``citysense gateway`` → Mosquitto → citysense →
InfluxDB, all real. The station is a small client here that speaks the frames of the standards
(HJ 212-2017, SL 651-2014) and waits for the centre's answer, as a station does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devices.registry import Registry, RiverDevice, load_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.ops.processes import free_port
from ingest.sinks.deadletters import DeadLetterStore, store_path
from simulator import SimulationConfig, dry_run
from simulator.stationframes import framer_for
from tests.fieldframes import Station, hj212_frame, sl651_frame
from tests.integration.test_ingest_e2e import REGISTRY_FILE, make_settings, running_service
from tests.serviceproc import PYTHON, REPO, service_env
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration


def station(registry: Registry, protocol: str) -> RiverDevice:
    return sorted(registry.stations_of(protocol).values(), key=lambda d: d.id)[0]


class Gateway:
    """``citysense gateway PROTOCOL --port N`` as a process of its own."""

    def __init__(self, protocol: str, env: dict[str, str], log: Path) -> None:
        self.protocol, self.env, self.log = protocol, env, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, broker_up: bool = True) -> None:
        """Start, and return once it listens (and, if ``broker_up``, has the broker)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(PYTHON), "-m", "ingest.cli", "gateway", self.protocol],
                cwd=REPO,
                env={**self.env, f"CITYSENSE_GATEWAY_{self.protocol.upper()}_PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            if "listening on port" in text and (not broker_up or "connected to the broker" in text):
                return
            assert self.proc.poll() is None, text
            time.sleep(0.05)
        raise AssertionError(self.log.read_text(errors="replace"))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def city() -> Registry:
    return load_registry(REGISTRY_FILE)


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path,
    mosquitto: Any,
    influxdb: Any,
    city: Registry,
    protocol: str,
    **overrides: Any,
) -> AsyncIterator[tuple[Gateway, str]]:
    """The service (in this process) and the protocol's gateway (a process); the database."""
    database = new_database(influxdb.url, "gw")
    settings = make_settings(
        tmp_path / "service",
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        **overrides,
    )
    env = service_env(
        mqtt_port=mosquitto.port,
        client_id="unused-by-the-gateway",
        influx_url=influxdb.url,
        database=database,
        data_dir=tmp_path / "gateway",
    )
    gateway = Gateway(protocol, env, tmp_path / f"gateway-{protocol}.log")
    async with running_service(settings, city):
        gateway.start()
        try:
            yield gateway, database
        finally:
            gateway.stop()


def stored(influx_url: str, database: str, device: str, fields: str) -> list[list[Any]]:
    rows = influx_query(
        influx_url, database, f"SELECT {fields} FROM river WHERE device = '{device}'", epoch="ms"
    )
    return rows[0]["values"] if rows else []


async def eventually_stored(
    influx_url: str, database: str, device: str, fields: str, count: int
) -> list[list[Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = stored(influx_url, database, device, fields)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"{device}: {stored(influx_url, database, device, fields)}")


def dead_letters(tmp_path: Path) -> dict[str, list[bytes]]:
    store = DeadLetterStore(store_path(tmp_path / "gateway"))
    try:
        out: dict[str, list[bytes]] = {}
        for letter in store.list(limit=100):
            out.setdefault(letter.reason, []).append(letter.payload.encode("latin-1", "replace"))
        return out
    finally:
        store.close()


def recent(minutes: int) -> datetime:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).replace(second=0, microsecond=0)


async def test_hj212_station_is_stored_as_sent_and_refusals_are_kept(
    tmp_path: Path, mosquitto: Any, influxdb: Any, city: Registry
) -> None:
    device = station(city, "hj212")
    sent = [
        (recent(30 - 10 * i), {"ph": f"7.{i}1", "do_mgl": f"6.{i}", "nh3n_mgl": f"0.{i}5"})
        for i in range(3)
    ]
    async with stack(tmp_path, mosquitto, influxdb, city, "hj212") as (gateway, database):
        link = Station("hj212", gateway.port)
        for at, values in sent:
            assert await link.send(hj212_frame(device, at, values))
        # Refused frames get no answer; the connection stays usable.
        bad_crc = bytearray(hj212_frame(device, recent(5), {"ph": "7.0"}))
        bad_crc[-4:-2] = b"00" if bad_crc[-4:-2] != b"00" else b"11"
        unknown = hj212_frame(
            device.model_copy(update={"mn": "HN0000000000"}), recent(5), {"ph": "7"}
        )
        for frame in (
            hj212_frame(device, recent(5), {"ph": "7.0"}, pw="654321"),
            bytes(bad_crc),
            unknown,
        ):
            assert not await link.send(frame, timeout_s=1.0)
        rows = await eventually_stored(influxdb.url, database, device.id, "ph, do_mgl, nh3n_mgl", 3)
        await link.close()
    assert rows == [
        [int(at.timestamp() * 1000), float(v["ph"]), float(v["do_mgl"]), float(v["nh3n_mgl"])]
        for at, v in sent
    ]
    kept = dead_letters(tmp_path)
    assert set(kept) == {"hj212.bad_password", "hj212.bad_crc", "hj212.unknown_station"}, kept
    assert all(b"PW=******;" in raw for raws in kept.values() for raw in raws)
    assert not any(
        b"654321" in raw or b"PW=123456" in raw for raws in kept.values() for raw in raws
    )


async def test_sl651_station_is_stored_as_sent_and_answered(
    tmp_path: Path, mosquitto: Any, influxdb: Any, city: Registry
) -> None:
    device = station(city, "sl651")
    sent = [(recent(20 - 5 * i), round(device.normal_level_m * 100) + i) for i in range(3)]
    async with stack(tmp_path, mosquitto, influxdb, city, "sl651") as (gateway, database):
        link = Station("sl651", gateway.port)
        for serial, (at, level_cm) in enumerate(sent, start=1):
            assert await link.send(sl651_frame(device, serial, at, int(level_cm)))
        rows = await eventually_stored(
            influxdb.url, database, device.id, "water_level_m, battery_v", 3
        )
        await link.close()
    assert rows == [[int(at.timestamp() * 1000), int(cm) / 100, 12.15] for at, cm in sent]


async def test_no_answer_until_the_broker_has_it(
    tmp_path: Path, mosquitto: Any, influxdb: Any, city: Registry
) -> None:
    """Pointed at a broker that is not there, the gateway takes the frame and stays silent."""
    device = station(city, "hj212")
    env = service_env(
        mqtt_port=free_port(),  # nothing listens there
        client_id="unused",
        influx_url=influxdb.url,
        database="unused",
        data_dir=tmp_path / "gateway",
    )
    gateway = Gateway("hj212", env, tmp_path / "gateway.log")
    gateway.start(broker_up=False)
    try:
        link = Station("hj212", gateway.port)
        assert not await link.send(hj212_frame(device, recent(3), {"ph": "7.2"}), timeout_s=2)
        await link.close()
    finally:
        gateway.stop()


async def test_a_gateway_killed_mid_stream_loses_nothing_it_answered(
    tmp_path: Path, mosquitto: Any, influxdb: Any, city: Registry
) -> None:
    device = station(city, "hj212")
    times = [recent(60) + timedelta(seconds=30 * i) for i in range(40)]
    answered: list[datetime] = []
    async with stack(tmp_path, mosquitto, influxdb, city, "hj212") as (gateway, database):
        link = Station("hj212", gateway.port)
        sends = 0
        fifteen = asyncio.Event()

        async def killer() -> None:
            await fifteen.wait()  # frame 16 is on its way now
            await asyncio.sleep(0.005)
            gateway.kill()  # SIGKILL: whatever was between PUBACK and answer is cut
            await asyncio.sleep(0.5)
            await asyncio.to_thread(gateway.start)

        task = asyncio.create_task(killer())
        for at in times:
            sends += await link.send_until_answered(hj212_frame(device, at, {"ph": "7.3"}))
            answered.append(at)
            if len(answered) == 15:
                fifteen.set()
        await task
        rows = await eventually_stored(influxdb.url, database, device.id, "ph", len(times))
        await link.close()
    assert [r[0] for r in rows] == [int(at.timestamp() * 1000) for at in answered]
    assert sends > len(times)  # the kill cost at least one resend


# The simulator's scenarios played by a field station through its gateway (the dry run's
# messages of the target, framed as the station frames them), judged by the real service on
# config/rules.yaml. The pollution of 檀江 at its HJ 212 water-quality station; a flood of 邵水
# at its SL 651 water-level station. Played on the simulated clock from now, as
# tests/integration/test_alert_scenarios.py does: the service accepts the run's skew.
THROUGH_A_GATEWAY = [
    ("hj212", "pollution", "river-tj-0002", 150, 30, {"water_quality_worse_than_target"}),
    (
        "sl651",
        "flood",
        "river-ss-0004",
        1800,
        900,
        {"river_over_warning", "river_over_guarantee", "river_rising_fast"},
    ),
]


@pytest.mark.parametrize(
    ("protocol", "scenario", "target", "duration_s", "at_s", "rules"),
    THROUGH_A_GATEWAY,
    ids=[case[0] for case in THROUGH_A_GATEWAY],
)
async def test_a_scenario_through_the_gateway_raises_its_alerts(
    tmp_path: Path,
    mosquitto: Any,
    influxdb: Any,
    city: Registry,
    protocol: str,
    scenario: str,
    target: str,
    duration_s: float,
    at_s: float,
    rules: set[str],
) -> None:
    device = city.devices[target]
    assert isinstance(device, RiverDevice) and device.protocol == protocol
    config = SimulationConfig(
        protocols=(protocol,),
        scenarios=(scenario,),
        scenario_device={scenario: target},
        duration=duration_s,
        scenario_at=at_s,
        rate=0.2,
        seed=7,
    )
    framer = framer_for(device)
    start_ms = int(time.time() * 1000)
    frames = [
        f.data
        for _, m in dry_run(config, city, start_ms)
        if m.device_id == target and (f := framer.frame(m)) is not None
    ]
    skew = {"future_skew_s": duration_s + 120, "ahead_tolerance_s": duration_s + 120}
    async with stack(tmp_path, mosquitto, influxdb, city, protocol, **skew) as (gateway, db):
        link = Station(protocol, gateway.port)
        for frame in frames:
            await link.send_until_answered(frame)
        await link.close()
        rows = await eventually_stored(influxdb.url, db, target, "*", len(frames))
        raised = await eventually_alerted(tmp_path / "service", rules)
    assert len(rows) == len(frames) >= 5
    assert raised == {(rule, target) for rule in rules}


async def eventually_alerted(data_dir: Path, rules: set[str]) -> set[tuple[str, str]]:
    """The (rule, device) pairs the service's alert store holds once ``rules`` are all there."""
    deadline = time.monotonic() + 20
    while True:
        store = AlertStore(sqlite_url(data_dir))
        try:
            pairs = {(a.rule_id, a.device_id) for a in store.list(limit=1000)}
        finally:
            store.close()
        if rules <= {rule for rule, _ in pairs} or time.monotonic() > deadline:
            return pairs
        await asyncio.sleep(0.2)
