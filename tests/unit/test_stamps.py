"""Messages without ts: one stamp per statement, kept through a restart."""

from __future__ import annotations

import json

from ingest.intake.stamps import UntimedStamps

TOPIC = "iot/river/r1/status"
OFF = b'{"online": false}'
ON = b'{"online": true}'


def test_the_same_statement_keeps_its_first_stamp_and_a_new_one_gets_its_own() -> None:
    stamps = UntimedStamps()
    assert stamps.stamp(TOPIC, OFF, 1000) == 1000
    assert stamps.stamp(TOPIC, OFF, 5000) == 1000  # a retained redelivery: the same point
    assert stamps.stamp("iot/river/r2/status", OFF, 6000) == 6000  # per topic
    assert stamps.stamp(TOPIC, ON, 7000) == 7000  # a new statement
    assert stamps.stamp(TOPIC, OFF, 9000) == 9000  # offline again, later: a new fact
    again = UntimedStamps.from_data(json.loads(json.dumps(stamps.data())))
    assert again.stamp(TOPIC, OFF, 12_000) == 9000  # after a restart, as before it


def test_unreadable_saved_data_starts_empty() -> None:
    assert UntimedStamps.from_data({"t": ["x"], "u": "nope"}).data() == {}
    assert UntimedStamps.from_data(None).data() == {}
