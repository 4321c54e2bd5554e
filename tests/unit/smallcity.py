"""A one-of-each registry for fast tests: five areas down to one grid, a device of each kind."""

from typing import Any

SMALL_AREAS: list[dict[str, Any]] = [
    {"id": "c", "name": "市", "level": "city"},
    {"id": "co", "name": "区", "level": "county", "parent": "c"},
    {"id": "t", "name": "街道", "level": "township", "parent": "co"},
    {"id": "v", "name": "社区", "level": "village", "parent": "t"},
    {"id": "g", "name": "网格", "level": "grid", "parent": "v"},
]
_AT = {"lat": 27.2, "lon": 111.4, "grid": "g"}
SMALL_DEVICES: list[dict[str, Any]] = [
    {
        "id": "r1",
        "kind": "river",
        "name": "站",
        **_AT,
        "river": "资江",
        "normal_level_m": 207.5,
        "warning_level_m": 211.5,
        "guarantee_level_m": 213.5,
    },
    {"id": "g1", "kind": "gate", "name": "门", **_AT, "community": "小区"},
    {"id": "d1", "kind": "road", "name": "路", **_AT, "road": "S219", "speed_limit_kmh": 60},
]
