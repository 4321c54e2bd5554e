"""Each simulator scenario, through the real service, raises exactly the alerts it should.

The simulator plays the whole example city with one scenario injected; the running service
(real Mosquitto, real InfluxDB) evaluates config/rules.yaml; then the alert store must hold
exactly the (rule, device) pairs the scenario is documented to cause, all on its target device,
a grid worker's plain paho client on the target's grid must have been told of each opening, and
a worker on another grid must have heard nothing.

Time: the rules run on device time, and a flood needs 2 minutes above the warning level (15
minutes of readings for the rise rate), a jam 5 minutes of high occupancy. The simulator's
publisher runs on the wall clock and has no time acceleration, so the scenarios are played with
its dry run (the same plan, devices and messages, on a simulated clock) and published as fast as
the broker takes them, each message with the topic, payload and retain flag the publisher would
use. The simulated clock starts at the wall clock, so the later part of a run lies in the
future: the service is told to accept that much clock skew. Wall-clock deadlines (silence,
``clear_after``) are then all in the future and fire nothing. The silent device is the
exception: silence is judged against the wall clock, so that run is placed to end now and is
published in two parts, the run and then the clean stop, as a real run would happen.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.kinds import Channel, Level
from devices.registry import Registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.people import load_workers
from ingest.settings import InfluxDialect
from rules import load_rules
from rules.audiences import reach
from rules.model import SilenceRule
from simulator import SCENARIOS, SimulationConfig, dry_run
from simulator.behaviour import Condition
from simulator.device import Outgoing
from simulator.plan import plan_run
from tests.brokerauth import GATEWAY, MONITOR, clear_retained_statuses
from tests.integration.test_ingest_e2e import REPO, make_settings, now_ms, running_service, settle
from tests.services import new_database

pytestmark = pytest.mark.integration

SEED = 7
RATE = 0.2  # so low that every device reports at its own registry interval (at_most_every)
RULES_FILE = REPO / "config" / "rules.yaml"
SILENCE_MARGIN_S = 5.0  # the silent device's deadline falls this long after its run ends
WAIT_S = 20.0

Pair = tuple[str, str]  # (rule id, device id)


@dataclass(frozen=True)
class Case:
    """A scenario, how long to play it, and the rules it must trip on its target device."""

    scenario: str
    duration_s: float
    at_s: float
    rules: frozenset[str]

    def __str__(self) -> str:
        return self.scenario


CASES = [
    # The level passes warning and guarantee within ~60 s and stays there (> 2 min: `for: 2m`);
    # a rise of metres in a minute is far beyond 0.3 m/h once the rate rule has its 15 minutes
    # of readings (half its 30 min window), which 10 minutes of baseline plus the flood give.
    Case(
        "flood",
        1000,
        600,
        frozenset({"river_over_warning", "river_over_guarantee", "river_rising_fast"}),
    ),
    # NH3-N, TP, CODMn worse than class V and DO below 2 mg/L: worse than its target at once.
    Case("pollution", 150, 30, frozenset({"water_quality_worse_than_target"})),
    # The accident event; congestion events every 30 s from 45 s; occupancy above 80 % once the
    # jam has set in (90 s), for more than `for: 5m` of the 10 minutes played.
    Case(
        "accident",
        660,
        60,
        frozenset({"road_accident", "road_congestion_reported", "road_congestion_sustained"}),
    ),
    # Two wrong-way sightings 25 s apart: one alert (the second updates it), and nothing else:
    # traffic flows as usual (no congestion) and the speeding rule counts only speeding events.
    Case("wrong_way", 150, 30, frozenset({"road_wrong_way"})),
    # Four tailgaters within 40 s (≥ 3 in 10 min), then the door forced open.
    Case("tailgating", 150, 30, frozenset({"gate_tailgating_burst", "gate_forced_open"})),
    # Connected but saying nothing from the start: silent after k × its report interval. Its
    # duration is worked out from that limit (see silent_timing).
    Case("silent", 0, 0, frozenset({"device_silent"})),
]


class Worker:
    """The phones of whoever answers for a device: a plain paho client, persistent session,
    QoS 1 on the topics given; records each message with the topic it came on."""

    def __init__(self, port: int, *topics: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.topics: list[str] = []  # the topic each of ``received`` came on
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"worker-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._subscribed = threading.Event()
        self.client.username_pw_set(MONITOR.username, MONITOR.password)  # reads alerts/#
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port)
        result, _mid = self.client.subscribe([(t, 1) for t in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS
        self.client.loop_start()
        # Granted before the service starts, so nothing it publishes can be missed.
        assert self._subscribed.wait(10), f"no SUBACK for {topics}"

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: Any, _p: object) -> None:
        if all(not code.is_failure for code in codes):
            self._subscribed.set()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(json.loads(message.payload))
            self.topics.append(message.topic)

    def opened(self) -> set[Pair]:
        """(rule, device) of every ``opened`` message received so far."""
        with self._lock:
            return {
                (m["alert"]["rule_id"], m["alert"]["device_id"])
                for m in self.received
                if m["event"]["action"] == "opened"
            }

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, messages: list[Outgoing]) -> None:
    """Publish as the devices would (topic, JSON body, QoS 1, status retained), in order."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(m.topic, m.body(), qos=1, retain=m.retain) for m in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def silent_timing(registry: Registry) -> tuple[str, float]:
    """The silent scenario's device and run length.

    The device is the first with the shortest report interval, so every other device's
    silence limit is at least as long as its own. The run lasts ``SILENCE_MARGIN_S`` less than
    that limit and ends now: the device (heard only at the start) is overdue moments after the
    run has been published, while every other device, heard from throughout, is not.
    """
    rule = load_rules(RULES_FILE, registry).get("device_silent")
    assert isinstance(rule, SilenceRule)
    device = min(registry.devices.values(), key=lambda d: d.report_interval_s)
    limit_s = rule.k * device.report_interval_s
    assert limit_s > 4 * SILENCE_MARGIN_S
    return device.id, limit_s - SILENCE_MARGIN_S


