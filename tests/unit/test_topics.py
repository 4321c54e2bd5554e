import pytest

from devices.kinds import Channel, Kind, Level
from devices.topics import (
    DeviceTopic,
    TopicError,
    alert_topic,
    device_topic,
    parse_device_topic,
    shared_filter,
)


def test_parse_round_trips_with_build() -> None:
    for kind in Kind:
        for channel in Channel:
            topic = device_topic(kind, "river-zj-0001", channel)
            assert parse_device_topic(topic) == DeviceTopic(kind, "river-zj-0001", channel)


@pytest.mark.parametrize(
    ("topic", "what"),
    [
        ("iot/river/r1", "not iot/"),
        ("iot/river/r1/telemetry/extra", "not iot/"),
        ("dev/river/r1/telemetry", "not iot/"),
        ("iot/boat/r1/telemetry", "unknown kind"),
        ("iot/river/r1/command", "unknown channel"),
        ("iot/river//telemetry", "device id"),
        ("iot/river/-r1/telemetry", "device id"),
        ("iot/river/r 1/telemetry", "device id"),
        ("iot/river/" + "x" * 65 + "/telemetry", "device id"),
        ("iot/river/河/telemetry", "device id"),
    ],
)
def test_bad_topics_name_the_problem(topic: str, what: str) -> None:
    with pytest.raises(TopicError, match=what):
        parse_device_topic(topic)


def test_builders_refuse_wildcards_and_separators() -> None:
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(TopicError):
            device_topic(Kind.GATE, bad, Channel.EVENT)
        with pytest.raises(TopicError):
            alert_topic(Level.GRID, bad)


def test_alert_and_shared_topics() -> None:
    assert alert_topic(Level.VILLAGE, "430502001001") == "alerts/village/430502001001"
    assert shared_filter("citysense") == "$share/citysense/iot/+/+/+"
