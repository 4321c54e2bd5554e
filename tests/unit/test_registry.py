"""The example city loads and is complete; broken registries are refused with precise errors."""

from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Kind, Level
from devices.registry import RegistryError, RiverDevice, load_registry, parse_registry
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "registry.yaml"


def test_example_city_meets_the_minimums() -> None:
    registry = load_registry(EXAMPLE)
    per_level = {lv: sum(a.level is lv for a in registry.areas.values()) for lv in Level}
    assert per_level[Level.CITY] == 1
    assert per_level[Level.COUNTY] >= 2
    assert per_level[Level.TOWNSHIP] >= 4
    assert per_level[Level.VILLAGE] >= 8
    assert per_level[Level.GRID] >= 16
    assert len(registry.devices) >= 60
    assert all(any(d.kind is k for d in registry.devices.values()) for k in Kind)
    grids = {a.id for a in registry.areas.values() if a.level is Level.GRID}
    assert grids == {d.grid for d in registry.devices.values()}  # every grid has a device
    for device in registry.devices.values():
        assert set(registry.device_path(device.id).tags()) == {
            "grid",
            "village",
            "township",
            "county",
        }
        if isinstance(device, RiverDevice):
            assert device.attribute("warning_level_m") == device.warning_level_m


def test_devices_in_an_area_at_any_level() -> None:
    registry = load_registry(EXAMPLE)
    city = next(a for a in registry.areas.values() if a.level is Level.CITY)
    assert len(list(registry.devices_in(city.id))) == len(registry.devices)
    county = registry.children(city.id)[0]
    inside = list(registry.devices_in(county.id))
    assert 0 < len(inside) < len(registry.devices)
    assert all(registry.device_path(d.id).id_at(Level.COUNTY) == county.id for d in inside)


AREAS = SMALL_AREAS
RIVER = SMALL_DEVICES[0]


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(RegistryError) as raised:
        parse_registry(data, "city.yaml")
    return [str(p) for p in raised.value.problems]


def test_unknown_grid_is_named() -> None:
    found = problems({"areas": AREAS, "devices": [RIVER, {**RIVER, "id": "r2", "grid": "zz"}]})
    assert found == ["city.yaml: devices[1] (id=r2): grid: no area 'zz'"]


def test_river_levels_out_of_order() -> None:
    found = problems({"areas": AREAS, "devices": [{**RIVER, "warning_level_m": 214.0}]})
    assert len(found) == 1 and found[0].startswith("city.yaml: devices[0] (id=r1): ")
    assert "warning_level_m < guarantee_level_m" in found[0]


def test_unknown_key_and_wrong_type_are_named() -> None:
    found = problems(
        {
            "areas": AREAS,
            "devices": [{**RIVER, "colour": "red"}, {**RIVER, "id": "r3", "lat": "north"}],
        }
    )
    assert "city.yaml: devices[0] (id=r1): colour: Extra inputs are not permitted" in found
    assert any(p.startswith("city.yaml: devices[1] (id=r3): lat: ") for p in found)


def test_hierarchy_must_step_one_level_at_a_time() -> None:
    bad = [*AREAS, {"id": "v2", "name": "村", "level": "village", "parent": "co"}]
    found = problems({"areas": bad, "devices": []})
    assert found == [
        "city.yaml: areas[5] (id=v2): parent: a village needs a township parent, co is a county"
    ]


def test_device_on_a_village_not_a_grid() -> None:
    found = problems({"areas": AREAS, "devices": [{**RIVER, "grid": "v"}]})
    assert found == ["city.yaml: devices[0] (id=r1): grid: v is a village"]


def test_duplicate_ids() -> None:
    found = problems({"areas": [*AREAS, AREAS[-1]], "devices": [RIVER, RIVER]})
    assert "city.yaml: areas[5] (id=g): id: duplicate area id" in found
    assert "city.yaml: devices[1] (id=r1): id: duplicate device id" in found


def test_problems_name_the_entry_by_its_place_in_the_file() -> None:
    # devices[0] does not parse; the unknown grid is on devices[2] of the file, not the
    # second device that parsed.
    broken = {**RIVER, "id": "r0", "lat": "north"}
    found = problems(
        {"areas": AREAS, "devices": [broken, RIVER, {**RIVER, "id": "r2", "grid": "zz"}]}
    )
    assert "city.yaml: devices[2] (id=r2): grid: no area 'zz'" in found


def test_a_field_named_like_a_kind_is_still_named() -> None:
    # `river` is both the river station's kind tag and one of its fields.
    found = problems({"areas": AREAS, "devices": [{**RIVER, "river": ""}]})
    assert len(found) == 1 and found[0].startswith("city.yaml: devices[0] (id=r1): river: ")


HJ212 = {**RIVER, "protocol": "hj212", "mn": "43050310000201", "password": "123456"}
SL651 = {**RIVER, "protocol": "sl651", "station_address": "0043050301", "password": "12AB"}


def test_protocol_identities_load_and_never_show_the_password() -> None:
    registry = parse_registry(
        {"areas": AREAS, "devices": [{**HJ212, "id": "h1"}, {**SL651, "id": "s1"}]}, "city.yaml"
    )
    assert list(registry.stations_of("hj212")) == ["43050310000201"]
    assert list(registry.stations_of("sl651")) == ["0043050301"]
    for device in registry.devices.values():
        shown = device.model_dump(mode="json")
        assert "password" not in shown and "123456" not in repr(device) + str(shown)
        assert "12AB" not in repr(device) + str(shown)
    assert registry.devices["h1"].model_dump(mode="json")["mn"] == "43050310000201"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({**HJ212, "password": None}, "protocol hj212 needs mn and password"),
        ({**HJ212, "mn": "MN;PW=1"}, "mn: String should match pattern"),
        ({**HJ212, "password": "12;34"}, "password is not a hj212 password"),
        ({**SL651, "password": "12345"}, "password is not a sl651 password"),
        ({**SL651, "station_address": 43050301}, "station_address: Input should be a valid string"),
        ({**SL651, "mn": "A1"}, "mn belongs to protocol hj212, not sl651"),
        ({**RIVER, "password": "123456"}, "password needs a protocol"),
        ({**RIVER, "protocol": "modbus"}, "protocol: Input should be 'hj212' or 'sl651'"),
    ],
)
def test_bad_identities_are_named(entry: dict[str, Any], expected: str) -> None:
    found = problems({"areas": AREAS, "devices": [entry]})
    assert len(found) == 1 and expected in found[0], found


def test_duplicate_identities_are_refused_naming_both() -> None:
    devices = [{**HJ212, "id": "h1"}, {**HJ212, "id": "h2"}, {**SL651, "id": "s1"}]
    devices.append({**SL651, "id": "s2"})
    found = problems({"areas": AREAS, "devices": devices})
    assert found == [
        "city.yaml: devices[1] (id=h2): mn: 43050310000201 is h1's too",
        "city.yaml: devices[3] (id=s2): station_address: 0043050301 is s1's too",
    ]
