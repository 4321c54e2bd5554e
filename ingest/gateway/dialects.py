"""Each protocol as the TCP server sees it: a splitter per connection, and what an item means.

The server is the same for both protocols; what differs is here: how a byte stream becomes
frames (devices/hj212.py, devices/sl651.py) and how a frame becomes an ``Outcome``
(``translate.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from devices import hj212, sl651
from devices.registry import Registry
from ingest.gateway.translate import (
    HJ212_IGNORED,
    Outcome,
    Refused,
    from_hj212,
    from_sl651,
    hj212_masked,
    hj212_masked_detail,
    sl651_masked,
)

PROTOCOLS = ("hj212", "sl651")


class Splitter(Protocol):
    """A protocol's frame splitter: bytes in, frames (or named rejections) out."""

    def feed(self, data: bytes) -> list[object]: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """One protocol: a new splitter per connection, and the reading of what it cut."""

    protocol: str
    splitter: Callable[[], Splitter]
    read: Callable[[object, datetime], Outcome]
    stations: int  # how many registry stations speak it
    # A refused frame as its dead letter's payload: HJ 212 is ASCII; SL 651's bytes are kept
    # as hex text, since dead letters are listed as text.
    kept: Callable[[bytes], bytes] = bytes


def dialect(
    protocol: str,
    registry: Registry,
    partitions: int | None,
    skip: Iterable[str] = HJ212_IGNORED,
) -> Dialect:
    """The dialect of ``protocol`` for the registry's stations; partitions on a NATS broker;
    ``skip``: HJ 212 factor codes read past rather than refused."""
    stations = registry.stations_of(protocol)
    ignore = frozenset(skip)
    if protocol == "hj212":
        finest: dict[str, int] = {}  # per MN, see from_hj212; ≤ one entry per station

        def read_hj212(item: object, now: datetime) -> Outcome:
            if isinstance(item, hj212.Rejection):
                detail = hj212_masked_detail(item.detail)
                return Refused(item.reason, detail, hj212_masked(item.raw))
            assert isinstance(item, bytes)
            frame = hj212.parse(item, ignore=ignore)
            if isinstance(frame, hj212.Rejection):
                return Refused(frame.reason, hj212_masked_detail(frame.detail), hj212_masked(item))
            return from_hj212(frame, item, stations, partitions, finest)

        return Dialect(protocol, hj212.FrameSplitter, read_hj212, len(stations))  # type: ignore[arg-type]
    if protocol == "sl651":

        def read_sl651(item: object, now: datetime) -> Outcome:
            if isinstance(item, sl651.Rejection):
                return Refused(item.reason, item.detail, sl651_masked(item.raw))
            assert isinstance(item, sl651.Sl651Frame)
            return from_sl651(item, stations, partitions, now)

        return Dialect(
            protocol,
            sl651.FrameSplitter,  # type: ignore[arg-type]
            read_sl651,
            len(stations),
            lambda raw: raw.hex().upper().encode(),
        )
    raise ValueError(f"no gateway speaks {protocol!r} (only {', '.join(PROTOCOLS)})")
