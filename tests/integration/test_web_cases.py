"""The case pages (issue 17) in a real headless Chromium against a real running service: the
operator's case board (columns by state, overdue first and marked, dispatch by the button), the
handler's phone flow at 390×844 (accept, on site with the phone's position, handled with a photo
chosen in the file input), a grid worker's report with a photo, the 403 a handler gets for
verifying their own work, and the overview's cases panel.

Screenshots go to ``test-artifacts/`` (gitignored): ``cases-board.png``,
``cases-board-dispatched.png``, ``cases-detail.png``, ``worker-cases-390.png``,
``worker-case-handled-390.png``, ``worker-report-390.png``, ``cases-own-work-403.png``,
``cases-closed.png``, ``overview-cases.png``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Geolocation, Locator, Page, expect

from devices.registry import Registry, RiverDevice
from ingest.api.tokens import Role, TokenStore, tokens_path
from ingest.cases.clock import CaseClock
from ingest.settings import Settings
from ingest.web import PAGE_CACHE, STATIC_CACHE
from tests.integration.test_alerts_e2e import applied
from tests.integration.test_api import bearer
from tests.integration.test_ingest_e2e import (
    first_of,
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.integration.test_web import ARTIFACTS, signed_in
from tests.integration.test_web import browser as browser  # the Chromium fixture, shared
from tests.services import new_database

pytestmark = pytest.mark.integration

# Where the handler's phone says it is: beside the first river station (set in the fixture).
PHONE = Geolocation(latitude=27.2418, longitude=111.4695, accuracy=10)
# The case deadlines of this service: an info case waits 2 s to be dispatched, so one filed a
# few seconds before the board is opened is overdue; everything else as config/cases.yaml. The
# service's overdue clock is held (``held_clock``): it would supervise the case within a second
# and give its step a fresh deadline, so it would be overdue for one tick only.
CASES_YAML = """
deadlines:
  critical: {dispatch: 10m, accept: 15m, arrive: 30m, handle: 2h, verify: 1h, close: 1h}
  major: {dispatch: 30m, accept: 1h, arrive: 2h, handle: 8h, verify: 4h, close: 4h}
  warning: {dispatch: 2h, accept: 4h, arrive: 1d, handle: 3d, verify: 1d, close: 1d}
  info: {dispatch: 2s, accept: 2d, arrive: 3d, handle: 7d, verify: 3d, close: 3d}
"""


def tiny_png(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (31, 111, 235)) -> bytes:
    """A small valid PNG (8-bit RGB, one colour), built by hand: no imaging library needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@dataclass
class Svc:
    """A running service with an operator, the handler li.na and what was published."""

    settings: Settings
    registry: Registry
    url: str
    operator: str
    worker: str  # li.na's person token (config/workers.yaml): the river's and gate's grids
    river: RiverDevice
    gate_alert_id: str

    async def call(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.request(method, path, headers=bearer(token), **kwargs)

    async def ok(self, method: str, path: str, token: str, **kwargs: Any) -> dict[str, Any]:
        answer = await self.call(method, path, token, **kwargs)
        assert answer.status_code in (200, 201), (method, path, answer.status_code, answer.text)
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture(scope="module")
async def svc(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Any, influxdb: Any, registry: Registry
) -> AsyncIterator[Svc]:
    tmp: Path = tmp_path_factory.mktemp("web-cases")
    cases_file = tmp / "cases.yaml"
    cases_file.write_text(CASES_YAML, "utf-8")
    settings = make_settings(
        tmp,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "webcases"),
        cases=cases_file,
    )
    river = registry.devices[first_of(registry, "river")]
    assert isinstance(river, RiverDevice)
    gate = registry.devices[first_of(registry, "gate")]
    tokens = TokenStore.load(tokens_path(settings))
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    # li.na of config/workers.yaml (the river's and the gate's grids): a person's token, so
    # "person/li.na" is hers and the cases sent there are hers to accept.
    worker, _ = tokens.add("li.na", Role.PERSON)
    forced = {"ts": now_ms() - 5000, "seq": 1, "event": "forced_open"}
    messages = [(f"iot/gate/{gate.id}/event", json.dumps(forced).encode())]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CaseClock, "run", held_clock)
        async with running_service(settings, registry) as state:
            await asyncio.to_thread(publish, mosquitto.port, messages)
            await settle(state, len(messages))
            await applied(state, 1)
            assert state.api_url is not None
            async with httpx.AsyncClient(base_url=state.api_url) as client:
                listed = await client.get("/alerts", headers=bearer(operator))
                gate_alert = next(a for a in listed.json() if a["device_id"] == gate.id)
            yield Svc(settings, registry, state.api_url, operator, worker, river, gate_alert["id"])


