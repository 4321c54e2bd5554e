"""HJ 212-2017 frames (污染物在线监控（监测）系统数据传输标准), parsed with no I/O.

A frame is ``##`` + 4 decimal digits (the data's length) + the data segment
``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&…&&`` + 4 hex digits (its CRC16,
appendix A) + CR LF. Each way a frame can be wrong is a named ``Rejection``; ``parse`` never
raises. Water data (CN 2011 real-time, 2051 minute, 2061 hourly, 2031 daily) becomes readings
of our river payload's fields within its ranges; CN 9014 (the centre's data response) parses
with none. ``FrameSplitter`` cuts a TCP byte stream into frames with a bounded buffer.
``encode_data`` writes a station's data frame (the simulator's stations, the tests).

Why one module: the frame grammar is one idea read both ways: the encoder writes with the
parser's own header patterns, factor table and CRC, and a test holds that every frame it
writes parses back to the values it was given; split, the two would drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, NamedTuple

from pydantic import TypeAdapter, ValidationError

from devices import crc16 as crc16_of
from devices.payloads import RiverTelemetry

CHINA = timezone(timedelta(hours=8), "UTC+08:00")  # DataTime, SampleTime, QN: Beijing time
MAX_FRAME = 2 + 4 + 9999 + 4 + 2  # four length digits (the standard says data ≤ 1024)

# Factor code (HJ 212-2017 appendix B, water) → our RiverTelemetry field; units already agree.
FACTORS: Mapping[str, str] = MappingProxyType(
    {
        "w01001": "ph",  # pH, dimensionless
        "w01009": "do_mgl",  # dissolved oxygen, mg/L
        "w01019": "codmn_mgl",  # permanganate index CODMn, mg/L
        "w21003": "nh3n_mgl",  # ammonia nitrogen NH3-N, mg/L
        "w21011": "tp_mgl",  # total phosphorus, mg/L
        "w01010": "water_temp_c",  # water temperature, °C
        "w01003": "turbidity_ntu",  # turbidity, NTU
    }
)
# Data flags, HJ 212-2017 §6.6.4 table 8: N normal, F stopped, M maintenance, S set by hand,
# D fault, C calibration, T over the measuring range, B communication with the logger abnormal.
FLAGS = frozenset("NFMSDCTB")
# Which value of a factor is the reading, per data command.
DATA_CNS: Mapping[str, str] = MappingProxyType(
    {"2011": "Rtd", "2051": "Avg", "2061": "Avg", "2031": "Avg"}
)
RESPONSE_CN = "9014"  # 数据应答: the centre's answer to a data frame whose Flag asks for one

# bad_frame: not ## … CR LF; bad_length: the length field is not four digits or not the data
# segment's; bad_crc: the CRC field is not four hex digits or not the data's; bad_syntax: the
# data segment breaks the grammar; unknown_factor: a factor code we have no field for;
# out_of_range: outside its field's range (devices/payloads.py); unsupported_cn: not read here.
REASONS: tuple[str, ...] = ("bad_frame", "bad_length", "bad_crc", "bad_syntax")
REASONS += ("unknown_factor", "out_of_range", "unsupported_cn")


class Rejection(NamedTuple):
    """A frame (or stream bytes) that is not data, with why; ``raw`` is what was cut off."""

    reason: str
    detail: str
    raw: bytes = b""


class Reading(NamedTuple):
    """One factor's value (Rtd for real-time data, Avg otherwise) and its data flag."""

    value: float
    flag: str | None  # a key of FLAGS; None when the station sent none
    min: float | None = None
    max: float | None = None
    cou: float | None = None
    sample_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Hj212Frame:
    """A valid frame: its header fields and its readings keyed by our payload's fields."""

    qn: str | None
    st: str
    cn: str
    pw: str
    mn: str
    flag: int | None
    data_time: datetime | None  # aware, UTC+8; None for CN 9014
    readings: Mapping[str, Reading] = field(default_factory=lambda: MappingProxyType({}))
    pnum: int | None = None
    pno: int | None = None
    skipped: tuple[str, ...] = ()  # factor codes the caller asked to ignore

    @property
    def needs_answer(self) -> bool:
        """Flag bit 0 (A): the station waits for a data response (CN 9014)."""
        return self.flag is not None and bool(self.flag & 1)


