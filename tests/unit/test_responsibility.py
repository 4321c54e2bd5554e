"""Who answers for what (issue 17): rivers, roads and departments in the registry, the people
file's posts, the rules' ``notify``, each alert's audiences, and who may see it through the API.
Real registry and people files of the example city, small hand-made ones for the errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from devices.kinds import Kind, Level
from devices.registry import RegistryError, load_registry, parse_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenStore
from ingest.ops.brokerconfig import worker_acl
from ingest.ops.processes import free_port
from ingest.people import People, Post, WorkersError, load_workers, parse_workers
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.alerts import Alert, InvalidTransition, due_for_escalation, escalate, open_alert
from rules.audiences import Reach, area_of, reach
from rules.loader import load_rules, parse_rules
from rules.problems import RulesError

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "config" / "registry.yaml")
RULES = load_rules(REPO / "config" / "rules.yaml", REGISTRY)
PEOPLE = People(load_workers(REPO / "config" / "workers.yaml", REGISTRY))


# --- the example city ----------------------------------------------------------------------


def test_every_station_and_camera_of_the_example_city_has_a_segment_with_a_chief() -> None:
    posts = {k for p in PEOPLE for k in p.posts(REGISTRY)}
    for device in REGISTRY.devices.values():
        if device.kind is Kind.GATE:
            continue
        segment = REGISTRY.segment_of(device.id)
        assert segment is not None, device.id
        chief = "river_chief" if device.kind is Kind.RIVER else "road_chief"
        assert f"{chief}/{segment.id}" in posts, device.id
        if device.kind is Kind.RIVER:
            assert f"river_police/{segment.id}" in posts, device.id
    kinds = {d.kind.value for d in REGISTRY.departments.values()}
    assert {
        "water_resources",
        "flood_control",
        "ecology_environment",
        "traffic_police",
        "emergency_management",
        "urban_management",
    } <= kinds
    levels = {s.level for s in REGISTRY.segments.values()}
    assert {Level.COUNTY, Level.TOWNSHIP, Level.VILLAGE} <= levels


def test_over_guarantee_reaches_the_chiefs_and_the_county_flood_hq_and_nobody_at_grid() -> None:
    station = REGISTRY.devices["river-zj-0001"]  # Zi River, Shuangqing reach, county 430502
    found = reach(RULES.by_id["river_over_guarantee"], station, REGISTRY)
    assert found == Reach(
        ("river_chief/zj-sq", "river_police/zj-sq", "department/flood_hq/430502", "county/430502"),
        Level.COUNTY,
        True,
    )
    holders = {k: [p.username for p in PEOPLE.holding(k, REGISTRY)] for k in found.keys}
    assert holders == {
        "river_chief/zj-sq": ["tang.weimin"],
        "river_police/zj-sq": ["police.lu.feng"],
        "department/flood_hq/430502": ["flood.sq"],
        "county/430502": ["duty.sq"],  # the county's duty officer (双清区值班室)
    }
    assert not any(k.startswith(("grid/", "village/", "township/")) for k in found.keys)


def test_an_accident_reaches_the_road_chief_traffic_police_and_emergency_only() -> None:
    camera = REGISTRY.devices["road-dx-0001"]  # G207, Daxiang
    found = reach(RULES.by_id["road_accident"], camera, REGISTRY)
    departments = {k.split("/")[1] for k in found.keys if k.startswith("department/")}
    assert departments == {"traffic_police", "emergency"}
    assert "road_chief/g207-dx" in found.keys
    assert f"grid/{camera.grid}" in found.keys
    assert RULES.by_id["road_accident"].case == "auto"


def test_a_chief_audience_that_does_not_apply_falls_back_to_the_grid() -> None:
    registry = parse_registry(
        {
            "areas": [
                {"id": "c", "name": "市", "level": "city"},
                {"id": "co", "name": "县", "level": "county", "parent": "c"},
                {"id": "t", "name": "镇", "level": "township", "parent": "co"},
                {"id": "v", "name": "村", "level": "village", "parent": "t"},
                {"id": "g", "name": "网格", "level": "grid", "parent": "v"},
            ],
            "devices": [RIVER],
        }
    )
    rules = parse_rules({"rules": [{**OVER, "notify": ["river_chief"]}]}, "<t>", registry)
    # The station names no segment: nobody would hear it, so its grid does.
    assert reach(rules[0], registry.devices["r1"], registry) == Reach(("grid/g",))


# --- named problems -----------------------------------------------------------------------

AREAS = [
    {"id": "c", "name": "市", "level": "city"},
    {"id": "co", "name": "县", "level": "county", "parent": "c"},
    {"id": "co2", "name": "县二", "level": "county", "parent": "c"},
    {"id": "t", "name": "镇", "level": "township", "parent": "co"},
    {"id": "v", "name": "村", "level": "village", "parent": "t"},
    {"id": "g", "name": "网格", "level": "grid", "parent": "v"},
]
RIVER = {
    "id": "r1",
    "kind": "river",
    "name": "站",
    "lat": 27.0,
    "lon": 111.0,
    "grid": "g",
    "river": "资江",
    "normal_level_m": 1.0,
    "warning_level_m": 2.0,
    "guarantee_level_m": 3.0,
}
RIVERS = [
    {
        "id": "zj",
        "name": "资江",
        "segments": [
            {"id": "s1", "name": "一段", "level": "county", "area": "co", "from_km": 0, "to_km": 5},
            {
                "id": "s2",
                "name": "二段",
                "level": "county",
                "area": "co2",
                "from_km": 5,
                "to_km": 9,
            },
        ],
    }
]
DEPTS = [
    {"id": "flood", "name": "防指", "kind": "flood_control", "level": "county", "areas": ["co"]}
]
OVER = {
    "id": "over",
    "type": "threshold",
    "name": "Over",
    "name_zh": "超",
    "severity": "critical",
    "kinds": ["river"],
    "field": "water_level_m",
    "op": ">",
    "value": 2.5,
}


def registry_problems(**changes: Any) -> list[str]:
    data = {"areas": AREAS, "devices": [RIVER], "rivers": RIVERS, "departments": DEPTS}
    with pytest.raises(RegistryError) as raised:
        parse_registry({**data, **changes}, "reg.yaml")
    return [str(p) for p in raised.value.problems]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"devices": [{**RIVER, "segment": "nope"}]}, "segment: no river segment 'nope'"),
        (
            {"devices": [{**RIVER, "segment": "s2"}]},
            "segment: s2 is answered for in co2; the device's grid g is not inside it",
        ),
        (
            {"devices": [{**RIVER, "segment": "s1", "river": "邵水"}]},
            "segment: s1 is on 资江, the device's river is 邵水",
        ),
        (
            {
                "rivers": [
                    {**RIVERS[0], "segments": [RIVERS[0]["segments"][1], RIVERS[0]["segments"][0]]}
                ]
            },
            "rivers[0] (id=zj): segments.1.from_km: overlaps the segment before",
        ),
        (
            {"rivers": [{**RIVERS[0], "segments": [{**RIVERS[0]["segments"][0], "area": "t"}]}]},
            "segments.0.area: t is a township, the segment's chief is at county",
        ),
        (
            {"departments": [{**DEPTS[0], "areas": ["t"]}]},
            "departments[0] (id=flood): areas.0: t is a township, the department's units are at",
        ),
        ({"departments": [DEPTS[0], DEPTS[0]]}, "departments[1] (id=flood): id: duplicate"),
        (
            {"rivers": [RIVERS[0], {**RIVERS[0], "id": "zj2"}]},
            "rivers[1] (id=zj2): segments.0.id: segment s1 is already in zj",
        ),
    ],
)
def test_registry_problems_are_named(changes: dict[str, Any], expected: str) -> None:
    found = registry_problems(**changes)
    assert any(expected in p for p in found), found
    assert all(p.startswith("reg.yaml: ") for p in found)


def small() -> Any:
    return parse_registry(
        {
            "areas": AREAS,
            "devices": [{**RIVER, "segment": "s1"}],
            "rivers": RIVERS,
            "departments": DEPTS,
        }
    )


CHIEFS = [
    {"username": "he.a", "name": "何", "role": "river_chief", "segments": ["s1"]},
    {"username": "he.b", "name": "贺", "role": "river_chief", "segments": ["s2"]},
]


def people_problems(*entries: dict[str, Any]) -> list[str]:
    with pytest.raises(WorkersError) as raised:
        parse_workers({"workers": list(entries)}, small(), "people.yaml")
    return [str(p) for p in raised.value.problems]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"username": "x", "name": "X", "role": "river_chief"}, "needs segments"),
        (
            {"username": "x", "name": "X", "role": "river_chief", "segments": ["zz"]},
            "segments.0: no river segment 'zz'",
        ),
        (
            {"username": "x", "name": "X", "role": "road_chief", "segments": ["s1"]},
            "segments.0: no road segment 's1'",
        ),
        (
            {
                "username": "x",
                "name": "X",
                "role": "department",
                "department": "flood",
                "areas": ["co2"],
            },
            "areas.0: flood has no unit in co2",
        ),
        (
            {
                "username": "x",
                "name": "X",
                "role": "department",
                "department": "zz",
                "areas": ["co"],
            },
            "department: no department 'zz'",
        ),
        (
            {
                "username": "x",
                "name": "X",
                "role": "grid_worker",
                "areas": ["g"],
                "segments": ["s1"],
            },
            "a grid_worker has no segments",
        ),
        (
            {"username": "x", "name": "X", "areas": ["g"], "phone": "call me"},
            "phone: String should",
        ),
    ],
)
def test_people_problems_are_named(entry: dict[str, Any], expected: str) -> None:
    police = {"username": "lu", "name": "陆", "role": "river_police", "segments": ["s1", "s2"]}
    staff = {
        "username": "fl",
        "name": "肖",
        "role": "department",
        "department": "flood",
        "areas": ["co"],
    }
    found = people_problems(*CHIEFS, police, staff, entry)
    assert any(expected in p and "(username=x)" in p for p in found), found


def test_a_post_nobody_holds_is_named_once_any_chief_or_department_is_posted() -> None:
    police = {"username": "lu", "name": "陆", "role": "river_police", "segments": ["s1", "s2"]}
    staff = {
        "username": "fl",
        "name": "肖",
        "role": "department",
        "department": "flood",
        "areas": ["co"],
    }
    found = people_problems(CHIEFS[0], police, staff)
    assert found == ["people.yaml: (top): workers: 资江 segment s2 has no river_chief"]
    assert people_problems(*CHIEFS) == [
        "people.yaml: (top): workers: 资江 segment s1 has no river_police",
        "people.yaml: (top): workers: 资江 segment s2 has no river_police",
        "people.yaml: (top): workers: department flood has nobody for its unit in co",
    ]
    # A file of grid workers alone (written before chiefs existed) reads as before.
    only = parse_workers({"workers": [{"username": "li", "name": "李", "areas": ["g"]}]}, small())
    assert [p.role for p in only] == [Post.GRID_WORKER]


def test_rule_notify_problems_are_named() -> None:
    registry = small()
    bad = [
        {
            **OVER,
            "id": "a",
            "kinds": ["gate"],
            "type": "event",
            "events": ["forced_open"],
            "notify": ["river_chief"],
        },
        {**OVER, "id": "b", "notify": [{"department": "nope"}, "grid", "grid"]},
        {**OVER, "id": "c", "notify": ["river_chief"], "escalate_after": "5m"},
        {**OVER, "id": "d", "notify": ["river_chief"], "start_level": "county"},
    ]
    for rule in bad:
        for key in ("field", "op", "value") if rule["type"] == "event" else ():
            rule.pop(key)
    with pytest.raises(RulesError) as raised:
        parse_rules({"rules": bad}, "rules.yaml", registry)
    text = str(raised.value)
    assert (
        "(id=a): notify.0: a river_chief answers for river devices; the rule watches gate" in text
    )
    assert "(id=b): notify.0: no department 'nope' (known: flood)" in text
    assert "(id=b): notify.2: listed twice" in text
    assert "(id=c): escalate_after: climbs the area chain: add grid to notify" in text
    assert "(id=d): start_level: is where the area chain starts: add grid to notify" in text


# --- alerts and their audiences -------------------------------------------------------------

PATH = {
    Level.GRID: "g",
    Level.VILLAGE: "v",
    Level.TOWNSHIP: "t",
    Level.COUNTY: "co",
    Level.CITY: "c",
}


def test_escalation_adds_each_level_to_the_audiences_from_the_start_level() -> None:
    alert, _ = open_alert(
        rule_id="over",
        severity="critical",
        device_id="r1",
        kind=Kind.RIVER,
        areas=PATH,
        at_ms=0,
        value=3.0,
        detail="",
        raised_ms=0,
        audiences=("river_chief/s1", "county/co"),
        start_level=Level.COUNTY,
    )
    assert alert.topics == ["alerts/river_chief/s1", "alerts/county/co"]
    assert due_for_escalation(alert, 300_000, 300_000)
    up, event = escalate(alert, 300_000)
    assert up.audiences == ("river_chief/s1", "county/co", "city/c")
    assert event.detail == "to city c"
    assert not due_for_escalation(up, 300_000, 900_000)  # the top


def test_an_alert_not_told_to_the_area_chain_never_escalates() -> None:
    alert, _ = open_alert(
        rule_id="over",
        severity="critical",
        device_id="r1",
        kind=Kind.RIVER,
        areas=PATH,
        at_ms=0,
        value=3.0,
        detail="",
        audiences=("river_chief/s1",),
        area_chain=False,
    )
    assert not due_for_escalation(alert, 1, 10_000_000)
    with pytest.raises(InvalidTransition, match="area chain"):
        escalate(alert, 10)


def test_an_alert_stored_before_audiences_reads_as_told_to_its_grid_up_to_its_level() -> None:
    old, _ = open_alert(
        rule_id="over",
        severity="critical",
        device_id="r1",
        kind=Kind.RIVER,
        areas=PATH,
        at_ms=0,
        value=3.0,
        detail="",
    )
    body = old.model_dump(mode="json")
    del body["audiences"], body["area_chain"]
    body["escalation_level"] = "township"
    again = Alert.model_validate(body)
    assert again.audiences == ("grid/g", "village/v", "township/t")
    assert again.area_chain


def test_area_of_a_key() -> None:
    assert area_of("river_chief/zj-sq", REGISTRY) == "430502"
    assert area_of("department/flood_hq/430503", REGISTRY) == "430503"
    assert area_of("grid/430502001001-01", REGISTRY) == "430502001001-01"
    assert area_of("person/li.na", REGISTRY) is None


def test_a_chiefs_broker_account_reads_only_its_own_posts() -> None:
    chief = PEOPLE.get("tang.weimin")
    assert chief is not None
    assert worker_acl(chief, REGISTRY) == [
        "topic read alerts/river_chief/zj-sq",
        "topic read cases/river_chief/zj-sq",
        "topic read cases/person/tang.weimin",
    ]
    flood = PEOPLE.get("flood.sq")
    assert flood is not None and flood.level(REGISTRY) is Level.COUNTY
    assert "topic read alerts/department/flood_hq/430502" in worker_acl(flood, REGISTRY)


# --- what a person's token sees -------------------------------------------------------------


def open_told(store: AlertStore, rule_id: str, device_id: str, at_ms: int = 1_000) -> Alert:
    """An alert of ``rule_id`` on ``device_id`` opened and stored as the engine would, told to
    the audiences the example rules give it."""
    rule, device = RULES.by_id[rule_id], REGISTRY.devices[device_id]
    found = reach(rule, device, REGISTRY)
    alert, event = open_alert(
        rule_id=rule_id,
        severity=rule.severity,
        device_id=device_id,
        kind=device.kind,
        areas={a.level: a.id for a in REGISTRY.device_path(device_id).areas},
        at_ms=at_ms,
        value=1.0,
        detail="",
        audiences=found.keys,
        start_level=found.start_level,
        area_chain=found.chain,
    )
    store.insert(alert, event)
    return alert


@asynccontextmanager
async def example_api(
    tmp_path: Path, store: AlertStore, tokens: TokenStore
) -> AsyncIterator[httpx.AsyncClient]:
    """The API over the example city, its rules and people, and ``store``."""
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path, influx_url=f"http://127.0.0.1:{free_port()}"),
            registry=REGISTRY,
            rules=RULES,
            rules_path=REPO / "config" / "rules.yaml",
            alert_store=store,
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
            people=PEOPLE,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


@pytest.fixture
async def api(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], list[Alert]]]:
    """The API over the example city with three alerts stored: an over-guarantee on the Zi
    River in Shuangqing, an accident on G207 in Daxiang, a forced gate in li.na's grid."""
    store = AlertStore(sqlite_url(tmp_path))
    alerts = [
        open_told(store, "river_over_guarantee", "river-zj-0001"),
        open_told(store, "road_accident", "road-dx-0001"),
        open_told(store, "gate_forced_open", "gate-sq-0001"),
    ]
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    names = ["tang.weimin", "flood.sq", "traffic.dx", "eco.sq", "li.na", "gone.person"]
    held = {n: tokens.add(n, Role.PERSON)[0] for n in names}
    async with example_api(tmp_path, store, tokens) as c:
        yield c, held, alerts


