"""Issue 19: a channel job expanded into deliveries — who (people holding the post, a
department unit's own endpoints), on which channels (the severity's), when (quiet hours) —
and the queue itself: written with the announcement, expanded and deleted in one transaction."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ingest.alerts.store import AlertStore, sqlite_url
from ingest.cases.store import CaseStore
from ingest.delivery.dispatch import Expander, delivery_key, expand
from ingest.delivery.notices import read_message
from ingest.delivery.store import DeliveryStore
from tests.unit.casecity import people, registry
from tests.unit.delivery_city import T0, alert, announcements, payload, plan

NIGHT = T0 + 5 * 3600 * 1000  # 22:46 in Shanghai: quiet hours (22:00-07:00)
MORNING_7 = 1_795_042_800_000  # 2026-11-19 07:00 Asia/Shanghai


def rows(severity: str, topic: str, now_ms: int = T0) -> list[dict[str, object]]:
    reg = registry()
    who = people(reg)
    message = read_message(topic, payload(alert(severity)), reg)
    return expand(message, plan(reg, who), who, reg, now_ms)


def test_a_critical_alert_goes_to_every_channel_of_the_people_holding_the_post() -> None:
    found = rows("critical", "alerts/grid/g1")
    assert {(r["recipient"], r["endpoint"], r["channel"]) for r in found} == {
        ("person/li.na", "grid-wecom", "wecom"),
        ("person/li.na", "gw", "sms"),
    }
    digest = hashlib.sha256(payload(alert("critical"))).hexdigest()
    for r in found:
        assert r["key"] == delivery_key(digest, str(r["recipient"]), str(r["endpoint"]))
        assert r["state"] == "pending" and r["next_ms"] == T0 and r["subject_id"] == alert().id
    notice = found[0]["notice"]
    assert isinstance(notice, dict)
    assert notice["place"] == "区一 街道一 社区一 网格一"  # the alert's areas, top first
    assert notice["title"].startswith("【紧急·新告警】") and notice["at"].endswith("+08:00")


def test_a_warning_goes_to_the_robots_only() -> None:
    found = rows("warning", "alerts/grid/g1")
    assert [(r["recipient"], r["endpoint"]) for r in found] == [("person/li.na", "grid-wecom")]


def test_a_department_unit_is_told_on_its_own_endpoints_and_its_departments() -> None:
    # flood_hq's unit in co1 has a webhook; its staff have no channels of their own.
    assert [
        (r["recipient"], r["endpoint"]) for r in rows("major", "alerts/department/flood_hq/co1")
    ] == [("department/flood_hq/co1", "flood-hook")]
    assert rows("warning", "alerts/department/flood_hq/co1") == []  # webhook: not for warnings
    # "urban" (the department) gives every unit of it the robot.
    urban = rows("info", "alerts/department/urban/co1")
    assert [(r["recipient"], r["endpoint"]) for r in urban] == [
        ("department/urban/co1", "grid-wecom")
    ]
    assert rows("critical", "alerts/grid/g3") == []  # zhao.min has no channels


def test_quiet_hours_hold_all_but_critical_until_they_end() -> None:
    held = rows("warning", "alerts/grid/g1", NIGHT)
    assert [r["next_ms"] for r in held] == [MORNING_7]
    assert all(r["next_ms"] == NIGHT for r in rows("critical", "alerts/grid/g1", NIGHT))


def test_not_an_announcement_expands_to_nothing() -> None:
    reg = registry()
    who = people(reg)
    expander = Expander(lambda: plan(reg, who), who, reg)
    assert expander("alerts/grid/g1", b"not json", T0) == []
    assert expander("other/grid/g1", payload(alert()), T0) == []


def test_the_job_is_written_with_the_announcement_and_expanded_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    alerts = AlertStore(url)
    deliveries = DeliveryStore(url)
    reg = registry()
    who = people(reg)
    expander = Expander(lambda: plan(reg, who), who, reg)
    a = alert("critical", audiences=("grid/g1", "department/flood_hq/co1", "county/co1"))
    alerts.queue_announcements(announcements(a))
    assert deliveries.jobs_waiting() == 3 and len(alerts.pending_announcements()) == 3
    # li.na ×2, the unit's webhook; and county/co1, which no endpoint reaches: a failed
    # delivery to the audience, so a critical alert reaching nobody is seen (escalation).
    assert deliveries.dispatch(expander, T0) == (3, 4)
    assert deliveries.jobs_waiting() == 0
    assert deliveries.dispatch(expander, T0) == (0, 0)
    # The same change told again on the same topic (an outbox row read twice) is one message.
    alerts.queue_announcements(announcements(a)[:1])
    assert deliveries.dispatch(expander, T0 + 1) == (1, 0)
    shown = deliveries.of_subject("alert", a.id)
    assert len(shown) == 4 and {d["state"] for d in shown} == {"pending", "failed"}
    assert [d["recipient"] for d in shown if d["state"] == "failed"] == ["county/co1"]
    assert deliveries.counts() == {"pending": 3, "failed": 1}
    alerts.close()
    deliveries.close()


def test_a_database_without_the_queue_still_takes_announcements(tmp_path: Path) -> None:
    """The case store alone (tools, tests) creates only ``announcements``: the job is skipped."""
    store = CaseStore(sqlite_url(tmp_path))
    from ingest.alerts.transaction import put_announcements

    with store._writer.begin() as conn:
        put_announcements(conn, announcements(alert()))
    store.close()
