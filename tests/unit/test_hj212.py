"""The HJ 212-2017 parser: published example frames (CRC both ways), each data command, flags,
every named rejection, the data response, the stream splitter at every byte boundary, and
fuzzing (random bytes, truncations, split and merged reads): never an exception.

Where the example frames come from (their CRCs were computed by others with the standard's
appendix A algorithm; ours must agree):

- ``STANDARD_1062``: the standard's own example (CN 1062, set the real-time data interval),
  CRC 1C80, quoted by many HJ 212 parsers: a Python ``HJ212Parser.py`` ("报文示例来自 HJ212-2017
  附录 C"), a C# ``Hj212Crc16`` program asserting "1C80", and the test data of the Java
  hj-t212-parser family (``T212MapperTest.java``).
- ``RESPONSE_9014``: the data response (CN 9014, ST 91, Flag 4, CP=&&&&) for QN
  20160801085000001, CRC C241, as the comment of ``T212MapperTest.answer`` there shows it.
- ``WATER_2011_6E80``: a water station's real-time frame with SampleTime, CRC 6E80, from the
  thread https://forum.wareexpress.com/forum.php?mod=redirect&tid=6952 (2022-11-23), which
  gives the data segment and says its CRC "应该为 6E80".
- ``WATER_2011_A141``: a water station's real-time frame (pH, NH3-N, COD, temperature,
  turbidity, TP …), ##0354 … A141, from the example ``App.java`` of a hj212 client by
  tracy4262 (built on hj-t212-parser).
- ``AIR_2011_C0C1``: an air station's real-time frame (Flag 7, a typo "LA-td" in it),
  ##0453 … c0c1 (lower-case hex), from the same ``T212MapperTest.java``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.hj212 import (
    FACTORS,
    MAX_FRAME,
    REASONS,
    FrameSplitter,
    Hj212Frame,
    Reading,
    Rejection,
    crc16,
    data_response,
    parse,
    wrap,
)

STANDARD_1062 = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
)
RESPONSE_9014 = (
    b"##0087QN=20160801085000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;"
    b"Flag=4;CP=&&&&C241\r\n"
)
WATER_2011_6E80 = (
    b"##0457QN=20210320163101890;ST=32;CN=2011;PW=123456;MN=81733553213013;Flag=4;"
    b"CP=&&DataTime=20210320013400;w00000-Rtd=181.682,w00000-Flag=N;"
    b"w21001-SampleTime=20210320005400,w21001-Rtd=45.160,w21001-Flag=N;"
    b"w21011-SampleTime=20210320013400,w21011-Rtd=1.970,w21011-Flag=N;"
    b"w21003-SampleTime=20210320013400,w21003-Rtd=53.131,w21003-Flag=N;"
    b"w01018-SampleTime=20210320013400,w01018-Rtd=194.200,w01018-Flag=N;"
    b"w01001-SampleTime=20210320013406,w01001-Rtd=7.496,w01001-Flag=N&&6E80\r\n"
)
WATER_2011_A141 = (
    b"##0354QN=20230803171130538;ST=31;CN=2011;PW=123456;MN=88888880000001234567;Flag=5;"
    b"CP=&&DataTime=20230803165500;w01001-Rtd=0.000,w01001-Flag=N;w21003-Rtd=0.000,"
    b"w21003-Flag=N;w01018-Rtd=0.000,w01018-Flag=N;e01002-Rtd=0.000,e01002-Flag=N;"
    b"w01010-Rtd=0.000,w01010-Flag=N;e01001-Rtd=0.000,e01001-Flag=N;w01003-Rtd=0.000,"
    b"w01003-Flag=N;w21011-Rtd=0.000,w21011-Flag=N&&A141\r\n"
)
AIR_2011_C0C1 = (
    b"##0453QN=20160801085000001;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;"
    b"Flag=7;CP=&&DataTime=20160801084000;a21005-Rtd=1.1,a21005-Flag=N;a21004-Rtd=112,"
    b"a21004-Flag=N;a21026-Rtd=58,a21026-Flag=N;LA-td=50.1,LA-Flag=N;a34004-Rtd=207,"
    b"a34004-Flag=N;a34002-Rtd=295,a34002-Flag=N;a01001-Rtd=12.6,a01001-Flag=N;"
    b"a01002-Rtd=32,a01002-Flag=N;a01006-Rtd=101.02,a01006-Flag=N;a01007-Rtd=2.1,"
    b"a01007-Flag=N;a01008-Rtd=120,a01008-Flag=N;a34001-Rtd=217,a34001-Flag=N;&&c0c1\r\n"
)
PUBLISHED = {
    STANDARD_1062: 0x1C80,
    RESPONSE_9014: 0xC241,
    WATER_2011_6E80: 0x6E80,
    WATER_2011_A141: 0xA141,
    AIR_2011_C0C1: 0xC0C1,
}
CHINA = timezone(timedelta(hours=8))
HEAD = "QN=20261206103000123;ST=21;CN={cn};PW=123456;MN=HN4305000001;Flag={flag};"
FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def data_frame(cn: str, cp: str, flag: int = 5) -> bytes:
    return wrap(HEAD.format(cn=cn, flag=flag) + f"CP=&&DataTime=20261206103000;{cp}&&")


def rejected(frame: bytes, reason: str) -> Rejection:
    got = parse(frame)
    assert isinstance(got, Rejection), got
    assert got.reason == reason, got
    return got


def accepted(frame: bytes, **kwargs: frozenset[str]) -> Hj212Frame:
    got = parse(frame, **kwargs)
    assert isinstance(got, Hj212Frame), got
    return got


# --- the CRC and the published examples ---------------------------------------------------


@pytest.mark.parametrize("frame", list(PUBLISHED), ids=lambda f: f[-6:-2].decode())
def test_published_crc_is_recomputed(frame: bytes) -> None:
    assert crc16(frame[6:-6]) == PUBLISHED[frame] == int(frame[-6:-2], 16)
    assert int(frame[2:6]) == len(frame) - 12


def appendix_a_crc(data: bytes) -> int:
    """The appendix's algorithm as written, bit by bit: the reference for the table."""
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            check = reg & 0x0001
            reg >>= 1
            if check:
                reg ^= 0xA001
    return reg


