"""A token bucket per endpoint, on an injected clock (tests use a fake one).

A platform documents "N messages per minute" for one endpoint (a WeCom group robot: 20). A
bucket holding ``b`` tokens and refilled at ``r`` per second lets through at most ``b`` plus
the tokens that arrive within any 60 s window after the first, fewer than ``r·60``; with
``b = max(1, N // 10)`` and ``r = (N - b + 0.5) / 60`` no minute ever sees more than N (the
half token is a margin for the clock's rounding; a rate of 1 is one every 120 s), and a short
burst of ``b`` goes at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``take()`` a token if one is there; ``wait_s()`` until the next one is."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        per_minute = max(1, per_minute)
        self.capacity = float(max(1, per_minute // 10))
        self.rate_per_s = (per_minute - self.capacity + 0.5) / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    @property
    def available(self) -> int:
        """Whole tokens there now."""
        self._refill()
        return int(self._tokens + 1e-9)

    def take(self) -> bool:
        """Take one token; False (and nothing taken) if there is none."""
        self._refill()
        if self._tokens + 1e-9 >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)
