"""The stations' side of the field protocols: ``hj212.encode_data`` and
``sl651.encode_report`` write frames that the parsers read back exactly — every header field,
every value at its written precision, every time at the precision the frame carries — over the
whole range of our payload's fields (hypothesis); and what no frame can say is refused."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import hj212, sl651
from devices.payloads import RiverTelemetry

BEIJING = timezone(timedelta(hours=8))
MOMENT = datetime(2026, 12, 6, 10, 30, 15, 123456, tzinfo=BEIJING)
EXAMPLES = settings(max_examples=300, deadline=None)


def in_range(name: str) -> st.SearchStrategy[float]:
    """Finite floats inside ``name``'s range in RiverTelemetry (devices/payloads.py)."""
    bounds = {"ge": -math.inf, "le": math.inf}
    annotation = RiverTelemetry.model_fields[name].annotation
    for arg in getattr(annotation, "__args__", ()):
        for meta in getattr(arg, "__metadata__", ()):
            for item in getattr(meta, "metadata", ()):
                for key in bounds:
                    if hasattr(item, key):
                        bounds[key] = float(getattr(item, key))
    assert math.isfinite(bounds["ge"]) and math.isfinite(bounds["le"]), (name, bounds)
    return st.floats(bounds["ge"], bounds["le"], allow_nan=False, allow_infinity=False)


def some_of(names: list[str]) -> st.SearchStrategy[dict[str, float]]:
    return st.fixed_dictionaries({}, optional={name: in_range(name) for name in names})


moments = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31), timezones=st.just(UTC)
)


# --- HJ 212 ------------------------------------------------------------------------------


def test_hj212_frame_is_the_standard_layout() -> None:
    frame = hj212.encode_data(
        mn="43050310000201",
        pw="123456",
        cn="2011",
        values={"ph": 7.5, "nh3n_mgl": 0.4123},
        data_time=MOMENT,
        qn=MOMENT,
    )
    segment = (
        "QN=20261206103015123;ST=21;CN=2011;PW=123456;MN=43050310000201;Flag=5;"
        "CP=&&DataTime=20261206103015;w01001-Rtd=7.50,w01001-Flag=N;"
        "w21003-Rtd=0.412,w21003-Flag=N&&"
    )
    assert frame == hj212.wrap(segment)


@EXAMPLES
@given(
    values=some_of(list(hj212.FIELD_FACTORS)),
    cn=st.sampled_from(list(hj212.DATA_CNS)),
    data_time=moments,
    qn=st.none() | moments,
    flag=st.sampled_from([4, 5, 7]),
    value_flag=st.sampled_from(sorted(hj212.FLAGS)),
    mn=st.from_regex(r"[0-9A-Za-z]{1,24}", fullmatch=True),
)
def test_hj212_round_trip(
    values: dict[str, float],
    cn: str,
    data_time: datetime,
    qn: datetime | None,
    flag: int,
    value_flag: str,
    mn: str,
) -> None:
    frame = hj212.encode_data(
        mn=mn,
        pw="123456",
        cn=cn,
        values=values,
        data_time=data_time,
        qn=qn,
        flag=flag,
        value_flag=value_flag,
    )
    got = hj212.parse(frame)
    assert isinstance(got, hj212.Hj212Frame), got
    assert (got.mn, got.pw, got.cn, got.st, got.flag) == (mn, "123456", cn, "21", flag)
    assert got.needs_answer is bool(flag & 1)
    assert got.data_time == data_time.replace(microsecond=0)
    assert got.data_time is not None and got.data_time.utcoffset() == timedelta(hours=8)
    assert got.qn == (None if qn is None else hj212.qn_of(qn))
    written = {n: float(f"{v:.{hj212.DECIMALS[n]}f}") for n, v in values.items()}
    assert {n: r.value for n, r in got.readings.items()} == written
    assert {r.flag for r in got.readings.values()} <= {value_flag}
    # The centre's answer names the frame: its QN, PW and MN.
    answer = hj212.parse(hj212.data_response(got))
    assert isinstance(answer, hj212.Hj212Frame)
    assert (answer.cn, answer.qn, answer.mn) == ("9014", got.qn, mn)


def test_hj212_qn_is_beijing_milliseconds() -> None:
    assert hj212.qn_of(datetime(2026, 12, 6, 2, 30, 15, 999999, tzinfo=UTC)) == (
        "20261206103015999"
    )


def test_hj212_small_negative_is_written_as_zero() -> None:
    frame = hj212.encode_data(
        mn="M1", pw="123456", cn="2011", values={"water_temp_c": -0.001}, data_time=MOMENT
    )
    assert b"w01010-Rtd=0.00," in frame
    got = hj212.parse(frame)
    assert isinstance(got, hj212.Hj212Frame) and got.readings["water_temp_c"].value == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cn": "9014"}, "not a water data command"),
        ({"values": {"battery_v": 12.0}}, "no HJ 212 factor"),
        ({"values": {"ph": math.nan}}, "not a finite number"),
        ({"pw": "12;456"}, "PW="),
        ({"mn": ""}, "MN="),
        ({"data_time": datetime(2026, 12, 6, 10, 30)}, "aware"),
        ({"qn": datetime(2026, 12, 6, 10, 30)}, "aware"),
        ({"value_flag": "X"}, "data flag"),
        ({"flag": 256}, "one byte"),
    ],
)
def test_hj212_refuses_what_no_frame_can_say(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "mn": "M1",
        "pw": "123456",
        "cn": "2011",
        "values": {"ph": 7.0},
        "data_time": MOMENT,
    }
    with pytest.raises(ValueError, match=message):
        hj212.encode_data(**(args | change))  # type: ignore[arg-type]


