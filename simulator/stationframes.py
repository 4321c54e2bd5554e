"""What a field station says for one of its telemetry messages, and how it knows the answer.

A river station registered with a ``protocol`` (devices/registry.py) reports through a
citysense gateway in that protocol instead of MQTT JSON. Each telemetry message the behaviour
model produces becomes one frame (devices/hj212.py, devices/sl651.py encoders):

- HJ 212-2017 (a water-quality automatic station): its water-quality fields as one real-time
  data frame (CN 2011), Flag 5 (answer wanted), QN and DataTime from the message's ``ts``; a
  message with no water-quality field makes no frame (the protocol carries none of the rest
  here), nor does a second one within the same second (DataTime's precision: see below).
- SL 651-2014 (a hydrological RTU): level, rain, flow, water temperature and battery as one
  timed report (0x32) with the next serial, sent at ``ts``; the observation time is ``ts`` in
  Beijing time to the minute, all the frame carries (water temperature to 0.1 °C, its data
  definition). A second report in the same minute makes no frame: the gateway publishes at
  the observation time, so it would overwrite the first. The schedule keeps reports further
  apart (``MIN_INTERVAL_S``); this catches the ones a late run sends back to back.

The answer is recognised by what it repeats of the frame: HJ 212's data response (CN 9014)
its QN and MN, SL 651's confirmation its station, function and serial. Pure: no I/O, no
clock — the station link (``stationlink.py``) sends and waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol

from devices import hj212, sl651
from devices.payloads import RiverTelemetry
from devices.registry import RiverDevice
from simulator.device import Outgoing

# The frames' time precision (HJ 212 DataTime: the second; SL 651 observation time: the
# minute), as the shortest interval a station of the protocol reports at: with the schedule's
# ±10% jitter, two reports then never share a time stamp the gateway publishes at.
MIN_INTERVAL_S: Mapping[str, float] = MappingProxyType({"hj212": 1.25, "sl651": 75.0})
SL651_CENTRE = 1  # the centre's address the stations are configured with (any 1-255 will do)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame to send, and the key its answer will carry (``AnswerReader.feed``)."""

    data: bytes
    key: str
    wants_answer: bool = True


class AnswerReader(Protocol):
    """Cuts the gateway's byte stream; returns the keys of the answers in it."""

    def feed(self, data: bytes) -> list[str]: ...


class StationFramer(Protocol):
    """One station's side of its protocol."""

    protocol: str

    def frame(self, message: Outgoing) -> Frame | None:
        """The frame for a telemetry message, or None when it makes none."""
        ...

    def reader(self) -> AnswerReader:
        """A fresh reader for one connection."""
        ...


def _reading(
    message: Outgoing, names: Mapping[str, object]
) -> tuple[datetime, dict[str, float]] | None:
    """The message's time and its values of ``names``; None if it has none of them."""
    payload = message.payload
    if not isinstance(payload, RiverTelemetry):
        return None
    got = {name: getattr(payload, name) for name in names}
    values = {name: value for name, value in got.items() if value is not None}
    return (datetime.fromtimestamp(payload.ts / 1000, UTC), values) if values else None


@dataclass(slots=True)
class Hj212Station:
    """A water-quality station: MN and PW from the registry."""

    mn: str
    pw: str
    protocol: str = "hj212"
    _last_second: datetime | None = field(default=None, repr=False)

    def frame(self, message: Outgoing) -> Frame | None:
        reading = _reading(message, hj212.FIELD_FACTORS)
        if reading is None:
            return None
        moment, values = reading
        second = moment.replace(microsecond=0)
        if second == self._last_second:
            return None
        self._last_second = second
        data = hj212.encode_data(
            mn=self.mn, pw=self.pw, cn="2011", values=values, data_time=moment, qn=moment
        )
        return Frame(data, f"{self.mn}/{hj212.qn_of(moment)}")

    def reader(self) -> AnswerReader:
        return _Hj212Answers()


class _Hj212Answers:
    def __init__(self) -> None:
        self._splitter = hj212.FrameSplitter()

    def feed(self, data: bytes) -> list[str]:
        keys = []
        for item in self._splitter.feed(data):
            got = hj212.parse(item) if isinstance(item, bytes) else item
            if isinstance(got, hj212.Hj212Frame) and got.cn == hj212.RESPONSE_CN:
                keys.append(f"{got.mn}/{got.qn}")
        return keys


@dataclass(slots=True)
class Sl651Station:
    """A hydrological RTU: station address and password from the registry."""

    station: str
    password: str
    centre: int = SL651_CENTRE
    protocol: str = "sl651"
    serial: int = 0  # the last serial used; the first report carries 1
    _last_minute: datetime | None = field(default=None, repr=False)

    def frame(self, message: Outgoing) -> Frame | None:
        reading = _reading(message, sl651.ELEMENTS)
        if reading is None:
            return None
        moment, values = reading
        minute = moment.replace(second=0, microsecond=0)
        if minute == self._last_minute:
            return None
        self._last_minute = minute
        self.serial = self.serial % 0xFFFF + 1  # 1..65535, then 1 again
        data = sl651.encode_report(
            station=self.station,
            centre=self.centre,
            password=self.password,
            function=sl651.TIMED,
            serial=self.serial,
            sent=moment,
            observed=moment,
            values=values,
        )
        return Frame(data, _sl651_key(self.station, sl651.TIMED, self.serial))

    def reader(self) -> AnswerReader:
        return _Sl651Answers()


def _sl651_key(station: str, function: int, serial: int) -> str:
    return f"{station}/{function:02X}/{serial}"


class _Sl651Answers:
    def __init__(self) -> None:
        self._splitter = sl651.FrameSplitter()

    def feed(self, data: bytes) -> list[str]:
        return [
            _sl651_key(item.station, item.function, item.serial)
            for item in self._splitter.feed(data)
            if isinstance(item, sl651.Sl651Frame) and item.direction == "down"
        ]


def framer_for(device: RiverDevice) -> StationFramer:
    """The framer of a station registered with a protocol; ValueError for one without."""
    password = device.password.get_secret_value() if device.password is not None else None
    if device.protocol == "hj212" and device.mn is not None and password is not None:
        return Hj212Station(device.mn, password)
    if device.protocol == "sl651" and device.station_address is not None and password:
        return Sl651Station(device.station_address, password)
    raise ValueError(f"{device.id} reports over MQTT, not a field protocol")
