"""The sharing rules at the API (docs/security.md "Sharing with departments"): what a
``department`` token is, and the one check each read endpoint calls before it reads.

A department token reaches only ``GET /series``, ``/events``, ``/events/stats``, ``/alerts``,
``/alerts/{id}``, ``/devices``, ``/devices/{id}`` (and ``/audit``, which refuses it by name);
anything else answers 403 ``not_shared``. On those, ``scope`` asks the decision
(ingest/sharing/decide.py) for the data set: the caller comes back narrowed to the areas the
set is shared in, with the fields that may leave, or the request is refused with the decision's
code. Every request of a department token is audited (ingest/api/audit.py); what the endpoint
read (data set, rows) is left on ``request.state`` for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import Request
from pydantic import BaseModel

from devices.kinds import Channel, Kind
from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice
from ingest.alerts.store import store_url
from ingest.api.context import ApiContext
from ingest.api.errors import ApiError
from ingest.api.tokens import Principal, Role
from ingest.sharing.audit import AuditLog
from ingest.sharing.config import DataSet, SharingFile, events_set, known_fields, telemetry_set
from ingest.sharing.decide import Refused, Share, decide, narrow
from rules.alerts import Alert

SHANGHAI = ZoneInfo("Asia/Shanghai")  # a grant's ``expires`` is a local date
# (method, route) a department token may call; the routes check the data set themselves.
DEPARTMENT_ROUTES = frozenset(
    {
        "/series",
        "/events",
        "/events/stats",
        "/alerts",
        "/alerts/{alert_id}",
        "/devices",
        "/devices/{device_id}",
        "/audit",
    }
)
_R = TypeVar("_R", bound=BaseModel)
_lock = threading.Lock()  # making an app's SharingState (reads a small file)


class SharingState:
    """One app's sharing file and audit log, made on first use."""

    def __init__(self, ctx: ApiContext) -> None:
        self.file = SharingFile(ctx.settings.sharing, ctx.registry)
        secret = ctx.settings.database_url
        self._url = store_url(secret.get_secret_value() if secret else None, ctx.settings.data_dir)
        self._audit: AuditLog | None = None
        self._audit_lock = threading.Lock()  # apart: opening a database may take a while

    def audit(self) -> AuditLog:
        """The audit table (opened, and created if missing, on first use: call in a thread)."""
        with self._audit_lock:
            if self._audit is None:
                self._audit = AuditLog(self._url)
            return self._audit


def sharing_state(request: Request) -> SharingState:
    """The app's SharingState."""
    state = request.app.state
    with _lock:
        found: SharingState | None = getattr(state, "sharing", None)
        if found is None:
            found = state.sharing = SharingState(state.ctx)
    return found


def _path_of(registry: Registry) -> Callable[[str], list[str]]:
    return lambda area: [a.id for a in registry.path_of(area).areas]


def _refuse(request: Request, status: int, code: str, message: str) -> ApiError:
    request.state.audit_code = code
    return ApiError(status, code, message)


def as_department(request: Request, ctx: ApiContext, token: Principal) -> Principal:
    """A department token seen through the registry: its department's areas (narrowed by the
    token's own), and only on the routes that apply the sharing rules (403 elsewhere)."""
    request.state.principal = token  # audited even when refused here
    route = getattr(request.scope.get("route"), "path", None)
    if request.method != "GET" or route not in DEPARTMENT_ROUTES:
        raise _refuse(
            request,
            403,
            "not_shared",
            "a department token reads only the shared data sets: GET /series, /events, "
            "/alerts, /devices",
        )
    department = ctx.registry.departments.get(token.department or "")
    if department is None:
        raise ApiError(
            401,
            "unauthorized",
            f"the token stands for department {token.department}, not in the registry",
            headers={"WWW-Authenticate": "Bearer"},
        )
    areas = frozenset(department.areas)
    if token.areas:
        areas = narrow(areas, token.areas, _path_of(ctx.registry))
    return replace(token, areas=areas, area_wide=True, audiences=frozenset())


def _today() -> date:
    return datetime.now(SHANGHAI).date()


def _decide(
    request: Request, principal: Principal, data_set: DataSet, requested: Any = None
) -> Share:
    """The decision for one data set; Refused, or 503 when the sharing file is unusable."""
    state = sharing_state(request)
    rules = state.file.current()
    if rules is None:
        raise _refuse(
            request, 503, "sharing_unavailable", f"nothing is shared now: {state.file.problem}"
        )
    registry = state.file.registry
    return decide(
        rules,
        principal.department or "",
        principal.areas,
        data_set,
        _today(),
        _path_of(registry),
        requested,
    )


