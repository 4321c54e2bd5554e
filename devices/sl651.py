"""SL 651-2014 (水文监测数据通信规约) HEX/BCD frames: parse one, split a TCP stream, answer.

Pure: bytes in, values out, no I/O, and ``parse`` never raises — every way a frame can be
wrong is one named ``Rejection`` reason. A frame (``Sl651Frame``) is::

    7E 7E | centre (1) | station (5, BCD) | password (2) | function (1)     up frames
    7E 7E | station (5, BCD) | centre (1) | password (2) | function (1)     down frames
    | direction (high nibble: 0 up, 8 down) + body length (low 12 bits) (2)
    | STX 02 (SYN 16: multi-packet) | body | end marker (ETX 03, ETB 17, ENQ 05, EOT 04, ESC 1B)
    | CRC-16/MODBUS of everything from the first 7E to the end marker, high byte first (2)

The body of a report (0x30 test, 0x32 timed, 0x33 extra, 0x34 hourly): serial (2), send
time (6, BCD YYMMDDhhmmss), ``F1 F1`` + station (5) + station type (1), ``F0 F0`` +
observation time (5, BCD YYMMDDhhmm), then elements: identifier (1) + data definition (high
5 bits the length in bytes, low 3 bits the decimals) + BCD value. A value whose bytes are all
``FF`` is "no data"; a negative value is its digits after a leading ``FF`` byte (the length
counts that byte). ``F4`` (rain in each 5 minutes of the hour: 12 bytes HEX, 0.1 mm) and
``F5`` (relative water level each 5 minutes: 12 × 2 bytes HEX, 0.01 m) are binary, ``FF``
(``FFFF``) "no data". Times are Beijing time (UTC+8). The centre answers a report with the
same function, direction 8, body serial + its own time, end marker ESC (stay online) or EOT.
``encode_report`` writes a station's report (the simulator's stations, the tests).

Why one module: the frame layout is one idea read both ways: the encoder writes the element
identifiers, data definitions and CRC the parser reads, and a test holds that every report it
writes parses back to the values it was given; split, the two would drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import ValidationError

from devices import crc16
from devices.payloads import RiverTelemetry

BEIJING = timezone(timedelta(hours=8), "UTC+8")
SOH = b"\x7e\x7e"
STX, SYN = 0x02, 0x16
ETX, ETB, ENQ, EOT, ACK, NAK, ESC = 0x03, 0x17, 0x05, 0x04, 0x06, 0x15, 0x1B
END_MARKERS = frozenset({ETX, ETB, ENQ, EOT, ACK, NAK, ESC})
HEAD = 14  # 7E 7E, two addresses (6), password (2), function, direction+length (2), STX
MAX_BODY = 0x0FFF
MAX_FRAME = HEAD + MAX_BODY + 3  # + end marker + CRC
KEEPALIVE, TEST, TIMED, EXTRA, HOURLY = 0x2F, 0x30, 0x32, 0x33, 0x34
REPORTS = frozenset({TEST, TIMED, EXTRA, HOURLY})

Reason = Literal[
    "bad_frame",
    "bad_length",
    "bad_crc",
    "bad_syntax",
    "unknown_element",
    "out_of_range",
    "unsupported_function",
]

# Element identifier → our payload field (devices/payloads.py RiverTelemetry), or None for an
# element we decode and keep in ``elements`` without a field of ours.
FIELDS: dict[int, str | None] = {
    0x03: "water_temp_c",  # 瞬时水温, °C
    0x1A: None,  # 1 小时时段降水量, mm
    0x1F: None,  # 日降水量, mm
    0x20: "rainfall_mm",  # 当前降水量, mm
    0x26: None,  # 降水量累计值, mm (a running counter, not rain since the last report)
    0x27: "flow_m3s",  # 瞬时流量, m³/s
    0x38: "battery_v",  # 电源电压, V
    0x39: "water_level_m",  # 瞬时河道水位, m
}
STATUS = 0x45  # 遥测站状态及报警信息: 4 bytes HEX, 32 flags
RAIN_5MIN, LEVEL_5MIN = 0xF4, 0xF5  # 12 × 1 byte (0.1 mm), 12 × 2 bytes (0.01 m), HEX


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a frame (or a run of bytes) was refused; ``raw`` is what was refused."""

    reason: Reason
    detail: str
    raw: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Sl651Frame:
    """One valid frame. ``readings`` are our payload fields; ``elements`` every decoded
    element by identifier (None: the station said "no data"); ``series`` the hourly
    report's 5-minute values, oldest first (value i covers the 5 minutes ending
    ``observed - (55 - 5 i) min``), None where the station had no data."""

    centre: int
    station: str  # 10 BCD digits
    password: str  # 4 hex digits, as sent
    function: int
    direction: Literal["up", "down"]
    end: int  # the end marker
    serial: int
    sent: datetime  # aware, UTC+8
    station_type: int | None = None
    observed: datetime | None = None
    readings: dict[str, float] = field(default_factory=dict)
    elements: dict[int, float | None] = field(default_factory=dict)
    series: dict[str, tuple[float | None, ...]] = field(default_factory=dict)
    status: int | None = None
    raw: bytes = field(default=b"", repr=False)