async def held_clock(_clock: CaseClock) -> None:
    """The overdue clock, stopped: an overdue case stays overdue (not supervised)."""
    await asyncio.Event().wait()


def no_csp_errors(page: Page) -> None:
    """The page logged no "Refused to …" (CSP) and threw nothing."""
    assert getattr(page, "js_errors") == []  # noqa: B009


async def report(svc: Svc, token: str, title: str, **extra: Any) -> dict[str, Any]:
    """A case reported by hand in the river's grid; the new case."""
    body = {"title": title, "description": f"{title} — 测试 test", "grid": svc.river.grid} | extra
    answer = await svc.ok("POST", "/cases", token, json=body)
    case: dict[str, Any] = answer["case"]
    return case


def column(page: Page, state: str, case_id: str) -> Locator:
    return page.locator(f'#board section.column[data-state="{state}"] li[data-case="{case_id}"]')


async def test_case_page_is_public_and_its_scripts_cached(svc: Svc) -> None:
    async with httpx.AsyncClient(base_url=svc.url) as client:
        page = await client.get("/ui/cases.html")
        assert page.status_code == 200 and page.headers["cache-control"] == PAGE_CACHE
        assert "img-src 'self' data:" in page.headers["content-security-policy"]
        for script in ("cases.js", "worker-cases.js"):
            served = await client.get(f"/ui/static/{script}")
            assert served.status_code == 200 and served.headers["cache-control"] == STATIC_CACHE


# --- (a) the case board ------------------------------------------------------------------------


async def test_board_puts_cases_in_columns_overdue_first_and_dispatches(
    svc: Svc, browser: Browser
) -> None:
    answer = await svc.ok("POST", "/cases", svc.operator, json={"alert_id": svc.gate_alert_id})
    from_alert = answer["case"]
    assert from_alert["state"] == "filed" and from_alert["source"] == "alert"
    late = await report(svc, svc.worker, "井盖缺失 Missing manhole cover", severity="info")
    await asyncio.sleep(2.5)  # past the info case's 2 s dispatch deadline
    listed = (await svc.ok("GET", "/cases?state=filed", svc.operator))["cases"]
    assert next(c for c in listed if c["id"] == late["id"])["overdue"] is True

    page = await signed_in(browser, f"{svc.url}/ui/cases.html", svc.operator, 1440, 900)
    filed = page.locator('#board section.column[data-state="filed"] li.case-card')
    await expect(column(page, "filed", from_alert["id"])).to_be_visible()
    await expect(column(page, "filed", late["id"])).to_be_visible()
    # Overdue first, marked 超期 / overdue; the alert's case is below it.
    await expect(filed.first).to_have_attribute("data-case", late["id"])
    await expect(filed.first).to_have_attribute("data-overdue", "true")
    await expect(filed.first.locator(".flag-overdue")).to_contain_text("超期")
    await expect(column(page, "filed", from_alert["id"]).locator(".flag-overdue")).to_have_count(0)
    await page.screenshot(path=ARTIFACTS / "cases-board.png", full_page=True)

    # The operator opens the alert's case and dispatches it to the county's flood control HQ,
    # offered in the box's list, with the button.
    await column(page, "filed", from_alert["id"]).click()
    panel = page.locator("#detail")
    await expect(panel).to_have_attribute("data-case", from_alert["id"])
    await expect(page.locator("#detail-history tr[data-action=filed]")).to_have_count(1)
    await expect(page.locator("#step-verify")).to_be_hidden()
    flood_hq = f"department/flood_hq/{from_alert['areas']['county']}"
    await expect(page.locator(f'#assignees option[value="{flood_hq}"]')).to_have_count(1)
    await page.fill("#dispatch-to", flood_hq)
    await page.fill("#step-dispatch input[name=note]", "请尽快到场 please go now")
    await page.screenshot(path=ARTIFACTS / "cases-detail.png", full_page=True)
    await page.click("#step-dispatch button[type=submit]")
    await expect(column(page, "dispatched", from_alert["id"])).to_be_visible()
    await expect(column(page, "filed", from_alert["id"])).to_have_count(0)
    await expect(panel).to_have_attribute("data-state", "dispatched")
    await expect(page.locator("#detail-history tr[data-action=dispatched]")).to_contain_text(
        "please go now"
    )
    detail = await svc.ok("GET", f"/cases/{from_alert['id']}", svc.operator)
    assert detail["case"]["state"] == "dispatched"
    assert detail["case"]["assignee"] == flood_hq
    await expect(column(page, "dispatched", from_alert["id"])).to_contain_text("flood_hq")
    await page.screenshot(path=ARTIFACTS / "cases-board-dispatched.png", full_page=True)
    no_csp_errors(page)
    await page.context.close()


