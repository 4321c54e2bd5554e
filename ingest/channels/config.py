"""The channels file (``config/channels.yaml``, ``CITYSENSE_CHANNELS``): where notices go.

- ``endpoints``: named endpoints, id → one platform's config (``type``: wecom, dingtalk,
  feishu, sms, webhook; the fields of that platform's module). Secrets may be written
  ``env:NAME`` to read them from the environment when the file is loaded.
- ``people``: username (of the people file) → ``endpoints`` (robot or webhook ids) and/or
  ``sms`` (a gateway id) with ``phone`` (default: their phone in the people file).
- ``departments``: a department id (all its units) or ``department/{id}/{area}`` (one unit)
  → endpoint ids.
- ``severities``: which channel types each severity goes to (default: critical → all;
  major → robots and webhook; warning and info → robots only).
- ``quiet_hours``: ``start``, ``end`` (HH:MM), ``tz``; non-critical notices wait for its end
  (default 22:00–07:00 Asia/Shanghai). Critical ones never wait.
- ``escalate_undelivered_after``: a critical notice not delivered this long after it was
  raised escalates (default 10m).
- ``push``: neighbouring cities told of selected stations (a river crossing the boundary):
  ``id``, ``name``, ``endpoint`` (a webhook's id), ``stations`` (device ids of the registry),
  ``alerts`` (every alert change of those stations, whatever its severity, quiet hours or
  not) and ``observations_every`` (a batch of their newest values at that period, e.g. 5m;
  null: none). Delivered by ``ingest/delivery/`` (``dispatch.py``, ``push.py``).

Read strictly like every operator file (unknown keys are problems), checked against the
people file and the registry; every problem names the file, the entry and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices.problems import FileProblems, Problem
from devices.registry import Registry
from ingest.channels import Platform
from ingest.channels.common import Phone
from ingest.channels.dingtalk import Dingtalk, DingtalkConfig
from ingest.channels.feishu import Feishu, FeishuConfig
from ingest.channels.sms import Sms, SmsConfig
from ingest.channels.webhook import Webhook, WebhookConfig
from ingest.channels.wecom import Wecom, WecomConfig
from ingest.people import Person
from rules.durations import Duration

ChannelType = Literal["wecom", "dingtalk", "feishu", "sms", "webhook"]
TYPES: tuple[ChannelType, ...] = ("wecom", "dingtalk", "feishu", "sms", "webhook")
ROBOTS: tuple[ChannelType, ...] = ("wecom", "dingtalk", "feishu")
EndpointId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
PushId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$")]  # deliveries.subject_id
MIN_PUSH_EVERY_MS = 1_000
EndpointConfig = Annotated[
    WecomConfig | DingtalkConfig | FeishuConfig | SmsConfig | WebhookConfig,
    Field(discriminator="type"),
]
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonChannels(_Strict):
    """How one person is reached besides their posts' robots."""

    endpoints: tuple[EndpointId, ...] = ()
    sms: EndpointId | None = None  # an sms gateway's id
    phone: Phone | None = None  # default: the people file's


class SeverityChannels(_Strict):
    """Which channel types each severity goes to."""

    critical: tuple[ChannelType, ...] = TYPES
    major: tuple[ChannelType, ...] = (*ROBOTS, "webhook")
    warning: tuple[ChannelType, ...] = ROBOTS
    info: tuple[ChannelType, ...] = ROBOTS

    def of(self, severity: str) -> tuple[ChannelType, ...]:
        """The channel types of ``severity`` (an unknown one: the robots)."""
        by_name = {
            "critical": self.critical,
            "major": self.major,
            "warning": self.warning,
            "info": self.info,
        }
        return by_name.get(severity, ROBOTS)


class QuietHours(_Strict):
    """Hours when non-critical notices wait; ``start`` after ``end`` spans midnight, ``start``
    equal to ``end`` means none."""

    start: str = Field("22:00", pattern=_HHMM)
    end: str = Field("07:00", pattern=_HHMM)
    tz: str = "Asia/Shanghai"

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone such as Asia/Shanghai") from None
        return value

    def _local(self, now_ms: int) -> datetime:
        return datetime.fromtimestamp(now_ms / 1000, ZoneInfo(self.tz))

    def _bounds(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)

    def quiet(self, now_ms: int) -> bool:
        """Whether ``now_ms`` falls in the quiet hours (start included, end not)."""
        start, end = self._bounds()
        now = self._local(now_ms).time()
        if start == end:
            return False
        if start < end:
            return start <= now < end
        return now >= start or now < end

    def ends_at(self, now_ms: int) -> int:
        """When the quiet hours ``now_ms`` falls in end (ms); ``now_ms`` if not quiet."""
        if not self.quiet(now_ms):
            return now_ms
        local = self._local(now_ms)
        _, end = self._bounds()
        day = local.date() if local.time() < end else local.date() + timedelta(days=1)
        wall = datetime.combine(day, end, tzinfo=ZoneInfo(self.tz))
        return int(wall.timestamp() * 1000)