class _Bad(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); SL 651 sends it high byte first."""
    return crc16.modbus(data)


def parse(frame: bytes) -> Sl651Frame | Rejection:
    """One whole frame → its values, or the named reason it is refused. Never raises."""
    raw = bytes(frame)
    try:
        return _parse(raw)
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail, raw)
    except Exception as error:  # a bug here must not take the gateway down: name it
        return Rejection("bad_syntax", f"unparseable: {type(error).__name__}", raw)


def _parse(raw: bytes) -> Sl651Frame:
    if not raw.startswith(SOH):
        raise _Bad("bad_frame", "does not start with 7E 7E")
    if len(raw) < HEAD + 3:
        raise _Bad("bad_length", f"{len(raw)} bytes: shorter than any frame")
    flag = raw[11] >> 4
    length = ((raw[11] & 0x0F) << 8) | raw[12]
    if len(raw) != HEAD + length + 3:
        raise _Bad("bad_length", f"length field says {length}, frame has {len(raw) - 17}")
    expected, got = crc16_modbus(raw[:-2]), int.from_bytes(raw[-2:], "big")
    if expected != got:
        raise _Bad("bad_crc", f"CRC {got:04X}, computed {expected:04X}")
    if flag not in (0x0, 0x8):
        raise _Bad("bad_frame", f"direction nibble {flag:X} is neither 0 (up) nor 8 (down)")
    start, end = raw[13], raw[-3]
    if start not in (STX, SYN):
        raise _Bad("bad_frame", f"start marker {start:02X} is neither STX nor SYN")
    if end not in END_MARKERS:
        raise _Bad("bad_frame", f"end marker {end:02X} is not one of SL 651's")
    up = flag == 0
    centre = raw[2] if up else raw[7]
    station = _digits(raw[3:8] if up else raw[2:7], "station address")
    function = raw[10]
    if start == SYN:
        raise _Bad("unsupported_function", f"multi-packet (SYN) frame of function {function:02X}")
    body = raw[HEAD:-3]
    if len(body) < 8:
        raise _Bad("bad_syntax", f"body of {len(body)} bytes has no serial and send time")
    head = {
        "centre": centre,
        "station": station,
        "password": raw[8:10].hex().upper(),
        "function": function,
        "direction": "up" if up else "down",
        "end": end,
        "serial": int.from_bytes(body[0:2], "big"),
        "sent": _time(body[2:8], "send time"),
        "raw": raw,
    }
    if not up or function == KEEPALIVE:
        if len(body) != 8:
            raise _Bad("bad_syntax", f"{len(body) - 8} bytes after the send time")
        return Sl651Frame(**head)  # type: ignore[arg-type]
    if function not in REPORTS:
        raise _Bad("unsupported_function", f"function {function:02X}")
    return _report(head, body)


def _report(head: dict[str, object], body: bytes) -> Sl651Frame:
    if len(body) < 23:
        raise _Bad("bad_syntax", "report body too short for station and observation time")
    if body[8:10] != b"\xf1\xf1":
        raise _Bad("bad_syntax", "no F1 F1 station identifier after the send time")
    if _digits(body[10:15], "station address") != head["station"]:
        raise _Bad("bad_syntax", "the body's station address differs from the header's")
    if body[16:18] != b"\xf0\xf0":
        raise _Bad("bad_syntax", "no F0 F0 observation time after the station")
    observed = _time(body[18:23], "observation time")
    elements: dict[int, float | None] = {}
    series: dict[str, tuple[float | None, ...]] = {}
    status: int | None = None
    at = 23
    while at < len(body):
        ident = body[at]
        if ident == 0xFF:
            raise _Bad("unknown_element", f"extended element FF{_hex(body[at + 1 : at + 2])}")
        if ident not in FIELDS and ident not in (STATUS, RAIN_5MIN, LEVEL_5MIN):
            raise _Bad("unknown_element", f"element {ident:02X}")
        if at + 1 >= len(body):
            raise _Bad("bad_syntax", f"element {ident:02X} has no data definition")
        size, decimals = body[at + 1] >> 3, body[at + 1] & 0x07
        value = body[at + 2 : at + 2 + size]
        if size == 0 or len(value) != size:
            raise _Bad("bad_syntax", f"element {ident:02X} needs {size} bytes")
        repeated_series = (ident == RAIN_5MIN and "rainfall_5min_mm" in series) or (
            ident == LEVEL_5MIN and "relative_level_5min_m" in series
        )
        if ident in elements or (ident == STATUS and status is not None) or repeated_series:
            raise _Bad("bad_syntax", f"element {ident:02X} twice")
        if ident == RAIN_5MIN:
            series["rainfall_5min_mm"] = _binary(value, 1, 12, 0.1, ident)
        elif ident == LEVEL_5MIN:
            series["relative_level_5min_m"] = _binary(value, 2, 12, 0.01, ident)
        elif ident == STATUS:
            if size != 4:
                raise _Bad("bad_syntax", f"status element of {size} bytes, not 4")
            status = int.from_bytes(value, "big")
        else:
            elements[ident] = _bcd(value, decimals, ident)
        at += 2 + size
    readings = {
        name: value
        for ident, value in elements.items()
        if (name := FIELDS[ident]) is not None and value is not None
    }
    rain = series.get("rainfall_5min_mm")
    if "rainfall_mm" not in readings and rain is not None and None not in rain:
        readings["rainfall_mm"] = round(sum(v for v in rain if v is not None), 1)
    _check_ranges(readings, observed)
    return Sl651Frame(
        **head,  # type: ignore[arg-type]
        station_type=body[15],
        observed=observed,
        readings=readings,
        elements=elements,
        series=series,
        status=status,
    )


def _check_ranges(readings: dict[str, float], observed: datetime) -> None:
    """Our payload schema is the one authority on ranges: the gateway publishes in it."""
    if not readings:
        return
    try:
        RiverTelemetry.model_validate({"ts": int(observed.timestamp() * 1000), **readings})
    except ValidationError as error:
        where = ", ".join(str(e["loc"][0]) for e in error.errors() if e["loc"])
        raise _Bad("out_of_range", f"outside the payload's range: {where}") from None


def _bcd(value: bytes, decimals: int, ident: int) -> float | None:
    if all(b == 0xFF for b in value):
        return None
    sign = 1
    if value[0] == 0xFF:
        sign, value = -1, value[1:]
    digits = value.hex()
    if not digits.isdigit():
        raise _Bad("bad_syntax", f"element {ident:02X}: {value.hex().upper()} is not BCD")
    return sign * int(digits) / float(10**decimals)


def _binary(
    value: bytes, width: int, count: int, unit: float, ident: int
) -> tuple[float | None, ...]:
    if len(value) != width * count:
        raise _Bad("bad_syntax", f"element {ident:02X} of {len(value)} bytes, not {width * count}")
    missing = (1 << (8 * width)) - 1
    out: list[float | None] = []
    for i in range(0, len(value), width):
        number = int.from_bytes(value[i : i + width], "big")
        out.append(None if number == missing else round(number * unit, 2))
    return tuple(out)


def _digits(value: bytes, what: str) -> str:
    digits = value.hex()
    if not digits.isdigit():
        raise _Bad("bad_syntax", f"{what} {digits.upper()} is not BCD")
    return digits


def _time(value: bytes, what: str) -> datetime:
    digits = _digits(value, what)
    parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)] + [0]
    year, month, day, hour, minute, second = parts[:6]
    try:
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=BEIJING)
    except ValueError:
        raise _Bad("bad_syntax", f"{what} {digits} is not a time") from None


def _hex(value: bytes) -> str:
    return value.hex().upper()


def answer(frame: Sl651Frame, now: datetime, *, keep_online: bool = True) -> bytes:
    """The centre's confirmation of an up frame: same function, direction 8, addresses in
    down order (station, then centre), body serial + ``now`` (Beijing time), end marker ESC
    (the station stays online) or EOT (it may hang up), CRC."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    body = frame.serial.to_bytes(2, "big") + bytes.fromhex(
        now.astimezone(BEIJING).strftime("%y%m%d%H%M%S")
    )
    message = (
        SOH
        + bytes.fromhex(frame.station)
        + bytes([frame.centre])
        + bytes.fromhex(frame.password)
        + bytes([frame.function])
        + (0x8000 | len(body)).to_bytes(2, "big")
        + bytes([STX])
        + body
        + bytes([ESC if keep_online else EOT])
    )
    return message + crc16_modbus(message).to_bytes(2, "big")


