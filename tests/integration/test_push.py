"""Issue 19, a push to a neighbouring city, on a real InfluxDB and the real alert store
(SQLite): the stations' alert changes and, every period, a batch of their newest values reach
the fake signed-webhook receiver (tests/fakes/platforms.py, which checks the signature, the
5-minute window and the notice's fields), through the same queue, sender and receipts as
people's channels. A restart inside a period does not push that period's batch twice.

The delivery parts are built as the service builds them (``open_delivery``), handed the API's
InfluxDB query code (``influxql_rows``) as the service hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devices.kinds import Channel, Kind, Level
from devices.payloads import RiverTelemetry
from devices.registry import Registry, load_registry
from ingest.alerts.store import AlertStore, StoreTransition, sqlite_url
from ingest.api.series import influxql_rows
from ingest.delivery.parts import DeliveryParts, open_delivery
from ingest.delivery.store import DeliveryStore
from ingest.delivery.tuning import DeliveryTuning
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from ingest.settings import Settings
from rules.alerts import Alert, AlertEvent
from rules.model import Severity
from rules.transition import Reason, Transition
from tests.fakes.platforms import FakeWebhook, Received
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECRET = "loudi-test-secret"
PUSHED = ("river-zj-0005", "river-zj-0006")
OTHER = "river-zj-0001"
QUICK: dict[str, Any] = {
    "backoff_base_s": 0.2,
    "backoff_max_s": 1.0,
    "tick_s": 0.05,
    "timeout_s": 5.0,
}


@dataclass
class City:
    settings: Settings
    registry: Registry
    url: str
    database: str
    influx_url: str
    alerts: AlertStore
    deliveries: DeliveryStore
    hook: FakeWebhook

    def parts(self) -> DeliveryParts:
        return open_delivery(
            self.settings,
            self.registry,
            self.url,
            tuning=DeliveryTuning(**QUICK),
            influx_rows=influxql_rows,
        )

    async def write(self, levels: dict[str, float], at_ms: int, seq: int) -> None:
        """River readings of ``levels`` (device → water level), encoded as the ingest path
        encodes them."""
        encoder = LineEncoder(self.registry, hash_plate=lambda plate: plate)
        lines = []
        for device_id, level in levels.items():
            message = RiverTelemetry(ts=at_ms, seq=seq, water_level_m=level, flow_m3s=level * 4)
            device = self.registry.devices[device_id]
            lines.append(
                encoder.encode(Decoded(Kind.RIVER, Channel.TELEMETRY, device, message, at_ms))
            )
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.influx_url}/write",
                params={"db": self.database, "precision": "ms"},
                data="\n".join(lines).encode(),
            ) as resp,
        ):
            assert resp.status == 204, await resp.text()

    def open_alert(self, device_id: str, severity: str = "info") -> str:
        """An alert opened on ``device_id`` with its announcements (and channel jobs), as the
        engine's store round does."""
        areas: dict[Level, str] = {
            a.level: a.id
            for a in self.registry.device_path(device_id).areas
            if a.level is not Level.CITY
        }
        item = StoreTransition(
            Transition("river_over_warning", device_id, "open", 1, 207.3, "", Reason.THRESHOLD),
            Severity(severity),
            Kind.RIVER,
            areas,
            now_ms=int(time.time() * 1000),
        )
        done = self.alerts.apply_many([item], announce=announce)
        assert done[0] is not None
        return done[0][0].id


def announce(changes: Sequence[tuple[Alert, AlertEvent]]) -> list[tuple[str, bytes]]:
    rows = []
    for alert, event in changes:
        body = {
            "alert": alert.model_dump(mode="json"),
            "event": event.model_dump(mode="json"),
            "message_zh": f"【提示·新告警】水位超警戒 {alert.device_id} {alert.value} m",
            "message_en": f"[info · new alert] river over warning {alert.device_id}",
        }
        payload = json.dumps(body, ensure_ascii=False).encode()
        rows += [(topic, payload) for topic in alert.topics]
    return rows


