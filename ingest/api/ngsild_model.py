"""NGSI-LD entities of the registry's devices and their newest values, FIWARE Smart Data Models.

Pure: a device from the registry and what InfluxDB holds for it in, an entity in NGSI-LD
normalized form out (``ngsild.py`` queries InfluxDB and answers HTTP). The attribute names and
types follow these Smart Data Models specifications (github.com/smart-data-models):

- ``WaterQualityObserved`` — dataModel.WaterQuality, ``WaterQualityObserved/doc/spec.md``
  version 0.0.5 (``pH``, ``O2``, ``NH4``, ``cod``, ``P-TOT``, ``temperature``, ``turbidity``;
  ``cod`` and ``P-TOT`` in mg/l) and that repository's ``context.jsonld``
  (``https://smartdatamodels.org/dataModel.WaterQuality/<term>``). The older
  dataModel.Environment copy of the model has no ``cod`` or ``P-TOT``, and its
  ``context.jsonld`` no ``pH``, ``O2`` or ``NH4``: the water-quality terms are the
  WaterQuality subject's.
- ``WaterObserved`` — dataModel.Environment, ``WaterObserved/doc/spec.md`` (``height``,
  ``flow``, Relationship ``refDevice``) and ``context.jsonld``
  (``https://smartdatamodels.org/dataModel.Environment/<term>``; ``precipitation`` is a term of
  that context, not listed in the WaterObserved spec: our rain gauge's reading, kept beside).
- ``TrafficFlowObserved`` — dataModel.Transportation, ``TrafficFlowObserved/doc/spec.md``
  (``intensity`` vehicles in the period, ``averageVehicleSpeed`` km/h, ``occupancy`` a
  fraction 0–1, ``congested`` boolean, Relationship ``refRoadSegment``) and ``context.jsonld``.
- ``Device`` — dataModel.Device, ``Device/doc/spec.md`` version 0.0.10 (``category``,
  ``controlledProperty`` from its enum, ``deviceState``, ``dateLastValueReported``, ``name``).
  ``batteryLevel`` (a 0–1 fraction) is left out: our devices report volts, not a level.

Common terms (``dateObserved``, ``name``) are ``https://smartdatamodels.org/<term>``, as in
the current subject contexts. The terms we use are written out in our own context document
(``ngsild_context/citysense-context.jsonld``, served at ``/ngsi-ld/context.jsonld``), mapping
each to the Smart Data Models IRI; the NGSI-LD core context (``CORE_CONTEXT``) comes last in
every ``@context``. Units are UN/CEFACT Rec. 20 common codes: MTR metre, MQS m³/s, MMT mm,
CEL °C, M1 mg/l, KMH km/h; pH, NTU, vehicle counts and fractions have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from devices.kinds import Kind
from devices.registry import AnyDevice, RoadDevice
from ingest.api.influxql import EPOCH
from ingest.api.series import iso_utc
from rules.congestion import CongestionLevel, congestion_index, level_of

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
CONTEXT_PATH = "/ngsi-ld/context.jsonld"  # our terms → Smart Data Models IRIs
URN_PREFIX = "urn:ngsi-ld:"


@dataclass(frozen=True, slots=True)
class Attr:
    """One Property of an observation: its Smart Data Models name, our field, unit, scale."""

    name: str  # the attribute as the data model names it
    field: str  # the payload field it comes from (devices/payloads.py)
    unit_code: str | None  # UN/CEFACT common code, None where there is none
    scale: float = 1.0  # the model's value = ours × scale (occupancy: % → fraction)

    def value(self, ours: float | int) -> float | int:
        """Our stored number in the data model's unit."""
        return ours if self.scale == 1.0 else round(ours * self.scale, 6)


@dataclass(frozen=True, slots=True)
class EntityType:
    """An entity type served: the device kind it comes from and its measured attributes."""

    name: str
    kind: Kind | None  # None: every kind (Device)
    attrs: tuple[Attr, ...]

    def attr(self, name: str) -> Attr | None:
        """The attribute called ``name`` (exact, case-sensitive), or None."""
        return next((a for a in self.attrs if a.name == name), None)


WATER_QUALITY = EntityType(
    "WaterQualityObserved",
    Kind.RIVER,
    (
        Attr("pH", "ph", None),
        Attr("O2", "do_mgl", "M1"),  # dissolved oxygen
        Attr("NH4", "nh3n_mgl", "M1"),  # ammonia nitrogen (氨氮), as N
        Attr("cod", "codmn_mgl", "M1"),  # permanganate index (CODMn, 高锰酸盐指数)
        Attr("P-TOT", "tp_mgl", "M1"),  # total phosphorus
        Attr("temperature", "water_temp_c", "CEL"),
        Attr("turbidity", "turbidity_ntu", None),  # NTU: no UN/CEFACT code
    ),
)
WATER = EntityType(
    "WaterObserved",
    Kind.RIVER,
    (
        Attr("height", "water_level_m", "MTR"),  # elevation above the national datum
        Attr("flow", "flow_m3s", "MQS"),
        Attr("precipitation", "rainfall_mm", "MMT"),
    ),
)
TRAFFIC = EntityType(
    "TrafficFlowObserved",
    Kind.ROAD,
    (
        Attr("intensity", "vehicle_count", None),
        Attr("averageVehicleSpeed", "avg_speed_kmh", "KMH"),
        Attr("occupancy", "occupancy_pct", None, scale=0.01),
    ),
)
DEVICE = EntityType("Device", None, ())
TYPES: dict[str, EntityType] = {t.name: t for t in (WATER_QUALITY, WATER, TRAFFIC, DEVICE)}

