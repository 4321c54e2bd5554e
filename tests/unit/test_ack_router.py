"""Acknowledgements of several sessions feeding one pipeline (ingest/mqtt/acks.py AckRouter)."""

from __future__ import annotations

from ingest.mqtt.acks import AckRouter


def test_tokens_name_their_session_and_acks_go_to_it() -> None:
    router = AckRouter(stride=16)
    sent: dict[int, list[int]] = {3: [], 7: []}
    a, b = router.tracker(3), router.tracker(7)
    a.connected(sent[3].extend)
    b.connected(sent[7].extend)
    ta = [a.received(mid, 1) for mid in (1, 2, 3)]
    tb = [b.received(mid, 1) for mid in (10, 11)]
    assert {t % 16 for t in ta} == {3} and {t % 16 for t in tb} == {7}
    router.safe([tb[1], ta[0], tb[0], ta[2]])  # any order, mixed
    assert sent == {3: [1], 7: [10, 11]}  # in arrival order per session, 2 holds back 3
    router.safe([ta[1]])
    assert sent[3] == [1, 2, 3]
    assert router.unacknowledged == 0


def test_a_partition_that_comes_back_never_acks_a_new_message_with_an_old_token() -> None:
    router = AckRouter(stride=16)
    old = router.tracker(5)
    old.connected(lambda mids: None)
    stale = [old.received(mid, 1) for mid in (1, 2)]  # in the pipeline when the lease moved
    router.forget(5)
    sent: list[int] = []
    new = router.tracker(5)  # the lease came back
    new.connected(sent.extend)
    fresh = [new.received(mid, 1) for mid in (1, 2)]  # the broker reuses message ids
    assert set(stale).isdisjoint(fresh)
    router.safe(stale)  # late reports of the old session's messages
    assert sent == []
    router.safe(fresh)
    assert sent == [1, 2]
    router.forget(9)  # a partition never held: nothing happens
    router.safe([9, 25])