def write_channels(path: Path, hook_url: str, every: str) -> None:
    config = {
        "endpoints": {
            "loudi-webhook": {"type": "webhook", "url": f"{hook_url}/push", "secret": SECRET}
        },
        "push": [
            {
                "id": "loudi",
                "name": "娄底市",
                "endpoint": "loudi-webhook",
                "stations": list(PUSHED),
                "alerts": True,
                "observations_every": every,
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


@pytest.fixture
async def city(tmp_path: Path, influxdb: ManagedProcess) -> AsyncIterator[City]:
    hook = FakeWebhook(SECRET, rate_per_minute=100_000)
    await hook.start()
    channels = tmp_path / "channels.yaml"
    write_channels(channels, hook.url, "1s")
    database = new_database(influxdb.url, "push")
    settings = Settings(
        data_dir=tmp_path,
        registry=REPO / "config" / "registry.yaml",
        workers=REPO / "config" / "workers.yaml",
        channels=channels,
        influx_url=influxdb.url,
        influx_database=database,
    )
    url = sqlite_url(tmp_path)
    alerts = AlertStore(url)
    deliveries = DeliveryStore(url)
    registry = load_registry(REPO / "config" / "registry.yaml")
    yield City(settings, registry, url, database, influxdb.url, alerts, deliveries, hook)
    alerts.close()
    deliveries.close()
    await hook.stop()
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


async def until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(parts: DeliveryParts) -> AsyncIterator[DeliveryParts]:
    task = asyncio.create_task(parts.sender.run())
    try:
        yield parts
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        parts.close()


def batches(hook: FakeWebhook) -> list[Received]:
    return [r for r in hook.delivered if r.json["subject"] == "push"]


def alerts_of(hook: FakeWebhook) -> list[Received]:
    return [r for r in hook.delivered if r.json["subject"] == "alert"]


def signed(r: Received) -> bool:
    """The signature as a receiver checks it (the fake checked it too, or it would not have
    accepted the request)."""
    stamp = r.headers["X-Citysense-Timestamp"]
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + r.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, r.headers["X-Citysense-Signature"])


def levels(r: Received) -> dict[str, float | None]:
    out = {}
    for s in r.json["data"]["stations"]:
        found = s["fields"].get("water_level_m")
        out[s["device"]] = None if found is None else found["value"]
    return out


async def test_alerts_and_observations_of_the_pushed_stations_arrive_signed(city: City) -> None:
    now = int(time.time() * 1000)
    await city.write({PUSHED[0]: 203.41, PUSHED[1]: 202.95, OTHER: 210.0}, now - 5_000, 1)
    pushed_alert = city.open_alert(PUSHED[0])
    city.open_alert(OTHER)  # not a pushed station: not the neighbour's
    async with running(city.parts()) as parts:
        await until(lambda: len(alerts_of(city.hook)) == 1 and len(batches(city.hook)) >= 2)
        await city.write({PUSHED[0]: 204.02, PUSHED[1]: 203.10}, int(time.time() * 1000), 2)
        await until(lambda: any(levels(b)[PUSHED[0]] == 204.02 for b in batches(city.hook)))
        assert parts.pushes is not None and parts.pushes.queued >= 3
    (told,) = alerts_of(city.hook)
    assert told.json["subject_id"] == pushed_alert and told.json["data"] == {}
    assert told.path == "/push" and signed(told)
    found = batches(city.hook)
    assert all(signed(b) for b in found)
    first = found[0].json["data"]
    assert first["push"] == "loudi" and first["every_s"] == 1
    assert levels(found[0]) == {PUSHED[0]: 203.41, PUSHED[1]: 202.95}
    station = first["stations"][0]
    assert (station["name"], station["river"], station["km"]) == ("资江酿溪水文站", "资江", 52.0)
    assert station["fields"]["flow_m3s"] == {"value": pytest.approx(813.64), "unit": "m³/s"}
    # one batch per period: distinct periods, distinct keys, none twice
    starts = [b.json["data"]["period_start"] for b in found]
    assert len(set(starts)) == len(starts)
    assert set(city.hook.keys().values()) == {1} and not city.hook.duplicates()
    # the receipts: GET /deliveries of the alert lists the push beside people's channels
    shown = city.deliveries.of_subject("alert", pushed_alert)
    assert [(d["recipient"], d["state"]) for d in shown if d["recipient"] == "push/loudi"] == [
        ("push/loudi", "delivered")
    ]
    pushes = city.deliveries.of_subject("push", "loudi")
    assert len(pushes) >= len(found) and all(d["attempts"] for d in pushes)
    print(
        f"\npush: 1 alert and {len(found)} batches delivered, signed; "
        f"{len(city.hook.received)} requests, 0 duplicates"
    )


async def test_a_restart_inside_a_period_pushes_its_batch_once(city: City) -> None:
    write_channels(city.settings.channels, city.hook.url, "1d")
    await city.write({PUSHED[0]: 203.41, PUSHED[1]: 202.95}, int(time.time() * 1000), 1)
    async with running(city.parts()) as parts:
        await until(lambda: len(batches(city.hook)) == 1)
        assert parts.pushes is not None and parts.pushes.queued == 1
    (sent,) = batches(city.hook)
    assert sent.key is not None
    # the restart: the new process queues the period's batch again; the key makes it the
    # delivery already made, not a second push
    async with running(city.parts()) as parts:
        await until(lambda: parts.pushes is not None and parts.pushes.queued == 1)
        await until(lambda: city.deliveries.jobs_waiting() == 0)
        await asyncio.sleep(0.5)  # time for a second request, were there one
    assert len(batches(city.hook)) == 1 and batches(city.hook)[0].key == sent.key
    assert city.hook.keys()[sent.key] == 1 and not city.hook.duplicates()
    assert [d["key"] for d in city.deliveries.of_subject("push", "loudi")] == [sent.key]
    assert sent.json["data"]["period_start"].endswith("T00:00:00.000Z")
