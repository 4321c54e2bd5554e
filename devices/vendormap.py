"""Vendor JSON mappings: a device model's own JSON read into our payloads (docs/operations.md).

Gates and cameras come from many makers, each with its own JSON. The operator's vendors file
(``config/vendors.yaml``) says, per device model and channel, where each of our fields is in
the vendor's document, how its unit converts, how its words map to ours and where its time is.
``apply`` turns one parsed vendor document into a dict in our payload's shape, which the
payload models (devices/payloads.py) then validate as if the device had sent it.

The language is declarative on purpose: paths, a fixed set of named linear conversions,
``scale``/``offset`` numbers, enum tables and timestamp formats. Nothing in the file is ever
evaluated, so an operator's file can make a message rejected, never make the service run code.
Everything that can be checked without a message is checked at load (target fields exist in
our schema, units agree, defaults and mapped words are values our schema accepts, required
fields are covered, formats and time zones parse), each problem naming file, entry and field.

Why one module (over 400 lines): the file's models, their load-time checks and ``apply`` are
one language; the checks must know every option ``apply`` reads, and stay beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage, schema_for
from devices.problems import FileProblems, Problem, entry_name, problems_from
from devices.registry import Registry
from devices.topics import ID_PATTERN
from devices.units import UNITS


class Conversion(NamedTuple):
    """A linear unit conversion: ``value * scale + offset``, giving a value in ``unit``."""

    scale: float
    offset: float
    unit: str  # as devices/units.py spells our field's unit; checked against the target


# The fixed set an operator may name. Only conversions *into* our units are here: every field
# we store is in the unit its name says (units.UNITS), so e.g. km/h → m/s has no target.
CONVERSIONS: dict[str, Conversion] = {
    "cm_to_m": Conversion(0.01, 0.0, "m"),
    "mm_to_m": Conversion(0.001, 0.0, "m"),
    "cm_to_mm": Conversion(10.0, 0.0, "mm"),
    "ms_to_kmh": Conversion(3.6, 0.0, "km/h"),
    "mph_to_kmh": Conversion(1.609344, 0.0, "km/h"),
    "mv_to_v": Conversion(0.001, 0.0, "V"),
    "percent_from_ratio": Conversion(100.0, 0.0, "%"),
    "f_to_c": Conversion(5 / 9, -32 * 5 / 9, "°C"),
    "k_to_c": Conversion(1.0, -273.15, "°C"),
    "ugl_to_mgl": Conversion(0.001, 0.0, "mg/L"),
    "ls_to_m3s": Conversion(0.001, 0.0, "m³/s"),
}
ConversionName = Literal[
    "cm_to_m",
    "mm_to_m",
    "cm_to_mm",
    "ms_to_kmh",
    "mph_to_kmh",
    "mv_to_v",
    "percent_from_ratio",
    "f_to_c",
    "k_to_c",
    "ugl_to_mgl",
    "ls_to_m3s",
]

# Named timestamp formats; any other value is a strftime format (e.g. "%Y-%m-%d %H:%M:%S").
NAMED_TIME_FORMATS = frozenset({"epoch_s", "epoch_ms", "iso8601"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_TEXT = 64  # longest vendor string read as a number or a time: longer is not one


def enum_key(value: Any) -> str:
    """How an enum table's key, and a vendor value looked up in it, compare: as text.

    YAML reads ``1: open`` with an int key and vendors send ``1`` or ``"1"``; both are "1".
    Booleans are "true"/"false" (not Python's "True"). Anything else has no key.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise ValueError(f"an enum key is a string, an integer or a boolean, not {value!r}")


def _segments_ok(path: str) -> str:
    if not all(path.split(".")):
        raise ValueError("a path is keys and list indexes joined by dots, none empty")
    return path


SourcePath = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_segments_ok)]
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
EnumKey = Annotated[str, BeforeValidator(enum_key)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldRule(_Strict):
    """Where one of our fields is in the vendor's document, and how its value reads."""

    path: SourcePath | None = None  # "data.items.0.v"; none: ``default`` always
    default: Scalar | None = None  # when the path is missing or null
    optional: bool = False  # path missing or null and no default: leave the field out
    type: Literal["number", "integer"] | None = None  # the vendor sends it as text ("12.5")
    convert: ConversionName | None = None
    scale: FiniteFloat | None = None  # after ``convert``: × scale, then + offset
    offset: FiniteFloat | None = None
    map: dict[EnumKey, Scalar] | None = Field(None, min_length=1)  # vendor word → ours

    @model_validator(mode="after")
    def _coherent(self) -> FieldRule:
        if self.path is None and self.default is None:
            raise ValueError("needs a path, a default, or both")
        numeric = (self.type, self.convert, self.scale, self.offset)
        if self.map is not None and any(x is not None for x in numeric):
            raise ValueError("map translates words: it takes no type, convert, scale or offset")
        return self

    @cached_property
    def numeric(self) -> bool:
        """Whether the value is read as a number (and may be converted)."""
        return any(x is not None for x in (self.type, self.convert, self.scale, self.offset))

    @cached_property
    def linear(self) -> tuple[float, float] | None:
        """``convert``, ``scale`` and ``offset`` as one ``value * a + b``, or None if none."""
        if self.convert is None and self.scale is None and self.offset is None:
            return None
        a, b = 1.0, 0.0
        if self.convert is not None:
            a, b = CONVERSIONS[self.convert].scale, CONVERSIONS[self.convert].offset
        if self.scale is not None:
            a, b = a * self.scale, b * self.scale
        return a, b + (self.offset or 0.0)


class TimeRule(_Strict):
    """Where the message's time is and how it is written."""

    path: SourcePath
    format: str = Field(min_length=1, max_length=64)  # epoch_s, epoch_ms, iso8601 or strftime
    tz: str | None = Field(None, max_length=64)  # IANA name for times written without offset

    @model_validator(mode="after")
    def _readable(self) -> TimeRule:
        if self.tz is not None:
            _zone(self.tz)  # raises naming the zone
        if self.format in NAMED_TIME_FORMATS:
            if self.format != "iso8601" and self.tz is not None:
                raise ValueError(f"{self.format} is UTC by definition: it takes no tz")
            return self
        if "%" not in self.format:
            raise ValueError(
                f"format {self.format!r} is neither epoch_s, epoch_ms, iso8601 nor a strftime "
                "format"
            )
        sample = datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC)
        try:
            back = datetime.strptime(sample.strftime(self.format), self.format)
        except ValueError as e:
            raise ValueError(
                f"format {self.format!r} does not read back what it writes: {e}"
            ) from None
        if back.tzinfo is None and self.tz is None:
            raise ValueError(f"format {self.format!r} has no %z: name the time zone in tz")
        return self


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"no time zone {name!r} (an IANA name, e.g. Asia/Shanghai)") from None


