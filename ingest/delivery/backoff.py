"""When to try a delivery again: exponential backoff with full jitter, honouring the
platform's ``retry_after``, and when to give up (``max_age``: the delivery is ``expired``).

The MQTT session's ``backoff_delay`` (full jitter, uniform in [0, min(max, base·2^n)]) is the
same schedule; it is repeated here with a random source to inject, and a floor of half the
step, so a retry is never immediate (a platform down answers 500 at once: full jitter from 0
would hammer it with near-zero waits).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 2.0
    max_s: float = 300.0
    max_age_s: float = 24 * 3600.0

    def delay_s(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The wait after the ``attempt``-th failed attempt (1 = the first): uniform in
        [step/2, step], step = min(max, base·2^(attempt-1)); at least ``retry_after_s``."""
        step = min(self.max_s, self.base_s * 2 ** max(0, min(attempt - 1, 60)))
        wait: float = step / 2 + rand() * step / 2
        if retry_after_s is not None and retry_after_s > 0:
            wait = max(wait, min(retry_after_s, self.max_age_s))
        return wait

    def expired(self, created_ms: int, at_ms: int) -> bool:
        """Whether a delivery made at ``created_ms`` is given up on at ``at_ms``."""
        return at_ms - created_ms >= self.max_age_s * 1000