def crc16(data: bytes) -> int:
    """HJ 212-2017 appendix A's CRC (not CRC-16/MODBUS): ``devices/crc16.py``."""
    return crc16_of.hj212(data)


def wrap(segment: str) -> bytes:
    """A complete frame around a data segment: ## + length + segment + CRC + CR LF."""
    data = segment.encode("ascii")
    if len(data) > 9999:
        raise ValueError(f"a data segment of {len(data)} bytes does not fit four digits")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16(data))


def data_response(frame: Hj212Frame) -> bytes:
    """The centre's answer (CN 9014, ST 91) to a data frame: its QN, PW and MN, Flag 4."""
    qn = f"QN={frame.qn};" if frame.qn is not None else ""
    return wrap(f"{qn}ST=91;CN={RESPONSE_CN};PW={frame.pw};MN={frame.mn};Flag=4;CP=&&&&")


_HEADER = {"QN": r"\d{17}", "ST": r"\d{2}", "CN": r"\d{4}", "Flag": r"\d{1,3}"}
_HEADER |= {"PNUM": r"\d{1,4}", "PNO": r"\d{1,4}", "MN": r"[0-9A-Za-z_\-]{1,24}"}
_HEADER["PW"] = r"[!-~]{1,32}"  # printable; the separators ; , = & are refused below
_NUMBER = re.compile(r"[-+]?(?:\d{1,12}(?:\.\d{0,9})?|\.\d{1,9})")
_STAMP = re.compile(r"\d{14}")
_CODE = re.compile(r"[0-9A-Za-z]{1,12}")
_NUMERIC_SUBS = ("Rtd", "Avg", "Min", "Max", "Cou", "ZsRtd", "ZsAvg", "ZsMin", "ZsMax")
_SUBS = frozenset((*_NUMERIC_SUBS, "Flag", "EFlag", "SampleTime"))
_HEX = re.compile(rb"[0-9A-Fa-f]{4}")
_CONTROL = re.compile(rb"[^\x20-\x7e]")
_RANGES: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(RiverTelemetry.model_fields[name].annotation or float)
    for name in FACTORS.values()
}


class _Bad(Exception):
    """(reason, detail), raised inside the parser only; ``parse`` returns it as a Rejection."""


def parse(frame: bytes, *, ignore: frozenset[str] = frozenset()) -> Hj212Frame | Rejection:
    """One frame (## … CR LF) → its data, or the first thing wrong with it, named.

    ``ignore``: factor codes of the station that have no field of ours (COD w01018, total
    nitrogen w21001, flow w00000 …): checked for syntax, then left out instead of rejected.
    """
    raw = bytes(frame[:MAX_FRAME])
    try:
        return _parse(bytes(frame), ignore)
    except _Bad as bad:
        reason, detail = bad.args
        return Rejection(reason, detail, raw)


def _parse(frame: bytes, ignore: frozenset[str]) -> Hj212Frame:
    if len(frame) > MAX_FRAME:
        raise _Bad("bad_frame", f"{len(frame)} bytes, more than a frame's {MAX_FRAME}")
    if len(frame) < 12 or not frame.startswith(b"##") or not frame.endswith(b"\r\n"):
        raise _Bad("bad_frame", "not ## + length + data + CRC + CR LF")
    length = frame[2:6]
    if not (length.isascii() and length.isdigit()):
        raise _Bad("bad_length", f"length field {length!r} is not four decimal digits")
    data = frame[6:-6]
    if int(length) != len(data):
        raise _Bad("bad_length", f"length field says {int(length)}, data segment is {len(data)}")
    sent = frame[-6:-2]
    if not _HEX.fullmatch(sent):
        raise _Bad("bad_crc", f"CRC field {sent!r} is not four hex digits")
    if int(sent, 16) != crc16(data):
        raise _Bad("bad_crc", f"CRC {sent.decode()} sent, {crc16(data):04X} computed")
    if _CONTROL.search(data):
        raise _Bad("bad_syntax", "the data segment is not printable ASCII")
    return _segment(data.decode("ascii"), ignore)