def stored_pairs(tmp_path: Path) -> set[Pair]:
    store = AlertStore(sqlite_url(tmp_path))
    try:
        return {(a.rule_id, a.device_id) for a in store.list(limit=10_000)}
    finally:
        store.close()


async def wait_until(check: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.fixture
def clean_broker(mosquitto: Any, registry: Registry) -> Iterator[None]:
    clear_retained_statuses(mosquitto.port, registry)
    yield
    clear_retained_statuses(mosquitto.port, registry)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_scenario_raises_exactly_its_alerts(
    case: Case,
    tmp_path: Path,
    mosquitto: Any,
    influxdb: Any,
    registry: Registry,
    clean_broker: None,
) -> None:
    silent = SCENARIOS[case.scenario].condition is Condition.SILENT
    overrides: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    duration_s, at_s = case.duration_s, case.at_s
    if silent:
        target_id, duration_s = silent_timing(registry)
        chosen = {case.scenario: target_id}
        overrides["alert_start_grace_s"] = 0  # judge silence from the start
    else:
        # The simulated clock runs up to the whole run ahead of the wall clock.
        overrides["future_skew_s"] = duration_s + 120
        overrides["ahead_tolerance_s"] = duration_s + 120  # judged as stamped
    config = SimulationConfig(
        scenarios=(case.scenario,),
        duration=duration_s,
        scenario_at=at_s,
        scenario_device=chosen,
        rate=RATE,
        seed=SEED,
    )
    (assignment,) = plan_run(config, registry).assignments
    target = registry.devices[assignment.device_id]
    kind = SCENARIOS[case.scenario].kind
    assert kind is None or target.kind is kind
    expected = {(rule, target.id) for rule in case.rules}

    database = new_database(influxdb.url, "scen")
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        influx_dialect=InfluxDialect.V1,
        **overrides,
    )
    # A control on another grid that has a device of the same kind in the run.
    other_grid = next(
        d.grid for d in registry.devices.values() if d.kind is target.kind and d.grid != target.grid
    )
    # Who answers for the target: every audience its rules name for it (rules/audiences.py).
    rules = load_rules(RULES_FILE, registry)
    told_to = {r: reach(rules.by_id[r], target, registry).keys for r in case.rules}
    topics = sorted({f"alerts/{k}" for keys in told_to.values() for k in keys})
    worker = Worker(mosquitto.port, *topics)
    stranger = Worker(mosquitto.port, f"alerts/grid/{other_grid}")
    try:
        async with running_service(settings, registry) as state:
            start_ms = now_ms() - round(duration_s * 1000) if silent else now_ms()
            played = list(dry_run(config, registry, start_ms))
            # The clean stop: every device still connected says offline, stopped, at the end.
            run = [m for t, m in played if t < duration_s]
            stop = [m for t, m in played if t >= duration_s]
            assert stop and all(m.channel is Channel.STATUS for m in stop)
            await asyncio.to_thread(publish, mosquitto.port, run)
            if silent:
                # The run goes on (it ends now) until the device is overdue; then it stops.
                # Silence is judged on how far the service has read (ingest/alerts/readclock.py): a
                # run read in one go is caught up with as far as the typical device's newest
                # message, so the clock trails the run's end by up to a report interval.
                longest = max(d.report_interval_s for d in registry.devices.values())
                slack_s = WAIT_S + longest + 4
                assert await wait_until(lambda: expected <= worker.opened(), slack_s), (
                    worker.messages()
                )
            await asyncio.to_thread(publish, mosquitto.port, stop)
            await settle(state, len(played))
            assert state.ledger.rejected == {}, state.ledger.rejected
            assert state.ledger.written_total == len(played)
            await wait_until(lambda: expected <= worker.opened())
        # Stopped: the service has applied and published every queued alert change.
        await asyncio.sleep(0.3)  # time for a straggler (an alert nobody expected) to arrive
    finally:
        worker.close()
        stranger.close()

    # (a) exactly the expected alerts, all on the target device
    assert stored_pairs(tmp_path) == expected
    # (b) everyone who answers for the target was told of each opening on their own topic,
    # once per alert (not once per reading), and a worker elsewhere of nothing
    assert worker.opened() == expected
    arrivals = list(zip(worker.topics, worker.messages(), strict=True))
    opened = [m for _, m in arrivals if m["event"]["action"] == "opened"]
    by_rule: dict[str, list[str]] = {}
    for topic, m in arrivals:
        if m["event"]["action"] == "opened":
            by_rule.setdefault(m["alert"]["rule_id"], []).append(topic)
    assert {r: sorted(t) for r, t in by_rule.items()} == {
        r: sorted(f"alerts/{k}" for k in keys) for r, keys in told_to.items()
    }
    assert {m["alert"]["areas"]["grid"] for m in opened} == {target.grid}
    if silent:
        assert [m["alert"]["value"] for m in opened] == ["silent"]
    assert stranger.messages() == []
    # (c) what each person of the example city was told (test-artifacts/roles-*.json)
    if case.scenario in ROLE_CHECKS:
        heard = heard_by_person(tmp_path, registry, case.scenario)
        ROLE_CHECKS[case.scenario](heard, target, registry)


