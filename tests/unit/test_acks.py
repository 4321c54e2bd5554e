"""Acknowledge-after-durable: PUBACKs in receive order, only for what is safe, per connection."""

from __future__ import annotations

from ingest.mqtt.acks import AckTracker


def tracker() -> tuple[AckTracker, list[int]]:
    sent: list[int] = []
    acks = AckTracker()
    acks.connected(sent.extend)
    return acks, sent


def test_acknowledges_in_receive_order_once_everything_before_is_safe() -> None:
    acks, sent = tracker()
    tokens = [acks.received(mid, 1) for mid in (11, 12, 13, 14)]
    acks.safe([tokens[1], tokens[3]])  # later ones first: nothing may go out yet
    assert sent == [] and acks.unacknowledged == 4
    acks.safe([tokens[0]])
    assert sent == [11, 12]  # 13 is not safe, so 14 waits behind it
    acks.safe([tokens[2]])
    assert sent == [11, 12, 13, 14] and acks.unacknowledged == 0 and acks.acknowledged == 4


def test_qos0_messages_take_a_place_but_send_no_puback() -> None:
    acks, sent = tracker()
    first, quiet, last = acks.received(5, 1), acks.received(0, 0), acks.received(6, 1)
    acks.safe([last, quiet])
    assert sent == []
    acks.safe([first])
    assert sent == [5, 6] and acks.acknowledged == 2


def test_a_new_connection_forgets_the_old_ones_pending_messages() -> None:
    acks, old = tracker()
    stale = [acks.received(mid, 1) for mid in (1, 2)]
    new: list[int] = []
    acks.connected(new.extend)  # the broker will deliver those two again
    fresh = acks.received(1, 1)  # message ids start over on a new connection
    acks.safe(stale)  # the old batch became durable after the reconnect
    assert old == [] and new == []
    acks.safe([fresh])
    assert new == [1] and acks.unacknowledged == 0


def test_after_a_disconnect_nothing_is_sent_until_the_next_connection() -> None:
    acks, sent = tracker()
    token = acks.received(7, 1)
    acks.disconnected()
    acks.safe([token])
    assert sent == [] and acks.acknowledged == 0


def test_one_report_sends_its_pubacks_in_one_call() -> None:
    calls: list[list[int]] = []
    acks = AckTracker()
    acks.connected(calls.append)
    tokens = [acks.received(mid, 1) for mid in (1, 2, 3)]
    acks.safe(tokens)
    assert calls == [[1, 2, 3]]