def _segment(text: str, ignore: frozenset[str]) -> Hj212Frame:
    at = text.find("CP=&&")
    if at < 0 or (at and text[at - 1] != ";"):
        raise _Bad("bad_syntax", "no ;CP=&& in the data segment")
    cp = text[at + 5 :]
    if len(cp) < 2 or not cp.endswith("&&"):
        raise _Bad("bad_syntax", "CP does not end with &&")
    header = _header(text[:at])
    for key in ("ST", "CN", "PW", "MN"):
        if key not in header:
            raise _Bad("bad_syntax", f"no {key}")
    flag = int(header["Flag"]) if "Flag" in header else None
    if flag is not None and flag > 255:
        raise _Bad("bad_syntax", f"Flag {flag} is not one byte")
    pnum, pno = _packets(header)
    h = header
    head = Hj212Frame(h.get("QN"), h["ST"], h["CN"], h["PW"], h["MN"], flag, None)
    head = replace(head, pnum=pnum, pno=pno)
    body = cp[:-2]
    if head.cn == RESPONSE_CN:
        if body:
            raise _Bad("bad_syntax", "a data response carries an empty CP")
        return head
    if head.cn not in DATA_CNS:
        raise _Bad("unsupported_cn", f"CN {head.cn} is not water data (2011, 2051, 2061, 2031)")
    data_time, factors = _cp(body)
    readings, skipped = _readings(factors, DATA_CNS[head.cn], ignore)
    return replace(head, data_time=data_time, readings=MappingProxyType(readings), skipped=skipped)


def _header(text: str) -> dict[str, str]:
    if not text:
        return {}
    if not text.endswith(";"):
        raise _Bad("bad_syntax", "header fields do not end with ;")
    fields: dict[str, str] = {}
    for item in text[:-1].split(";"):
        key, eq, value = item.partition("=")
        if not eq or key not in _HEADER:
            raise _Bad("bad_syntax", f"header field {item[:40]!r} is not one of the standard's")
        if key in fields:
            raise _Bad("bad_syntax", f"{key} twice")
        if not re.fullmatch(_HEADER[key], value) or any(c in value for c in ";,=&"):
            raise _Bad("bad_syntax", f"{key}={value[:40]!r} is malformed")
        fields[key] = value
    return fields


def _packets(header: dict[str, str]) -> tuple[int | None, int | None]:
    has = ("PNUM" in header, "PNO" in header)
    if has == (False, False):  # even with Flag bit D set: some loggers set it on every frame
        return None, None
    if has != (True, True):
        raise _Bad("bad_syntax", "PNUM and PNO come together")
    pnum, pno = int(header["PNUM"]), int(header["PNO"])
    if not 1 <= pno <= pnum:
        raise _Bad("bad_syntax", f"PNO {pno} of PNUM {pnum}")
    return pnum, pno


def _cp(body: str) -> tuple[datetime, dict[str, dict[str, str]]]:
    """DataTime and each factor's sub-fields, checked for syntax only."""
    data_time: datetime | None = None
    factors: dict[str, dict[str, str]] = {}
    for group in body.split(";"):
        if not group:
            continue  # a trailing ; before && is common in the field
        for item in group.split(","):
            key, eq, value = item.partition("=")
            if not eq or "=" in value:
                raise _Bad("bad_syntax", f"CP item {item[:40]!r} is not key=value")
            if key == "DataTime":
                if data_time is not None:
                    raise _Bad("bad_syntax", "DataTime twice")
                data_time = _stamp(value, "DataTime")
                continue
            code, dash, sub = key.partition("-")
            if not dash or not _CODE.fullmatch(code) or sub not in _SUBS:
                raise _Bad("bad_syntax", f"CP key {key[:40]!r} is not factor-Rtd/Avg/…/Flag")
            subs = factors.setdefault(code, {})
            if sub in subs:
                raise _Bad("bad_syntax", f"{key} twice")
            _check_value(key, sub, value)
            subs[sub] = value
    if data_time is None:
        raise _Bad("bad_syntax", "no DataTime in CP")
    return data_time, factors


def _check_value(key: str, sub: str, value: str) -> None:
    if sub in _NUMERIC_SUBS:
        if not _NUMBER.fullmatch(value):
            raise _Bad("bad_syntax", f"{key}={value[:40]!r} is not a decimal number")
    elif sub == "Flag":
        if value not in FLAGS:
            raise _Bad("bad_syntax", f"{key}={value[:40]!r} is not a data flag (N F M S D C T B)")
    elif sub == "SampleTime":
        _stamp(value, key)
    elif not _CODE.fullmatch(value):  # EFlag, the analyser's own state
        raise _Bad("bad_syntax", f"{key}={value[:40]!r} is malformed")


