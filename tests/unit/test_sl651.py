"""SL 651-2014 HEX/BCD frames (devices/sl651.py): published examples, every reason,
the centre's answer, the stream splitter, and fuzzing (never an exception).

Published frames (up frame and the centre's answer, CRC included) come from the article
"SL651-2014全协议解析(HEX编码格式)", https://www.toymoban.com/news/detail-686475.html
(also at https://e-com-net.com/article/1736683930196697088.htm), which decodes them field by
field; the CRCs of three of them are also asserted in a public Java test (CrcUtil.calcCrc16,
"calcCrc16_1..3"). Frames not published there are built here from the standard's field
definitions (element table, data definition byte, FF "no data" / FF sign byte as a public
RTU firmware writes them: github.com/xiaozhuweini/fyyp_rtu components/ptcl/sl651.[ch]).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.sl651 import (
    BEIJING,
    MAX_FRAME,
    FrameSplitter,
    Rejection,
    Sl651Frame,
    answer,
    crc16_modbus,
    parse,
)

REASONS = {
    "bad_frame",
    "bad_length",
    "bad_crc",
    "bad_syntax",
    "unknown_element",
    "out_of_range",
    "unsupported_function",
}

# toymoban/e-com-net article, 链路维持报 2F (two stations).
KEEPALIVE = bytes.fromhex("7E7E01001234567812342F0008020003591011155111036BCA")
KEEPALIVE_2 = bytes.fromhex("7E7E00987654321012342F0008027E0822101110074703C3AE")
# Same article, 测试报 30: 0.5 mm current, 0.5 mm accumulated, 0.127 m level, 11.15 V.
TEST_UP = bytes.fromhex(
    "7E7E010012345678123430002B020003591011154947F1F1001234567848F0F0591011154920190000052619"
    "000005392300000127381211150320FA"
)
TEST_DOWN = bytes.fromhex("7E7E00123456780112343080080200035910111549471B75D4")
# Same article, 遥测站定时报 32: 4 mm current, 4 mm accumulated, 10.49 m, 10.99 V.
TIMED_UP = bytes.fromhex(
    "7E7E05001122334403E832002B020034170718110016F1F1001122334448F0F0170718110020190000402619"
    "0000403923000104903812109903A421"
)
TIMED_DOWN = bytes.fromhex("7E7E00112233440503E83280080200341707181100161BE5D4")
PUBLISHED = [KEEPALIVE, KEEPALIVE_2, TEST_UP, TEST_DOWN, TIMED_UP, TIMED_DOWN]


def frame(
    function: int = 0x32,
    elements: str = "392300000127",
    *,
    station: str = "0012345678",
    body_station: str | None = None,
    head: str | None = None,
    start: int = 0x02,
    end: int = 0x03,
    length: int | None = None,
) -> bytes:
    """An up frame built by the standard's layout, with a correct CRC."""
    if head is None:
        head = f"0003251206110016F1F1{body_station or station}48F0F02512061100"
    body = bytes.fromhex(head + elements)
    size = len(body) if length is None else length
    message = (
        bytes.fromhex(f"7E7E01{station}1234{function:02X}")
        + size.to_bytes(2, "big")
        + bytes([start])
        + body
        + bytes([end])
    )
    return message + crc16_modbus(message).to_bytes(2, "big")


def ok(data: bytes) -> Sl651Frame:
    result = parse(data)
    assert isinstance(result, Sl651Frame), result
    return result


def refused(data: bytes) -> Rejection:
    result = parse(data)
    assert isinstance(result, Rejection), result
    assert result.raw == data
    return result


# --- published examples -------------------------------------------------------------------


@pytest.mark.parametrize("data", PUBLISHED, ids=lambda d: d[-2:].hex())
def test_published_crc_is_modbus_high_byte_first(data: bytes) -> None:
    assert crc16_modbus(data[:-2]) == int.from_bytes(data[-2:], "big")
    ok(data)


@pytest.mark.parametrize("data", PUBLISHED, ids=lambda d: d[-2:].hex())
@pytest.mark.parametrize("position", [2, 8, 10, 14, 20, -3, -2, -1])
def test_one_flipped_byte_is_bad_crc(data: bytes, position: int) -> None:
    broken = bytearray(data)
    broken[position] ^= 0x01
    assert refused(bytes(broken)).reason == "bad_crc"


def test_crc_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # CRC-16/MODBUS catalogue check value