@FUZZ
@given(st.binary(max_size=200))
def test_table_crc_is_the_appendix_algorithm(data: bytes) -> None:
    assert crc16(data) == appendix_a_crc(data)


def test_the_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS of "123456789" is 0x4B37; the standard feeds the register's high byte.
    assert crc16(b"123456789") != 0x4B37


@pytest.mark.parametrize("frame", list(PUBLISHED), ids=lambda f: f[-6:-2].decode())
def test_one_flipped_byte_is_bad_crc(frame: bytes) -> None:
    for at in (6, 6 + len(frame) // 3, len(frame) - 7):
        broken = bytearray(frame)
        broken[at] ^= 0x01
        rejected(bytes(broken), "bad_crc")


def test_published_frames_pass_the_crc_and_meet_our_rules() -> None:
    assert accepted(RESPONSE_9014).cn == "9014"
    rejected(STANDARD_1062, "unsupported_cn")  # a parameter command, not data
    # Flag 7 (bit D) without PNUM/PNO is taken as one packet; "LA-td" is that example's typo.
    assert "LA-td" in rejected(AIR_2011_C0C1, "bad_syntax").detail
    fixed = AIR_2011_C0C1[6:-6].decode().replace("LA-td", "LA-Rtd")
    rejected(wrap(fixed), "unknown_factor")  # air factors: no river field
    rejected(WATER_2011_6E80, "unknown_factor")  # w00000 flow, w21001 TN, w01018 COD
    rejected(WATER_2011_A141, "unknown_factor")


def test_published_water_frames_with_their_extra_factors_ignored() -> None:
    got = accepted(WATER_2011_6E80, ignore=frozenset({"w00000", "w21001", "w01018"}))
    assert got.qn == "20210320163101890" and got.mn == "81733553213013" and got.st == "32"
    assert got.data_time == datetime(2021, 3, 20, 1, 34, tzinfo=CHINA)
    assert got.skipped == ("w00000", "w21001", "w01018")
    assert got.readings["ph"] == Reading(
        7.496, "N", sample_time=datetime(2021, 3, 20, 1, 34, 6, tzinfo=CHINA)
    )
    assert got.readings["nh3n_mgl"].value == 53.131
    assert got.readings["tp_mgl"].value == 1.970
    assert not got.needs_answer  # Flag=4: version bits only

    other = accepted(WATER_2011_A141, ignore=frozenset({"w01018", "e01001", "e01002"}))
    assert set(other.readings) == {"ph", "nh3n_mgl", "water_temp_c", "turbidity_ntu", "tp_mgl"}
    assert other.needs_answer  # Flag=5: bit A


# --- data commands, flags, the response --------------------------------------------------


def test_real_time_2011_reads_rtd_and_flags() -> None:
    cp = ";".join(
        f"{code}-Rtd={value},{code}-Flag={flag}"
        for code, value, flag in [
            ("w01001", "7.2", "N"),
            ("w01009", "8.1", "F"),
            ("w01019", "3.4", "M"),
            ("w21003", "0.41", "S"),
            ("w21011", "0.05", "D"),
            ("w01010", "-1.5", "C"),
            ("w01003", "12", "T"),
        ]
    )
    got = accepted(data_frame("2011", cp + ";w01001-EFlag=A1"))
    assert got.cn == "2011" and got.flag == 5 and got.needs_answer
    assert got.data_time == datetime(2026, 12, 6, 10, 30, tzinfo=CHINA)
    assert got.data_time.utcoffset() == timedelta(hours=8)
    assert {name: (r.value, r.flag) for name, r in got.readings.items()} == {
        "ph": (7.2, "N"),
        "do_mgl": (8.1, "F"),
        "codmn_mgl": (3.4, "M"),
        "nh3n_mgl": (0.41, "S"),
        "tp_mgl": (0.05, "D"),
        "water_temp_c": (-1.5, "C"),
        "turbidity_ntu": (12.0, "T"),
    }
    assert accepted(data_frame("2011", "w01001-Rtd=7,w01001-Flag=B")).readings["ph"].flag == "B"
    assert accepted(data_frame("2011", "w01001-Rtd=7")).readings["ph"].flag is None


@pytest.mark.parametrize("cn", ["2051", "2061", "2031"])
def test_minute_hourly_daily_read_avg_and_keep_min_max_cou(cn: str) -> None:
    cp = "w21003-Cou=12.5,w21003-Min=0.2,w21003-Avg=0.4,w21003-Max=0.9,w21003-Flag=N;"
    got = accepted(data_frame(cn, cp, flag=4))
    assert got.cn == cn and not got.needs_answer
    assert got.readings["nh3n_mgl"] == Reading(0.4, "N", 0.2, 0.9, 12.5)
    rejected(data_frame(cn, "w21003-Rtd=0.4,w21003-Flag=N"), "bad_syntax")  # no Avg


def test_data_response_echoes_qn_and_parses_back() -> None:
    station = accepted(data_frame("2011", "w01001-Rtd=7.2,w01001-Flag=N"))
    answer = data_response(station)
    assert answer == wrap(
        "QN=20261206103000123;ST=91;CN=9014;PW=123456;MN=HN4305000001;Flag=4;CP=&&&&"
    )
    back = accepted(answer)
    assert (back.cn, back.st, back.qn, back.mn, back.pw) == (
        "9014",
        "91",
        "20261206103000123",
        "HN4305000001",
        "123456",
    )
    assert back.flag == 4 and not back.needs_answer and not back.readings
    # The published answer is what data_response writes for its question.
    question = accepted(RESPONSE_9014)
    assert data_response(question) == RESPONSE_9014


def test_split_packets_need_pnum_and_pno() -> None:
    seg = (
        HEAD.format(cn="2011", flag=7) + "PNUM=2;PNO=1;CP=&&DataTime=20261206103000;w01001-Rtd=7&&"
    )
    got = accepted(wrap(seg))
    assert (got.pnum, got.pno) == (2, 1)
    alone = accepted(wrap(seg.replace("PNUM=2;PNO=1;", "")))  # bit D alone: one packet
    assert (alone.pnum, alone.pno) == (None, None)
    rejected(wrap(seg.replace("PNO=1;", "")), "bad_syntax")
    rejected(wrap(seg.replace("PNO=1;", "PNO=3;")), "bad_syntax")


# --- rejections ----------------------------------------------------------------------------


def test_bad_frame_and_bad_length() -> None:
    good = data_frame("2011", "w01001-Rtd=7.2,w01001-Flag=N")
    rejected(good[:-2], "bad_frame")  # no CR LF
    rejected(b"$" + good[1:], "bad_frame")
    rejected(b"", "bad_frame")
    rejected(good[:2] + b"0x12" + good[6:], "bad_length")
    longer = good[:2] + b"%04d" % (len(good) - 11) + good[6:]
    assert rejected(longer, "bad_length").raw == longer
    rejected(good[:-8] + good[-6:], "bad_length")  # two bytes cut from the data
    rejected(good[:-6] + b"12G4\r\n", "bad_crc")


@pytest.mark.parametrize(
    ("cp", "reason"),
    [
        ("w01001-Rtd=7.2,w01001-Flag=X", "bad_syntax"),  # not a flag of table 8
        ("w01001-Rtd=seven", "bad_syntax"),
        ("w01001-Rtd=nan", "bad_syntax"),
        ("w01001-Rtd=1e3", "bad_syntax"),
        ("w01001-Rtd=1_0", "bad_syntax"),
        ("w01001-Rtd=7,w01001-Rtd=8", "bad_syntax"),
        ("w01001-Foo=7", "bad_syntax"),
        ("w01001=7", "bad_syntax"),
        ("w01001-SampleTime=20261306000000,w01001-Rtd=7", "bad_syntax"),
        ("w01018-Rtd=20.1,w01018-Flag=N", "unknown_factor"),  # COD: no field of ours
        ("w01001-Rtd=14.5,w01001-Flag=N", "out_of_range"),  # pH 0-14
        ("w01001-Rtd=-0.1", "out_of_range"),
        ("w01009-Rtd=50.01", "out_of_range"),  # DO 0-50 mg/L
        ("w01010-Rtd=-5.1", "out_of_range"),  # water temperature -5-50 °C
        ("w21011-Rtd=100.5", "out_of_range"),  # TP 0-100 mg/L
        ("w01003-Rtd=10000.1", "out_of_range"),  # turbidity 0-10000 NTU
    ],
)
def test_named_rejections_of_cp(cp: str, reason: str) -> None:
    rejected(data_frame("2011", cp), reason)


def test_ranges_are_the_payload_schema_edges() -> None:
    for cp in ("w01001-Rtd=0", "w01001-Rtd=14", "w01010-Rtd=-5", "w01003-Rtd=10000"):
        accepted(data_frame("2011", cp))
    rejected(data_frame("2061", "w01001-Avg=14.2"), "out_of_range")
    # Min and Max are not published, and a value the station flags is not a reading: neither
    # is held to the range, so the frame's good readings are not lost with them.
    assert accepted(data_frame("2061", "w01001-Avg=7,w01001-Max=14.2")).readings["ph"].max == 14.2
    flagged = accepted(data_frame("2011", "w01001-Rtd=19,w01001-Flag=T;w01009-Rtd=6.1"))
    assert flagged.readings["ph"] == (19.0, "T", None, None, None, None)
    rejected(data_frame("2011", "w01001-Rtd=19,w01001-Flag=N"), "out_of_range")
    assert set(FACTORS.values()) <= {
        "ph",
        "do_mgl",
        "codmn_mgl",
        "nh3n_mgl",
        "tp_mgl",
        "water_temp_c",
        "turbidity_ntu",
    }


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (HEAD.format(cn="2011", flag=5) + "CP=&&w01001-Rtd=7&&", "bad_syntax"),  # no DataTime
        (
            HEAD.format(cn="2011", flag=5) + "CP=&&DataTime=20261206103000;w01001-Rtd=7&",
            "bad_syntax",
        ),
        ("ST=21;CN=2011;PW=1;Flag=5;CP=&&DataTime=20261206103000&&", "bad_syntax"),  # no MN
        ("ST=21;ST=21;CN=2011;PW=1;MN=A;CP=&&DataTime=20261206103000&&", "bad_syntax"),
        ("Flage=5;ST=21;CN=2011;PW=1;MN=A;CP=&&DataTime=20261206103000&&", "bad_syntax"),
        ("QN=2026;ST=21;CN=2011;PW=1;MN=A;CP=&&DataTime=20261206103000&&", "bad_syntax"),
        ("ST=21;CN=2011;PW=1;MN=A;Flag=256;CP=&&DataTime=20261206103000&&", "bad_syntax"),
        ("ST=21;CN=2011;PW=1;MN=A;Flag=5CP=&&DataTime=20261206103000&&", "bad_syntax"),
        ("ST=21;CN=1062;PW=1;MN=A;Flag=5;CP=&&RtdInterval=30&&", "unsupported_cn"),
        ("ST=91;CN=9014;PW=1;MN=A;Flag=4;CP=&&QnRtn=1&&", "bad_syntax"),
        ("ST=21;CN=2011;PW=1;MN=A;Flag=5;CP=&&DataTime=20261206103000;w01001-Rtd=7&&", None),
    ],
)
def test_named_rejections_of_the_header(segment: str, reason: str | None) -> None:
    if reason is None:
        assert accepted(wrap(segment)).qn is None  # QN is optional
    else:
        rejected(wrap(segment), reason)