def _stamp(value: str, what: str) -> datetime:
    if not _STAMP.fullmatch(value):
        raise _Bad("bad_syntax", f"{what} {value[:40]!r} is not YYYYMMDDhhmmss")
    try:
        return datetime.fromisoformat(f"{value[:8]}T{value[8:]}").replace(tzinfo=CHINA)
    except ValueError:
        raise _Bad("bad_syntax", f"{what} {value} is not a date and time") from None


def _readings(
    factors: dict[str, dict[str, str]], main: str, ignore: frozenset[str]
) -> tuple[dict[str, Reading], tuple[str, ...]]:
    skipped = tuple(code for code in factors if code in ignore and code not in FACTORS)
    unknown = [code for code in factors if code not in FACTORS and code not in ignore]
    if unknown:
        raise _Bad("unknown_factor", f"factor code {unknown[0]} has no field")
    readings: dict[str, Reading] = {}
    for code, subs in factors.items():
        if code not in FACTORS:
            continue
        if main not in subs:
            raise _Bad("bad_syntax", f"{code} has no {main}")
        name = FACTORS[code]
        values = {sub: float(subs[sub]) for sub in _NUMERIC_SUBS[:5] if sub in subs}
        # Only a value that will be a reading is held to its field's range: one the station
        # flags (over range, fault, …) is not the river's, and Min/Max are not published.
        if subs.get("Flag", "N") == "N":
            try:
                _RANGES[name].validate_python(values[main])
            except ValidationError:
                detail = f"{code}-{main}={values[main]} is outside {name}'s range"
                raise _Bad("out_of_range", detail) from None
        sample = subs.get("SampleTime")
        when = _stamp(sample, "SampleTime") if sample is not None else None
        get = values.get
        readings[name] = Reading(
            values[main], subs.get("Flag"), get("Min"), get("Max"), get("Cou"), when
        )
    return readings, skipped


class FrameSplitter:
    """Cuts a station's TCP stream into candidate frames, whatever the reads' boundaries.

    A frame ends where its length field says if CR LF is there; otherwise at the first CR LF
    (``parse`` then names what is wrong), or where the next ``##`` starts (a frame cut off).
    Bytes outside any frame are skipped and reported as one rejection per run. The buffer
    never holds more than one frame's bound plus one read: junk cannot grow it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out: list[bytes | Rejection] = []
        self._junk = bytearray()  # the first MAX_FRAME bytes of the skipped run
        self._junk_count = 0

    def feed(self, data: bytes) -> list[bytes | Rejection]:
        """The frames and rejections ``data`` completes; a partial frame waits for more."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            self._buf += view[start : start + MAX_FRAME]
            self._cut()
        self._flush_junk()
        out, self._out = self._out, []
        return out

    def _cut(self) -> None:
        buf = self._buf
        while True:
            at = buf.find(b"##")
            if at < 0:
                self._skip(len(buf) - (1 if buf.endswith(b"#") else 0))
                return
            while buf[at + 2 : at + 3] == b"#":  # ###0101…: the frame starts at the last two
                at += 1
            self._skip(at)
            if len(buf) < 6:
                return
            length = bytes(buf[2:6])
            if length.isdigit():
                total = int(length) + 12
                if len(buf) >= total and buf[total - 2 : total] == b"\r\n":
                    self._emit(bytes(buf[:total]), total)
                    continue
            end = buf.find(b"\r\n", 2)
            again = buf.find(b"##", 1)
            if end >= 0 and (again < 0 or again > end):
                self._emit(bytes(buf[: end + 2]), end + 2)
            elif again >= 0:
                cut = Rejection("bad_frame", "cut off by the next ##", bytes(buf[:again]))
                self._emit(cut, again)
            elif len(buf) >= MAX_FRAME:
                detail = f"no CR LF within {MAX_FRAME} bytes"
                long = Rejection("bad_frame", detail, bytes(buf[:MAX_FRAME]))
                self._emit(long, len(buf) - (1 if buf.endswith(b"#") else 0))
            else:
                return

    def _skip(self, count: int) -> None:
        if count > 0:
            room = max(MAX_FRAME - len(self._junk), 0)
            self._junk += self._buf[: min(count, room)]
            self._junk_count += count
            del self._buf[:count]

    def _emit(self, item: bytes | Rejection, consumed: int) -> None:
        self._flush_junk()
        self._out.append(item)
        del self._buf[:consumed]

    def _flush_junk(self) -> None:
        if self._junk_count:
            detail = f"{self._junk_count} bytes outside any frame skipped"
            self._out.append(Rejection("bad_frame", detail, bytes(self._junk)))
            self._junk.clear()
            self._junk_count = 0