def heard_by_person(tmp_path: Path, registry: Registry, scenario: str) -> dict[str, set[str]]:
    """The rules each person of config/workers.yaml was told of (their posts among the stored
    alerts' audiences, which are the topics told: see (b) above); written for the record."""
    people = load_workers(REPO / "config" / "workers.yaml", registry)
    store = AlertStore(sqlite_url(tmp_path))
    try:
        alerts = store.list(limit=10_000)
    finally:
        store.close()
    heard = {
        p.username: {a.rule_id for a in alerts if set(p.posts(registry)) & set(a.audiences)}
        for p in people
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"roles-{scenario}.json").write_text(
        json.dumps({u: sorted(r) for u, r in heard.items() if r}, ensure_ascii=False, indent=1)
    )
    return heard


def _holders(registry: Registry, key: str) -> list[str]:
    people = load_workers(REPO / "config" / "workers.yaml", registry)
    return [p.username for p in people if key in p.posts(registry)]


def _flood_roles(heard: dict[str, set[str]], target: Any, registry: Registry) -> None:
    county = registry.device_path(target.id).id_at(Level.COUNTY)
    (chief,) = _holders(registry, f"river_chief/{target.segment}")
    (police,) = _holders(registry, f"river_police/{target.segment}")
    (flood_hq,) = _holders(registry, f"department/flood_hq/{county}")
    (duty,) = _holders(registry, f"county/{county}")
    assert heard[chief] == {"river_over_warning", "river_over_guarantee", "river_rising_fast"}
    assert heard[police] == {"river_over_guarantee"}
    assert heard[flood_hq] == {"river_over_guarantee"}
    for grid_worker in _holders(registry, f"grid/{target.grid}"):
        assert heard[grid_worker] == {"river_over_warning", "river_rising_fast"}  # not 超保证
    # The county duty officer (the area chain starts at the county) is told 超保证 at once.
    assert heard[duty] == {"river_over_guarantee"}
    others = {u for u, r in heard.items() if r} - {chief, police, flood_hq, duty}
    assert all("river_over_guarantee" not in heard[u] for u in others)


def _accident_roles(heard: dict[str, set[str]], target: Any, registry: Registry) -> None:
    county = registry.device_path(target.id).id_at(Level.COUNTY)
    (chief,) = _holders(registry, f"road_chief/{target.segment}")
    traffic = _holders(registry, f"department/traffic_police/{county}")
    emergency = _holders(registry, f"department/emergency/{county}")
    congestion = {"road_congestion_reported", "road_congestion_sustained"}
    assert heard[chief] == {"road_accident"} | congestion
    assert all(heard[u] == {"road_accident"} | congestion for u in traffic)
    assert all(heard[u] == {"road_accident"} for u in emergency)
    departments = {u for u, r in heard.items() if r and u.split(".")[0] in DEPARTMENT_PREFIXES}
    assert departments == set(traffic) | set(emergency)  # no other department


DEPARTMENT_PREFIXES = {"flood", "water", "eco", "traffic", "emergency", "urban"}
ARTIFACTS = REPO / "test-artifacts"
ROLE_CHECKS: dict[str, Callable[[dict[str, set[str]], Any, Registry], None]] = {
    "flood": _flood_roles,
    "accident": _accident_roles,
}
