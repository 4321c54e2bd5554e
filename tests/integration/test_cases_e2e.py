"""Cases end to end on the real stack (Mosquitto, InfluxDB, the service with its HTTP API): a
case reported by a grid worker goes round the loop with the right people, each step announced
over MQTT through the outbox; a step left past its (seconds-long) deadline is supervised one
level up and announced there; the statistics match the cases made."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml

from devices.registry import Registry
from ingest.api.tokens import Role, TokenStore
from tests.integration.test_alerts_e2e import Worker
from tests.integration.test_ingest_e2e import make_settings, running_service
from tests.services import new_database

pytestmark = pytest.mark.integration

LONG = {"dispatch": "1h", "accept": "1h", "arrive": "1h", "handle": "1h", "verify": "1h"}
DEADLINES = {
    "critical": {**LONG, "accept": "2s", "close": "1h"},  # accept within 2 s: to be missed
    "major": {**LONG, "close": "1h"},
    "warning": {**LONG, "close": "1h"},
    "info": {**LONG, "close": "1h"},
}
GRID = "430502001001-01"  # li.na's
OTHER_GRID = "430502001002-01"  # wang.fang's
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8


class Screen(Worker):
    """A command-centre screen on ``cases/#``, keeping each message's topic."""

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.received.append({**json.loads(message.payload), "_topic": message.topic})
        self.arrived.set()


def _wait(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


async def test_cases_round_the_loop_supervised_when_late_and_counted(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    cases_file = tmp_path / "cases.yaml"
    cases_file.write_text(yaml.safe_dump({"deadlines": DEADLINES}))
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    auth = {"duty": tokens.add("duty officer", Role.OPERATOR)[0]}
    for name in ("li.na", "flood.sq", "wang.fang", "zhao.lei"):
        auth[name] = tokens.add(name, Role.PERSON)[0]
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "cases"),
        cases=cases_file,
    )
    phone = Screen(mosquitto.port, "cases/#")  # a command-centre screen: every case topic

    def told(case_id: str) -> list[tuple[str, str]]:
        return [
            (m["event"]["action"], m.get("_topic", ""))
            for m in phone.received
            if m["case"]["id"] == case_id
        ]

    try:
        async with running_service(settings, registry) as state:
            assert state.api_url is not None
            async with httpx.AsyncClient(base_url=state.api_url, timeout=10) as api:

                async def call(who: str, path: str, body: Any = None) -> dict[str, Any]:
                    headers = {"Authorization": f"Bearer {auth[who]}"}
                    r = await api.post(path, json=body, headers=headers)
                    assert r.status_code in (200, 201), (path, who, r.text)
                    return dict(r.json())

                async def fetch(who: str, path: str, **params: Any) -> httpx.Response:
                    headers = {"Authorization": f"Bearer {auth[who]}"}
                    return await api.get(path, params=params, headers=headers)

                # -- the loop ---------------------------------------------------------------
                made = await call(
                    "li.na",
                    "/cases",
                    {"title": "河道垃圾堆积", "grid": GRID, "severity": "info"},
                )
                cid = made["case"]["id"]
                assert (await fetch("zhao.lei", f"/cases/{cid}")).status_code == 404
                got = await call("duty", f"/cases/{cid}/dispatch", {"to": "department/flood_hq"})
                assert got["case"]["assignee"] == "department/flood_hq/430502"
                r = await api.post(
                    f"/cases/{cid}/accept", headers={"Authorization": f"Bearer {auth['li.na']}"}
                )
                assert r.status_code == 403 and r.json()["error"]["code"] == "not_assignee"
                await call("flood.sq", f"/cases/{cid}/accept", {"note": "收到"})
                await call("flood.sq", f"/cases/{cid}/arrive", {"lat": 27.24, "lon": 111.47})
                up = await api.post(
                    f"/cases/{cid}/photos",
                    files={"file": ("after.jpg", JPEG, "image/jpeg")},
                    headers={"Authorization": f"Bearer {auth['flood.sq']}"},
                )
                assert up.status_code == 201, up.text
                photo = up.json()["photo"]
                await call(
                    "flood.sq", f"/cases/{cid}/handle", {"note": "已清理", "photos": [photo]}
                )
                await call("li.na", f"/cases/{cid}/verify", {"note": "已核查"})
                closed = await call("duty", f"/cases/{cid}/close")
                assert closed["case"]["state"] == "closed"
                seen = await fetch("li.na", f"/cases/{cid}/photos/{photo}")
                assert seen.status_code == 200 and seen.content == JPEG

                # -- a late step --------------------------------------------------------------
                late = await call(
                    "duty", "/cases", {"title": "积水", "grid": OTHER_GRID, "severity": "critical"}
                )
                lid = late["case"]["id"]
                await call("duty", f"/cases/{lid}/dispatch", {"to": "person/wang.fang"})
                village = registry.areas[OTHER_GRID].parent
                assert village is not None
                for _ in range(100):  # accept within 2 s; the clock looks every second
                    body = (await fetch("duty", f"/cases/{lid}")).json()["case"]
                    if body["supervised"]:
                        break
                    await asyncio.sleep(0.1)
                assert body["supervised"] is True and body["supervision_level"] == "village"
                assert body["state"] == "dispatched" and body["step"] == "accept"
                # Supervised gave the step a new deadline, yet the case stays overdue (超期)
                # until the step is done: the board shows it first.
                late_ones = (await fetch("duty", "/cases", overdue="true")).json()["cases"]
                assert [c["id"] for c in late_ones] == [lid] and late_ones[0]["overdue"]
                mine = (await fetch("wang.fang", "/cases", mine="true")).json()["cases"]
                assert [c["id"] for c in mine] == [lid]

                stats = (await fetch("duty", "/cases/stats")).json()["groups"]
                by_key = {g["key"]: g for g in stats}
                assert by_key["flood_hq"]["total"] == 1
                assert by_key["flood_hq"]["by_state"]["closed"] == 1
                assert by_key["flood_hq"]["on_time_rate"] == 1.0
                assert by_key["flood_hq"]["median_handle_s"] >= 0
                assert by_key["-"]["total"] == 1 and by_key["-"]["by_state"]["dispatched"] == 1
            await asyncio.to_thread(
                _wait,
                lambda: (
                    ("supervised", f"cases/village/{village}") in told(lid)
                    and ("closed", f"cases/grid/{GRID}") in told(cid)
                ),
            )
    finally:
        phone.close()

    steps = ["filed", "dispatched", "accepted", "arrived", "handled", "verified", "closed"]
    assert [a for a, t in told(cid) if t == f"cases/grid/{GRID}"] == steps
    assert ("dispatched", "cases/department/flood_hq/430502") in told(cid)
    assert ("accepted", "cases/person/flood.sq") in told(cid)
    assert ("verified", "cases/person/li.na") in told(cid)
    assert ("supervised", f"cases/village/{village}") in told(lid)
    assert ("supervised", "cases/person/wang.fang") in told(lid)
    message = next(m for m in phone.received if m["event"]["action"] == "supervised")
    assert "超时督办" in message["message_zh"] and message["case"]["supervised"] is True