@dataclass(frozen=True, slots=True)
class Scoped:
    """A caller as one data set is shared with it."""

    principal: Principal  # a department's: narrowed to the set's areas
    share: Share | None = None  # None: not a department, nothing withheld

    def strip(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` without the set's fields that are not shared."""
        if self.share is None or self.share.fields is None:
            return dict(values)
        withheld = known_fields(self.share.data_set) - self.share.fields
        return {k: v for k, v in values.items() if k not in withheld}

    def keeps(self, alert: Alert) -> bool:
        """Whether an alert is in the shared alerts (its device's kind and areas)."""
        if self.share is None:
            return True
        kinds = self.share.kinds
        return (kinds is None or alert.kind in kinds) and self.principal.sees(alert.areas.values())


def scope(request: Request, principal: Principal, data_set: str, requested: Any = None) -> Scoped:
    """The one check: ``principal`` as ``data_set`` is shared with it (``requested``: fields it
    names, each must be shared). Anyone but a department passes unchanged; a department is
    refused 403 with the decision's code (``not_shared``, ``no_grant``, ``grant_expired``,
    ``field_withheld``)."""
    if principal.role is not Role.DEPARTMENT:
        return Scoped(principal)
    request.state.audit_set = data_set
    try:
        share = _decide(request, principal, DataSet(data_set), requested)
    except Refused as e:
        raise _refuse(request, 403, e.code, e.message) from None
    return Scoped(replace(principal, areas=share.areas), share)


def counted(request: Request, rows: int) -> None:
    """How many rows the answer holds, for the audit."""
    request.state.audit_rows = rows


def _quiet(request: Request, principal: Principal, data_set: DataSet | None) -> Scoped | None:
    """The set's scope, or None where it is not shared (no refusal: a listing leaves it out)."""
    if data_set is None:
        return None
    try:
        return Scoped(
            replace(principal, areas=(s := _decide(request, principal, data_set)).areas), s
        )
    except Refused:
        return None


AnyDevice = GateDevice | RiverDevice | RoadDevice


def device_filter(request: Request, principal: Principal) -> Callable[[AnyDevice], bool]:
    """Which devices a caller may list: for a department, those of a kind with a data set shared
    with it (telemetry or events), inside that set's areas; anyone else, every one."""
    if principal.role is not Role.DEPARTMENT:
        return lambda _device: True
    request.state.audit_set = "devices"
    registry = sharing_state(request).file.registry
    by_kind: dict[Kind, list[Scoped]] = {}
    for kind in Kind:
        for ds in (telemetry_set(kind), events_set(kind)):
            if (s := _quiet(request, principal, ds)) is not None:
                by_kind.setdefault(kind, []).append(s)

    def shared(device: AnyDevice) -> bool:
        path = [a.id for a in registry.device_path(device.id).areas]
        return any(s.principal.sees(path) for s in by_kind.get(device.kind, ()))

    return shared


def readings(
    request: Request, principal: Principal, device: AnyDevice, last: dict[str, _R]
) -> dict[str, _R]:
    """A device's newest readings (``values``, ``units`` per channel) as shared: a department
    gets its telemetry and events only where those sets are shared, without withheld fields,
    and no status."""
    if principal.role is not Role.DEPARTMENT:
        return last
    path = [a.id for a in sharing_state(request).file.registry.device_path(device.id).areas]
    sets = {
        Channel.TELEMETRY.value: telemetry_set(device.kind),
        Channel.EVENT.value: events_set(device.kind),
    }
    out: dict[str, _R] = {}
    for channel, reading in last.items():
        s = _quiet(request, principal, sets.get(channel))
        if s is None or not s.principal.sees(path):
            continue
        values = s.strip(getattr(reading, "values"))  # noqa: B009  # any model with values
        units = {k: u for k, u in getattr(reading, "units").items() if k in values}  # noqa: B009
        out[channel] = reading.model_copy(update={"values": values, "units": units})
    return out


def alert_filter(request: Request, principal: Principal) -> Callable[[Alert], bool]:
    """Which of a device's alerts a caller sees beside its own checks: for a department, those
    of the shared alerts (none if the alerts set is not shared with it)."""
    if principal.role is not Role.DEPARTMENT:
        return lambda _alert: True
    s = _quiet(request, principal, DataSet.ALERTS)
    return s.keeps if s is not None else (lambda _alert: False)
