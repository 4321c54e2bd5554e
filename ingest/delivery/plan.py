"""What the delivery loop needs of the channels' config (ingest/channels/config.py), as one
plain value: each endpoint's type, rate and platform, each recipient's endpoints, which channel
types each severity goes to, the quiet hours, and when an undelivered critical alert escalates.

Recipients are ``person/{username}`` (a person's ``endpoints`` and ``sms`` gateway, with
their phone) and audience keys with endpoints of their own: a department unit
``department/{id}/{area}`` (its own entry and its department's). ``plan_of`` builds it from
the config; tests build it with platforms of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from devices.registry import Registry
from ingest.channels import Platform
from ingest.channels.config import ChannelsConfig, platform_of

ESCALATE_UNDELIVERED_AFTER_S = 600.0  # a critical alert nobody was reached for: 10 min
NEVER_WAITS = "critical"  # quiet hours hold every other severity until they end


class Quiet(Protocol):
    """Quiet hours (ingest/channels/config.py ``QuietHours``)."""

    def quiet(self, now_ms: int) -> bool: ...

    def ends_at(self, now_ms: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured endpoint: its platform type, its rate, and its platform for a phone
    (an SMS gateway texts the recipient's phone; the others ignore it)."""

    type: str
    rate_per_minute: int
    make: Callable[[str | None], Platform]


@dataclass(frozen=True)
class ChannelPlan:
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    recipients: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    phones: Mapping[str, str] = field(default_factory=dict)  # recipient → phone (SMS)
    severities: Mapping[str, frozenset[str]] = field(default_factory=dict)
    quiet: Quiet | None = None
    escalate_undelivered_after_s: float = ESCALATE_UNDELIVERED_AFTER_S
    _made: dict[tuple[str, str | None], Platform] = field(default_factory=dict, repr=False)

    def has_own(self, key: str) -> bool:
        """Whether the audience key ``key`` has endpoints of its own (a department unit)."""
        return bool(self.recipients.get(key))

    def endpoints_for(self, recipient: str, severity: str) -> list[str]:
        """The endpoints ``recipient`` is told a ``severity`` message on, each once."""
        types = self.severities.get(severity, frozenset())
        return [
            e
            for e in dict.fromkeys(self.recipients.get(recipient, ()))
            if e in self.endpoints and self.endpoints[e].type in types
        ]

    def not_before(self, severity: str, now_ms: int) -> int:
        """When a message of ``severity`` made now may go: the end of the quiet hours for all
        but critical ones."""
        if self.quiet is None or severity == NEVER_WAITS:
            return now_ms
        return self.quiet.ends_at(now_ms)

    def platform(self, endpoint: str, recipient: str) -> Platform | None:
        """The platform that tells ``recipient`` on ``endpoint``; None if it is gone from the
        config (or an SMS gateway has no phone for them)."""
        found = self.endpoints.get(endpoint)
        if found is None:
            return None
        phone = self.phones.get(recipient) if found.type == "sms" else None
        if found.type == "sms" and phone is None:
            return None
        key = (endpoint, phone)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = found.make(phone)
        return made


def _endpoint(config: Any) -> Endpoint:
    return Endpoint(
        type=str(config.type),
        rate_per_minute=int(config.rate_per_minute),
        make=lambda phone: platform_of(config, phone),
    )


def plan_of(config: ChannelsConfig, people: Iterable[Any], registry: Registry) -> ChannelPlan:
    """The plan of a channels config; ``people``: the people file's (for their phones)."""
    people = list(people)
    phones = {f"person/{p.username}": p.phone for p in people if p.phone}
    recipients: dict[str, tuple[str, ...]] = {}
    for username, channels in config.people.items():
        key = f"person/{username}"
        recipients[key] = (*channels.endpoints, *([channels.sms] if channels.sms else ()))
        if channels.phone:
            phones[key] = channels.phone
    for key, ids in config.departments.items():
        unit = key if key.startswith("department/") else None
        if unit is not None:
            recipients[unit] = (*recipients.get(unit, ()), *ids)
    for key, ids in config.departments.items():  # a department's own list: each unit's
        if not key.startswith("department/"):
            for unit in _units(key, registry):
                recipients[unit] = (*recipients.get(unit, ()), *ids)
    return ChannelPlan(
        endpoints={i: _endpoint(e) for i, e in config.endpoints.items()},
        recipients={k: tuple(dict.fromkeys(v)) for k, v in recipients.items()},
        phones=phones,
        severities={
            s: frozenset(config.severities.of(s)) for s in ("critical", "major", "warning", "info")
        },
        quiet=config.quiet_hours,
        escalate_undelivered_after_s=config.escalate_undelivered_after / 1000,
    )


def _units(department: str, registry: Registry) -> list[str]:
    """The audience keys of ``department``'s units (one per area it has a unit in)."""
    found = registry.departments.get(department)
    return [] if found is None else [f"department/{department}/{a}" for a in found.areas]