async def test_each_person_sees_the_alerts_told_to_their_posts(
    api: tuple[httpx.AsyncClient, dict[str, str], list[Alert]],
) -> None:
    c, held, (flood, accident, gate) = api
    seen = {}
    for name, token in held.items():
        answer = await c.get("/alerts", headers={"Authorization": f"Bearer {token}"})
        seen[name] = (
            answer.status_code
            if answer.status_code != 200
            else sorted(a["id"] for a in answer.json())
        )
    assert seen == {
        "tang.weimin": [flood.id],  # the Zi River's Shuangqing chief
        "flood.sq": [flood.id],  # the Shuangqing flood HQ
        "traffic.dx": [accident.id],  # Daxiang traffic police
        "eco.sq": [],  # ecology hears water quality, not floods
        # Her grids hold the gate and the station: she may look at both (a grid worker sees all
        # inside her areas, as before), though the flood was told to the county, not to her.
        "li.na": sorted([gate.id, flood.id]),
        "gone.person": 401,  # a token for someone not in the people file
    }
    one = await c.get(
        f"/alerts/{flood.id}", headers={"Authorization": f"Bearer {held['flood.sq']}"}
    )
    assert one.status_code == 200
    assert one.json()["alert"]["audiences"] == list(flood.audiences)
    hidden = await c.get(
        f"/alerts/{accident.id}", headers={"Authorization": f"Bearer {held['tang.weimin']}"}
    )
    assert hidden.status_code == 404


async def test_duties_lists_the_rivers_roads_and_departments(
    api: tuple[httpx.AsyncClient, dict[str, str], list[Alert]],
) -> None:
    c, held, _ = api
    got = (await c.get("/duties", headers={"Authorization": f"Bearer {held['li.na']}"})).json()
    assert [r["id"] for r in got["rivers"]] == list(REGISTRY.rivers)
    assert got["rivers"][0]["segments"][0]["id"] == "zj-dx"
    assert {d["id"]: d["level"] for d in got["departments"]}["urban_management"] == "city"
    assert len(got["roads"]) == len(REGISTRY.roads)
    assert (await c.get("/duties")).status_code == 401
