"""Each simulator scenario, through the real service, raises exactly the alerts it should.

The simulator plays the whole example city with one scenario injected; the running service
(real Mosquitto, real InfluxDB) evaluates config/rules.yaml; then the alert store must hold
exactly the (rule, device) pairs the scenario is documented to cause — on its target device,
and for a scenario that travels down a river or along a road, on the devices it reaches —
everyone who answers for each of those devices must have been told of its opening on their own
topic (plain paho clients), and a worker on a grid with none of them must have heard nothing.

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

The scenarios that travel down a river play hours of device time (the flood wave takes 6.2 h
from the Zi River's most upstream station to its last): those runs are played with only the
stations of that river and one station of another river as the control, so a few thousand
messages carry the whole story; the simulated clock starts at the wall clock as for the others
and the allowed skew is the run's length.
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

from devices.alongway import along, way_of
from devices.kinds import Channel, Kind, Level
from devices.registry import Registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.people import load_workers
from ingest.settings import InfluxDialect
from rules import load_rules
from rules.alerts import AlertState
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
    """A scenario, how long to play it, the rules it must trip on its target device and the
    (rule, device) pairs beyond it (a scenario that travels)."""

    scenario: str
    duration_s: float
    at_s: float
    rules: frozenset[str]
    elsewhere: frozenset[Pair] = frozenset()
    river_only: bool = False  # only the target's river (and a control), ending now
    resolved: frozenset[str] = frozenset()  # rules whose every alert has cleared by the end

    def __str__(self) -> str:
        return self.scenario

    def expected(self, target_id: str) -> set[Pair]:
        return {(rule, target_id) for rule in self.rules} | set(self.elsewhere)


# The Zi River below its most upstream station river-zj-0004 (km 6), nearest first: km 18, 24,
# 34, 52, 62; the water takes 77, 116, 181, 304 and 372 minutes (devices/alongway.py).
ZI_DOWNSTREAM = (
    "river-zj-0003",
    "river-zj-0002",
    "river-zj-0001",
    "river-zj-0005",
    "river-zj-0006",
)
WAVE_RULES = ("river_over_warning", "river_rising_fast")
ZI_BELOW_CITY = ZI_DOWNSTREAM[3:]  # below river-zj-0001, the flood's and the spill's target


CASES = [
    # The level passes warning and guarantee within ~60 s and stays there (> 2 min: `for: 2m`);
    # a rise of metres in a minute is far beyond 0.3 m/h once the rate rule has its 15 minutes
    # of readings (half its 30 min window), which 10 minutes of baseline plus the flood give.
    # The target, river-zj-0001 (Zi River km 34), warns the two stations below it, which the
    # water reaches in 2 and 3 hours (upstream_flood_wave), whose own rivers stay calm.
    Case(
        "flood",
        1000,
        600,
        frozenset({"river_over_warning", "river_over_guarantee", "river_rising_fast"}),
        elsewhere=frozenset({("upstream_flood_wave", s) for s in ZI_BELOW_CITY}),
    ),
    # NH3-N, TP, CODMn worse than class V and DO below 2 mg/L: worse than its target at once,
    # and a warning to the two stations below (upstream_pollution).
    Case(
        "pollution",
        150,
        30,
        frozenset({"water_quality_worse_than_target"}),
        elsewhere=frozenset({("upstream_pollution", s) for s in ZI_BELOW_CITY}),
    ),
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

# Scenarios that travel down a river or along a road, with the alerts they cause beyond their
# target. Kept apart from CASES, which tests/integration/test_workers.py plays all at once
# (these take hours of device time, and accident_two_cameras takes the accident's camera).
TRAVELLING = [
    # A flood wave from river-zj-0004 (its front rises from 15 min, it passes warning at 45 min)
    # down the Zi River: every station passes warning when the water gets there, 77 to 372
    # minutes later, and rises fast on the way (rising_fast opens in the front, over_warning
    # 2 minutes after the crossing); the crest stays below guarantee. Each station downstream
    # is warned (upstream_flood_wave) the moment river-zj-0004's first trigger opens (its
    # rising_fast, about 28 minutes before its crossing), long before its own water rises. The
    # run ends 70 minutes after the wave has passed warning at the last station: every wave has
    # passed by then, and everything has cleared (upstream_flood_wave an hour after the water
    # was expected).
    Case(
        "flood_wave",
        29400,
        2700,
        frozenset(WAVE_RULES),
        elsewhere=frozenset(
            {(rule, s) for s in ZI_DOWNSTREAM for rule in WAVE_RULES}
            | {("upstream_flood_wave", s) for s in ZI_DOWNSTREAM}
        ),
        river_only=True,
        resolved=frozenset({*WAVE_RULES, "upstream_flood_wave"}),
    ),
    # A spill at river-zj-0004 from 60 s (worse than class V: its alarm opens at its first
    # reading), which warns every station downstream at once (upstream_pollution); the plume
    # reaches river-zj-0003 77 minutes later at half strength (class IV-V, worse than its
    # class III target: its own alarm), river-zj-0002 at 116 minutes at a twentieth (class III:
    # no alarm, 6 readings of it before the run ends at 130 minutes).
    Case(
        "pollution_plume",
        7800,
        60,
        frozenset({"water_quality_worse_than_target"}),
        elsewhere=frozenset(
            {("water_quality_worse_than_target", ZI_DOWNSTREAM[0])}
            | {("upstream_pollution", s) for s in ZI_DOWNSTREAM}
        ),
        river_only=True,
    ),
    # One accident seen by road-sq-0001 and, 3 s later, road-sq-0002 on the same segment
    # (G320 Shuangqing): one incident, held under the segment's first camera, road-sq-0001.
    Case("accident_two_cameras", 150, 30, frozenset({"road_accident"})),
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
    return set(stored_states(tmp_path))


def stored_states(tmp_path: Path) -> dict[Pair, AlertState]:
    store = AlertStore(sqlite_url(tmp_path))
    try:
        return {(a.rule_id, a.device_id): a.state for a in store.list(limit=10_000)}
    finally:
        store.close()


def unresolved(tmp_path: Path, rules: frozenset[str]) -> set[Pair]:
    """The stored alerts of ``rules`` not resolved."""
    states = stored_states(tmp_path)
    return {p for p, st in states.items() if p[0] in rules and st is not AlertState.RESOLVED}


def river_run(registry: Registry, target_id: str) -> Registry:
    """The registry a river-only run plays: the target's river, and the first station of another
    river on a grid none of them is on (the control for "nobody else heard")."""
    river = way_of(registry, target_id)
    assert river is not None
    stations = {d.id for d in along(registry, river)}
    grids = {registry.devices[s].grid for s in stations}
    control = next(
        d
        for d in registry.devices.values()
        if d.kind is Kind.RIVER and d.id not in stations and d.grid not in grids
    )
    return Registry(
        registry.areas.values(),
        [d for d in registry.devices.values() if d.id in stations | {control.id}],
        registry.rivers.values(),
        registry.roads.values(),
        registry.departments.values(),
    )


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


@pytest.mark.parametrize("case", [*CASES, *TRAVELLING], ids=str)
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
    elif case.river_only:
        # Hours of device time, placed to end now and read as a backlog: the service's read
        # clock follows the stamps (ingest/alerts/readclock.py), so what clears on a deadline
        # of device time (upstream_flood_wave an hour after the water was expected) clears
        # in the run, as it would have live. Deadlines are judged from the start.
        overrides["alert_start_grace_s"] = 0
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
    expected = case.expected(target.id)
    played_city = river_run(registry, target.id) if case.river_only else registry
    (played_as,) = plan_run(config, played_city).assignments
    assert played_as.device_id == target.id

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
    alerted_grids = {registry.devices[d].grid for _, d in expected}
    other_grid = next(
        d.grid
        for d in played_city.devices.values()
        if d.kind is target.kind and d.grid not in alerted_grids
    )
    # Who answers for each alerted device: every audience its rule names for it
    # (rules/audiences.py).
    rules = load_rules(RULES_FILE, registry)
    told_to = {
        (r, d): reach(rules.by_id[r], registry.devices[d], registry).keys for r, d in expected
    }
    topics = sorted({f"alerts/{k}" for keys in told_to.values() for k in keys})
    worker = Worker(mosquitto.port, *topics)
    stranger = Worker(mosquitto.port, f"alerts/grid/{other_grid}")
    try:
        async with running_service(settings, registry) as state:
            in_past = silent or case.river_only
            start_ms = now_ms() - round(duration_s * 1000) if in_past else now_ms()
            played = list(dry_run(config, played_city, start_ms))
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
            if case.resolved:  # cleared on deadlines: at the service's next ticks
                await wait_until(lambda: not unresolved(tmp_path, case.resolved))
        # Stopped: the service has applied and published every queued alert change.
        await asyncio.sleep(0.3)  # time for a straggler (an alert nobody expected) to arrive
    finally:
        worker.close()
        stranger.close()

    # (a) exactly the expected alerts: on the target, and where a travelling scenario reached
    states = stored_states(tmp_path)
    assert set(states) == expected
    assert not unresolved(tmp_path, case.resolved)  # e.g. the wave has passed every station
    # (b) everyone who answers for each alerted device was told of its opening on their own
    # topic, once per alert (not once per reading), and a worker elsewhere of nothing
    assert worker.opened() == expected
    arrivals = list(zip(worker.topics, worker.messages(), strict=True))
    opened = [m for _, m in arrivals if m["event"]["action"] == "opened"]
    by_pair: dict[Pair, list[str]] = {}
    for topic, m in arrivals:
        if m["event"]["action"] == "opened":
            pair = (m["alert"]["rule_id"], m["alert"]["device_id"])
            by_pair.setdefault(pair, []).append(topic)
    assert {p: sorted(t) for p, t in by_pair.items()} == {
        p: sorted(f"alerts/{k}" for k in keys) for p, keys in told_to.items()
    }
    assert all(
        m["alert"]["areas"]["grid"] == registry.devices[m["alert"]["device_id"]].grid
        for m in opened
    )
    assert {m["alert"]["areas"]["grid"] for m in opened} == alerted_grids
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