# --- (b) the handler's phone -------------------------------------------------------------------


async def phone(browser: Browser, svc: Svc) -> Page:
    """li.na's phone at 390×844 on the worker page, its position granted to the page."""
    page = await signed_in(browser, f"{svc.url}/ui/worker.html", svc.worker, 390, 844)
    await page.context.set_geolocation(PHONE)
    await page.context.grant_permissions(["geolocation"], origin=svc.url)
    return page


async def test_handler_accepts_arrives_and_handles_with_a_photo_on_the_phone(
    svc: Svc, browser: Browser
) -> None:
    case = await report(svc, svc.operator, "河道漂浮物 Floating rubbish on the river")
    await svc.ok("POST", f"/cases/{case['id']}/dispatch", svc.operator, json={"to": "person/li.na"})
    page = await phone(browser, svc)
    card = page.locator(f'#cases li.card[data-case="{case["id"]}"]')
    await expect(card).to_have_attribute("data-state", "dispatched")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=ARTIFACTS / "worker-cases-390.png", full_page=True)

    await card.locator("button.accept").click()
    await expect(card).to_have_attribute("data-state", "accepted")
    await card.locator("button.arrive").click()
    await expect(card).to_have_attribute("data-state", "on_site")
    detail = await svc.ok("GET", f"/cases/{case['id']}", svc.operator)
    arrived = next(e for e in detail["history"] if e["action"] == "arrived")
    assert arrived["lat"] == pytest.approx(PHONE["latitude"])
    assert arrived["lon"] == pytest.approx(PHONE["longitude"])
    assert detail["case"]["position"] == pytest.approx(
        {"lat": PHONE["latitude"], "lon": PHONE["longitude"]}
    )

    await card.locator("textarea[name=handle-note]").fill("已打捞 cleared, 2 bags")
    png = tiny_png()
    await card.locator("input[name=photo]").set_input_files(
        {"name": "cleared.png", "mimeType": "image/png", "buffer": png}
    )
    for button in await card.locator("button").all():
        box = await button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert box["height"] >= 40
    await card.locator("button.handle").click()
    await expect(card).to_have_attribute("data-state", "handled")
    # A handler is never offered verify.
    await expect(card.locator("button")).to_have_count(0)
    await page.screenshot(path=ARTIFACTS / "worker-case-handled-390.png", full_page=True)

    detail = await svc.ok("GET", f"/cases/{case['id']}", svc.operator)
    assert detail["case"]["state"] == "handled"
    assert detail["case"]["handler"] == "li.na"
    assert len(detail["case"]["photos"]) == 1
    photo = detail["case"]["photos"][0]
    handled = next(e for e in detail["history"] if e["action"] == "handled")
    assert handled["photos"] == [photo] and "cleared" in handled["detail"]
    stored = await svc.call("GET", f"/cases/{case['id']}/photos/{photo}", svc.operator)
    assert stored.status_code == 200 and stored.content == png
    no_csp_errors(page)
    await page.context.close()


async def test_worker_reports_a_case_with_a_photo_and_position(svc: Svc, browser: Browser) -> None:
    page = await phone(browser, svc)
    form = page.locator("#report-form")
    grid = form.locator(f'select[name=grid] option[value="{svc.river.grid}"]')
    await expect(grid).to_have_count(1)
    await form.locator("input[name=title]").fill("路灯不亮 Street light out")
    await form.locator("textarea[name=description]").fill("桥头第三盏 the third one by the bridge")
    await form.locator("select[name=grid]").select_option(svc.river.grid)
    png = tiny_png(rgb=(230, 126, 34))
    await form.locator("input[name=photo]").set_input_files(
        {"name": "light.png", "mimeType": "image/png", "buffer": png}
    )
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#report-status")).to_contain_text("C-")
    case_id = await form.get_attribute("data-reported")
    assert case_id
    await page.screenshot(path=ARTIFACTS / "worker-report-390.png", full_page=True)
    detail = await svc.ok("GET", f"/cases/{case_id}", svc.operator)
    case = detail["case"]
    assert case["source"] == "report" and case["state"] == "filed"
    assert case["areas"]["grid"] == svc.river.grid
    assert (case["lat"], case["lon"]) == pytest.approx((PHONE["latitude"], PHONE["longitude"]))
    assert len(case["photos"]) == 1
    stored = await svc.call("GET", f"/cases/{case_id}/photos/{case['photos'][0]}", svc.operator)
    assert stored.content == png
    # The operator's board shows the photo, fetched with the token (a data: URL under the CSP).
    board = await signed_in(browser, f"{svc.url}/ui/cases.html", svc.operator, 1440, 900)
    await column(board, "filed", case_id).click()
    image = board.locator(f'#photos figure[data-photo="{case["photos"][0]}"] img')
    await expect(image).to_be_visible()
    assert await image.evaluate("(img) => img.complete && img.naturalWidth") == 4
    no_csp_errors(page)
    no_csp_errors(board)
    await board.context.close()
    await page.context.close()