# dataModel.Device's controlledProperty enum, per kind.
CONTROLLED: dict[Kind, tuple[str, ...]] = {
    Kind.RIVER: (
        "waterLevel",
        "waterFlow",
        "precipitation",
        "temperature",
        "pH",
        "turbidity",
        "waterPollution",
    ),
    Kind.ROAD: ("trafficFlow", "speed", "occupancy"),
    Kind.GATE: ("gateOpening", "motion"),
}
# A camera's speed at this level or worse sets ``congested`` (rules/congestion.py: 轻度拥堵).
CONGESTED_FROM = CongestionLevel.LIGHT
_ORDER = list(CongestionLevel)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What InfluxDB says of a device as a whole: its newest message and status."""

    last_ms: int | None  # newest point of any channel
    online: bool | None  # the newest status message's ``online``
    status_ms: int | None


def urn(type_name: str, device_id: str) -> str:
    """``urn:ngsi-ld:WaterQualityObserved:river-zj-0001``."""
    return f"{URN_PREFIX}{type_name}:{device_id}"


def parse_urn(entity_id: str) -> tuple[EntityType, str] | None:
    """(type, device id) of one of our URNs, or None for anything else."""
    if not entity_id.startswith(URN_PREFIX):
        return None
    type_name, sep, device_id = entity_id[len(URN_PREFIX) :].partition(":")
    entity_type = TYPES.get(type_name)
    if not sep or entity_type is None or not device_id:
        return None
    return entity_type, device_id


def serves(entity_type: EntityType, device: AnyDevice) -> bool:
    """Whether ``device`` can be an entity of ``entity_type`` (Device: all; else its kind)."""
    return entity_type.kind is None or entity_type.kind is device.kind


def iso_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and Z, as NGSI-LD writes times."""
    return iso_utc(EPOCH + timedelta(milliseconds=epoch_ms))


def _date_time(epoch_ms: int) -> dict[str, str]:
    """A DateTime value: typed, so that it expands to an ``ngsi-ld:DateTime`` literal."""
    return {"@type": "DateTime", "@value": iso_ms(epoch_ms)}


def prop(
    value: Any, observed_ms: int | None = None, unit_code: str | None = None
) -> dict[str, Any]:
    """A Property in normalized form."""
    out: dict[str, Any] = {"type": "Property", "value": value}
    if observed_ms is not None:
        out["observedAt"] = iso_ms(observed_ms)
    if unit_code is not None:
        out["unitCode"] = unit_code
    return out


def location(device: AnyDevice) -> dict[str, Any]:
    """The GeoProperty: a GeoJSON Point, longitude first."""
    return {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [device.lon, device.lat]},
    }


def relationship(target: str) -> dict[str, str]:
    """A Relationship to another entity."""
    return {"type": "Relationship", "object": target}


def congested(speed_kmh: float, free_flow_kmh: float) -> bool:
    """Whether a camera's mean speed is light congestion or worse (rules/congestion.py)."""
    level = level_of(congestion_index(speed_kmh, free_flow_kmh))
    return _ORDER.index(level) >= _ORDER.index(CONGESTED_FROM)


def observed(
    entity_type: EntityType,
    device: AnyDevice,
    latest: Mapping[str, tuple[float | int, int]],
    free_flow_kmh: float | None = None,
) -> dict[str, Any] | None:
    """The observation entity of ``device`` from its newest values; None without any.

    ``free_flow_kmh`` is the camera's segment's free-flow speed (``congested`` is judged
    against it; the camera's own limit without it).
    """
    assert entity_type is not DEVICE and serves(entity_type, device)
    entity: dict[str, Any] = {"id": urn(entity_type.name, device.id), "type": entity_type.name}
    newest: int | None = None
    for attr in entity_type.attrs:
        if attr.field not in latest:
            continue
        value, ms = latest[attr.field]
        entity[attr.name] = prop(attr.value(value), ms, attr.unit_code)
        newest = ms if newest is None else max(newest, ms)
    if newest is None:
        return None
    entity["dateObserved"] = prop(_date_time(newest))
    if isinstance(device, RoadDevice):
        speed = latest.get("avg_speed_kmh")
        if speed is not None:
            free = free_flow_kmh if free_flow_kmh is not None else device.speed_limit_kmh
            entity["congested"] = prop(congested(float(speed[0]), free), speed[1])
        if device.segment is not None:
            entity["refRoadSegment"] = relationship(urn("RoadSegment", device.segment))
    entity["refDevice"] = relationship(urn(DEVICE.name, device.id))
    entity["location"] = location(device)
    return entity


def device_entity(device: AnyDevice, state: DeviceState) -> dict[str, Any]:
    """The Device entity: the registry's data and what InfluxDB says of it as a whole."""
    entity: dict[str, Any] = {
        "id": urn(DEVICE.name, device.id),
        "type": DEVICE.name,
        "name": prop(device.name),
        "category": prop(["sensor"]),
        "controlledProperty": prop(list(CONTROLLED[device.kind])),
    }
    if state.online is not None:
        entity["deviceState"] = prop("online" if state.online else "offline", state.status_ms)
    if state.last_ms is not None:
        entity["dateLastValueReported"] = prop(_date_time(state.last_ms))
    entity["location"] = location(device)
    return entity


def temporal(
    entity_type: EntityType, device: AnyDevice, attr: Attr, points: list[tuple[int, float | int]]
) -> dict[str, Any]:
    """The temporal representation of one attribute: its instances, oldest first."""
    return {
        "id": urn(entity_type.name, device.id),
        "type": entity_type.name,
        attr.name: [prop(attr.value(value), ms, attr.unit_code) for ms, value in points],
    }


def with_context(entity: dict[str, Any], context_url: str) -> dict[str, Any]:
    """The entity as JSON-LD: our context, then the NGSI-LD core context (last, as required)."""
    return {**entity, "@context": [context_url, CORE_CONTEXT]}
