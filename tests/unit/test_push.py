"""Issue 19, pushes to a neighbouring city: the ``push:`` section of the channels file, an
alert change of a pushed station expanded into one delivery to ``push/{id}`` (and of another
station into none), a batch of observations keyed by (push, period start) so a period queued
twice is one delivery, and the periodic task against a stand-in for InfluxDB."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devices.kinds import Kind, Level
from devices.registry import load_registry
from ingest.alerts.store import sqlite_url
from ingest.channels.config import ChannelsConfig, ChannelsError, load_channels, parse_channels
from ingest.channels.webhook import SIGNATURE, Webhook, WebhookConfig, signature
from ingest.delivery.dispatch import Expander, delivery_key
from ingest.delivery.notices import notice_of, read_message
from ingest.delivery.plan import ChannelPlan, plan_of
from ingest.delivery.push import JobQueue, ObservationPushes, batch_notice, newest_query
from ingest.delivery.store import DeliveryStore
from ingest.people import People, load_workers
from rules.alerts import Alert, AlertAction, AlertEvent
from rules.model import Severity

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "config" / "registry.yaml")
PEOPLE = People(load_workers(REPO / "config" / "workers.yaml", REGISTRY))
PUSHED, OTHER = "river-zj-0005", "river-zj-0001"  # the lowest Zi station; one upstream
T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z: 19:06 in Shanghai, outside the quiet hours
NIGHT = T0 + 5 * 3600 * 1000  # 00:06 in Shanghai: quiet hours


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config" / "channels.yaml").read_text())
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ChannelsError) as caught:
        parse_channels(data, PEOPLE, REGISTRY, "channels.yaml")
    return [str(p) for p in caught.value.problems]


def config() -> ChannelsConfig:
    return load_channels(REPO / "config" / "channels.yaml", PEOPLE, REGISTRY)


def plan() -> ChannelPlan:
    return plan_of(config(), PEOPLE, REGISTRY)


def expander() -> Expander:
    found = plan()
    return Expander(lambda: found, PEOPLE, REGISTRY, config().push)


# -- the config -----------------------------------------------------------------------------


def test_the_example_pushes_the_lowest_zi_stations_to_loudi() -> None:
    (push,) = config().push
    assert (push.id, push.endpoint, push.alerts) == ("loudi", "loudi-webhook", True)
    assert push.stations == ("river-zj-0005", "river-zj-0006")
    assert push.observations_every == 300_000
    zi = [d for d in REGISTRY.devices.values() if getattr(d, "river", None) == "资江"]
    lowest = sorted(zi, key=lambda d: getattr(d, "km", 0) or 0)[-2:]
    assert {d.id for d in lowest} == set(push.stations)


def test_an_unknown_station_is_named() -> None:
    data = example()
    data["push"][0]["stations"] = ["river-zj-0005", "river-zz-9999"]
    assert problems(data) == ["channels.yaml: push.loudi: stations.1: no device 'river-zz-9999'"]


def test_the_endpoint_must_be_a_webhook() -> None:
    data = example()
    data["push"][0]["endpoint"] = "city-sms"
    assert problems(data) == [
        "channels.yaml: push.loudi: endpoint: city-sms is a sms endpoint, not a webhook"
    ]
    data["push"][0]["endpoint"] = "flood-sq-dingtalk"
    assert problems(data) == [
        "channels.yaml: push.loudi: endpoint: flood-sq-dingtalk is a dingtalk endpoint, "
        "not a webhook"
    ]
    data["push"][0]["endpoint"] = "nowhere"
    assert problems(data) == ["channels.yaml: push.loudi: endpoint: no endpoint 'nowhere'"]


def test_bad_push_fields_are_named() -> None:
    data = example()
    second = copy.deepcopy(data["push"][0])
    data["push"][0]["observations_every"] = "500ms"
    data["push"][0]["colour"] = "blue"
    second["observations_every"] = 5  # a bare number: minutes or seconds?
    data["push"].append(second)
    found = problems(data)
    assert "channels.yaml: push.loudi: observations_every: Value error, at least 1s" in found
    assert "channels.yaml: push.loudi: colour: Extra inputs are not permitted" in found
    assert any(p.startswith("channels.yaml: push.loudi: observations_every: ") for p in found)
    assert len(found) == 3


def test_a_second_push_of_one_id_and_a_push_of_nothing() -> None:
    data = example()
    data["push"].append({**data["push"][0], "alerts": False, "observations_every": None})
    assert problems(data) == [
        "channels.yaml: push.loudi: id: a second push 'loudi'",
        "channels.yaml: push.loudi: (entry): pushes nothing: alerts is false and "
        "observations_every is null",
    ]


def test_no_push_section_is_no_pushes() -> None:
    data = example()
    del data["push"]
    assert parse_channels(data, PEOPLE, REGISTRY).push == ()


# -- alerts ---------------------------------------------------------------------------------


def alert_of(device_id: str, severity: str = "info", alert_id: str = "A-000000000001") -> Alert:
    path = REGISTRY.device_path(device_id)
    areas = {a.level: a.id for a in path.areas if a.level is not Level.CITY}
    return Alert(
        id=alert_id,
        rule_id="river_over_warning",
        severity=Severity(severity),
        device_id=device_id,
        kind=Kind.RIVER,
        areas=areas,
        opened_ms=T0,
        updated_ms=T0,
        raised_ms=T0,
        value=207.3,
        audiences=(f"grid/{REGISTRY.devices[device_id].grid}",),
    )


def payload(a: Alert, action: str = "opened", **extra: Any) -> bytes:
    event = AlertEvent(alert_id=a.id, at_ms=T0, action=AlertAction(action))
    body = {
        "alert": a.model_dump(mode="json"),
        "event": event.model_dump(mode="json"),
        "message_zh": f"【提示·新告警】水位超警戒：{a.device_id} {a.value} m",
        "message_en": f"[info · new alert] river over warning: {a.device_id} {a.value} m",
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def pushed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if str(r["recipient"]).startswith("push/")]


def test_an_alert_of_a_pushed_station_is_one_delivery_to_the_push() -> None:
    a = alert_of(PUSHED)
    body = payload(a)
    topic = f"alerts/grid/{REGISTRY.devices[PUSHED].grid}"
    rows = pushed(expander()(topic, body, T0))
    assert len(rows) == 1
    (row,) = rows
    message = read_message(topic, body, REGISTRY)
    assert row["recipient"] == "push/loudi"
    assert (row["endpoint"], row["channel"]) == ("loudi-webhook", "webhook")
    assert row["key"] == delivery_key(message.digest, "push/loudi", "loudi-webhook")
    assert (row["subject"], row["subject_id"], row["event"]) == ("alert", a.id, "opened")
    assert row["notice"] == message.fields and row["next_ms"] == T0


def test_an_alert_of_another_station_is_not_pushed() -> None:
    a = alert_of(OTHER)
    assert pushed(expander()(f"alerts/grid/{REGISTRY.devices[OTHER].grid}", payload(a), T0)) == []


def test_every_change_is_pushed_whatever_its_severity_and_at_night() -> None:
    """People's channels filter by severity and hold all but critical in the quiet hours; the
    neighbouring city gets every change at once."""
    assert plan().not_before("info", NIGHT) > NIGHT  # people's would wait for the morning
    for severity in ("info", "warning", "major", "critical"):
        for action in ("opened", "acknowledged", "resolved"):
            a = alert_of(PUSHED, severity)
            rows = pushed(expander()("alerts/operators", payload(a, action), NIGHT))
            assert [(r["recipient"], r["next_ms"]) for r in rows] == [("push/loudi", NIGHT)]


def test_our_own_undelivered_escalation_is_not_pushed() -> None:
    a = alert_of(PUSHED, "critical")
    body = payload(a, "escalated", undelivered=True)
    assert pushed(expander()("alerts/operators", body, T0)) == []


def test_one_change_told_on_several_topics_is_pushed_once(tmp_path: Path) -> None:
    store = DeliveryStore(sqlite_url(tmp_path))
    queue = JobQueue(sqlite_url(tmp_path))
    a = alert_of(PUSHED, "critical")
    body = payload(a)
    for topic in ("alerts/grid/430522100001-02", "alerts/operators", "alerts/river/zj-xs"):
        queue.put(topic, body, T0)
    assert store.dispatch(expander(), T0)[0] == 3
    found = [d for d in store.of_subject("alert", a.id) if d["recipient"] == "push/loudi"]
    assert len(found) == 1
    store.close()
    queue.close()


# -- observations ---------------------------------------------------------------------------

ROWS = {
    "river-zj-0005": {"time": T0 - 30_000, "device": "river-zj-0005", "water_level_m": 203.41,
                      "flow_m3s": 812.0, "seq": 7, "grid": "430522100001-02"},
}  # fmt: skip


def test_a_batch_lists_each_station_with_its_newest_values_and_units() -> None:
    (push,) = config().push
    notice = batch_notice(push, REGISTRY, ROWS, 1_794_999_900_000)
    assert (notice["subject"], notice["subject_id"], notice["event"]) == (
        "push",
        "loudi",
        "observations",
    )
    data = notice["data"]
    assert data["push"] == "loudi" and data["every_s"] == 300
    assert data["period_start"] == "2026-11-18T11:05:00.000Z"
    first, second = data["stations"]
    assert first == {
        "device": "river-zj-0005",
        "name": "资江酿溪水文站",
        "kind": "river",
        "river": "资江",
        "km": 52.0,
        "time": "2026-11-18T11:06:10.000Z",
        "fields": {
            "water_level_m": {"value": 203.41, "unit": "m"},
            "flow_m3s": {"value": 812.0, "unit": "m³/s"},
        },
    }
    assert (second["device"], second["time"], second["fields"]) == ("river-zj-0006", None, {})


def test_the_query_asks_for_each_stations_newest_point() -> None:
    assert newest_query(Kind.RIVER, ["river-zj-0005", "it's"]) == (
        """SELECT * FROM "river" WHERE "device" = 'river-zj-0005' OR "device" = 'it\\'s' """
        """GROUP BY "device" ORDER BY time DESC LIMIT 1"""
    )


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_one_batch_per_period_and_a_period_queued_twice_is_one_delivery(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path)
    store = DeliveryStore(url)
    queries: list[str] = []
    down = False

    async def rows(_http: Any, influx_url: str, db: str, query: str) -> list[dict[str, Any]]:
        assert (influx_url, db) == ("http://influx", "citysense")
        if down:
            raise ConnectionError("InfluxDB is down")
        queries.append(query)
        return list(ROWS.values())

    (push,) = config().push
    clock = Clock(1_795_000_000.0)  # 11:06:40 UTC: the period from 11:05:00

    def task() -> ObservationPushes:
        made = ObservationPushes([push], REGISTRY, JobQueue(url), rows, "http://influx",
                                 "citysense", clock=clock)  # fmt: skip
        return made

    first = task()
    async with aiohttp.ClientSession() as http:
        assert await first.round(http) == 1
        clock.t += 100  # same period
        assert await first.round(http) == 0
        # a restart inside the period: queued again, the same delivery
        second = task()
        assert await second.round(http) == 1
        assert store.dispatch(expander(), T0) == (2, 1)
        down = True  # the next period, InfluxDB down: nothing queued, nothing raised
        clock.t += 300
        assert await second.round(http) == 0 and await second.round(http) == 0
        down = False
        assert await second.round(http) == 1
        assert store.dispatch(expander(), T0) == (1, 1)
    assert len(queries) == 3
    due = store.due("loudi-webhook", T0, 10)
    assert [d.recipient for d in due] == ["push/loudi", "push/loudi"]
    period = 1_794_999_900_000
    assert due[0].key == delivery_key(f"observations/{period}", "push/loudi", "loudi-webhook")
    notice = notice_of(due[0].key, due[0].notice)
    assert notice.subject == "push" and notice.data["stations"][0]["fields"]["water_level_m"] == {
        "value": 203.41,
        "unit": "m",
    }
    first.close()
    second.close()
    store.close()


def test_the_webhook_sends_the_batch_signed() -> None:
    (push,) = config().push
    fields = batch_notice(push, REGISTRY, ROWS, 1_794_999_900_000)
    notice = notice_of("k1", fields)
    hook = Webhook(
        WebhookConfig.model_validate({"type": "webhook", "url": "http://x", "secret": "s"})
    )
    request = hook.request(notice, T0)
    assert request.headers[SIGNATURE] == signature("s", T0, request.body)
    body = json.loads(request.body)
    assert body["data"] == fields["data"] and body["key"] == "k1"


def test_an_alert_notice_sends_an_empty_data() -> None:
    a = alert_of(PUSHED)
    message = read_message("alerts/operators", payload(a), REGISTRY)
    hook = Webhook(
        WebhookConfig.model_validate({"type": "webhook", "url": "http://x", "secret": "s"})
    )
    body = json.loads(hook.request(message.notice("k2"), T0).body)
    assert body["data"] == {} and body["subject"] == "alert"
