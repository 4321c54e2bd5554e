"""The web pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real running service with data: the overview's map and live alert list, the grid
worker's acknowledge, the device chart's warning line, and the worker view at 390 px.

Screenshots of each page go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from devices.registry import GateDevice, Registry
from ingest.web import PAGE_CACHE, STATIC_CACHE
from tests.integration.test_api import Api, bearer
from tests.integration.test_api import api as api  # the running service, as a fixture here too
from tests.integration.test_ingest_e2e import first_of, now_ms, publish

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_MS = 15_000
WARNING_ORANGE = (0xE6, 0x7E, 0x22)  # the warning line's colour in ingest/web/static/device.js


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/system-deps.sh installs Debian's chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(
    browser: Browser, url: str, token: str, width: int = 1280, height: int = 900
) -> Page:
    """A fresh browser context on ``url``, signed in through the page's own form."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A page the Content-Security-Policy breaks says so on the console ("Refused to ...").
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "Refused" in m.text else None,
    )
    await page.goto(url)
    await page.fill("#signin input[name=token]", token)
    await page.click("#signin button[type=submit]")
    page.set_default_timeout(WAIT_MS)
    setattr(page, "js_errors", errors)  # noqa: B010 - read back by the tests
    return page


async def test_pages_are_public_and_assets_cached(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        for path in ("/ui/", "/ui/device.html", "/ui/worker.html"):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.headers["cache-control"] == PAGE_CACHE
        lib = await client.get("/ui/static/vendor/uPlot.iife.min.js")
        assert lib.status_code == 200 and lib.headers["cache-control"] == STATIC_CACHE
        assert "javascript" in lib.headers["content-type"]
        for missing in ("/ui/static/../__init__.py", "/ui/static/vendor/VENDORED.md", "/ui/x.html"):
            assert (await client.get(missing)).status_code == 404, missing
        spec = (await client.get("/openapi.json")).json()
        assert not [p for p in spec["paths"] if p.startswith("/ui")]


async def test_overview_shows_devices_and_a_new_alert_live(
    api: Api, browser: Browser, mosquitto: Any, registry: Registry
) -> None:
    page = await signed_in(browser, f"{api.url}/ui/", api.operator)
    await expect(page.locator("#map-svg a.marker")).to_have_count(len(registry.devices))
    await expect(page.locator("#count-total")).to_have_text(str(len(registry.devices)))
    await expect(page.locator("#by-county tr[data-county]")).to_have_count(3)
    await expect(page.locator("body")).to_have_attribute("data-live", "connected")
    # A gate other than the one the fixture already alerted on: forced open now.
    gate = next(
        d
        for d in registry.devices.values()
        if isinstance(d, GateDevice) and d.id != first_of(registry, "gate")
    )
    forced = {"ts": now_ms(), "seq": 1, "event": "forced_open"}
    await asyncio.to_thread(
        publish, mosquitto.port, [(f"iot/gate/{gate.id}/event", json.dumps(forced).encode())]
    )
    arrived = page.locator("#live li.new").filter(has_text=gate.name)
    await expect(arrived.first).to_be_visible()
    await expect(page.locator(f'#map-svg a.marker[data-device="{gate.id}"]')).to_have_attribute(
        "data-state", "major"
    )
    await page.screenshot(path=ARTIFACTS / "overview.png", full_page=True)
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()


# Draws single characters with an element's own font on a canvas (the same font fallback as
# the page) and reports: pixels inked by the first, whether the first two differ, and whether
# the first differs from a private-use character, which no font has (a missing-glyph box).
GLYPHS_JS = """([selector, text]) => {
  const font = getComputedStyle(document.querySelector(selector)).font;
  const draw = (t) => {
    const c = document.createElement("canvas");
    c.width = 64; c.height = 64;
    const g = c.getContext("2d");
    g.font = font; g.fillStyle = "#000"; g.fillText(t, 8, 44);
    return Array.from(g.getImageData(0, 0, 64, 64).data).filter((_, i) => i % 4 === 3);
  };
  const a = draw(text[0]), b = draw(text[1]), box = draw("\\ue000");
  return {
    inked: a.filter((v) => v > 0).length,
    distinct: a.some((v, i) => v !== b[i]),
    not_a_box: a.some((v, i) => v !== box[i]),
  };
}"""


async def test_chinese_labels_render_as_glyphs_not_boxes(api: Api, browser: Browser) -> None:
    """Issue 15: without a CJK font Chromium draws every Chinese character as the same empty
    box. With ``fonts-wqy-microhei`` (scripts/system-deps.sh test) the county names have real,
    distinct glyphs. Checked to fail by launching Chromium with a fontconfig that lists only
    DejaVu (FONTCONFIG_FILE): ``distinct`` and ``not_a_box`` were then false."""
    page = await signed_in(browser, f"{api.url}/ui/", api.operator)
    county = page.locator("#by-county tr[data-county] td").first
    await expect(county).to_have_text(re.compile(r"[\u4e00-\u9fff]{2}"))
    text = re.sub(r"[^\u4e00-\u9fff]", "", await county.inner_text())
    glyphs = await page.evaluate(GLYPHS_JS, ["#by-county tr[data-county] td", text[:2]])
    assert glyphs["inked"] > 20, glyphs
    assert glyphs["distinct"] and glyphs["not_a_box"], glyphs
    await page.context.close()


async def test_worker_acknowledges_and_the_api_sees_it(api: Api, browser: Browser) -> None:
    page = await signed_in(browser, f"{api.url}/ui/worker.html", api.worker, 390, 844)
    card = page.locator(f'li.card[data-alert="{api.gate_alert_id}"]')
    await expect(card).to_have_attribute("data-state", "open")
    await card.locator("input[name=note]").fill("on my way 马上到")
    await card.locator("button.ack").click()
    await expect(card).to_have_attribute("data-state", "acknowledged")
    await page.screenshot(path=ARTIFACTS / "worker.png", full_page=True)
    async with httpx.AsyncClient(base_url=api.url) as client:
        answer = await client.get(f"/alerts/{api.gate_alert_id}", headers=bearer(api.operator))
    detail = answer.json()
    assert detail["alert"]["state"] == "acknowledged"
    assert detail["alert"]["acknowledged_by"] == "li.na"
    assert any("马上到" in (e["detail"] or "") for e in detail["history"]) or (
        "马上到" in (detail["alert"]["note"] or "")
    )
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()


async def test_worker_view_fits_a_390px_screen(api: Api, browser: Browser) -> None:
    page = await signed_in(browser, f"{api.url}/ui/worker.html", api.worker, 390, 844)
    await expect(page.locator("li.card").first).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    for button in await page.locator("li.card button").all():
        box = await button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert box["height"] >= 40  # a thumb can hit it
    labels = await page.locator("li.card").first.inner_text()
    assert "确认" in labels and "Acknowledge" in labels and "解决" in labels and "Resolve" in labels
    await page.screenshot(path=ARTIFACTS / "worker-390.png", full_page=True)
    await page.context.close()


async def test_device_chart_draws_the_warning_line(api: Api, browser: Browser) -> None:
    page = await signed_in(browser, f"{api.url}/ui/device.html?id={api.river.id}", api.operator)
    chart = page.locator("#chart")
    await expect(chart).to_have_attribute("data-points", str(len(api.levels)))
    lines = json.loads(await chart.get_attribute("data-lines") or "{}")
    assert set(lines) == {"warning", "guarantee"}
    # The warning line is really on the canvas: most of its row is the warning colour.
    share = await page.evaluate(
        """([y, rgb]) => {
            const canvas = document.querySelector("#chart canvas");
            const row = canvas.getContext("2d").getImageData(0, y, canvas.width, 1).data;
            let hits = 0;
            for (let i = 0; i < row.length; i += 4)
                if (rgb.every((c, k) => Math.abs(row[i + k] - c) < 12)) hits++;
            return hits / canvas.width;
        }""",
        [lines["warning"], list(WARNING_ORANGE)],
    )
    assert share > 0.5, share
    await expect(page.locator("#registry")).to_contain_text(str(api.river.warning_level_m))
    await expect(page.locator('#last tr[data-field="water_level_m"]')).to_be_visible()
    await page.screenshot(path=ARTIFACTS / "device.png", full_page=True)
    assert getattr(page, "js_errors") == []  # noqa: B009
    await page.context.close()
