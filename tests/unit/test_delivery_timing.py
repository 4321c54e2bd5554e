"""The delivery loop's clocks (issue 19): the token bucket per endpoint and the backoff
schedule, on a fake clock and a fixed random source."""

from __future__ import annotations

import pytest

from ingest.delivery.backoff import Backoff
from ingest.delivery.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sent_in(
    bucket: TokenBucket, clock: FakeClock, seconds: float, step: float = 0.1
) -> list[float]:
    """Take a token whenever there is one for ``seconds``; the times taken."""
    times = []
    end = clock.t + seconds
    while clock.t < end:
        while bucket.take():
            times.append(clock.t)
        clock.t += step
    return times


@pytest.mark.parametrize("per_minute", [1, 5, 20, 60, 600])
def test_no_minute_ever_sees_more_than_the_platforms_rate(per_minute: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute, clock)
    times = sent_in(bucket, clock, 600)
    worst = max(sum(1 for u in times if t <= u < t + 60) for t in times)
    assert worst <= per_minute
    # ... and the rate is used: at least 90 % of it over ten minutes (a rate of 1: half).
    assert len(times) >= (0.9 if per_minute > 1 else 0.5) * per_minute * 10


def test_a_short_burst_goes_at_once_then_tokens_come_back_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20, clock)  # WeCom's robot: 20 a minute
    assert bucket.available == 2  # capacity 20 // 10
    assert bucket.take() and bucket.take() and not bucket.take()
    assert bucket.wait_s() == pytest.approx(60 / 18.5)  # (20 - 2 + 0.5) a minute refill
    clock.t += 60 / 18.5
    assert bucket.take() and not bucket.take()
    clock.t += 3600  # idle for long: never more than the capacity
    assert bucket.available == 2


def test_backoff_doubles_within_jitter_and_stops_growing() -> None:
    b = Backoff(base_s=2.0, max_s=60.0)
    lows = [b.delay_s(n, rand=lambda: 0.0) for n in range(1, 9)]
    highs = [b.delay_s(n, rand=lambda: 1.0) for n in range(1, 9)]
    assert lows == [1, 2, 4, 8, 16, 30, 30, 30]  # half the step: never at once
    assert highs == [2, 4, 8, 16, 32, 60, 60, 60]
    assert b.delay_s(3, rand=lambda: 0.5) == pytest.approx(6.0)


def test_backoff_waits_at_least_what_the_platform_asked() -> None:
    b = Backoff(base_s=2.0, max_s=60.0, max_age_s=3600)
    assert b.delay_s(1, retry_after_s=30, rand=lambda: 1.0) == 30
    assert b.delay_s(8, retry_after_s=5, rand=lambda: 0.0) == 30  # its own wait is longer
    assert b.delay_s(1, retry_after_s=10**9, rand=lambda: 0.0) == 3600  # never past max age


def test_a_delivery_is_given_up_at_its_max_age() -> None:
    b = Backoff(max_age_s=24 * 3600)
    made = 1_800_000_000_000
    assert not b.expired(made, made + 24 * 3600 * 1000 - 1)
    assert b.expired(made, made + 24 * 3600 * 1000)


def test_a_schedule_of_retries_reaches_max_age_in_a_bounded_number_of_attempts() -> None:
    b = Backoff(base_s=2.0, max_s=300.0, max_age_s=24 * 3600)
    waited, attempts = 0.0, 0
    while not b.expired(0, round(waited * 1000)):
        attempts += 1
        waited += b.delay_s(attempts, rand=lambda: 1.0)
    # 2+4+...+256 (255 s... ) then 300 s steps: ~288 attempts in a day at most, not thousands
    assert 280 <= attempts <= 300