def test_non_ascii_data_is_bad_syntax() -> None:
    data = "ST=21;CN=2011;PW=1;MN=站;CP=&&DataTime=20261206103000&&".encode()
    frame = b"##%04d%s%04X\r\n" % (len(data), data, crc16(data))
    rejected(frame, "bad_syntax")


# --- the stream splitter -----------------------------------------------------------------

FRAMES = [
    data_frame("2011", "w01001-Rtd=7.2,w01001-Flag=N;w01009-Rtd=8.1,w01009-Flag=N"),
    RESPONSE_9014,
    data_frame("2061", "w21003-Avg=0.4,w21003-Flag=N"),
    WATER_2011_6E80,
]


def frames_of(items: list[bytes | Rejection]) -> list[bytes]:
    return [item for item in items if isinstance(item, bytes)]


def test_split_at_every_byte_position() -> None:
    stream = b"".join(FRAMES)
    for at in range(len(stream) + 1):
        splitter = FrameSplitter()
        out = splitter.feed(stream[:at]) + splitter.feed(stream[at:])
        assert out == FRAMES, at


def test_merged_and_byte_by_byte_reads() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b"".join(FRAMES) * 3) == FRAMES * 3
    out: list[bytes | Rejection] = []
    for byte in b"".join(FRAMES):
        out += splitter.feed(bytes([byte]))
    assert out == FRAMES


