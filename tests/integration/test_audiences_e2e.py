"""Who hears an alert, on the real stack (issue 17): the example city's people as broker users
of a Mosquitto with the generated ACL, the real `citysense serve`, a station and a camera
publishing as themselves. Every person subscribes to ``alerts/#``; the broker's ACL lets each
read only the topics of their own posts, so what arrives is what that person is told.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.credentials import device_password, worker_password
from ingest.alerts.store import sqlite_url
from ingest.cases.store import CaseStore
from ingest.ops.processes import ManagedProcess
from tests.integration.test_broker_security import (  # noqa: F401  (fixtures)
    INGEST_PASSWORD,
    INGEST_USER,
    SECRET,
    Broker,
    Session,
    broker,
    sessions,
)
from tests.serviceproc import service_env, spawn_service
from tests.services import new_database

pytestmark = pytest.mark.integration

LISTENERS = [
    "tang.weimin",  # river chief of the Zi River's Shuangqing reach (zj-sq)
    "police.lu.feng",  # the Zi River's police chief
    "flood.sq",  # Shuangqing flood-control HQ
    "flood.dx",  # Daxiang flood-control HQ: another county
    "he.jianguo",  # river chief of the Daxiang reach: another segment
    "li.na",  # the grid worker of the station's grid
    "eco.sq",
    "water.sq",
    "su.minghui",  # road chief of G320 in Shuangqing
    "traffic.sq",
    "emergency.sq",
    "traffic.dx",
    "urban.city",
    "zhang.wei",  # the grid worker of the camera's village (石马村) and 渡头桥 grid 01
]
STATION = "river-zj-0001"  # Zi River, Shuangqing reach; guarantee level 213.50
CAMERA = "road-sq-0001"  # G320, Shuangqing


@pytest.fixture
def service(broker: Broker, influxdb: ManagedProcess, tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    """The service's data directory (its alert store holds the cases), while it runs."""
    env = service_env(
        mqtt_port=broker.port,
        client_id=f"cs-aud-{uuid.uuid4().hex[:6]}",
        influx_url=influxdb.url,
        database=new_database(influxdb.url, "audiences"),
        data_dir=tmp_path / "data",
    )
    env.update(
        {
            "CITYSENSE_MQTT_USERNAME": INGEST_USER,
            "CITYSENSE_MQTT_PASSWORD": INGEST_PASSWORD,
            "CITYSENSE_API_ENABLED": "false",
        }
    )
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = spawn_service(env, log)
    try:
        deadline = time.monotonic() + 30
        while "subscribed to" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.1)
        yield tmp_path / "data"
    finally:
        proc.terminate()
        proc.wait(30)


class Listener:
    """A person subscribed to everything; records when each alert message arrived."""

    def __init__(self, broker: Broker, username: str, sessions: list[Session]) -> None:  # noqa: F811
        self.session = Session(broker.port, username, worker_password(SECRET, username))
        sessions.append(self.session)
        self.session.subscribe("alerts/#", "cases/#")
        self.arrived: list[tuple[float, str, dict]] = []

    def read(self) -> None:
        while not self.session.received.empty():
            topic, payload = self.session.received.get_nowait()
            self.arrived.append((time.monotonic(), topic, json.loads(payload)))

    def of(self, rule: str, what: str = "alert") -> list[tuple[float, str, dict]]:
        self.read()
        return [a for a in self.arrived if what in a[2] and a[2][what]["rule_id"] == rule]


def wait_for(listeners: dict[str, Listener], rule: str, who: list[str]) -> None:
    deadline = time.monotonic() + 30
    while not all(listeners[w].of(rule) for w in who):
        assert time.monotonic() < deadline, {w: listeners[w].arrived for w in who}
        time.sleep(0.05)
    time.sleep(1.0)  # anything else of the same batch, or that should not come, has had time


