"""Silence: device silent vs offline status vs one channel quiet, and back online."""

from __future__ import annotations

from devices.kinds import Channel
from devices.payloads import Status
from tests.unit.test_rules_support import (
    MINUTE,
    SECOND,
    T0,
    Feeder,
    actions,
    base,
    gate_telemetry,
    river,
    ruleset,
    status,
)

SILENCE = base("silent", "silence", "gate, river") + "  channels: [water_level_m, ph]\n"
FULL = {"water_level_m": 210.0, "ph": 7.2}


def test_silent_after_k_report_intervals_and_back_online() -> None:
    feed = Feeder(ruleset(SILENCE))
    assert feed("g1", gate_telemetry(T0)) == []  # g1 reports every 30 s; k = 3 → 90 s
    assert feed.tick(T0 + 90 * SECOND - 1) == []
    [silent] = feed.tick(T0 + 100 * SECOND)
    assert (silent.action, silent.reason.value, silent.ts_ms) == ("open", "silent", T0 + 90_000)
    assert silent.detail == (
        "no message for 1m30s; last at 2024-07-01T02:13:20+00:00 (3 × report interval 30s)"
    )
    assert feed.tick(T0 + 10 * MINUTE) == []  # still silent: nothing new
    [back] = feed("g1", gate_telemetry(T0 + 11 * MINUTE))
    assert (back.action, back.reason.value, back.detail) == (
        "clear",
        "back_online",
        "device back online",
    )
    # Every message moves the deadline: a device reporting on time is never silent.
    for n in range(1, 40):
        assert feed("g1", gate_telemetry(T0 + 11 * MINUTE + n * 30 * SECOND)) == []
        assert feed.tick(T0 + 11 * MINUTE + n * 30 * SECOND + 15 * SECOND) == []


def test_offline_status_opens_at_once_and_online_clears() -> None:
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0))
    [offline] = feed("g1", status(T0 + SECOND, online=False, reason="connection lost"))
    assert (offline.action, offline.reason.value) == ("open", "offline")
    assert offline.detail == "device reported offline (connection lost)"
    assert feed.tick(T0 + 60 * MINUTE) == []  # offline already says it: silence adds nothing
    assert feed("g1", gate_telemetry(T0 + SECOND // 2)) == []  # older than the status: late
    [back] = feed("g1", status(T0 + 61 * MINUTE, online=True))
    assert (back.action, back.reason.value) == ("clear", "back_online")


def test_silent_then_offline_is_one_condition_updated() -> None:
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0))
    assert actions(feed.tick(T0 + 5 * MINUTE)) == [("open", "silent")]
    assert actions(feed("g1", status(T0 + 6 * MINUTE, online=False))) == [("update", "offline")]
    assert actions(feed("g1", gate_telemetry(T0 + 7 * MINUTE))) == [("clear", "back_online")]


def test_an_old_retained_status_does_not_flip_the_device() -> None:
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0 + 10 * MINUTE))
    assert feed("g1", status(T0, online=False)) == []


def test_one_channel_quiet_while_the_device_reports_is_told_apart() -> None:
    feed = Feeder(ruleset(SILENCE))  # r1 reports every 60 s: 3 minutes
    for minute in range(3):
        assert feed("r1", river(T0 + minute * MINUTE, **FULL)) == []
    # The level gauge stops; pH keeps coming.
    assert feed("r1", river(T0 + 3 * MINUTE, ph=7.2)) == []
    assert feed("r1", river(T0 + 4 * MINUTE, ph=7.2)) == []
    [quiet] = feed("r1", river(T0 + 5 * MINUTE, ph=7.2))
    assert (quiet.action, quiet.reason.value, quiet.value) == (
        "open",
        "channel_quiet",
        "water_level_m",
    )
    assert quiet.detail == "water_level_m not reported for 3m while the device still reports"
    assert feed("r1", river(T0 + 6 * MINUTE, ph=7.2)) == []
    # Then the whole device goes quiet: the same condition, now "silent".
    [silent] = feed.tick(T0 + 9 * MINUTE)
    assert (silent.action, silent.reason.value) == ("update", "silent")
    # It comes back without the gauge: still channel_quiet, not back online.
    assert actions(feed("r1", river(T0 + 10 * MINUTE, ph=7.2))) == [("update", "channel_quiet")]
    # The gauge reports again.
    [resumed] = feed("r1", river(T0 + 11 * MINUTE, **FULL))
    assert (resumed.action, resumed.reason.value) == ("clear", "channel_resumed")