class FrameSplitter:
    """Frames out of a TCP byte stream: split and merged reads, garbage between frames.

    Holds at most one frame's worth of bytes (``MAX_FRAME``) between feeds. Bytes outside any
    frame become one ``bad_frame`` rejection per run (per feed); after a frame fails its CRC
    or framing the search resumes one byte in, so a corrupt length field cannot swallow the
    frames behind it, and the bytes skipped on the way count as part of that frame.
    """

    def __init__(self, *, bounded: bool = True) -> None:
        self._bounded = bounded  # False: no parse budget (the tests' oracle)
        self._buffer = bytearray()
        self._garbage = bytearray()  # the first MAX_FRAME of them, kept as the dead letter
        self._skipped = 0
        self._quiet = False  # the bytes now skipped belong to a frame already rejected

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Sl651Frame | Rejection]:
        self._buffer += data
        out: list[Sl651Frame | Rejection] = []
        # Bytes of refused candidates parse may read this feed: linear in what came. Junk with
        # a plausible header every few bytes would otherwise be re-read a frame's length at
        # each (the search resumes one byte in after a bad CRC), thousands of times per read.
        # Past the budget a candidate is parsed only if its start and end markers are where
        # its length says (as a valid frame's are); the rest are passed over a byte at a time,
        # unread, as junk.
        budget = 2 * len(data) + 2 * MAX_FRAME
        while True:
            start = self._buffer.find(SOH)
            if start < 0:  # keep a trailing 7E: it may be half of the next 7E 7E
                self._skip(len(self._buffer) - self._buffer.endswith(b"\x7e"))
                break
            self._skip(start)
            if len(self._buffer) < 13:
                break
            if self._buffer[11] >> 4 not in (0x0, 0x8):
                self._skip(1)  # not a header: a 7E 7E inside garbage
                continue
            total = HEAD + (((self._buffer[11] & 0x0F) << 8) | self._buffer[12]) + 3
            if len(self._buffer) < total:
                break
            if self._bounded and budget <= 0 and not self._plausible(total):
                self._quiet = False  # unread bytes: junk of their own, counted and kept
                self._skip(1)
                continue
            result = parse(bytes(self._buffer[:total]))
            self._flush(out)
            out.append(result)
            if isinstance(result, Rejection) and result.reason in ("bad_crc", "bad_frame"):
                budget -= total
                del self._buffer[:1]
                self._quiet = True
            else:
                del self._buffer[:total]
                self._quiet = False
        self._flush(out)
        return out

    def _plausible(self, total: int) -> bool:
        """Whether the candidate's start and end markers are where its length puts them."""
        return self._buffer[HEAD - 1] in (STX, SYN) and self._buffer[total - 3] in END_MARKERS

    def _skip(self, count: int) -> None:
        if count > 0:
            if not self._quiet:
                self._skipped += count
                self._garbage += self._buffer[: max(0, min(count, MAX_FRAME - len(self._garbage)))]
            del self._buffer[:count]

    def _flush(self, out: list[Sl651Frame | Rejection]) -> None:
        if self._skipped:
            detail = f"{self._skipped} bytes outside any frame"
            out.append(Rejection("bad_frame", detail, bytes(self._garbage)))
            self._garbage.clear()
            self._skipped = 0