def test_garbage_between_frames_is_skipped_and_named() -> None:
    splitter = FrameSplitter()
    out = splitter.feed(
        b"\x00junk\r\n" + FRAMES[0] + b"AT+OK\r\n#" + FRAMES[1] + b"###" + FRAMES[2]
    )
    assert frames_of(out) == FRAMES[:3]
    junk = [item for item in out if isinstance(item, Rejection)]
    assert [j.reason for j in junk] == ["bad_frame"] * 3
    assert junk[0].raw == b"\x00junk\r\n" and junk[1].raw == b"AT+OK\r\n#"


def test_cut_off_frame_before_the_next_one() -> None:
    splitter = FrameSplitter()
    out = splitter.feed(FRAMES[3][:100] + FRAMES[0])
    assert out[0] == Rejection("bad_frame", "cut off by the next ##", FRAMES[3][:100])
    assert out[1:] == [FRAMES[0]]


def test_a_frame_shorter_than_its_length_ends_at_cr_lf_and_parse_names_it() -> None:
    short = FRAMES[0][:2] + b"0999" + FRAMES[0][6:]
    splitter = FrameSplitter()
    out = splitter.feed(short + FRAMES[1])
    assert out == [short, FRAMES[1]]
    rejected(short, "bad_length")


def test_the_buffer_is_bounded() -> None:
    splitter = FrameSplitter()
    for _ in range(30):
        out = splitter.feed(b"##0010" + b"x" * 5000)
        assert len(splitter._buf) <= MAX_FRAME
        assert all(isinstance(item, Rejection) for item in out)
    for _ in range(30):
        splitter.feed(b"no frame here " * 1000)
        assert len(splitter._buf) <= 1
    assert splitter.feed(FRAMES[0]) == [FRAMES[0]]