def test_a_channel_never_reported_is_not_watched() -> None:
    feed = Feeder(ruleset(SILENCE))
    for minute in range(30):  # a level-only station: it has no pH probe at all
        assert feed("r1", river(T0 + minute * MINUTE, water_level_m=210.0)) == []


def test_unseen_devices_are_watched_only_when_asked() -> None:
    feed = Feeder(ruleset(SILENCE))
    assert feed.tick(T0) == [] and feed.tick(T0 + 60 * MINUTE) == []
    feed = Feeder(ruleset(SILENCE + "  watch_unseen: true\n"))
    assert feed.tick(T0) == []
    found = feed.tick(T0 + 60 * MINUTE)
    # g1 (30 s), r1 (60 s), r2 (300 s): all silent since watching began; d1 is a road.
    assert sorted((t.device_id, t.ts_ms - T0) for t in found) == [
        ("g1", 90 * SECOND),
        ("r1", 3 * MINUTE),
        ("r2", 15 * MINUTE),
    ]
    assert all(
        t.detail.startswith("no message for") and "since watching began" in t.detail for t in found
    )


def test_a_delayed_message_clears_silence_without_going_back_in_time() -> None:
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0))
    [silent] = feed.tick(T0 + 5 * MINUTE)
    # A message from T0 + 60 s was held up in transit: the device did speak after all.
    [back] = feed("g1", gate_telemetry(T0 + MINUTE))
    assert back.action == "clear" and back.ts_ms == silent.ts_ms


PLANNED = SILENCE + "  planned_stop_reasons: [stopped, maintenance]\n"


def test_a_planned_stop_raises_nothing_until_the_device_speaks_again() -> None:
    feed = Feeder(ruleset(PLANNED))
    feed("g1", gate_telemetry(T0))
    assert feed("g1", status(T0 + SECOND, online=False, reason="stopped")) == []
    assert feed.tick(T0 + 24 * 60 * MINUTE) == []  # a day later: still no silence alarm
    # It speaks again: watched as usual from then on.
    assert feed("g1", gate_telemetry(T0 + 25 * 60 * MINUTE)) == []
    assert actions(feed.tick(T0 + 25 * 60 * MINUTE + 5 * MINUTE)) == [("open", "silent")]


def test_the_last_will_after_a_planned_stop_is_part_of_the_stop() -> None:
    """Issue 14 item 9: maintenance announced, then the power is cut: the broker publishes the
    device's will ({"online": false}, no ts: stamped on receipt, so newer than the stop). On
    ec1dc14 it opened device_silent (offline)."""
    feed = Feeder(ruleset(PLANNED))
    device = feed.registry.devices["g1"]
    feed("g1", gate_telemetry(T0))
    assert feed("g1", status(T0 + SECOND, online=False, reason="maintenance")) == []
    will = Status(online=False)
    assert feed.engine.observe(device, Channel.STATUS, will, T0 + MINUTE) == []
    assert feed.tick(T0 + 24 * 60 * MINUTE) == []
    # Without a planned stop before it, the same will opens at once.
    other = Feeder(ruleset(PLANNED))
    other("g1", gate_telemetry(T0))
    assert actions(other.engine.observe(device, Channel.STATUS, will, T0 + MINUTE)) == [
        ("open", "offline")
    ]


def test_a_planned_stop_clears_an_open_condition_and_other_reasons_still_alarm() -> None:
    feed = Feeder(ruleset(PLANNED))
    feed("g1", gate_telemetry(T0))
    assert actions(feed("g1", status(T0 + SECOND, online=False, reason="cable cut"))) == [
        ("open", "offline")
    ]
    [cleared] = feed("g1", status(T0 + 2 * SECOND, online=False, reason="maintenance"))
    assert (cleared.action, cleared.reason.value, cleared.detail) == (
        "clear",
        "planned_stop",
        "device announced a planned stop (maintenance)",
    )
    # Without the setting the same status is an ordinary offline.
    plain = Feeder(ruleset(SILENCE))
    plain("g1", gate_telemetry(T0))
    assert actions(plain("g1", status(T0 + SECOND, online=False, reason="stopped"))) == [
        ("open", "offline")
    ]


def test_a_planned_stop_survives_a_restart() -> None:
    feed = Feeder(ruleset(PLANNED))
    feed("g1", gate_telemetry(T0))
    feed("g1", status(T0 + SECOND, online=False, reason="stopped"))
    again = feed.restarted()
    assert again.tick(T0 + 60 * MINUTE) == []
