"""Acknowledge-after-durable: a QoS 1 message is PUBACKed only once it is safe.

Safe means its point is in InfluxDB or in the on-disk spool, or its rejection is committed to
the dead-letter store. Each received message gets a token (its place in the receive order);
the pipeline reports tokens as they become safe, in any order; acknowledgements go out in the
order the messages arrived, as MQTT 3.1.1 requires of a receiver (§4.6), so one slow message
holds back the PUBACKs of the messages behind it — and the broker's in-flight window then
holds back new deliveries, which is the backpressure that keeps memory bounded.

A new connection starts a new generation: what was received on the old one and is not yet
acknowledged will be delivered again by the broker (persistent session), so its tokens are
forgotten rather than acknowledged on a connection that never sent them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

# Send PUBACKs for these message ids, in this order (one write); called after every report
# of safe messages, with an empty list when none could be acknowledged yet.
Ack = Callable[[list[int]], object]


class AckTracker:
    """Receive order, safe set, and the in-order PUBACKs that follow.

    ``tag`` and ``stride``: several sessions (one per partition, ``AckRouter``) share one
    pipeline; each tracker's tokens are ``n × stride + tag``, so a token names its session.
    """

    def __init__(self, tag: int = 0, stride: int = 1, start: int = 0) -> None:
        self._ack: Ack | None = None
        self._order: deque[tuple[int, int]] = deque()  # (token, mid; 0 when QoS 0)
        self._safe: set[int] = set()
        self._stride = stride
        self._next = start * stride + tag  # the next token
        self._first_of_generation = self._next
        self.acknowledged = 0  # PUBACKs sent, for tests and metrics

    @property
    def unacknowledged(self) -> int:
        """Messages of this connection received and not yet acknowledged."""
        return len(self._order)

    @property
    def next_token(self) -> int:
        """The token the next message will get."""
        return self._next

    def connected(self, ack: Ack) -> None:
        """A new connection: forget the old one's pending messages (they come again)."""
        self._ack = ack
        self._order.clear()
        self._safe.clear()
        self._first_of_generation = self._next

    def disconnected(self) -> None:
        """The connection is gone: nothing more can be acknowledged on it."""
        self._ack = None

    def received(self, mid: int, qos: int) -> int:
        """Register a message in arrival order; return its token."""
        token = self._next
        self._next += self._stride
        self._order.append((token, mid if qos > 0 else 0))
        return token

    def safe(self, tokens: Iterable[int]) -> None:
        """These messages are durable; acknowledge every message up to the first that is not."""
        first = self._first_of_generation
        self._safe.update(t for t in tokens if t >= first)
        order, safe = self._order, self._safe
        mids: list[int] = []
        while order and order[0][0] in safe:
            token, mid = order.popleft()
            safe.discard(token)
            if mid:
                mids.append(mid)
        if self._ack is not None:
            self._ack(mids)
            self.acknowledged += len(mids)


class AckRouter:
    """The ``safe`` of many trackers (one per partition's session): each token goes to the
    tracker that issued it (``token % stride``). Tokens of a tracker no longer here (its
    partition went to another worker) are dropped: their messages come again to the new owner.
    """

    def __init__(self, stride: int) -> None:
        self.stride = stride
        self._trackers: dict[int, AckTracker] = {}
        self._ended: dict[int, int] = {}  # tag → where its closed tracker's tokens ended

    def tracker(self, tag: int) -> AckTracker:
        """A new tracker for session ``tag`` (0 ≤ tag < stride), replacing any before it. Its
        tokens start after every earlier tracker's of that tag: a late report of an old
        token must not acknowledge a new message."""
        if not 0 <= tag < self.stride:
            raise ValueError(f"tag {tag} outside 0..{self.stride - 1}")
        self.forget(tag)
        tracker = AckTracker(tag, self.stride, start=self._ended.get(tag, 0))
        self._trackers[tag] = tracker
        return tracker

    def forget(self, tag: int) -> None:
        """Session ``tag`` is closed: its tokens reported safe later go nowhere."""
        old = self._trackers.pop(tag, None)
        if old is not None:
            self._ended[tag] = old.next_token // self.stride + 1

    @property
    def unacknowledged(self) -> int:
        return sum(t.unacknowledged for t in self._trackers.values())

    def safe(self, tokens: Iterable[int]) -> None:
        """Report ``tokens`` safe to the trackers that issued them."""
        stride = self.stride
        groups: dict[int, list[int]] = {}
        for token in tokens:
            groups.setdefault(token % stride, []).append(token)
        for tag, group in groups.items():
            tracker = self._trackers.get(tag)
            if tracker is not None:
                tracker.safe(group)