class ChannelMap(_Strict):
    """One channel of a model: its time and its fields (target field name → rule)."""

    ts: TimeRule | None = None
    fields: dict[str, FieldRule] = Field(default_factory=dict)


ModelId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]


class VendorModel(_Strict):
    """A device model and how its JSON reads on each channel it maps."""

    id: ModelId  # what a device's ``model:`` in the registry says
    kind: Kind
    vendor: str | None = Field(None, max_length=128)  # who makes it, for people
    channels: dict[Channel, ChannelMap] = Field(min_length=1)


class VendorMapError(FileProblems):
    """A vendors file that cannot be used; ``problems`` lists everything found."""

    what = "the vendors file"


class VendorMaps:
    """The mapped models by id; a model not here (or a device without one) speaks our JSON."""

    def __init__(self, models: Iterable[VendorModel] = ()) -> None:
        self.models: dict[str, VendorModel] = {m.id: m for m in models}

    def __len__(self) -> int:
        return len(self.models)


class MappingError(ValueError):
    """A vendor document that the mapping cannot read; ``str()`` names the field and path."""


_MISSING: Any = object()


@lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[tuple[str, int | None], ...]:
    """Each key of a dotted path, with its list index when it is all digits."""
    # isascii: "²".isdigit() is True, and int("²") raises
    return tuple((s, int(s) if s.isascii() and s.isdigit() else None) for s in path.split("."))


def lookup(document: Any, path: str) -> Any:
    """The value at ``path`` in ``document``, or ``_MISSING``; a JSON null counts as missing."""
    current = document
    for key, index in _steps(path):
        if isinstance(current, dict):
            current = current.get(key, _MISSING)
        elif isinstance(current, list) and index is not None and index < len(current):
            current = current[index]
        else:
            return _MISSING
        if current is _MISSING or current is None:
            return _MISSING
    return current


