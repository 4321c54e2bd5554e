"""A small city for the case tests: two counties, three grids, a flood HQ with a unit in each
county, grid workers and department staff in a people file, and case deadlines."""

from __future__ import annotations

from typing import Any

from devices.registry import Registry, parse_registry
from ingest.cases.config import CaseConfig, parse_case_config
from ingest.people import People, parse_workers

AREAS: list[dict[str, Any]] = [
    {"id": "c", "name": "市", "level": "city"},
    {"id": "co1", "name": "区一", "level": "county", "parent": "c"},
    {"id": "co2", "name": "区二", "level": "county", "parent": "c"},
    {"id": "t1", "name": "街道一", "level": "township", "parent": "co1"},
    {"id": "t2", "name": "街道二", "level": "township", "parent": "co2"},
    {"id": "v1", "name": "社区一", "level": "village", "parent": "t1"},
    {"id": "v2", "name": "社区二", "level": "village", "parent": "t2"},
    {"id": "g1", "name": "网格一", "level": "grid", "parent": "v1"},
    {"id": "g2", "name": "网格二", "level": "grid", "parent": "v1"},
    {"id": "g3", "name": "网格三", "level": "grid", "parent": "v2"},
]
DEVICES: list[dict[str, Any]] = [
    {
        "id": "r1",
        "kind": "river",
        "name": "资江站",
        "lat": 27.2,
        "lon": 111.4,
        "grid": "g1",
        "river": "资江",
        "normal_level_m": 207.5,
        "warning_level_m": 211.5,
        "guarantee_level_m": 213.5,
    },
    {
        "id": "gate9",
        "kind": "gate",
        "name": "小区门",
        "lat": 27.3,
        "lon": 111.5,
        "grid": "g3",
        "community": "小区",
    },
]
DEPARTMENTS: list[dict[str, Any]] = [
    {
        "id": "flood_hq",
        "name": "防汛抗旱指挥部",
        "kind": "flood_control",
        "level": "county",
        "areas": ["co1", "co2"],
    },
    {
        "id": "urban",
        "name": "城市管理局",
        "kind": "urban_management",
        "level": "county",
        "areas": ["co1"],
    },
]
WORKERS: dict[str, Any] = {
    "workers": [
        {"username": "li.na", "name": "李娜", "areas": ["g1"]},
        {"username": "zhao.min", "name": "赵敏", "areas": ["g3"]},
        {
            "username": "wang.qiang",
            "name": "王强",
            "role": "department",
            "department": "flood_hq",
            "areas": ["co1"],
        },
        {
            "username": "sun.li",
            "name": "孙丽",
            "role": "department",
            "department": "flood_hq",
            "areas": ["co1"],
        },
        {
            "username": "chen.jie",
            "name": "陈杰",
            "role": "department",
            "department": "flood_hq",
            "areas": ["co2"],
        },
        {  # every unit has its staff (ingest/people.py)
            "username": "zhou.ping",
            "name": "周平",
            "role": "department",
            "department": "urban",
            "areas": ["co1"],
        },
    ]
}
_QUICK = {"dispatch": "10m", "accept": "15m", "arrive": "30m", "handle": "2h"}
CASES: dict[str, Any] = {
    "deadlines": {
        severity: {**_QUICK, "verify": "1h", "close": "1h"}
        for severity in ("critical", "major", "warning", "info")
    }
}


def registry() -> Registry:
    return parse_registry({"areas": AREAS, "devices": DEVICES, "departments": DEPARTMENTS})


def people(reg: Registry) -> People:
    return People(parse_workers(WORKERS, reg))


def case_config() -> CaseConfig:
    return parse_case_config(CASES)