# --- writing reports (a station's side: the simulator, the tests) ------------------------

# Our field → (element identifier, bytes of BCD digits, decimals), the standard's data
# definitions (appendix table): 当前降水量 N(5,1), 瞬时河道水位 N(7,3) written in 4 bytes as
# RTUs do (the published timed report: 39 23 00010490), 瞬时流量 N(9,3), 瞬时水温 N(3,1),
# 电源电压 N(4,2). A negative value takes one more byte, the leading FF.
ELEMENTS: dict[str, tuple[int, int, int]] = {
    "rainfall_mm": (0x20, 3, 1),
    "water_level_m": (0x39, 4, 3),
    "flow_m3s": (0x27, 5, 3),
    "water_temp_c": (0x03, 2, 1),
    "battery_v": (0x38, 2, 2),
}
STATION_TYPES = {"P": 0x50, "H": 0x48, "K": 0x4B, "Z": 0x5A}  # rain, river, reservoir, gate


def encode_report(
    *,
    station: str,
    centre: int,
    password: str,
    function: int,
    serial: int,
    sent: datetime,
    observed: datetime,
    values: Mapping[str, float],
    station_type: int = STATION_TYPES["H"],
    end: int = ETX,
) -> bytes:
    """An up report (0x30 test, 0x32 timed, 0x33 extra, 0x34 hourly) of ``values`` keyed by
    our fields (``ELEMENTS``), each rounded to its element's decimals. Times go in Beijing
    time; the observation time to the minute only, as the frame carries it. ``parse`` reads
    back every value as written. Raises ValueError for what no frame can say."""
    if function not in REPORTS:
        raise ValueError(f"function {function:02X} is not a report (30, 32, 33, 34)")
    if not (len(station) == 10 and station.isascii() and station.isdigit()):
        raise ValueError(f"station address {station!r} is not 10 digits")
    if not (len(password) == 4 and all(c in "0123456789abcdefABCDEF" for c in password)):
        raise ValueError(f"password {password!r} is not 4 hex digits")
    for what, number, top in (("centre", centre, 0xFF), ("serial", serial, 0xFFFF)):
        if not 0 <= number <= top:
            raise ValueError(f"{what} {number} does not fit {top.bit_length() // 8} byte(s)")
    if not 0 <= station_type <= 0xFF or end not in END_MARKERS:
        raise ValueError("station type is one byte; the end marker one of SL 651's")
    body = (
        serial.to_bytes(2, "big")
        + _bcd_time(sent, "%y%m%d%H%M%S", "sent")
        + b"\xf1\xf1"
        + bytes.fromhex(station)
        + bytes([station_type])
        + b"\xf0\xf0"
        + _bcd_time(observed, "%y%m%d%H%M", "observed")
    )
    for name, value in values.items():
        if name not in ELEMENTS:
            raise ValueError(f"{name} has no SL 651 element ({', '.join(ELEMENTS)})")
        body += _element(name, value)
    if len(body) > MAX_BODY:
        raise ValueError(f"a body of {len(body)} bytes does not fit 12 bits")
    message = (
        SOH
        + bytes([centre])
        + bytes.fromhex(station)
        + bytes.fromhex(password)
        + bytes([function])
        + len(body).to_bytes(2, "big")  # direction nibble 0: up
        + bytes([STX])
        + body
        + bytes([end])
    )
    return message + crc16_modbus(message).to_bytes(2, "big")


def _element(name: str, value: float) -> bytes:
    ident, size, decimals = ELEMENTS[name]
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} is not a finite number")
    # The decimal text, not value * 10**d: 10.49 * 1000 is 10490.000000000002 in floats.
    digits = f"{abs(value):.{decimals}f}".replace(".", "")
    if len(digits) > 2 * size:
        raise ValueError(f"{name}={value} needs more than {2 * size} digits")
    data = bytes.fromhex(digits.rjust(2 * size, "0"))
    if value < 0 and int(digits):
        data = b"\xff" + data  # the sign byte, counted in the length
    return bytes([ident, (len(data) << 3) | decimals]) + data


def _bcd_time(moment: datetime, pattern: str, what: str) -> bytes:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be an aware datetime")
    local = moment.astimezone(BEIJING)
    if not 2000 <= local.year <= 2099:
        raise ValueError(f"{what} {local:%Y} is outside the two-digit years 2000-2099")
    return bytes.fromhex(local.strftime(pattern))
