"""Each device's measured clock skew, so a maintainer can fix a clock that is off.

A device stamps its messages with its own clock; we read them at our wall clock. For one
message, ``stamp − arrival = skew − delay``, where the delay (device queue, network, broker,
our own read) is never negative. So every sample is at most the true skew, and the largest of
a few recent samples is the best estimate: the one that was delayed least. A mean or median
would read every delay as a clock running slow. The window is the device's last ``SAMPLES``
messages — recent enough that a clock set right shows so within a few reports, small enough
to cost nothing (a ring of ints per device, and devices are bounded by the registry).

The caller feeds only samples that can be trusted to be read on time: messages whose stamp
came from the device (not a status without ``ts``, stamped on receipt), read while we are
live and not reading a backlog (a backlog's messages arrive minutes late, which would look
like a slow clock). The read clock decides a backlog once per window, so the first samples of
one may slip in before it is known; ``forget_since`` drops those when it is. Any that remain
only pull the estimate down, and the next sample read on time lifts it back (the maximum).

No I/O, no time of its own: the caller passes both clocks.
"""

from __future__ import annotations

from collections import deque

SAMPLES = 8  # a device's recent samples kept (its ring)


class ClockSkew:
    """Per device, the newest ``samples`` of stamp − arrival (ms); the estimate is their max.

    Fed on the event loop; ``skewed`` is read from the metrics thread, so it reads only the
    estimates (one dict, copied in one step), never a ring being changed.
    """

    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples = samples
        # device → its recent (arrival ms, stamp − arrival ms), oldest first
        self._rings: dict[str, deque[tuple[int, int]]] = {}
        self._estimates: dict[str, int] = {}  # device → the max of its ring

    def saw(self, device_id: str, stamp_ms: int, arrival_ms: int) -> None:
        """A message stamped ``stamp_ms`` by the device was read at wall time ``arrival_ms``.

        On every message, so kept cheap: the max is recomputed only when it leaves the ring.
        """
        sample = stamp_ms - arrival_ms
        ring = self._rings.get(device_id)
        if ring is None:
            ring = self._rings[device_id] = deque(maxlen=self._samples)
            self._estimates[device_id] = sample
        current = self._estimates[device_id]
        leaving = ring[0][1] if len(ring) == self._samples else None
        ring.append((arrival_ms, sample))
        if leaving == current and sample < current:
            self._estimates[device_id] = max(s for _, s in ring)
        elif sample > current:
            self._estimates[device_id] = sample

    def forget_since(self, arrival_ms: int) -> None:
        """Drop every sample read at or after ``arrival_ms`` (a backlog found late)."""
        for device_id in list(self._rings):
            ring = self._rings[device_id]
            if not ring or ring[-1][0] < arrival_ms:
                continue
            while ring and ring[-1][0] >= arrival_ms:
                ring.pop()
            if ring:
                self._estimates[device_id] = max(s for _, s in ring)
            else:
                del self._rings[device_id], self._estimates[device_id]

    def data(self) -> dict[str, int]:
        """The estimates, to save with the rule engine's state (one int per device)."""
        return dict(self._estimates)

    def load(self, data: object) -> None:
        """Estimates saved by ``data`` (a restart): each is kept as one old sample, until the
        device's own messages replace it. Unreadable entries are skipped."""
        if not isinstance(data, dict):
            return
        for device_id, skew in data.items():
            if isinstance(device_id, str) and type(skew) is int and device_id not in self._rings:
                # Arrival -1: before anything read now, so no backlog found now drops it.
                self._rings[device_id] = deque([(-1, skew)], maxlen=self._samples)
                self._estimates[device_id] = skew

    def skew_ms(self, device_id: str) -> int | None:
        """The device's clock minus ours, in ms (negative: slow); None if never measured."""
        return self._estimates.get(device_id)

    def skewed(self, threshold_ms: int) -> int:
        """How many devices' clocks are off by more than ``threshold_ms`` either way."""
        estimates = list(self._estimates.values())  # one C-level copy: safe from a thread
        return sum(1 for skew in estimates if abs(skew) > threshold_ms)
