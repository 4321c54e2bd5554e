"""Each device's measured clock skew (ingest/intake/skew.py), and how the pipeline feeds it:
only the device's own stamps, only messages read on time (not a backlog). Issue 14 item 3.

Unit tests: the estimate must be checked against a clock error known to the millisecond, and
the network delays and backlogs that must not move it are set here, not left to chance."""

from __future__ import annotations

import json
import random
import time

from ingest.intake.batcher import Batcher
from ingest.intake.decode import Decoder
from ingest.intake.ledger import Ledger
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.intake.skew import SAMPLES, ClockSkew
from ingest.pipeline import Pipeline
from tests.unit.test_pipeline import DeadLetters
from tests.unit.test_rules_support import MINUTE, SECOND, T0, city

SLOW_MS = -4 * MINUTE


def test_a_device_four_minutes_slow_shows_about_minus_240_s_whatever_the_delays() -> None:
    skew = ClockSkew()
    rng = random.Random(14)
    for i in range(60):  # an hour of readings, each delayed 20 ms to 8 s on its way
        sent = T0 + i * MINUTE
        skew.saw("r1", sent + SLOW_MS, sent + rng.randint(20, 8000))
    measured = skew.skew_ms("r1")
    assert measured is not None
    # Delays only make stamp − arrival smaller: the estimate is the least-delayed sample.
    assert SLOW_MS - 8000 < measured <= SLOW_MS
    assert measured > SLOW_MS - 1000  # one of the last 8 came within a second: a mean would not
    assert skew.skew_ms("g1") is None  # never heard: unknown, not 0


def test_a_burst_of_delayed_messages_does_not_inflate_the_skew() -> None:
    skew = ClockSkew()
    skew.saw("r1", T0, T0 + 50)  # on time, clock right
    for i in range(SAMPLES - 1):  # then held up 3 minutes in a device queue
        skew.saw("r1", T0 + i * SECOND, T0 + 3 * MINUTE)
    assert skew.skew_ms("r1") == -50
    assert skew.skewed(60 * SECOND) == 0


def test_the_estimate_follows_a_clock_set_right_within_a_ring() -> None:
    skew = ClockSkew()
    for i in range(SAMPLES):
        skew.saw("r1", T0 + i * MINUTE + 90 * SECOND, T0 + i * MINUTE)  # 90 s fast
    assert skew.skewed(60 * SECOND) == 1
    later = T0 + SAMPLES * MINUTE
    for i in range(SAMPLES - 1):
        skew.saw("r1", later + i * MINUTE, later + i * MINUTE + 30)
    assert skew.skew_ms("r1") == 90 * SECOND  # one fast sample left in the ring
    skew.saw("r1", later + SAMPLES * MINUTE, later + SAMPLES * MINUTE + 30)
    assert skew.skew_ms("r1") == -30
    assert skew.skewed(60 * SECOND) == 0


def test_memory_is_a_small_ring_per_device() -> None:
    skew = ClockSkew()
    for i in range(100_000):
        skew.saw(f"d{i % 10}", T0 + i, T0 + i + 5)
    assert len(skew._rings) == 10
    assert all(len(ring) == SAMPLES for ring in skew._rings.values())


def test_forget_since_drops_late_samples_and_devices_left_with_none() -> None:
    skew = ClockSkew()
    skew.saw("r1", T0, T0 + 10)
    skew.saw("r1", T0 - 5 * MINUTE, T0 + 2 * SECOND)  # a backlog's first message
    skew.saw("g1", T0 - 5 * MINUTE, T0 + 2 * SECOND)
    skew.forget_since(T0 + SECOND)
    assert skew.skew_ms("r1") == -10
    assert skew.skew_ms("g1") is None


class FakeClock:
    def __init__(self) -> None:
        self.backlog = False


class FakeAlerting:
    """What the pipeline asks of ``Alerting`` here: the read clock's backlog verdict."""

    def __init__(self) -> None:
        self.read_clock = FakeClock()
        self.pending_points = 0

    def observe(self, *args: object) -> list[object]:
        return []

    def take(self, *args: object) -> None:
        pass


def pipeline(skew: ClockSkew, alerting: FakeAlerting) -> Pipeline:
    registry = city()
    decoder = Decoder(registry, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10)
    encoder = LineEncoder(registry, PlateHasher(b"k"))
    return Pipeline(
        decoder,
        encoder,
        Batcher(1000, 60),
        DeadLetters(),  # type: ignore[arg-type]
        Ledger(),
        alerting,  # type: ignore[arg-type]
        skew,
    )


def test_the_pipeline_feeds_device_stamps_read_on_time_only() -> None:
    """A status without ts (stamped on receipt) says nothing of the clock; nor does a
    message read during a backlog. Wall time is the real clock: stamps are set from it."""
    skew = ClockSkew()
    alerting = FakeAlerting()
    p = pipeline(skew, alerting)
    now = time.time_ns() // 1_000_000
    p.handle("iot/gate/g1/status", json.dumps({"online": True}).encode())
    assert skew.skew_ms("g1") is None
    p.handle(
        "iot/river/r1/telemetry", json.dumps({"ts": now - 240_000, "water_level_m": 210}).encode()
    )
    measured = skew.skew_ms("r1")
    assert measured is not None and -241_000 < measured <= -240_000
    alerting.read_clock.backlog = True  # the read clock now finds a backlog: the last 5 s go
    p.handle(
        "iot/river/r2/telemetry", json.dumps({"ts": now - 600_000, "water_level_m": 210}).encode()
    )
    assert skew.skew_ms("r1") is None and skew.skew_ms("r2") is None
    alerting.read_clock.backlog = False
    p.handle(
        "iot/river/r2/telemetry", json.dumps({"ts": now + 90_000, "water_level_m": 210}).encode()
    )
    assert skew.skewed(60_000) == 1
    assert p._dead_letters.rows == []  # type: ignore[attr-defined]  # all four were accepted


def test_estimates_saved_and_loaded_are_replaced_by_the_devices_own_messages() -> None:
    from ingest.intake.skew import ClockSkew as Skew

    before = Skew(samples=3)
    before.saw("gate-1", 1_000 - 240_000, 1_000)  # four minutes slow
    restarted = Skew(samples=3)
    restarted.load({**before.data(), "bad": "x", 7: 1})  # junk in a saved state is skipped
    assert restarted.skew_ms("gate-1") == -240_000 and restarted.skew_ms("bad") is None
    restarted.forget_since(0)  # a backlog found at start does not drop what was saved
    assert restarted.skew_ms("gate-1") == -240_000
    for i in range(3):  # the clock was set right meanwhile: its own samples take over
        restarted.saw("gate-1", 2_000 + i, 2_000 + i)
    assert restarted.skew_ms("gate-1") == 0
