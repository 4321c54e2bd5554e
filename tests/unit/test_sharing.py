"""The sharing decision (ingest/sharing/decide.py) and the sharing file (ingest/sharing/config.py)
on the example city's registry: classes, grants valid, expired, of another department or
another area, fields withheld; every problem of a bad file named; the file re-read on change
and failing closed."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.kinds import Kind
from devices.registry import Registry
from ingest.sharing import config as sharing_config
from ingest.sharing.config import (
    DataSet,
    SharingError,
    SharingFile,
    SharingRules,
    load_sharing,
    parse_sharing,
)
from ingest.sharing.decide import Refused, Share, decide, narrow

REPO = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 6)
COUNTIES = frozenset({"430502", "430503", "430522"})  # each county department's units
TOWNSHIP = "430502001"  # inside county 430502
RULES: dict[str, Any] = {
    "data_sets": {
        "river": {"class": "unconditional"},
        "road": {"class": "unconditional", "fields": ["vehicle_count", "avg_speed_kmh"]},
        "gate": {"class": "conditional", "fields": ["door", "people_in", "people_out"]},
        "road_events": {"class": "conditional", "fields": ["speed_kmh", "lane", "confidence"]},
        "gate_events": {"class": "not_shared"},
        "alerts": {"class": "conditional", "kinds": ["river"]},
    },
    "grants": [
        {
            "id": "g-valid",
            "department": "traffic_police",
            "data_sets": ["road_events"],
            "areas": ["430502"],
            "approved_by": "数据局",
            "expires": "2026-12-06",  # today: still valid
        },
        {
            "id": "g-old",
            "department": "emergency",
            "data_sets": ["gate", "road_events"],
            "areas": ["430502"],
            "approved_by": "数据局",
            "expires": "2026-12-05",  # yesterday
        },
        {
            "id": "g-narrow",
            "department": "emergency",
            "data_sets": ["alerts"],
            "areas": [TOWNSHIP],
            "approved_by": "数据局",
            "expires": "2027-01-01",
        },
    ],
}


def _path_of(registry: Registry) -> Any:
    return lambda area: [a.id for a in registry.path_of(area).areas]


@pytest.fixture
def rules(registry: Registry) -> SharingRules:
    return parse_sharing(RULES, registry, "sharing.yaml")


def _decide(
    rules: SharingRules,
    registry: Registry,
    department: str,
    data_set: DataSet,
    areas: frozenset[str] = COUNTIES,
    requested: list[str] | None = None,
) -> Share:
    return decide(
        rules, department, areas, data_set, TODAY, _path_of(registry), requested=requested
    )


def _refusal(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(Refused) as caught:
        _decide(*args, **kwargs)
    return caught.value.code


def test_an_unconditional_set_is_shared_in_the_departments_own_areas(
    rules: SharingRules, registry: Registry
) -> None:
    share = _decide(rules, registry, "ecology_env", DataSet.RIVER)
    assert share.areas == COUNTIES and share.grants == ()
    assert share.fields is not None and {"water_level_m", "ph"} <= share.fields
    road = _decide(rules, registry, "ecology_env", DataSet.ROAD)
    assert road.fields == frozenset({"vehicle_count", "avg_speed_kmh"})  # the set's field list


def test_a_not_shared_set_and_a_set_the_file_does_not_list_are_refused(
    rules: SharingRules, registry: Registry
) -> None:
    assert _refusal(rules, registry, "traffic_police", DataSet.GATE_EVENTS) == "not_shared"
    bare = parse_sharing({"data_sets": {"river": {"class": "unconditional"}}}, registry)
    assert _refusal(bare, registry, "ecology_env", DataSet.ROAD) == "not_shared"


def test_a_conditional_set_needs_a_grant_of_that_department(
    rules: SharingRules, registry: Registry
) -> None:
    # The road_events grant is traffic_police's: ecology_env has none, whatever others hold.
    assert _refusal(rules, registry, "ecology_env", DataSet.ROAD_EVENTS) == "no_grant"
    share = _decide(rules, registry, "traffic_police", DataSet.ROAD_EVENTS)
    assert share.areas == {"430502"}  # the grant's areas, not all three counties
    assert share.fields == frozenset({"speed_kmh", "lane", "confidence"})  # no plate_hash, no seq
    assert share.grants == ("g-valid",)


def test_an_expired_grant_is_named_as_expired(rules: SharingRules, registry: Registry) -> None:
    assert _refusal(rules, registry, "emergency", DataSet.GATE) == "grant_expired"


def test_a_grant_the_day_after_its_expiry_refuses(rules: SharingRules, registry: Registry) -> None:
    with pytest.raises(Refused) as caught:
        decide(
            rules,
            "traffic_police",
            COUNTIES,
            DataSet.ROAD_EVENTS,
            date(2026, 12, 7),
            _path_of(registry),
        )
    assert caught.value.code == "grant_expired"


def test_a_grant_of_another_area_gives_nothing_there(
    rules: SharingRules, registry: Registry
) -> None:
    # A token narrowed to county 430503: the grant covers 430502 only.
    code = _refusal(rules, registry, "traffic_police", DataSet.ROAD_EVENTS, frozenset({"430503"}))
    assert code == "no_grant"
    # A grant for a township inside a county: the township, not the county.
    share = _decide(rules, registry, "emergency", DataSet.ALERTS)
    assert share.areas == {TOWNSHIP} and share.kinds == frozenset({Kind.RIVER})
    assert share.fields is None


def test_fields_asked_for_must_all_be_shared(rules: SharingRules, registry: Registry) -> None:
    _decide(rules, registry, "ecology_env", DataSet.ROAD, requested=["vehicle_count"])
    code = _refusal(
        rules, registry, "ecology_env", DataSet.ROAD, requested=["vehicle_count", "queue_length_m"]
    )
    assert code == "field_withheld"
    code = _refusal(
        rules, registry, "traffic_police", DataSet.ROAD_EVENTS, requested=["plate_hash"]
    )
    assert code == "field_withheld"


def test_several_grants_add_areas_and_share_only_the_fields_all_of_them_allow(
    registry: Registry,
) -> None:
    two = {
        "data_sets": {"gate": {"class": "conditional"}},
        "grants": [
            {
                "id": f"g{i}",
                "department": "emergency",
                "data_sets": ["gate"],
                "areas": [area],
                "fields": fields,
                "approved_by": "数据局",
                "expires": "2030-01-01",
            }
            for i, (area, fields) in enumerate(
                [("430502", ["door", "people_in"]), ("430503", ["door", "vehicles_in"])]
            )
        ],
    }
    share = _decide(parse_sharing(two, registry), registry, "emergency", DataSet.GATE)
    assert share.areas == {"430502", "430503"}
    assert share.fields == frozenset({"door"})


def test_narrow_keeps_the_inner_of_two_nested_areas(registry: Registry) -> None:
    path_of = _path_of(registry)
    assert narrow({"430502", "430503"}, {TOWNSHIP}, path_of) == {TOWNSHIP}
    assert narrow({TOWNSHIP}, {"430502"}, path_of) == {TOWNSHIP}
    assert narrow({"430503"}, {TOWNSHIP}, path_of) == frozenset()
    assert narrow({"430502"}, {"430500"}, path_of) == {"430502"}


# --- the file -----------------------------------------------------------------------------


def _problems(data: Any, registry: Registry) -> list[str]:
    with pytest.raises(SharingError) as caught:
        parse_sharing(data, registry, "sharing.yaml")
    return [f"{p.entry}: {p.field}: {p.message}" for p in caught.value.problems]


def _grant(**change: Any) -> dict[str, Any]:
    return {**RULES["grants"][0], **change}


def test_every_problem_of_a_bad_file_is_named(registry: Registry) -> None:
    data = {
        "data_sets": {
            "river": {"class": "sometimes"},
            "lakes": {"class": "unconditional"},
            "road": {"class": "unconditional", "fields": ["vehicle_count", "plate"]},
            "gate": {"class": "unconditional", "kinds": ["gate"]},
            "road_events": {"class": "conditional"},
            "gate_events": {"class": "not_shared", "extra": 1},
        },
        "grants": [
            _grant(),
            _grant(),  # the same id again
            _grant(id="g2", department="tax_office"),
            _grant(id="g3", data_sets=["gate"]),  # unconditional: no grant applies
            _grant(id="g4", data_sets=["gate_events"]),
            _grant(id="g5", department="urban_management", areas=["430502", "nowhere"]),
            _grant(id="g6", expires="someday", fields=["plate_hash", "colour"]),
            _grant(id="g7", areas=[]),
        ],
        "grant": [],
    }
    found = _problems(data, registry)
    expected = [
        "(top): grant: unknown section",
        "data_sets.river: class: Input should be 'unconditional', 'conditional' or 'not_shared'",
        "data_sets.lakes: (key): no data set 'lakes'",
        "data_sets.road: fields.1: road has no field 'plate'",
        "data_sets.gate: kinds: only the alerts data set takes kinds",
        "data_sets.gate_events: extra: Extra inputs are not permitted",
        "grants[1] (id=g-valid): id: duplicate grant id",
        "grants[2] (id=g2): department: no department 'tax_office'",
        "grants[3] (id=g3): data_sets.0: gate is unconditional: no grant applies",
        "grants[4] (id=g4): data_sets.0: gate_events is not_shared: no grant applies",
        "grants[5] (id=g5): areas.1: no area 'nowhere'",
        "grants[6] (id=g6): expires: Input should be a valid date",
        "grants[7] (id=g7): areas: Tuple should have at least 1 item",
    ]
    for want in expected:
        assert any(f.startswith(want) for f in found), (want, found)
    # urban_management's unit is the city: a county lies inside it, so g5's first area is fine.
    assert not any(f.startswith("grants[5] (id=g5): areas.0") for f in found)


def test_a_grant_outside_the_departments_areas_and_unknown_grant_fields_are_named(
    registry: Registry,
) -> None:
    data = {
        "data_sets": RULES["data_sets"],
        "grants": [_grant(areas=["430500"], fields=["speed_kmh", "colour"])],
    }
    found = _problems(data, registry)
    assert "grants[0] (id=g-valid): areas.0: 430500 is not in traffic_police's areas" in found
    assert "grants[0] (id=g-valid): fields.1: none of its data sets has 'colour'" in found


def test_the_example_file_loads_and_shares_no_gate_events(registry: Registry) -> None:
    rules = load_sharing(REPO / "config" / "sharing.yaml", registry)
    assert rules.rule(DataSet.GATE_EVENTS).sharing == "not_shared"
    road_events = rules.rule(DataSet.ROAD_EVENTS)
    assert road_events.fields is not None and "plate_hash" not in road_events.fields


def test_an_unreadable_file_is_named(tmp_path: Path, registry: Registry) -> None:
    bad = tmp_path / "sharing.yaml"
    bad.write_text("data_sets: [unclosed\n")
    with pytest.raises(SharingError, match=r"sharing.yaml: \(file\): \(yaml\)"):
        load_sharing(bad, registry)
    bad.write_bytes("# 共享\n".encode("gbk"))
    with pytest.raises(SharingError, match="not UTF-8"):
        load_sharing(bad, registry)
    with pytest.raises(SharingError, match=r"\(read\)"):
        load_sharing(tmp_path / "missing.yaml", registry)
    bad.write_text("- a list\n")
    with pytest.raises(SharingError, match="must be a mapping"):
        load_sharing(bad, registry)


def test_the_running_file_is_re_read_on_change_and_fails_closed(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing_config, "CHECK_EVERY_S", 0.0)  # every look re-checks
    path = tmp_path / "sharing.yaml"
    live = SharingFile(path, registry)
    assert live.current() is None and live.problem is not None  # missing: nothing shared
    path.write_text(yaml.safe_dump(RULES))
    rules = live.current()
    assert rules is not None and len(rules.grants) == 3 and live.problem is None
    broken = {**RULES, "grants": [_grant(department="tax_office")]}
    path.write_text(yaml.safe_dump(broken))
    os.utime(path, ns=(1, 1))  # a different signature even within one mtime tick
    assert live.current() is None  # broken: nothing shared, not the rules read before
    assert live.problem is not None and "tax_office" in live.problem
    path.write_text(yaml.safe_dump(RULES))
    assert live.current() is not None


def test_the_running_file_is_looked_at_at_most_once_a_second(
    tmp_path: Path, registry: Registry
) -> None:
    path = tmp_path / "sharing.yaml"
    path.write_text(yaml.safe_dump(RULES))
    live = SharingFile(path, registry)
    assert live.current() is not None
    path.unlink()
    assert live.current() is not None  # within the second: not looked at again
