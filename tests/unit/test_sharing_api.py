"""A department token at the API (ingest/api/sharing.py, ingest/api/audit.py) without InfluxDB:
only the shared reads are reachable, the decision's refusals come before any query, the devices
and alerts it lists are those of shared sets in its areas, every request is audited (and a read
that cannot be audited is not answered), and only operators read the audit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from sqlalchemy.exc import OperationalError

from devices.kinds import Kind
from devices.registry import Registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenEntry, TokenStore
from ingest.ops.processes import free_port
from ingest.settings import Settings
from ingest.sharing.audit import AuditLog
from ingest.sinks.deadletters import DeadLetterStore
from rules.alerts import Severity
from rules.loader import parse_rules

SHARING: dict[str, Any] = {
    "data_sets": {
        "river": {"class": "unconditional"},
        "road": {"class": "unconditional", "fields": ["vehicle_count"]},
        "gate": {"class": "conditional"},
        "gate_events": {"class": "not_shared"},
        "road_events": {"class": "conditional"},
        "alerts": {"class": "conditional", "kinds": ["river"]},
    },
    "grants": [
        {
            "id": "g-alerts",
            "department": "ecology_env",
            "data_sets": ["alerts"],
            "areas": ["430502"],
            "approved_by": "数据局",
            "expires": "2099-12-31",
        }
    ],
}


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: str
    dept: str  # ecology_env, all three counties
    narrow: str  # ecology_env, county 430503 only
    registry: Registry
    alerts: AlertStore


@pytest.fixture
async def api(tmp_path: Path, registry: Registry) -> AsyncIterator[Api]:
    (tmp_path / "sharing.yaml").write_text(yaml.safe_dump(SHARING, allow_unicode=True))
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    dept, _ = tokens.add("ecology_env", Role.DEPARTMENT)
    narrow, _ = tokens.add("ecology_env", Role.DEPARTMENT, ["430503"])
    store = AlertStore(sqlite_url(tmp_path))
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(
                data_dir=tmp_path,
                influx_url=f"http://127.0.0.1:{free_port()}",  # nothing there: never asked
                sharing=tmp_path / "sharing.yaml",
            ),
            registry=registry,
            rules=parse_rules({"rules": []}, "<test>", registry),
            rules_path=tmp_path / "rules.yaml",
            alert_store=store,
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield Api(c, operator, dept, narrow, registry, store)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _audit(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = await api.client.get("/audit", params=params, headers=_auth(api.operator))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def _county(api: Api, device_id: str) -> str:
    return api.registry.device_path(device_id).areas[-2].id


def test_a_department_token_is_named_by_its_department() -> None:
    entry = TokenEntry.model_validate(
        {
            "id": "0123456789ab",
            "name": "ecology_env",
            "role": "department",
            "hash": "0" * 64,
            "created": "2026-12-06T00:00:00Z",
        }
    )
    assert entry.principal().department == "ecology_env"
    with pytest.raises(ValueError, match="named by its department id"):
        TokenEntry.model_validate({**entry.model_dump(), "name": "Ecology Bureau"})


async def test_a_department_reaches_only_the_shared_reads(api: Api) -> None:
    for method, path in (
        ("GET", "/cases"),
        ("GET", "/rules"),
        ("GET", "/traffic"),
        ("GET", "/deadletters"),
        ("GET", "/alerts/stream"),
        ("POST", "/alerts/a1/ack"),
        ("POST", "/cases"),
    ):
        r = await api.client.request(method, path, headers=_auth(api.dept), json={})
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "not_shared", path
    rows = await _audit(api)
    assert [(r["method"], r["path"]) for r in rows][:2] == [
        ("POST", "/cases"),
        ("POST", "/alerts/a1/ack"),
    ]
    assert all(r["status"] == 403 and r["code"] == "not_shared" for r in rows)
    assert len(rows) == 7 and {r["department"] for r in rows} == {"ecology_env"}


async def test_refusals_come_before_any_query_and_are_audited(api: Api) -> None:
    window = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}
    asks = [
        ("/series", {"kind": "gate", "field": "people_in", "area": "430502", **window}, "no_grant"),
        (
            "/series",
            {"kind": "road", "field": "avg_speed_kmh", "area": "430502", **window},
            "field_withheld",
        ),
        ("/events", {"kind": "gate", **window}, "not_shared"),
        ("/events/stats", {"kind": "road", **window}, "no_grant"),
    ]
    for path, params, code in asks:
        r = await api.client.get(path, params=params, headers=_auth(api.dept))
        assert (r.status_code, r.json()["error"]["code"]) == (403, code), r.text
    rows = await _audit(api, department="ecology_env")
    seen = [(r["endpoint"], r["data_set"], r["code"], r["status"], r["rows"]) for r in rows]
    assert seen == [
        ("/events/stats", "road_events", "no_grant", 403, None),
        ("/events", "gate_events", "not_shared", 403, None),
        ("/series", "road", "field_withheld", 403, None),
        ("/series", "gate", "no_grant", 403, None),
    ]
    assert rows[-1]["query"]["kind"] == ["gate"] and rows[-1]["query"]["field"] == ["people_in"]
    # An operator's reads are not audited; another department's filter finds nothing.
    assert await _audit(api, department="traffic_police") == []


async def test_a_department_lists_the_devices_of_shared_sets_in_its_areas(api: Api) -> None:
    r = await api.client.get("/devices", headers=_auth(api.dept))
    assert r.status_code == 200, r.text
    ids = [d["device"]["id"] for d in r.json()]
    kinds = {api.registry.devices[i].kind for i in ids}
    assert kinds == {Kind.RIVER, Kind.ROAD}  # gate: conditional without a grant; events: not
    everything = [d for d in api.registry.devices.values() if d.kind is not Kind.GATE]
    assert len(ids) == len(everything)  # the three counties are ecology_env's
    r = await api.client.get("/devices", headers=_auth(api.narrow))
    narrowed = [d["device"]["id"] for d in r.json()]
    assert {_county(api, d) for d in narrowed} == {"430503"}
    assert sorted(narrowed) == sorted(d for d in ids if _county(api, d) == "430503")
    gate = next(i for i, d in api.registry.devices.items() if d.kind is Kind.GATE)
    r = await api.client.get(f"/devices/{gate}", headers=_auth(api.dept))
    assert r.status_code == 404
    rows = await _audit(api)
    assert [(r["endpoint"], r["status"], r["rows"]) for r in rows] == [
        ("/devices/{device_id}", 404, None),
        ("/devices", 200, len(narrowed)),
        ("/devices", 200, len(ids)),
    ]


async def test_a_department_sees_only_the_alerts_shared_with_it(api: Api) -> None:
    opened = {}
    for device in ("river-zj-0001", "river-zj-0002", "gate-sq-0001"):
        d = api.registry.devices[device]
        areas = {a.level: a.id for a in api.registry.device_path(device).areas}
        alert, _, _ = api.alerts.open_or_repeat(
            rule_id="r",
            device_id=device,
            severity=Severity.MAJOR,
            kind=d.kind,
            areas=areas,
            ts_ms=1_700_000_000_000,
            value=1.0,
            detail="",
        )
        opened[device] = alert.id
    assert _county(api, "river-zj-0001") == "430502" != _county(api, "river-zj-0002")
    assert _county(api, "gate-sq-0001") == "430502"
    r = await api.client.get("/alerts", headers=_auth(api.dept))
    assert [a["device_id"] for a in r.json()] == ["river-zj-0001"]  # grant: 430502, river
    for device, status in (("river-zj-0001", 200), ("river-zj-0002", 404), ("gate-sq-0001", 404)):
        r = await api.client.get(f"/alerts/{opened[device]}", headers=_auth(api.dept))
        assert r.status_code == status, device
    r = await api.client.get("/alerts", headers=_auth(api.narrow))  # 430503: outside the grant
    assert (r.status_code, r.json()["error"]["code"]) == (403, "no_grant")
    r = await api.client.get("/alerts", headers=_auth(api.operator))
    assert len(r.json()) == 3
    rows = await _audit(api)
    assert [r["rows"] for r in rows if r["endpoint"] == "/alerts"] == [None, 1]


async def test_only_operators_read_the_audit(api: Api) -> None:
    r = await api.client.get("/audit", headers=_auth(api.dept))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "operators_only")
    rows = await _audit(api)
    assert [(r["endpoint"], r["code"]) for r in rows] == [("/audit", "operators_only")]
    assert await _audit(api, since="2099-01-01T00:00:00Z") == []
    assert len(await _audit(api, until="2099-01-01T00:00:00Z", limit=1)) == 1


async def test_a_read_that_cannot_be_audited_is_not_answered(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AuditLog, _record: object) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(AuditLog, "record", broken)
    r = await api.client.get("/devices", headers=_auth(api.dept))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "audit_unavailable")
    assert "device" not in r.text
    assert r.headers["X-Frame-Options"] == "DENY" and "Content-Security-Policy" in r.headers
    r = await api.client.get("/devices", headers=_auth(api.operator))
    assert r.status_code == 200  # an operator's read is not audited


async def test_a_broken_sharing_file_shares_nothing(api: Api, tmp_path: Path) -> None:
    (tmp_path / "sharing.yaml").write_text("data_sets: {river: {class: sometimes}}\n")
    r = await api.client.get("/alerts", headers=_auth(api.dept))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "sharing_unavailable")
    assert "class" in r.json()["error"]["message"]  # the problem, named