def _as_number(value: Any, wanted: str | None) -> int | float:
    if isinstance(value, bool):
        raise MappingError(f"{value!r} is not a number")
    if isinstance(value, str) and wanted is not None and len(value) <= _MAX_TEXT:
        try:
            return int(value) if wanted == "integer" else float(value)
        except ValueError:
            raise MappingError(f"{value[:_MAX_TEXT]!r} is not a {wanted}") from None
    if isinstance(value, int | float):
        return value
    raise MappingError(f"{str(value)[:_MAX_TEXT]!r} is not a number")


def _read_field(target: str, rule: FieldRule, document: Any) -> Any:
    """Our value for ``target``, or ``_MISSING`` to leave it out; MappingError if unreadable."""
    value = _MISSING if rule.path is None else lookup(document, rule.path)
    if value is _MISSING:
        if rule.default is not None:
            return rule.default
        if rule.optional:
            return _MISSING
        raise MappingError(f"{target} ← {rule.path}: not in the message")
    try:
        if rule.map is not None:
            try:
                return rule.map[enum_key(value)]
            except (KeyError, ValueError):
                raise MappingError(f"{str(value)[:_MAX_TEXT]!r} is not in the map") from None
        if not rule.numeric:
            return value
        number: int | float = _as_number(value, rule.type)
        if rule.linear is not None:
            a, b = rule.linear
            number = number * a + b
        if rule.type == "integer" and isinstance(number, float) and number.is_integer():
            return int(number)  # a count scaled by a whole number stays a count
        return number
    except MappingError as e:
        raise MappingError(f"{target} ← {rule.path}: {e}") from None
    except OverflowError:  # an integer too large for a float: no physical reading
        raise MappingError(f"{target} ← {rule.path}: number out of range") from None


def read_time(rule: TimeRule, value: Any) -> int:
    """Epoch milliseconds of a vendor time ``value`` written as ``rule`` says."""
    try:
        if rule.format in ("epoch_s", "epoch_ms"):
            number = _as_number(value, "number" if isinstance(value, str) else None)
            if isinstance(number, float) and not math.isfinite(number):
                raise MappingError("not a finite number")
            factor = 1000 if rule.format == "epoch_s" else 1
            return number * factor if isinstance(number, int) else round(number * factor)
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            raise MappingError(f"{str(value)[:_MAX_TEXT]!r} is not a time text")
        if rule.format == "iso8601":
            parsed = datetime.fromisoformat(value)
        else:
            parsed = datetime.strptime(value, rule.format)
        if parsed.tzinfo is None:
            if rule.tz is None:
                raise MappingError(f"{value!r} has no UTC offset and the mapping names no tz")
            parsed = parsed.replace(tzinfo=_zone(rule.tz))
        return (parsed - _EPOCH) // _MS
    except MappingError:
        raise
    except (ValueError, OverflowError, OSError):
        raise MappingError(f"{str(value)[:_MAX_TEXT]!r} is not {rule.format}") from None


def apply(mapping: ChannelMap, document: Any) -> dict[str, Any]:
    """Our payload's fields read from the vendor's parsed ``document``.

    Raises MappingError (only that) naming the field and path that could not be read; the
    result is validated by our payload model afterwards, like any device's JSON.
    """
    out: dict[str, Any] = {}
    if mapping.ts is not None:
        value = lookup(document, mapping.ts.path)
        if value is _MISSING:
            raise MappingError(f"ts ← {mapping.ts.path}: not in the message")
        try:
            out["ts"] = read_time(mapping.ts, value)
        except MappingError as e:
            raise MappingError(f"ts ← {mapping.ts.path}: {e}") from None
    for target, rule in mapping.fields.items():
        value = _read_field(target, rule, document)
        if value is not _MISSING:
            out[target] = value
    return out


# --- the file: loading and the checks that need our schemas -------------------------------


@lru_cache(maxsize=256)
def _adapter(schema: type[DeviceMessage], target: str) -> TypeAdapter[Any]:
    """Validates one field of ours alone, as strictly as the payload models do."""
    annotation: Any = schema.model_fields[target].annotation
    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))