# --- fuzzing ------------------------------------------------------------------------------

_VALUE = st.decimals(min_value=0, max_value=14, places=3).map(str)
_WATER = st.lists(
    st.tuples(st.sampled_from(sorted(FACTORS)), _VALUE, st.sampled_from("NFMSDCTB")),
    min_size=1,
    max_size=7,
    unique_by=lambda t: t[0],
)
valid_frames = st.builds(
    lambda items, cn: data_frame(
        cn,
        ";".join(f"{c}-{'Rtd' if cn == '2011' else 'Avg'}={v},{c}-Flag={f}" for c, v, f in items),
    ),
    _WATER,
    st.sampled_from(["2011", "2051", "2061", "2031"]),
)


def _never_raises(frame: bytes) -> None:
    got = parse(frame)
    assert isinstance(got, Hj212Frame) or (isinstance(got, Rejection) and got.reason in REASONS)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _never_raises(data)
    _never_raises(b"##%04d" % len(data) + data + b"0000\r\n")
    _never_raises(wrap_bytes(data))
    for item in FrameSplitter().feed(data):
        assert isinstance(item, Rejection) or item.startswith(b"##")


def wrap_bytes(data: bytes) -> bytes:
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16(data))


@FUZZ
@given(valid_frames, st.data())
def test_valid_frames_parse_and_truncations_are_named(frame: bytes, data: st.DataObject) -> None:
    got = accepted(frame)
    assert data_response(got).startswith(b"##") and accepted(data_response(got)).qn == got.qn
    cut = data.draw(st.integers(0, len(frame) - 3))
    assert isinstance(parse(frame[:cut]), Rejection)
    assert isinstance(parse(frame[:cut] + b"\r\n"), Rejection)


@FUZZ
@given(st.lists(valid_frames, min_size=1, max_size=5), st.data())
def test_split_and_merged_reads_of_valid_frames(frames: list[bytes], data: st.DataObject) -> None:
    junk = st.binary(max_size=20).filter(lambda b: b"#" not in b)
    stream = b"".join(data.draw(junk) + frame for frame in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = FrameSplitter()
    out: list[bytes | Rejection] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += splitter.feed(stream[start:end])
    assert frames_of(out) == frames
    assert all(isinstance(parse(frame), Hj212Frame) for frame in frames_of(out))


@FUZZ
@given(st.lists(valid_frames, min_size=1, max_size=3), st.binary(max_size=200), st.data())
def test_streams_with_damage_never_raise(
    frames: list[bytes], noise: bytes, data: st.DataObject
) -> None:
    stream = bytearray(b"".join(frames))
    at = data.draw(st.integers(0, len(stream)))
    stream[at:at] = noise
    splitter = FrameSplitter()
    for start in range(0, len(stream), 37):
        for item in splitter.feed(bytes(stream[start : start + 37])):
            if isinstance(item, bytes):
                _never_raises(item)
            else:
                assert item.reason in REASONS