# --- SL 651 ------------------------------------------------------------------------------

# The published timed report of tests/unit/test_sl651.py (0x32; 4 mm, 10.49 m, 10.99 V).
TIMED_UP = bytes.fromhex(
    "7E7E05001122334403E832002B020034170718110016F1F1001122334448F0F0170718110020190000402619"
    "0000403923000104903812109903A421"
)


def test_sl651_elements_are_written_as_the_published_report_has_them() -> None:
    published = sl651.parse(TIMED_UP)
    assert isinstance(published, sl651.Sl651Frame) and published.observed is not None
    frame = sl651.encode_report(
        station=published.station,
        centre=published.centre,
        password=published.password,
        function=published.function,
        serial=published.serial,
        sent=published.sent,
        observed=published.observed,
        values=published.readings,
    )
    # The same header and body start; the same bytes for each element (the published one also
    # has 26, the running total, which is no field of ours).
    assert frame[:11] == TIMED_UP[:11]
    assert frame[13:37] == TIMED_UP[13:37]
    for element in ("2019000040", "392300010490", "38121099"):
        assert bytes.fromhex(element) in frame and bytes.fromhex(element) in TIMED_UP


@EXAMPLES
@given(
    values=some_of(list(sl651.ELEMENTS)),
    function=st.sampled_from(sorted(sl651.REPORTS)),
    serial=st.integers(0, 0xFFFF),
    centre=st.integers(0, 0xFF),
    station=st.from_regex(r"[0-9]{10}", fullmatch=True),
    password=st.from_regex(r"[0-9A-F]{4}", fullmatch=True),
    sent=moments,
    observed=moments,
)
def test_sl651_round_trip(
    values: dict[str, float],
    function: int,
    serial: int,
    centre: int,
    station: str,
    password: str,
    sent: datetime,
    observed: datetime,
) -> None:
    frame = sl651.encode_report(
        station=station,
        centre=centre,
        password=password,
        function=function,
        serial=serial,
        sent=sent,
        observed=observed,
        values=values,
    )
    got = sl651.parse(frame)
    assert isinstance(got, sl651.Sl651Frame), got
    assert (got.station, got.centre, got.password, got.function) == (
        station,
        centre,
        password,
        function,
    )
    assert (got.direction, got.serial, got.station_type, got.end) == ("up", serial, 0x48, 0x03)
    assert got.sent == sent.replace(microsecond=0)
    assert got.observed == observed.replace(second=0, microsecond=0)  # minutes only
    written = {n: float(f"{v:.{sl651.ELEMENTS[n][2]}f}") for n, v in values.items()}
    assert got.readings == written
    # The centre's answer is a down frame the parser reads with the same serial.
    answer = sl651.parse(sl651.answer(got, sent))
    assert isinstance(answer, sl651.Sl651Frame)
    assert (answer.direction, answer.serial, answer.station) == ("down", serial, station)


def test_sl651_negative_values_take_a_sign_byte() -> None:
    frame = sl651.encode_report(
        station="0043050301",
        centre=1,
        password="1234",
        function=sl651.TIMED,
        serial=1,
        sent=MOMENT,
        observed=MOMENT,
        values={"water_temp_c": -1.26, "water_level_m": -0.0004},
    )
    assert bytes.fromhex("0319FF0013") in frame  # 3 bytes with the sign, 1 decimal: -1.3
    assert bytes.fromhex("392300000000") in frame  # rounds to 0: no sign byte
    got = sl651.parse(frame)
    assert isinstance(got, sl651.Sl651Frame)
    assert got.readings == {"water_temp_c": -1.3, "water_level_m": 0.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"function": sl651.KEEPALIVE}, "not a report"),
        ({"station": "12345"}, "10 digits"),
        ({"password": "12G4"}, "4 hex digits"),
        ({"serial": 0x10000}, "serial"),
        ({"centre": 256}, "centre"),
        ({"values": {"ph": 7.0}}, "no SL 651 element"),
        ({"values": {"flow_m3s": 1e8}}, "digits"),
        ({"values": {"battery_v": math.inf}}, "not a finite number"),
        ({"sent": datetime(2026, 12, 6, 10, 30)}, "aware"),
        ({"observed": datetime(2100, 1, 1, tzinfo=BEIJING)}, "2000-2099"),
    ],
)
def test_sl651_refuses_what_no_frame_can_say(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "station": "0043050301",
        "centre": 1,
        "password": "1234",
        "function": sl651.TIMED,
        "serial": 1,
        "sent": MOMENT,
        "observed": MOMENT,
        "values": {"water_level_m": 210.0},
    }
    with pytest.raises(ValueError, match=message):
        sl651.encode_report(**(args | change))  # type: ignore[arg-type]
