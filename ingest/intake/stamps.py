"""Times for messages that carry none: stamped once, not on every delivery.

A status without ``ts`` (the broker's last will above all) is stamped with the time it was
received. But the broker sends the retained status of every device again on each SUBSCRIBE —
every reconnect and every restart — and a will it could not see acknowledged comes again
after a crash: each delivery stamped anew was a new point per device per reconnect, and a
will stored twice. So the stamp is remembered per topic with the payload it was given to:
the same statement on the same topic keeps its first stamp (the point written again is the
same point, which InfluxDB keeps once); a different one is stamped when it arrives.

The memory is one entry per topic (bounded by the registry's devices), saved with the rule
engine's state — in the same transaction, before the message is acknowledged — so it holds
across restarts exactly as far as the acknowledgements do.
"""

from __future__ import annotations

import hashlib
from typing import Any


class UntimedStamps:
    """topic → (digest of the payload, the ms it was stamped with)."""

    def __init__(self, entries: dict[str, tuple[str, int]] | None = None) -> None:
        self._entries = entries or {}

    def stamp(self, topic: str, payload: bytes, now_ms: int) -> int:
        """The time for ``payload`` on ``topic``, which carries none, received at ``now_ms``."""
        digest = hashlib.blake2b(payload, digest_size=16).hexdigest()
        known = self._entries.get(topic)
        if known is not None and known[0] == digest:
            return known[1]
        self._entries[topic] = (digest, now_ms)
        return now_ms

    def merge(self, other: UntimedStamps) -> None:
        """Add ``other``'s topics (a partition taken over); a topic known here stays as it is."""
        for topic, entry in other._entries.items():
            self._entries.setdefault(topic, entry)

    def data(self) -> dict[str, list[Any]]:
        """JSON-ready (for the engine's snapshot)."""
        return {topic: [digest, ts] for topic, (digest, ts) in self._entries.items()}

    @classmethod
    def from_data(cls, data: Any) -> UntimedStamps:
        """Back from ``data``; empty for anything unreadable (an older snapshot has none)."""
        entries: dict[str, tuple[str, int]] = {}
        if isinstance(data, dict):
            for topic, value in data.items():
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and isinstance(value[0], str)
                    and isinstance(value[1], int)
                ):
                    entries[str(topic)] = (value[0], value[1])
        return cls(entries)
