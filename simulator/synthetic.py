"""Synthetic devices: a registry of N made-up devices, for load tests beyond the example city.

The registry is built through ``devices.registry.parse_registry``, so it passes the same
checks as an operator's file, and can be written as YAML with ``dump_registry`` so the ingest
service loads exactly the devices the simulator publishes for.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from devices.kinds import Kind, Level
from devices.registry import Registry, dump_registry, parse_registry
from simulator.config import SimulationConfig

# Around Shaoyang (邵阳), where the example city is.
CENTRE_LAT, CENTRE_LON = 27.24, 111.47
FANOUT = 2  # children per area: 2 counties, 4 townships, 8 villages, 16 grid cells
REPORT_INTERVAL_S = 60.0

_RIVERS = ("资江", "邵水", "夫夷水", "赧水", "蓼水")
_ROADS = ("G207", "S217", "S312", "X045", "X061", "Y012")
_LEVEL_NAMES = {
    Level.COUNTY: "县",
    Level.TOWNSHIP: "镇",
    Level.VILLAGE: "村",
    Level.GRID: "网格",
}


def _areas() -> tuple[list[dict[str, Any]], list[str]]:
    """The synthetic area tree and its grid ids, in depth-first order."""
    areas: list[dict[str, Any]] = [
        {"id": "syn-city", "name": "模拟市", "name_en": "Synthetic City", "level": "city"}
    ]
    grids: list[str] = []

    def add_children(parent: str, level: Level | None) -> None:
        if level is None:
            return
        below = list(Level)[list(Level).index(level) + 1 :]
        for n in range(1, FANOUT + 1):
            area_id = f"{parent}-{level.value[0]}{n}"
            areas.append(
                {
                    "id": area_id,
                    "name": f"模拟{n}{_LEVEL_NAMES[level]}",
                    "name_en": f"Synthetic {level.value} {area_id}",
                    "level": level.value,
                    "parent": parent,
                }
            )
            if level is Level.GRID:
                grids.append(area_id)
            add_children(area_id, below[0] if below else None)

    add_children("syn-city", Level.COUNTY)
    return areas, grids


def _device(kind: Kind, number: int, grid: str, rng: random.Random) -> dict[str, Any]:
    device_id = f"syn-{kind.value}-{number:04d}"
    common: dict[str, Any] = {
        "id": device_id,
        "kind": kind.value,
        "lat": round(CENTRE_LAT + rng.uniform(-0.4, 0.4), 5),
        "lon": round(CENTRE_LON + rng.uniform(-0.5, 0.5), 5),
        "grid": grid,
        "report_interval_s": REPORT_INTERVAL_S,
    }
    if kind is Kind.RIVER:
        river = rng.choice(_RIVERS)
        normal = round(rng.uniform(200.0, 260.0), 2)
        warning = round(normal + rng.uniform(2.5, 4.0), 2)
        return common | {
            "name": f"{river}模拟站{number}",
            "name_en": f"Synthetic station {number} on the {river}",
            "river": river,
            "normal_level_m": normal,
            "warning_level_m": warning,
            "guarantee_level_m": round(warning + rng.uniform(1.5, 2.5), 2),
        }
    if kind is Kind.ROAD:
        road = rng.choice(_ROADS)
        return common | {
            "name": f"{road}模拟卡口{number}",
            "name_en": f"Synthetic camera {number} on {road}",
            "road": road,
            "speed_limit_kmh": rng.choice((40.0, 60.0, 60.0, 80.0)),
            "lanes": rng.choice((2, 2, 4)),
        }
    vehicle = number % 3 == 0  # every third gate is a vehicle barrier
    return common | {
        "name": f"模拟小区{number}{'道闸' if vehicle else '门禁'}",
        "name_en": f"Synthetic community {number} {'barrier' if vehicle else 'gate'}",
        "community": f"模拟小区{number}",
        "gate_type": "vehicle" if vehicle else "pedestrian",
    }


def synthetic_registry(n: int, kinds: Sequence[Kind] = tuple(Kind), seed: int = 0) -> Registry:
    """``n`` devices (ids like ``syn-river-0001``) over 16 grid cells, kinds taken in turn."""
    if n < 1 or not kinds:
        raise ValueError("need at least one device and one kind")
    rng = random.Random(f"{seed}:synthetic")
    areas, grids = _areas()
    numbers = dict.fromkeys(kinds, 0)
    devices = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        numbers[kind] += 1
        devices.append(_device(kind, numbers[kind], grids[i % len(grids)], rng))
    return parse_registry({"areas": areas, "devices": devices}, "<synthetic>")


def write_registry(path: Path, registry: Registry) -> None:
    """Save a registry as YAML that ``devices.registry.load_registry`` reads back.

    Written to a temporary file and renamed, so a service loading the path never sees half.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dump_registry(registry), allow_unicode=True, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def registry_for_run(config: SimulationConfig, load: Callable[[], Registry]) -> Registry:
    """The registry a run uses: synthetic if --synthetic N, else ``load()``; saved if asked."""
    registry = (
        synthetic_registry(config.synthetic, config.kinds, config.seed)
        if config.synthetic
        else load()
    )
    if config.write_registry is not None:
        write_registry(config.write_registry, registry)
    return registry