def test_a_flood_and_an_accident_reach_exactly_who_answers_for_them(
    broker: Broker,  # noqa: F811
    service: Path,
    sessions: list[Session],  # noqa: F811
) -> None:
    listeners = {u: Listener(broker, u, sessions) for u in LISTENERS}
    station = Session(broker.port, STATION, device_password(SECRET, STATION))
    camera = Session(broker.port, CAMERA, device_password(SECRET, CAMERA))
    sessions += [station, camera]

    # Over the guaranteed level (213.50) for more than the rule's 2 minutes of device time.
    now = int(time.time() * 1000)
    for seq, ago_s in enumerate((200, 150, 100, 50, 0), start=1):
        body = {"ts": now - ago_s * 1000, "seq": seq, "water_level_m": 214.2}
        station.publish(f"iot/river/{STATION}/telemetry", json.dumps(body).encode())
    wait_for(listeners, "river_over_guarantee", ["tang.weimin", "police.lu.feng", "flood.sq"])
    told = {u: listeners[u].of("river_over_guarantee") for u in LISTENERS}
    assert sorted(u for u, got in told.items() if got) == [
        "flood.sq",
        "police.lu.feng",
        "tang.weimin",
    ]
    assert {told[u][0][1] for u in ("tang.weimin", "police.lu.feng", "flood.sq")} == {
        "alerts/river_chief/zj-sq",
        "alerts/river_police/zj-sq",
        "alerts/department/flood_hq/430502",
    }
    times = [told[u][0][0] for u in ("tang.weimin", "police.lu.feng", "flood.sq")]
    assert max(times) - min(times) < 1.0  # in parallel, not one after another
    alert = told["tang.weimin"][0][2]["alert"]
    assert alert["audiences"] == [
        "river_chief/zj-sq",
        "river_police/zj-sq",
        "department/flood_hq/430502",
        "county/430502",
    ]
    # The grid worker hears the warning-level alert of her grid, not the over-guarantee one.
    assert [t for _, t, _ in listeners["li.na"].of("river_over_warning")] == [
        "alerts/grid/430502001001-02"
    ]
    assert listeners["tang.weimin"].of("river_over_warning")  # the chief hears that too
    assert not listeners["flood.sq"].of("river_over_warning")
    # `case: auto`: the over-guarantee alert became a case in its own transaction, announced to
    # the grid worker of its place (cases/grid/...), who sees the cases in her areas.
    deadline = time.monotonic() + 10
    while not (filed := listeners["li.na"].of("river_over_guarantee", "case")):
        assert time.monotonic() < deadline, listeners["li.na"].arrived
        time.sleep(0.05)
    topic, body = filed[0][1], filed[0][2]
    assert topic == "cases/grid/430502001001-02"
    assert body["case"]["alert_id"] == alert["id"] and body["case"]["state"] == "filed"
    assert not listeners["li.na"].of("river_over_warning", "case")  # a manual rule: no case

    camera.publish(
        f"iot/road/{CAMERA}/event",
        json.dumps({"ts": int(time.time() * 1000), "seq": 1, "event": "accident"}).encode(),
    )
    wait_for(listeners, "road_accident", ["su.minghui", "traffic.sq", "emergency.sq"])
    told = {u: listeners[u].of("road_accident") for u in LISTENERS}
    heard = sorted(u for u, got in told.items() if got)
    # The road chief, Shuangqing's traffic police and emergency management; no other department
    # (nor Daxiang's traffic police), no river chief, and no grid worker listening here (the
    # camera's grid, 渡头桥 grid 02, is neither li.na's nor zhang.wei's).
    assert heard == ["emergency.sq", "su.minghui", "traffic.sq"]
    assert {told[u][0][1] for u in heard} == {
        "alerts/road_chief/g320-sq",
        "alerts/department/traffic_police/430502",
        "alerts/department/emergency/430502",
    }
    # `case: auto`: the accident is a case too, in the service's alert store.
    cases = CaseStore(sqlite_url(service))
    try:
        filed_for = cases.of_alert(told["su.minghui"][0][2]["alert"]["id"])
        assert filed_for is not None
        case = cases.get(filed_for)
        assert case is not None and case.rule_id == "road_accident"
    finally:
        cases.close()