def _check_channel(
    file: str, entry: str, model: VendorModel, channel: Channel, problems: list[Problem]
) -> None:
    where = f"channels.{channel.value}"
    schema = schema_for(model.kind, channel)
    mapping = model.channels[channel]
    if schema is None:
        problems.append(Problem(file, entry, where, f"a {model.kind} device has no {channel}"))
        return
    ours = schema.model_fields
    for name, field in ours.items():
        covered = mapping.ts is not None if name == "ts" else name in mapping.fields
        if field.is_required() and not covered:
            say = "ts" if name == "ts" else f"fields.{name}"
            problems.append(Problem(file, entry, f"{where}.{say}", "required by our payload"))
    for target, rule in mapping.fields.items():
        at = f"{where}.fields.{target}"
        if target == "ts":
            problems.append(Problem(file, entry, at, "the time goes in the channel's ts:"))
            continue
        info = ours.get(target)
        if info is None:
            known = ", ".join(n for n in ours if n != "ts")
            problems.append(Problem(file, entry, at, f"not a field of ours (one of {known})"))
            continue
        unit = UNITS.get(target)
        if rule.numeric and unit is None and target != "seq":
            problems.append(Problem(file, entry, at, "not a number field: no type or units"))
        if rule.convert is not None and CONVERSIONS[rule.convert].unit != unit:
            got = CONVERSIONS[rule.convert].unit
            problems.append(
                Problem(file, entry, f"{at}.convert", f"gives {got}, {target} is in {unit}")
            )
        if target == "plate" and rule.path is not None and not _says_plate(rule.path):
            # Dead letters keep rejected payloads with every member whose key says "plate"
            # hashed (ingest/intake/plates.py); a plate under another key would be kept clear.
            problems.append(
                Problem(file, entry, f"{at}.path", "a plate's key must contain 'plate'")
            )
        adapter = _adapter(schema, target)
        values = [("default", rule.default)] if rule.default is not None else []
        values += [(f"map.{k}", v) for k, v in (rule.map or {}).items()]
        for name, value in values:
            try:
                adapter.validate_python(value)
            except ValidationError as e:
                message = e.errors(include_url=False)[0]["msg"]
                problems.append(Problem(file, entry, f"{at}.{name}", f"{value!r}: {message}"))


def _says_plate(path: str) -> bool:
    return "plate" in path.rsplit(".", 1)[-1].casefold()


def parse_vendor_maps(data: Any, file: str = "<vendors>") -> VendorMaps:
    """Build VendorMaps from parsed YAML; raise VendorMapError listing every problem."""
    if data is None:
        return VendorMaps()  # an empty file: no model is mapped
    if not isinstance(data, dict):
        raise VendorMapError([Problem(file, "(top)", "(file)", "must be a mapping")])
    problems = [Problem(file, "(top)", str(k), "unknown section") for k in set(data) - {"models"}]
    raw = data.get("models", [])
    if not isinstance(raw, list):
        raise VendorMapError([*problems, Problem(file, "models", "(section)", "must be a list")])
    models: list[VendorModel] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        entry = entry_name("models", i, item)
        try:
            model = VendorModel.model_validate(item)
        except ValidationError as e:
            problems.extend(problems_from(file, entry, e, (), "(entry)"))
            continue
        if model.id in seen:
            problems.append(Problem(file, entry, "id", "duplicate model id"))
        seen.add(model.id)
        for channel in model.channels:
            _check_channel(file, entry, model, channel, problems)
        models.append(model)
    if problems:
        raise VendorMapError(problems)
    return VendorMaps(models)


def load_vendor_maps(path: Path) -> VendorMaps:
    """Load and check a vendors YAML file; a missing file maps no model."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return VendorMaps()
    except OSError as e:
        problem = Problem(str(path), "(file)", "(read)", e.strerror or str(e))
        raise VendorMapError([problem]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise VendorMapError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    return parse_vendor_maps(data, str(path))


def check_devices(maps: VendorMaps, registry: Registry, file: str) -> None:
    """Raise VendorMapError for every device its model's mapping would misread: a model the
    file maps for another kind, or a station whose gateway (``protocol``) publishes our JSON."""
    index = {model_id: i for i, model_id in enumerate(maps.models)}
    problems: list[Problem] = []
    for device in registry.devices.values():
        model = maps.models.get(device.model) if device.model is not None else None
        if model is None:
            continue
        entry = f"models[{index[model.id]}] (id={model.id})"
        if model.kind is not device.kind:
            problems.append(
                Problem(
                    file,
                    entry,
                    "kind",
                    f"a {model.kind} model, but device {device.id} of that model is a "
                    f"{device.kind}",
                )
            )
        protocol = getattr(device, "protocol", None)
        if protocol is not None and Channel.TELEMETRY in model.channels:
            problems.append(
                Problem(
                    file,
                    entry,
                    "channels.telemetry",
                    f"device {device.id} reports through the {protocol} gateway, which "
                    "publishes our JSON: the mapping would misread it",
                )
            )
    if problems:
        raise VendorMapError(problems)