# --- (c) verify: never by the handler ----------------------------------------------------------


async def test_handler_cannot_verify_own_work_and_the_operator_closes(
    svc: Svc, browser: Browser
) -> None:
    case = await report(svc, svc.operator, "占道经营 Stalls blocking the road")
    cid = case["id"]
    await svc.ok("POST", f"/cases/{cid}/dispatch", svc.operator, json={"to": "person/li.na"})
    await svc.ok("POST", f"/cases/{cid}/accept", svc.worker, json={})
    await svc.ok("POST", f"/cases/{cid}/arrive", svc.worker, json={"lat": 27.24, "lon": 111.47})
    await svc.ok("POST", f"/cases/{cid}/handle", svc.worker, json={"note": "已劝离 moved on"})
    # Through the API: 403 own_work.
    refused = await svc.call("POST", f"/cases/{cid}/verify", svc.worker, json={})
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "own_work"

    # The phone never offers verify to the handler.
    page = await phone(browser, svc)
    card = page.locator(f'#cases li.card[data-case="{cid}"]')
    await expect(card).to_have_attribute("data-state", "handled")
    await expect(card.locator("button")).to_have_count(0)
    await page.context.close()

    # On the board (for operators; the handler may open it) verify answers with the server's
    # own message, shown as it is.
    board = await signed_in(browser, f"{svc.url}/ui/cases.html", svc.worker, 1440, 900)
    await column(board, "handled", cid).click()
    await board.click("#step-verify button[type=submit]")
    await expect(board.locator("#detail-status")).to_contain_text(error["message"])
    await expect(board.locator("#detail-status")).to_have_class("muted error")
    await board.screenshot(path=ARTIFACTS / "cases-own-work-403.png", full_page=True)
    no_csp_errors(board)
    await board.context.close()

    # The operator verifies and closes it on the board.
    board = await signed_in(browser, f"{svc.url}/ui/cases.html", svc.operator, 1440, 900)
    await column(board, "handled", cid).click()
    await board.fill("#step-verify input[name=note]", "已核查 checked")
    await board.click("#step-verify button[type=submit]")
    await expect(column(board, "verified", cid)).to_be_visible()
    await board.click("#step-close button[type=submit]")
    await expect(column(board, "closed", cid)).to_be_visible()
    await expect(board.locator("#detail-history tr[data-action=closed]")).to_have_count(1)
    await board.screenshot(path=ARTIFACTS / "cases-closed.png", full_page=True)
    assert (await svc.ok("GET", f"/cases/{cid}", svc.operator))["case"]["state"] == "closed"
    no_csp_errors(board)
    await board.context.close()


# --- the overview's cases panel ----------------------------------------------------------------


async def test_overview_has_the_cases_by_department(svc: Svc, browser: Browser) -> None:
    stats = (await svc.ok("GET", "/cases/stats?by=department", svc.operator))["groups"]
    page = await signed_in(browser, f"{svc.url}/ui/", svc.operator)
    await expect(page.locator('header a[href="cases.html"]')).to_be_visible()
    rows = page.locator("#case-stats tr[data-group]")
    await expect(rows).to_have_count(len(stats))
    assert "flood_hq" in {g["key"] for g in stats}  # the case dispatched on the board
    await expect(page.locator('#case-stats tr[data-group="flood_hq"]')).to_contain_text("防汛")
    for group in stats:
        row = page.locator(f'#case-stats tr[data-group="{group["key"]}"]')
        await expect(row.locator("td[data-field=total]")).to_have_text(str(group["total"]))
    await page.locator("#cases-panel").screenshot(path=ARTIFACTS / "overview-cases.png")
    no_csp_errors(page)
    await page.context.close()


async def test_device_page_shows_who_an_alert_was_sent_to(svc: Svc, browser: Browser) -> None:
    detail = await svc.ok("GET", f"/alerts/{svc.gate_alert_id}", svc.operator)
    audiences = detail["alert"]["audiences"]
    assert audiences
    gate = detail["alert"]["device_id"]
    page = await signed_in(browser, f"{svc.url}/ui/device.html?id={gate}", svc.operator)
    cell = page.locator(f'#history tr[data-alert="{svc.gate_alert_id}"] td.audiences')
    for key in audiences:  # "grid/430502001001-01" is shown as "网格 grid 430502001001-01"
        await expect(cell).to_contain_text(key.split("/", 1)[1])
    no_csp_errors(page)
    await page.context.close()