def bitwise_modbus(data: bytes) -> int:
    """CRC-16/MODBUS by its definition, a bit at a time."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_table_crc_is_the_bitwise_definition(data: bytes) -> None:
    assert crc16_modbus(data) == bitwise_modbus(data)


def test_published_test_report() -> None:
    got = ok(TEST_UP)
    assert (got.centre, got.station, got.password, got.function) == (1, "0012345678", "1234", 0x30)
    assert (got.direction, got.end, got.serial, got.station_type) == ("up", 0x03, 3, 0x48)
    assert got.sent == datetime(2059, 10, 11, 15, 49, 47, tzinfo=BEIJING)
    assert got.observed == datetime(2059, 10, 11, 15, 49, tzinfo=BEIJING)
    assert got.readings == {"rainfall_mm": 0.5, "water_level_m": 0.127, "battery_v": 11.15}
    assert got.elements == {0x20: 0.5, 0x26: 0.5, 0x39: 0.127, 0x38: 11.15}


def test_published_timed_report() -> None:
    got = ok(TIMED_UP)
    assert (got.centre, got.station, got.password, got.function) == (5, "0011223344", "03E8", 0x32)
    assert got.serial == 0x34
    assert got.sent == datetime(2017, 7, 18, 11, 0, 16, tzinfo=BEIJING)
    assert got.sent.utcoffset() == timedelta(hours=8)
    assert got.readings == {"rainfall_mm": 4.0, "water_level_m": 10.49, "battery_v": 10.99}


def test_published_keepalives() -> None:
    first, second = ok(KEEPALIVE), ok(KEEPALIVE_2)
    assert (first.function, first.serial, first.readings, first.observed) == (0x2F, 3, {}, None)
    assert first.sent == datetime(2059, 10, 11, 15, 51, 11, tzinfo=BEIJING)
    assert (second.centre, second.station, second.serial) == (0, "9876543210", 0x7E08)
    assert refused(frame(0x2F, "", head="0003251206110016FF")).reason == "bad_syntax"


@pytest.mark.parametrize(("up", "down"), [(TEST_UP, TEST_DOWN), (TIMED_UP, TIMED_DOWN)])
def test_answer_is_the_published_confirmation(up: bytes, down: bytes) -> None:
    report = ok(up)
    assert answer(report, report.sent) == down
    back = ok(down)
    assert (back.direction, back.end, back.function) == ("down", 0x1B, report.function)
    assert back.serial == report.serial and back.station == report.station
    assert back.centre == report.centre


def test_answer_layout_byte_by_byte() -> None:
    report = ok(frame(0x33))
    now = datetime(2025, 12, 6, 3, 30, 5, tzinfo=BEIJING).astimezone(BEIJING.utc)
    sent = answer(report, now, keep_online=False)
    assert sent[:2] == b"\x7e\x7e"
    assert sent[2:7].hex() == "0012345678" and sent[7] == 1  # down: station, then centre
    assert sent[8:10].hex() == "1234" and sent[10] == 0x33
    assert sent[11:13] == b"\x80\x08" and sent[13] == 0x02
    assert sent[14:16] == b"\x00\x03" and sent[16:22].hex() == "251206033005"  # Beijing time
    assert sent[22] == 0x04  # EOT: the station may hang up
    assert int.from_bytes(sent[23:], "big") == crc16_modbus(sent[:23])
    assert ok(sent).sent == datetime(2025, 12, 6, 3, 30, 5, tzinfo=BEIJING)
    with pytest.raises(ValueError):
        answer(report, datetime(2025, 1, 1))  # a naive time: which zone?


# --- function codes and elements ------------------------------------------------------------


@pytest.mark.parametrize("function", [0x30, 0x32, 0x33, 0x34])
def test_each_report_function(function: int) -> None:
    got = ok(frame(function, "392300209840"))
    assert got.function == function and got.readings == {"water_level_m": 209.84}


@pytest.mark.parametrize("function", [0x31, 0x35, 0x36, 0x37, 0x40, 0x51])
def test_other_functions_are_unsupported(function: int) -> None:
    assert refused(frame(function)).reason == "unsupported_function"


def test_multi_packet_is_unsupported() -> None:
    assert refused(frame(0x36, start=0x16, end=0x17)).reason == "unsupported_function"


def test_all_elements() -> None:
    got = ok(
        frame(
            0x32,
            "03110215"  # 03 water temperature N(3,1): 21.5 °C
            "1A19000025"  # 1A 1-hour rain N(5,1): 2.5 mm
            "1F19000120"  # 1F daily rain: 12.0 mm
            "2019000025"  # 20 current rain: 2.5 mm
            "2619012345"  # 26 accumulated rain N(6,1): 1234.5 mm
            "272B0001320500"  # 27 flow N(9,3): 1320.500 m³/s
            "38121290"  # 38 voltage N(4,2): 12.90 V
            "392300209840"  # 39 river level N(7,3): 209.840 m
            "452000000005",  # 45 status and alarms: 4 bytes HEX
        )
    )
    assert got.readings == {
        "water_temp_c": 21.5,
        "rainfall_mm": 2.5,
        "flow_m3s": 1320.5,
        "battery_v": 12.9,
        "water_level_m": 209.84,
    }
    assert got.elements[0x1A] == 2.5 and got.elements[0x1F] == 12.0
    assert got.elements[0x26] == 1234.5  # a counter: kept, not a field of ours
    assert got.status == 5


def test_negative_value_has_a_leading_ff_byte() -> None:
    got = ok(frame(0x32, "392BFF00000127"))  # 5 bytes (sign + 4), 3 decimals
    assert got.readings == {"water_level_m": -0.127}


def test_missing_value_is_no_data() -> None:
    got = ok(frame(0x32, "3923FFFFFFFF38121290"))
    assert got.elements[0x39] is None
    assert got.readings == {"battery_v": 12.9}


def test_hourly_report_five_minute_series() -> None:
    rain = "00000105FF0A00000000000000"[:24]  # 0, 0, 0.1, 0.5, none, 1.0, then zeros
    levels = "0064006500660067FFFF0069006A006B006C006D006E006F"  # 1.00 … 1.11 m, one missing
    got = ok(frame(0x34, f"F460{rain}F5C0{levels}2619001234"))
    assert got.series["rainfall_5min_mm"] == (0, 0, 0.1, 0.5, None, 1.0, 0, 0, 0, 0, 0, 0)
    assert got.series["relative_level_5min_m"][:4] == (1.0, 1.01, 1.02, 1.03)
    assert got.series["relative_level_5min_m"][4] is None
    assert got.series["relative_level_5min_m"][-1] == 1.11
    assert "rainfall_mm" not in got.readings  # one 5 minutes without data: no hourly sum
    full = ok(frame(0x34, "F460" + "05" * 12))
    assert full.readings == {"rainfall_mm": 6.0}  # the hour's rain: since the last report
    assert refused(frame(0x34, "F458" + "05" * 11)).reason == "bad_syntax"


# --- rejections -----------------------------------------------------------------------------


def test_length_mismatch() -> None:
    good = frame()
    assert refused(frame(length=len(good) - 17 + 1)).reason == "bad_length"
    assert refused(good[:-1]).reason == "bad_length"
    assert refused(good + b"\x00").reason == "bad_length"
    assert refused(good[:10]).reason == "bad_length"


@pytest.mark.parametrize("elements", ["9912000000", "FF3812", "FF01"])
def test_unknown_element(elements: str) -> None:
    assert refused(frame(0x32, elements)).reason == "unknown_element"


@pytest.mark.parametrize(
    "elements",
    [
        "38129999",  # 99.99 V
        "2019999999",  # 99999.9 mm of rain
        "2021FF000025",  # -2.5 mm of rain
        "03110999",  # 99.9 °C
        "392309999999",  # 9999.999 m
    ],
)
def test_out_of_range(elements: str) -> None:
    assert refused(frame(0x32, elements)).reason == "out_of_range"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"elements": "39230000012A"}, "not BCD"),
        ({"elements": "3923000001"}, "too short"),
        ({"elements": "39"}, "no data definition"),
        ({"elements": "3900"}, "zero length"),
        ({"elements": "3812129038121290"}, "twice"),
        ({"elements": "F460" + "05" * 12 + "F460" + "06" * 12}, "rain series twice"),
        ({"elements": "F5C0" + "0005" * 12 + "F5C0" + "0006" * 12}, "level series twice"),
        ({"head": "0003251306110016F1F1001234567848F0F02512061100"}, "month 13"),
        ({"head": "0003251206110016F2F2001234567848F0F02512061100"}, "no F1F1"),
        ({"head": "0003251206110016F1F1001234567848F0F12512061100"}, "no F0F0"),
        ({"body_station": "0099999999"}, "other station"),
        ({"head": "00032512061100"}, "short body"),
        ({"station": "00123456AB"}, "station not BCD"),
    ],
)
def test_bad_syntax(changes: dict[str, str], why: str) -> None:
    assert refused(frame(0x32, **changes)).reason == "bad_syntax", why  # type: ignore[arg-type]


def test_bad_frame() -> None:
    good = bytearray(frame())
    assert refused(b"\x00" + bytes(good)[1:]).reason == "bad_frame"
    for position, value in [(11, 0x40), (13, 0x01)]:
        broken = bytearray(good)
        broken[position] = (broken[position] & 0x0F) | value if position == 11 else value
        message = bytes(broken[:-2])
        assert refused(message + crc16_modbus(message).to_bytes(2, "big")).reason == "bad_frame"
    assert refused(frame(end=0x99)).reason == "bad_frame"


# --- the splitter -----------------------------------------------------------------------------


def split_all(chunks: list[bytes]) -> list[Sl651Frame | Rejection]:
    splitter = FrameSplitter()
    out: list[Sl651Frame | Rejection] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
        assert splitter.pending <= MAX_FRAME
    return out


def frames_of(results: list[Sl651Frame | Rejection]) -> list[bytes]:
    return [r.raw for r in results if isinstance(r, Sl651Frame)]


@pytest.mark.parametrize("data", [TIMED_UP, frame(0x34, "F460" + "01" * 12)])
def test_split_at_every_byte(data: bytes) -> None:
    for cut in range(1, len(data)):
        assert split_all([data[:cut], data[cut:]]) == [parse(data)]
    assert frames_of(split_all([bytes([b]) for b in data])) == [data]


def test_merged_frames_and_garbage() -> None:
    stream = b"junk" + TIMED_UP + TEST_UP + b"\x7e\x00\x7e" + KEEPALIVE + b"\x7e"
    results = split_all([stream])
    assert frames_of(results) == [TIMED_UP, TEST_UP, KEEPALIVE]
    assert [r.reason for r in results if isinstance(r, Rejection)] == ["bad_frame"] * 2


def test_a_corrupt_frame_does_not_swallow_the_next() -> None:
    broken = bytearray(TIMED_UP)
    broken[12] = 0xFF  # length now 0x0FF: the splitter waits for 272 bytes
    stream = bytes(broken) + TEST_UP + KEEPALIVE * 8  # 320 bytes
    results = split_all([stream])
    assert isinstance(results[0], Rejection) and results[0].reason == "bad_crc"
    assert frames_of(results) == [TEST_UP] + [KEEPALIVE] * 8
    assert all(r.reason in REASONS for r in results if isinstance(r, Rejection))


def test_the_buffer_is_bounded() -> None:
    splitter = FrameSplitter()
    splitter.feed(TIMED_UP[:11] + b"\x0f\xff\x02" + b"\x00" * 10_000)
    assert splitter.pending <= MAX_FRAME
    splitter.feed(b"\x01" * 100_000)
    assert splitter.pending <= 1


# --- fuzzing ----------------------------------------------------------------------------------

VALID = [TIMED_UP, TEST_UP, KEEPALIVE, TEST_DOWN, frame(0x34, "F460" + "02" * 12)]


def named(result: Sl651Frame | Rejection) -> bool:
    return isinstance(result, Sl651Frame) or result.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert named(parse(data))
    assert named(parse(b"\x7e\x7e" + data))
    assert all(named(r) for r in split_all([data]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_truncated_and_mutated_frames(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    assert named(parse(data[:cut]))
    at = draw.draw(st.integers(0, len(data) - 1))
    mutated = data[:at] + bytes([draw.draw(st.integers(0, 255))]) + data[at + 1 :]
    result = parse(mutated)
    assert named(result)
    if mutated != data:
        assert isinstance(result, Rejection)  # CRC-16 catches every one-byte change


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(VALID), min_size=1, max_size=5),
    st.lists(st.binary(max_size=20).filter(lambda b: b"\x7e" not in b), max_size=5),
    st.lists(st.integers(1, 60), min_size=1, max_size=30),
)
def test_split_and_merged_streams(
    frames: list[bytes], garbage: list[bytes], sizes: list[int]
) -> None:
    stream = b"".join(g + f for g, f in zip(garbage + [b""] * len(frames), frames, strict=False))
    chunks, at, i = [], 0, 0
    while at < len(stream):
        size = sizes[i % len(sizes)]
        chunks.append(stream[at : at + size])
        at, i = at + size, i + 1
    results = split_all(chunks)
    assert frames_of(results) == frames
    assert all(named(r) for r in results)
