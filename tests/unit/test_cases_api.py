"""The cases API through the FastAPI app (httpx, real stores on SQLite): every route, with the
people who may and may not call it — 409 for a step out of order, 403 with a named code for the
wrong role, 404 for a case the caller cannot see; photos capped (413), checked by their bytes
(415), stored privately, and never served to someone who cannot see the case."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from devices.kinds import Kind
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.ratelimit import TokenBucket
from ingest.api.tokens import Role, TokenStore
from ingest.cases.photos import PhotoStore
from ingest.cases.store import CaseStore
from ingest.ops.processes import free_port
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from rules.model import Severity
from tests.unit.casecity import case_config, people, registry
from tests.unit.test_case_store import PATHS, RULES

PHOTO_CAP = 4096
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x01" * 50


@dataclass
class Api:
    client: httpx.AsyncClient
    tokens: dict[str, str]
    alerts: AlertStore
    photos_dir: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(who))

    async def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.auth(who))

    async def photo(
        self, who: str, case_id: str, data: bytes, name: str = "p.jpg"
    ) -> httpx.Response:
        files = {"file": (name, data, "image/jpeg")}
        return await self.client.post(
            f"/cases/{case_id}/photos", files=files, headers=self.auth(who)
        )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    reg = registry()
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    made = {"duty": tokens.add("duty officer", Role.OPERATOR)[0]}
    for name in ("li.na", "zhao.min", "wang.qiang", "sun.li", "chen.jie"):
        made[name] = tokens.add(name, Role.PERSON)[0]
    made["worker"] = tokens.add("old-worker-token", Role.GRID_WORKER, ["g2"])[0]
    url = sqlite_url(tmp_path)
    alerts = AlertStore(url)
    settings = Settings(
        data_dir=tmp_path,
        influx_url=f"http://127.0.0.1:{free_port()}",
        case_photo_max_bytes=PHOTO_CAP,
    )
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=settings,
            registry=reg,
            rules=parse_rules(RULES, "<test>", reg),
            rules_path=tmp_path / "rules.yaml",
            alert_store=alerts,
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
            people=people(reg),
            cases=CaseStore(url),
            case_config=case_config(),
            photos=PhotoStore(tmp_path / "photos", PHOTO_CAP),
        )
        app = create_app(ctx, TokenBucket(per_minute=100_000, burst=10_000))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield Api(c, made, alerts, tmp_path / "photos")


async def _report(api: Api, who: str = "li.na", grid: str = "g1") -> dict[str, Any]:
    r = await api.post(who, "/cases", {"title": "井盖缺失", "description": "人行道", "grid": grid})
    assert r.status_code == 201, r.text
    return dict(r.json()["case"])


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def test_a_case_goes_round_the_loop_with_the_right_people(api: Api) -> None:
    r = await api.post(
        "li.na",
        "/cases",
        {"title": "井盖缺失", "description": "人行道", "grid": "g1", "lat": 27.2, "lon": 111.4},
    )
    assert r.status_code == 201, r.text
    case, history = r.json()["case"], r.json()["history"]
    cid = case["id"]
    assert case["source"] == "report" and case["reporter"] == "li.na"
    assert case["severity"] == "warning" and case["state"] == "filed"
    assert case["step"] == "dispatch" and case["overdue"] is False
    assert case["areas"] == {k.value: v for k, v in PATHS["g1"].items()}
    assert [h["action"] for h in history] == ["filed"]

    r = await api.post("duty", f"/cases/{cid}/dispatch", {"to": "department/flood_hq"})
    assert r.status_code == 200, r.text
    assert r.json()["case"]["assignee"] == "department/flood_hq/co1"  # the unit of its county
    assert r.json()["event"]["actor"] == "duty officer"
    # The co2 unit of the same department, and a grid worker of another county, see nothing.
    assert _code(await api.get("chen.jie", f"/cases/{cid}")) == (404, "not_found")
    assert _code(await api.get("zhao.min", f"/cases/{cid}")) == (404, "not_found")
    assert _code(await api.post("chen.jie", f"/cases/{cid}/accept")) == (404, "not_found")

    r = await api.post("wang.qiang", f"/cases/{cid}/accept", {"note": "收到"})
    assert r.status_code == 200 and r.json()["case"]["handler"] == "wang.qiang"
    r = await api.post("wang.qiang", f"/cases/{cid}/arrive", {"lat": 27.21, "lon": 111.41})
    assert r.json()["case"]["position"] == {"lat": 27.21, "lon": 111.41}
    assert r.json()["event"]["lat"] == 27.21
    up = await api.photo("wang.qiang", cid, JPEG)
    assert up.status_code == 201, up.text
    photo = up.json()["photo"]
    r = await api.post("wang.qiang", f"/cases/{cid}/handle", {"note": "已盖好", "photos": [photo]})
    assert r.status_code == 200, r.text
    assert r.json()["event"]["photos"] == [photo] and r.json()["case"]["state"] == "handled"

    assert _code(await api.post("wang.qiang", f"/cases/{cid}/verify")) == (403, "own_work")
    assert _code(await api.post("sun.li", f"/cases/{cid}/verify")) == (403, "not_reporter")
    r = await api.post("li.na", f"/cases/{cid}/verify", {"note": "现场已确认"})
    assert r.status_code == 200 and r.json()["case"]["state"] == "verified"
    assert _code(await api.post("li.na", f"/cases/{cid}/close")) == (403, "operators_only")
    r = await api.post("duty", f"/cases/{cid}/close")
    assert r.status_code == 200 and r.json()["case"]["closed_ms"] is not None

    detail = (await api.get("li.na", f"/cases/{cid}")).json()
    assert [(h["action"], h["actor"]) for h in detail["history"]] == [
        ("filed", "li.na"),
        ("dispatched", "duty officer"),
        ("accepted", "wang.qiang"),
        ("arrived", "wang.qiang"),
        ("photo_added", "wang.qiang"),
        ("handled", "wang.qiang"),
        ("verified", "li.na"),
        ("closed", "duty officer"),
    ]
    assert set(detail["history"][0]) == {
        "case_id",
        "at_ms",
        "action",
        "actor",
        "detail",
        "lat",
        "lon",
        "photos",
    }
    # Closed: no more photos, no more steps.
    assert _code(await api.photo("li.na", cid, PNG)) == (409, "invalid_transition")
    assert _code(await api.post("duty", f"/cases/{cid}/close")) == (409, "invalid_transition")


async def test_steps_out_of_order_and_wrong_roles(api: Api) -> None:
    cid = (await _report(api))["id"]
    assert _code(await api.post("li.na", f"/cases/{cid}/dispatch", {"to": "person/li.na"})) == (
        403,
        "operators_only",
    )
    assert _code(await api.post("duty", f"/cases/{cid}/accept")) == (403, "not_assignee")
    assert _code(await api.post("duty", f"/cases/{cid}/verify")) == (409, "invalid_transition")
    assert _code(await api.post("duty", f"/cases/{cid}/dispatch", {"to": "person/nobody"})) == (
        422,
        "unknown_assignee",
    )
    assert _code(
        await api.post("duty", f"/cases/{cid}/dispatch", {"to": "department/urban/co2"})
    ) == (422, "unknown_assignee")
    r = await api.post("duty", f"/cases/{cid}/dispatch", {"to": "person/li.na"})
    assert r.status_code == 200
    assert _code(await api.post("li.na", f"/cases/{cid}/handle", {"note": "x"})) == (
        409,
        "invalid_transition",
    )
    # Department staff see only the cases assigned to their unit (or reported or handled by
    # them): one dispatched to li.na does not exist for them.
    assert _code(await api.post("wang.qiang", f"/cases/{cid}/accept")) == (404, "not_found")
    assert (await api.post("li.na", f"/cases/{cid}/accept")).status_code == 200
    # The reporter handles it herself: someone else must verify (an operator).
    await api.post("li.na", f"/cases/{cid}/arrive", {"lat": 1, "lon": 2})
    assert _code(
        await api.post("li.na", f"/cases/{cid}/handle", {"note": "x", "photos": ["0" * 64]})
    ) == (422, "unknown_photo")
    await api.post("li.na", f"/cases/{cid}/handle", {"note": "done"})
    assert _code(await api.post("li.na", f"/cases/{cid}/send-back", {"note": "no"})) == (
        403,
        "own_work",
    )
    r = await api.post("duty", f"/cases/{cid}/send-back", {"note": "仍有隐患"})
    assert r.status_code == 200 and r.json()["case"]["state"] == "accepted"
    assert r.json()["case"]["sent_back_count"] == 1
    assert (await api.post("duty", f"/cases/{cid}/send-back", {})).status_code == 422
    assert (await api.client.get(f"/cases/{cid}")).status_code == 401


async def test_reports_need_the_grid_in_the_callers_areas(api: Api) -> None:
    r = await api.post("zhao.min", "/cases", {"title": "x", "grid": "g1"})
    assert _code(r) == (403, "not_your_area")
    assert _code(await api.post("li.na", "/cases", {"title": "x", "grid": "v1"})) == (
        422,
        "unknown_grid",
    )
    assert (await api.post("li.na", "/cases", {"title": "x"})).status_code == 422
    # An operator may report anywhere; a plain grid-worker token within its areas.
    r = await api.post("duty", "/cases", {"title": "x", "grid": "g3", "severity": "critical"})
    assert r.status_code == 201 and r.json()["case"]["source"] == "operator"
    r = await api.post("worker", "/cases", {"title": "y", "grid": "g2"})
    assert r.status_code == 201 and r.json()["case"]["reporter"] == "old-worker-token"
    # That token sees it (its area and its report); li.na's grid is g1 only.
    cid = r.json()["case"]["id"]
    assert (await api.get("worker", f"/cases/{cid}")).status_code == 200
    assert (await api.get("li.na", f"/cases/{cid}")).status_code == 404


async def test_a_case_from_an_alert_once(api: Api) -> None:
    alert, _, _ = api.alerts.open_or_repeat(
        rule_id="gate_tailgating",
        device_id="gate9",
        severity=Severity.MAJOR,
        kind=Kind.GATE,
        areas=PATHS["g3"],
        ts_ms=1_795_000_000_000,
        value="tailgating",
        detail="4 through",
    )
    body = {"alert_id": alert.id}
    assert _code(await api.post("zhao.min", "/cases", body)) == (403, "operators_only")
    r = await api.post("duty", "/cases", body)
    assert r.status_code == 201, r.text
    case = r.json()["case"]
    assert (case["source"], case["alert_id"], case["rule_id"], case["device_id"]) == (
        "alert",
        alert.id,
        "gate_tailgating",
        "gate9",
    )
    assert case["severity"] == "major" and (case["lat"], case["lon"]) == (27.3, 111.5)
    again = await api.post("duty", "/cases", body)
    assert _code(again) == (409, "case_exists")
    assert again.json()["error"]["detail"]["case_id"] == case["id"]
    assert _code(await api.post("duty", "/cases", {"alert_id": "A-000000000000"})) == (
        404,
        "not_found",
    )
    assert (
        await api.post("duty", "/cases", {"alert_id": alert.id, "grid": "g1"})
    ).status_code == 422


async def test_lists_mine_overdue_and_stats(api: Api) -> None:
    a = (await _report(api, "li.na", "g1"))["id"]
    b = (await _report(api, "zhao.min", "g3"))["id"]
    await api.post("duty", f"/cases/{a}/dispatch", {"to": "department/flood_hq/co1"})
    await api.post("duty", f"/cases/{b}/dispatch", {"to": "person/zhao.min"})
    await api.post("wang.qiang", f"/cases/{a}/accept")
    everything = (await api.get("duty", "/cases")).json()["cases"]
    assert {c["id"] for c in everything} == {a, b}
    assert [c["id"] for c in (await api.get("li.na", "/cases")).json()["cases"]] == [a]
    # The co2 unit's staff: b lies in co2 but is zhao.min's; a is the co1 unit's. Department
    # staff see the cases of their unit, not every case of their county.
    assert (await api.get("chen.jie", "/cases")).json()["cases"] == []
    assert [c["id"] for c in (await api.get("sun.li", "/cases")).json()["cases"]] == [a]
    mine = (await api.get("wang.qiang", "/cases", mine="true")).json()["cases"]
    assert [c["id"] for c in mine] == [a]
    assert [c["id"] for c in (await api.get("sun.li", "/cases", mine="true")).json()["cases"]] == [
        a  # assigned to her unit
    ]
    assert (await api.get("li.na", "/cases", mine="true")).json()["cases"] == []
    got = await api.get("duty", "/cases", state="dispatched", area="co2")
    assert [c["id"] for c in got.json()["cases"]] == [b]
    assert (await api.get("duty", "/cases", overdue="true")).json()["cases"] == []
    assert (await api.get("duty", "/cases", state="nonsense")).status_code == 422

    stats = (await api.get("duty", "/cases/stats")).json()["groups"]
    assert [(g["key"], g["total"], g["by_state"]["accepted"]) for g in stats] == [
        ("-", 1, 0),
        ("flood_hq", 1, 1),
    ]
    assert stats[1]["name"] == "防汛抗旱指挥部" and stats[1]["on_time_rate"] is None
    by_area = (await api.get("duty", "/cases/stats", by="area", level="township")).json()
    assert [(g["key"], g["name"], g["total"]) for g in by_area["groups"]] == [
        ("t1", "街道一", 1),
        ("t2", "街道二", 1),
    ]
    assert (await api.get("li.na", "/cases/stats")).json()["groups"][0]["key"] == "flood_hq"
    future = (await api.get("duty", "/cases/stats", since="2100-01-01T00:00:00Z")).json()
    assert future["groups"] == []


async def test_photos_are_checked_capped_private_and_only_for_their_case(api: Api) -> None:
    a = (await _report(api, "li.na", "g1"))["id"]
    b = (await _report(api, "zhao.min", "g3"))["id"]
    for data in (JPEG, PNG, WEBP):
        assert (await api.photo("li.na", a, data)).status_code == 201
    r = await api.photo("li.na", a, JPEG)  # the same picture again: the same id, once
    photos = (await api.get("li.na", f"/cases/{a}")).json()["case"]["photos"]
    assert len(photos) == 3 and r.json()["photo"] == photos[0]

    assert _code(await api.photo("li.na", a, b"<html><script>x</script>", "x.jpg")) == (
        415,
        "unsupported_type",
    )
    assert _code(await api.photo("li.na", a, b"GIF89a" + b"\x00" * 50)) == (415, "unsupported_type")
    assert _code(await api.photo("li.na", a, b"\xff\xd8")) == (415, "unsupported_type")
    big = JPEG + b"\x00" * (PHOTO_CAP - len(JPEG) + 1)
    assert _code(await api.photo("li.na", a, big)) == (413, "too_large")
    huge = JPEG + b"\x00" * (PHOTO_CAP + 200_000)  # refused on arrival, before any parsing
    assert _code(await api.photo("li.na", a, huge)) == (413, "too_large")
    assert _code(await api.photo("zhao.min", a, JPEG)) == (404, "not_found")
    r = await api.client.post(
        f"/cases/{a}/photos",
        content=JPEG,
        headers=api.auth("li.na") | {"content-type": "image/jpeg"},
    )
    assert r.status_code in (400, 422)

    r = await api.get("li.na", f"/cases/{a}/photos/{photos[0]}")
    assert r.status_code == 200 and r.content == JPEG
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["content-disposition"] == "inline"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "private, no-store"
    assert (await api.get("li.na", f"/cases/{a}/photos/{photos[1]}")).headers[
        "content-type"
    ] == "image/png"
    # Not to someone who cannot see the case; not through another case; not a made-up id.
    assert _code(await api.get("zhao.min", f"/cases/{a}/photos/{photos[0]}")) == (404, "not_found")
    assert _code(await api.get("zhao.min", f"/cases/{b}/photos/{photos[0]}")) == (404, "not_found")
    assert _code(await api.get("li.na", f"/cases/{a}/photos/..%2Ftokens.yaml")) == (
        404,
        "not_found",
    )
    assert (await api.get("duty", f"/cases/{a}/photos/{photos[0]}")).status_code == 200

    assert stat.S_IMODE(api.photos_dir.stat().st_mode) == 0o700
    files = sorted(api.photos_dir.iterdir())
    assert [f.name for f in files] == sorted(photos)  # no temporary file left behind
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