# --- writing frames (a station's side: the simulator, the tests) -------------------------

FIELD_FACTORS: Mapping[str, str] = MappingProxyType({name: code for code, name in FACTORS.items()})
# Decimals written per field: what the analysers resolve and what the simulator rounds to, so
# a reading survives the frame unchanged (pH 7.52, NH3-N 0.412 mg/L, turbidity 12.5 NTU).
DECIMALS: Mapping[str, int] = MappingProxyType(
    {
        "ph": 2,
        "do_mgl": 2,
        "codmn_mgl": 2,
        "nh3n_mgl": 3,
        "tp_mgl": 3,
        "water_temp_c": 2,
        "turbidity_ntu": 1,
    }
)
# Flag (§6.3.3, table 4): bits 7-2 the version (000001: this standard), bit 1 D (packets),
# bit 0 A (answer wanted). 5 = HJ 212-2017 asking for CN 9014; 4 = no answer wanted.
FLAG_2017, FLAG_ANSWER = 4, 1


def qn_of(moment: datetime) -> str:
    """QN, the request number: the moment in Beijing time to the millisecond (17 digits)."""
    local = _beijing(moment, "qn")
    return local.strftime("%Y%m%d%H%M%S") + f"{local.microsecond // 1000:03d}"


def encode_data(
    *,
    mn: str,
    pw: str,
    cn: str,
    values: Mapping[str, float],
    data_time: datetime,
    qn: datetime | None = None,
    flag: int = FLAG_2017 | FLAG_ANSWER,
    value_flag: str = "N",
    st: str = "21",
) -> bytes:
    """A data frame (CN 2011 real-time: ``-Rtd``; 2051/2061/2031: ``-Avg``) of ``values``
    keyed by our fields, each with data flag ``value_flag``; ``parse`` reads back every value
    as written with its field's ``DECIMALS``. Raises ValueError for what ``parse`` would
    refuse as syntax (an unknown field or CN, a naive time, a separator in PW or MN)."""
    if cn not in DATA_CNS:
        raise ValueError(f"CN {cn} is not a water data command ({', '.join(DATA_CNS)})")
    if value_flag not in FLAGS:
        raise ValueError(f"data flag {value_flag!r} is not one of {''.join(sorted(FLAGS))}")
    if not 0 <= flag <= 255:
        raise ValueError(f"Flag {flag} is not one byte")
    header = {"ST": st, "CN": cn, "PW": pw, "MN": mn}
    for key, text in header.items():
        if not re.fullmatch(_HEADER[key], text) or any(c in text for c in ";,=&"):
            raise ValueError(f"{key}={text!r} does not fit the standard's grammar")
    sub = DATA_CNS[cn]
    groups = [f"DataTime={_beijing(data_time, 'data_time').strftime('%Y%m%d%H%M%S')}"]
    for name, value in values.items():
        if name not in FIELD_FACTORS:
            raise ValueError(f"{name} has no HJ 212 factor ({', '.join(FIELD_FACTORS)})")
        if not math.isfinite(value):
            raise ValueError(f"{name}={value} is not a finite number")
        code = FIELD_FACTORS[name]
        text = f"{value:.{DECIMALS[name]}f}"
        if float(text) == 0:
            text = text.lstrip("-")  # -0.001 is "0.00", not "-0.00"
        groups.append(f"{code}-{sub}={text},{code}-Flag={value_flag}")
    head = f"QN={qn_of(qn)};" if qn is not None else ""
    head += f"ST={st};CN={cn};PW={pw};MN={mn};Flag={flag};"
    return wrap(head + "CP=&&" + ";".join(groups) + "&&")


def _beijing(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be an aware datetime")
    return moment.astimezone(CHINA)
