"""The write limiter's bucket maths, on a clock the test moves."""

import pytest

from ingest.api.ratelimit import WRITE_BURST, WRITES_PER_MINUTE, TokenBucket


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket(per_minute: float = 30, burst: int = 10) -> tuple[TokenBucket, Clock]:
    clock = Clock()
    return TokenBucket(per_minute, burst, clock), clock


def test_defaults_are_thirty_a_minute_with_a_burst_of_ten() -> None:
    assert (WRITES_PER_MINUTE, WRITE_BURST) == (30.0, 10)
    assert TokenBucket().rate_per_s == 0.5


def test_a_burst_is_allowed_then_the_next_waits_for_one_refill() -> None:
    limiter, _ = bucket()
    assert [limiter.take("a") for _ in range(10)] == [0.0] * 10
    assert limiter.take("a") == pytest.approx(2.0)  # 30/min: one every 2 s
    assert limiter.take("a") == pytest.approx(2.0)  # a refused request costs nothing


def test_refill_is_proportional_to_time_and_capped_at_the_burst() -> None:
    limiter, clock = bucket()
    for _ in range(10):
        limiter.take("a")
    clock.now += 1.0  # half a request back
    assert limiter.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(2.0)
    clock.now += 3600  # an hour idle refills to the burst, not to 1800
    assert [limiter.take("a") for _ in range(10)] == [0.0] * 10
    assert limiter.take("a") > 0


def test_sustained_rate_is_the_configured_rate() -> None:
    limiter, clock = bucket(per_minute=30, burst=10)
    allowed = 0
    for _ in range(600):  # ten minutes, a request every second
        allowed += limiter.take("a") == 0.0
        clock.now += 1.0
    assert allowed == 10 + 300 - 1  # the burst, then one per 2 s (the last not yet due)


def test_tokens_have_separate_buckets() -> None:
    limiter, _ = bucket(burst=2)
    assert limiter.take("a") == limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_a_clock_that_steps_back_neither_refills_nor_drains() -> None:
    limiter, clock = bucket(burst=2)
    limiter.take("a")
    clock.now -= 50
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_idle_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    limiter, clock = bucket(per_minute=60, burst=1)
    for i in range(1500):
        limiter.take(f"t{i}")
        clock.now += 0.01
    assert len(limiter._buckets) <= 1025
    clock.now += 100  # every bucket is full again
    limiter.take("late")
    for i in range(1100):
        limiter.take(f"u{i}")
    assert len(limiter._buckets) < 1500
    # Forgetting a full bucket changes nothing: it starts full again.
    assert limiter.take("t0") == 0.0


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_nonsense_limits_are_refused(per_minute: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(per_minute, burst)
