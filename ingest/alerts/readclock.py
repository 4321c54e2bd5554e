"""How far we have read: the clock silence is judged by.

A device is silent when the broker has had nothing from it for a while — not when *we* have
not read it: after a restart the broker hands over minutes of backlog, and while the broker
link is down nothing arrives from anyone. Judged against the wall clock, both looked like
every device falling silent at once (issue 13: 45 of 60 devices after a 40 s broker outage).

So silence is judged against this clock instead. It only ever moves forward, by steps:
- connected and caught up: as the wall clock moves;
- reading a backlog (a quorum of the devices read in the last few 2 s windows — at least 3,
  and at least half of them — had their oldest stamp in a window lag that window's end by
  more than ``behind_ms``): as far as the backlog has come — the step of the median of the
  devices' newest stamps, so the clock goes at the pace the backlog was sent, whatever the
  pace we read it at;
- the broker link down, or reading paused (backpressure), or nothing read while messages
  still wait for their acknowledgement: not at all.
Steps, not positions: a 40 s broker outage leaves the clock 40 s behind the wall clock, and
it stays so — devices that could not reach the broker are given that time back rather than
judged for it. Votes of devices (each device is one vote, however many messages it sends),
not the newest stamp, so a device whose clock is wrong — or one that floods old or future
stamps — moves nothing: alone it never makes a quorum, even in a quiet city where it is the
only device read for minutes (a lone vote that was the median of its window stopped the
clock for everyone: 55 min behind after an hour). Each window's lag is judged at the end of
that window, and only the verdict of the window just closed counts, so a quiet city's clock
loses no time to an old window's stamps. After a restart the clock continues from
where the last run stopped (the engine's snapshot keeps it); on a first start, from the
first message read.

Each device's "heard" time for silence is this clock at the moment its message was read —
arrival, not the device's own stamp — so a device whose clock is minutes slow is heard on
time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BEHIND_MS = 30_000  # newest read this far behind the wall clock: we are reading a backlog
WINDOW_MS = 2_000  # what "recently read" means
RECENT_WINDOWS = 5  # the devices heard in this many windows vote on a backlog
QUORUM = 3  # at least this many devices (or every device ever heard, if fewer) must lag


@dataclass(frozen=True, slots=True)
class ReadClockState:
    """What a restart continues from (kept in the engine's snapshot)."""

    read_ms: int
    anchor_ms: int | None


class ReadClock:
    """Read time in ms; ``saw`` on every message, ``now`` for the clock task."""

    def __init__(
        self,
        saved: ReadClockState | None,
        wall_ms: int,
        live: Callable[[], bool],
        waiting: Callable[[], int],
        *,
        behind_ms: int = BEHIND_MS,
        window_ms: int = WINDOW_MS,
    ) -> None:
        # Where the last run stopped reading, and the device time it had come to; None for a
        # first start, where the first message read sets both (a backlog queued before our
        # first start is judged in its own time).
        self._value = wall_ms if saved is None else min(saved.read_ms, wall_ms)
        self._unset = saved is None
        self._wall_at = wall_ms
        self._live = live  # connected and reading
        self._waiting = waiting  # messages read and not yet acknowledged
        self._behind_ms = behind_ms
        self._window_ms = window_ms
        self._window_start = _NEVER  # wall ms the current window of reads began
        self._last_read = _NEVER  # wall ms of the newest read (a window's lag is judged at it)
        # Per device, the newest device time it sent in the current window: one vote per
        # device, so one device flooding old or future stamps cannot steer the clock.
        self._stamps: dict[str, tuple[int, int]] = {}  # device → (oldest, newest) stamp
        # Per device heard in the last RECENT_WINDOWS windows: when its last window ended and
        # whether its oldest stamp in it lagged that window's end by more than ``behind_ms``.
        self._recent: dict[str, tuple[int, bool]] = {}
        self._known: set[str] = set()  # every device ever read (bounded by the registry)
        self._lagging = False  # the last window's verdict: a quorum of devices lagged
        self._median_at = _NEVER  # wall ms that window ended
        self._ahead: int | None = None  # median of the devices' newest stamps in it
        # The device time the clock stands for: a backlog steps the clock by its progress past it.
        self._anchor: int | None = None if saved is None else saved.anchor_ms
        self._backlog = False  # reading a backlog (decided in ``now``)

    def saw(self, ts_ms: int, wall_ms: int, device_id: str = "") -> int:
        """A message stamped ``ts_ms`` was read at ``wall_ms``; the read time it was heard at.

        On every message, so kept cheap (~0.5 µs): the mode is decided once per window.
        """
        if self._unset:
            self._unset = False
            self._value = self._anchor = min(ts_ms, wall_ms)
        if wall_ms - self._window_start >= self._window_ms:
            if self._stamps and wall_ms - self._last_read > self._behind_ms:
                # Nothing read, and no clock tick closed the window, for a long while (we were
                # not running): that time is given back rather than judged.
                self._wall_at = wall_ms
            self._close_window(wall_ms)
            self.now(wall_ms)
        self._last_read = wall_ms
        stamps = self._stamps
        span = stamps.get(device_id)
        if span is None:
            stamps[device_id] = (ts_ms, ts_ms)
        elif ts_ms < span[0]:
            stamps[device_id] = (ts_ms, span[1])
        elif ts_ms > span[1]:
            stamps[device_id] = (span[0], ts_ms)
        if not self._backlog:
            # Reading, and not a backlog: the clock moves with the wall clock.
            elapsed = wall_ms - self._wall_at
            if elapsed > 0:
                self._wall_at = wall_ms
                value = self._value + elapsed
                self._value = value if value < wall_ms else max(self._value, wall_ms)
        # Heard at its place in what we read: as far past the clock as its stamp is past the
        # device time the clock stands for — never before the clock (a slow device clock, a
        # late message), never past the wall clock. The clock itself catches up with the
        # backlog once per window (``now``).
        value, anchor = self._value, self._anchor
        if anchor is None or ts_ms <= anchor:
            return value
        heard = value + ts_ms - anchor
        return heard if heard < wall_ms else max(value, wall_ms)

    def _close_window(self, wall_ms: int) -> None:
        stamps = self._stamps
        if stamps:
            self._ahead = sorted(newest for _, newest in stamps.values())[len(stamps) // 2]
            self._median_at = wall_ms
            # Lag judged at the window's last read, not at its close: a window closed late
            # (reading paused, the broker link down) had read nothing late.
            self._lagging = self._vote(stamps, min(wall_ms, self._last_read))
        self._stamps = {}
        self._window_start = wall_ms

    def _vote(self, stamps: dict[str, tuple[int, int]], wall_ms: int) -> bool:
        """Whether we read a backlog, by the devices heard in the last few windows: each
        device one vote (its oldest stamp in its last window lagged that window's end), a
        backlog only if at least ``QUORUM`` devices and at least half of those heard lag. So
        one device (a clock minutes slow, old stamps sent on purpose) never stops the clock
        that every other device's silence is judged by, however quiet the rest of the city."""
        recent, behind = self._recent, self._behind_ms
        for device_id, (oldest, _) in stamps.items():
            recent[device_id] = (wall_ms, wall_ms - oldest > behind)
        self._known.update(stamps)
        since = wall_ms - RECENT_WINDOWS * self._window_ms
        for device_id in [d for d, (at, _) in recent.items() if at <= since]:
            del recent[device_id]
        lagging = sum(1 for _, lags in recent.values() if lags)
        return lagging >= min(QUORUM, len(self._known)) and 2 * lagging >= len(recent)

    @property
    def backlog(self) -> bool:
        """Reading a backlog, as decided at the last window's end (``now``): what is read
        now arrives late, so its arrival says nothing of the device's clock
        (ingest/intake/skew.py)."""
        return self._backlog

    def state(self) -> ReadClockState | None:
        """Where the clock stands, to continue from after a restart (None: nothing read yet)."""
        return None if self._unset else ReadClockState(self._value, self._anchor)

    def now(self, wall_ms: int) -> int:
        """The read time at ``wall_ms`` (never less than before, never past ``wall_ms``)."""
        elapsed = max(0, wall_ms - self._wall_at)
        self._wall_at = wall_ms
        if self._unset:
            return wall_ms  # nothing read yet, ever: nothing to judge against but now
        if not self._live():
            return self._value  # cut off or paused: nobody can be judged silent meanwhile
        if wall_ms - self._window_start >= self._window_ms and self._stamps:
            self._close_window(wall_ms)
        self._backlog = False
        if not self._stamps and wall_ms - self._window_start >= self._window_ms:
            # Nothing read for a while: caught up, if nothing waits for its acknowledgement
            # (else the broker may be holding back behind its window: stand still).
            step = elapsed if self._waiting() == 0 else 0
        elif self._lagging and wall_ms - self._median_at <= self._window_ms:
            # The verdict of the window just closed (the lag judged at its end, not against
            # now): one from before a pause in reading says nothing of what we read now.
            self._backlog = True
            used, ahead = self._anchor, self._ahead
            # The backlog's progress: how far the typical device's messages have come (one
            # vote each, so a few devices with clocks ahead cannot drag the clock along).
            step = 0 if used is None or ahead is None else max(0, ahead - used)
        else:
            step = elapsed
        ahead = self._ahead
        if ahead is not None and (self._anchor is None or ahead > self._anchor):
            self._anchor = ahead
        self._value = max(self._value, min(self._value + step, wall_ms))
        return self._value


_NEVER = -(1 << 62)


def clock_data(state: ReadClockState | None) -> dict[str, Any] | None:
    """``state`` as JSON-ready data (for the engine's snapshot)."""
    return None if state is None else {"read_ms": state.read_ms, "anchor_ms": state.anchor_ms}


def read_clock_state(data: Any) -> ReadClockState | None:
    """Back from ``clock_data``; None for anything else (an older snapshot has none)."""
    if not isinstance(data, dict):
        return None
    read_ms, anchor_ms = data.get("read_ms"), data.get("anchor_ms")
    if not isinstance(read_ms, int) or not (anchor_ms is None or isinstance(anchor_ms, int)):
        return None
    return ReadClockState(read_ms, anchor_ms)