class Push(_Strict):
    """A neighbouring city told of selected stations on a signed webhook."""

    id: PushId
    name: str = Field(min_length=1, max_length=64)
    endpoint: EndpointId  # a webhook's id
    stations: tuple[str, ...] = Field(min_length=1, max_length=200)  # device ids
    alerts: bool = True  # every alert change of those stations
    observations_every: Duration | None = None  # a batch of their newest values this often

    @field_validator("observations_every")
    @classmethod
    def _period(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_PUSH_EVERY_MS:
            raise ValueError("at least 1s")
        return value


class ChannelsConfig(_Strict):
    """What ``config/channels.yaml`` holds."""

    endpoints: dict[EndpointId, EndpointConfig] = Field(default_factory=dict)
    people: dict[str, PersonChannels] = Field(default_factory=dict)
    departments: dict[str, tuple[EndpointId, ...]] = Field(default_factory=dict)
    severities: SeverityChannels = SeverityChannels()
    quiet_hours: QuietHours = QuietHours()
    escalate_undelivered_after: Duration = 600_000
    push: tuple[Push, ...] = ()


class ChannelsError(FileProblems):
    """A channels file that cannot be used; ``problems`` lists everything found."""

    what = "the channels file"


def platform_of(endpoint: EndpointConfig, phone: str | None = None) -> Platform:
    """The platform that sends through ``endpoint`` (an SMS gateway: to ``phone``)."""
    if isinstance(endpoint, WecomConfig):
        return Wecom(endpoint)
    if isinstance(endpoint, DingtalkConfig):
        return Dingtalk(endpoint)
    if isinstance(endpoint, FeishuConfig):
        return Feishu(endpoint)
    if isinstance(endpoint, WebhookConfig):
        return Webhook(endpoint)
    if phone is None:
        raise ValueError("an sms gateway sends to a phone: give one")
    return Sms(endpoint, phone)


_SECTIONS = ("endpoints", "people", "departments")


def _push_entry(data: dict[str, Any], index: str) -> str:
    """``push.{id}`` of the push at ``index`` where it has an id, else ``push.{index}``."""
    pushes = data.get("push")
    if isinstance(pushes, list) and index.isdigit() and int(index) < len(pushes):
        found = pushes[int(index)]
        if isinstance(found, dict) and isinstance(found.get("id"), str):
            return f"push.{found['id']}"
    return f"push.{index}"


def _problem(file: str, error: Any, data: dict[str, Any] | None = None) -> Problem:
    loc = [str(p) for p in error["loc"]]
    if len(loc) >= 2 and loc[0] == "push":
        return Problem(
            file, _push_entry(data or {}, loc[1]), ".".join(loc[2:]) or "(entry)", error["msg"]
        )
    if len(loc) >= 2 and loc[0] in _SECTIONS:
        rest = loc[2:]
        if loc[0] == "endpoints" and rest and rest[0] in TYPES:
            rest = rest[1:]  # the tag pydantic puts first in a discriminated union's location
        return Problem(file, f"{loc[0]}.{loc[1]}", ".".join(rest) or "(entry)", error["msg"])
    return Problem(file, "(top)", ".".join(loc) or "(file)", error["msg"])


def _check_ids(
    file: str, entry: str, field: str, ids: Iterable[str], config: ChannelsConfig
) -> list[Problem]:
    problems = []
    for j, ident in enumerate(ids):
        endpoint = config.endpoints.get(ident)
        if endpoint is None:
            problems.append(Problem(file, entry, f"{field}.{j}", f"no endpoint {ident!r}"))
        elif isinstance(endpoint, SmsConfig):
            why = f"{ident} is an sms gateway: it goes under a person's sms, with their phone"
            problems.append(Problem(file, entry, f"{field}.{j}", why))
    return problems


def _check_department(file: str, key: str, registry: Registry) -> list[Problem]:
    entry = f"departments.{key}"
    parts = key.split("/")
    if len(parts) == 1:
        if key not in registry.departments:
            return [Problem(file, entry, "(key)", f"no department {key!r}")]
        return []
    if len(parts) != 3 or parts[0] != "department":
        why = "a department id, or department/{id}/{area}"
        return [Problem(file, entry, "(key)", f"{key!r} is not {why}")]
    dept = registry.departments.get(parts[1])
    if dept is None:
        return [Problem(file, entry, "(key)", f"no department {parts[1]!r}")]
    if parts[2] not in dept.areas:
        return [Problem(file, entry, "(key)", f"{dept.id} has no unit in {parts[2]!r}")]
    return []


def _check_pushes(file: str, config: ChannelsConfig, registry: Registry) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for push in config.push:
        entry = f"push.{push.id}"
        if push.id in seen:
            problems.append(Problem(file, entry, "id", f"a second push {push.id!r}"))
        seen.add(push.id)
        endpoint = config.endpoints.get(push.endpoint)
        if endpoint is None:
            problems.append(Problem(file, entry, "endpoint", f"no endpoint {push.endpoint!r}"))
        elif not isinstance(endpoint, WebhookConfig):
            why = f"{push.endpoint} is a {endpoint.type} endpoint, not a webhook"
            problems.append(Problem(file, entry, "endpoint", why))
        for j, station in enumerate(push.stations):
            if station not in registry.devices:
                problems.append(Problem(file, entry, f"stations.{j}", f"no device {station!r}"))
        if not push.alerts and push.observations_every is None:
            why = "pushes nothing: alerts is false and observations_every is null"
            problems.append(Problem(file, entry, "(entry)", why))
    return problems


def check_channels(
    config: ChannelsConfig, people: Iterable[Person], registry: Registry, file: str
) -> list[Problem]:
    """What is wrong with ``config`` against the people file and the registry."""
    by_name = {p.username: p for p in people}
    problems: list[Problem] = []
    for username, channels in config.people.items():
        entry = f"people.{username}"
        person = by_name.get(username)
        if person is None:
            problems.append(Problem(file, entry, "(key)", f"no person {username!r}"))
        problems += _check_ids(file, entry, "endpoints", channels.endpoints, config)
        if channels.sms is not None:
            gateway = config.endpoints.get(channels.sms)
            if gateway is None:
                problems.append(Problem(file, entry, "sms", f"no endpoint {channels.sms!r}"))
            elif not isinstance(gateway, SmsConfig):
                why = f"{channels.sms} is a {gateway.type} endpoint, not an sms gateway"
                problems.append(Problem(file, entry, "sms", why))
            if channels.phone is None and person is not None and person.phone is None:
                why = "no phone here or in the people file"
                problems.append(Problem(file, entry, "phone", why))
        elif channels.phone is not None:
            problems.append(Problem(file, entry, "phone", "a phone without an sms gateway"))
        if not channels.endpoints and channels.sms is None:
            problems.append(Problem(file, entry, "(entry)", "no endpoints and no sms"))
    for key, ids in config.departments.items():
        problems += _check_department(file, key, registry)
        problems += _check_ids(file, f"departments.{key}", "(list)", ids, config)
    problems += _check_pushes(file, config, registry)
    return problems


def parse_channels(
    data: Any, people: Iterable[Person], registry: Registry, file: str = "<channels>"
) -> ChannelsConfig:
    """Build the config from parsed YAML; ChannelsError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ChannelsError([Problem(file, "(top)", "(file)", "must be a mapping")])
    try:
        config = ChannelsConfig.model_validate(data)
    except ValidationError as e:
        found = [_problem(file, err, data) for err in e.errors(include_url=False)]
        raise ChannelsError(found) from None
    problems = check_channels(config, people, registry, file)
    if problems:
        raise ChannelsError(problems)
    return config


def load_channels(path: Path, people: Iterable[Person], registry: Registry) -> ChannelsConfig:
    """Load and check a channels YAML file; a missing file is an empty one (no channels)."""
    if not path.exists():
        return ChannelsConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ChannelsError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except UnicodeDecodeError as e:
        raise ChannelsError([Problem(str(path), "(file)", "(read)", f"not UTF-8: {e}")]) from None
    except OSError as e:
        raise ChannelsError(
            [Problem(str(path), "(file)", "(read)", e.strerror or str(e))]
        ) from None
    return parse_channels(data, people, registry, str(path))
