"""A token bucket per API token on the write endpoints, answering 429 with Retry-After.

In memory and per process: the limit is there to stop one runaway script or stolen token from
flooding acknowledgements, MQTT announcements and rule validations, not to meter fairly across
replicas. Keyed by the token's id (never its secret), so the map is bounded by the tokens file.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from ingest.api.auth import caller, operator
from ingest.api.errors import ApiError
from ingest.api.tokens import Principal

WRITES_PER_MINUTE = 30.0  # sustained rate per token
WRITE_BURST = 10  # requests a token may make at once after being idle
_PRUNE_ABOVE = 1024  # buckets kept before full (idle) ones are dropped


class TokenBucket:
    """Buckets of ``burst`` requests refilled at ``per_minute``, one per key."""

    def __init__(
        self,
        per_minute: float = WRITES_PER_MINUTE,
        burst: int = WRITE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate_per_s = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of ``key``: 0.0 if allowed, else seconds until one is."""
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            # max(): a clock that steps back must not drain the bucket.
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > _PRUNE_ABOVE:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: forget it.
        full_after = self.burst / self.rate_per_s
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


def limiter(request: Request) -> TokenBucket:
    """The application's write limiter (``create_app`` puts it on ``app.state``)."""
    bucket: TokenBucket = request.app.state.write_limiter
    return bucket


def _spend(bucket: TokenBucket, principal: Principal) -> Principal:
    wait = bucket.take(principal.token_id)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this token; try again in {seconds} s",
            detail={"retry_after_s": seconds},
            headers={"Retry-After": str(seconds)},
        )
    return principal


# async: runs on the event loop, not in the thread pool, so the check adds no hop.
async def limited_caller(
    principal: Annotated[Principal, Depends(caller)],
    bucket: Annotated[TokenBucket, Depends(limiter)],
) -> Principal:
    """The authenticated caller, after spending one of its write requests; 429 if none left."""
    return _spend(bucket, principal)


async def limited_operator(
    principal: Annotated[Principal, Depends(operator)],
    bucket: Annotated[TokenBucket, Depends(limiter)],
) -> Principal:
    """An operator, as ``limited_caller``; a grid worker gets its 404 without spending."""
    return _spend(bucket, principal)


WriteCaller = Annotated[Principal, Depends(limited_caller)]
WriteOperator = Annotated[Principal, Depends(limited_operator)]
