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
    """Receive order, safe set, and the in-order PUBACKs that follow."""

    def __init__(self) -> None:
        self._ack: Ack | None = None
        self._order: deque[tuple[int, int]] = deque()  # (token, mid; 0 when QoS 0)
        self._safe: set[int] = set()
        self._next = 0
        self._first_of_generation = 0
        self.acknowledged = 0  # PUBACKs sent, for tests and metrics

    @property
    def unacknowledged(self) -> int:
        """Messages of this connection received and not yet acknowledged."""
        return len(self._order)

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
        self._next += 1
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
