"""The issue-20 review fixes, reviewed again: what they had broken or left open (passwords
quoted in a refusal's detail, SL 651 ASCII frames anywhere in a junk run, valid frames behind
long bogus headers, the finest-data memory set by a frame that stored nothing), kept as
regression tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import hj212, sl651
from devices.registry import Registry, load_registry
from ingest.gateway.dialects import dialect
from ingest.gateway.translate import Refused
from tests.fakes.gateway import first_station
from tests.unit.test_gateway_hostile import city_with, sl651_ascii_frame, with_password

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def read_all(protocol: str, registry: Registry, chunks: list[bytes]) -> list[Any]:
    speaks = dialect(protocol, registry, None)
    splitter = speaks.splitter()
    return [speaks.read(item, NOW) for chunk in chunks for item in splitter.feed(chunk)]


# --- 1. HJ 212: the station's password in a refusal's detail (log line + dead letter) --------


@pytest.mark.parametrize(
    "header",
    [
        "Pw={pw}",  # a logger writing the key in another case
        "PW={pw},",  # a stray separator after the password
        "PW={pw} MN",  # a logger that drops a ';'  (space: printable, passes _CONTROL)
    ],
)
def test_hj212_refusal_detail_keeps_no_password(city: Registry, header: str) -> None:
    device = first_station(city, "hj212")
    secret = device.password.get_secret_value()  # type: ignore[union-attr]
    segment = (
        "QN=20261206103000000;ST=21;CN=2011;"
        + header.format(pw=secret)
        + f";MN={device.mn};Flag=5;CP=&&DataTime=20261206103000;w01001-Rtd=7.25,w01001-Flag=N&&"
    )
    outcomes = read_all("hj212", city, [hj212.wrap(segment)])
    refused = [o for o in outcomes if isinstance(o, Refused)]
    assert refused
    # server.py _refuse: log.info("station %s: refused %s: %s", ..., detail) and the dead
    # letter's detail, both unmasked (only .raw goes through hj212_masked).
    leaks = [o.detail for o in refused if secret in o.detail]
    assert not leaks, f"password in clear in the refusal detail: {leaks}"


# --- 2. SL 651: sl651_masked masks an ASCII-mode frame only at offset 0 of the junk run -------


def test_sl651_second_ascii_frame_in_one_read_keeps_no_password(city: Registry) -> None:
    device = with_password(first_station(city, "sl651"), "BEEF")
    frame = sl651_ascii_frame(device.station_address or "", "BEEF")
    # An RTU in ASCII mode that sends two frames before the gateway reads (or a resend).
    outcomes = read_all("sl651", city_with(city, device), [frame + frame])
    kept = [o.raw for o in outcomes if isinstance(o, Refused)]
    assert kept
    assert not [k for k in kept if b"BEEF" in k], f"password in clear in the dead letter: {kept}"


def test_sl651_ascii_frame_after_a_stray_byte_keeps_no_password(city: Registry) -> None:
    device = with_password(first_station(city, "sl651"), "BEEF")
    frame = sl651_ascii_frame(device.station_address or "", "BEEF")
    outcomes = read_all("sl651", city_with(city, device), [b"\r\n" + frame])
    kept = [o.raw for o in outcomes if isinstance(o, Refused)]
    assert not [k for k in kept if b"BEEF" in k], f"password in clear in the dead letter: {kept}"


# --- 3. SL 651 splitter budget: valid frames skipped as junk --------------------------------


def OLD_SPLITTER() -> sl651.FrameSplitter:
    """The splitter without its parse budget, as it was before the review: the oracle of
    which frames a stream holds."""
    return sl651.FrameSplitter(bounded=False)


def _frames(city: Registry, count: int) -> list[bytes]:
    device = first_station(city, "sl651")
    return [
        sl651.encode_report(
            station=device.station_address or "",
            centre=1,
            password=device.password.get_secret_value(),  # type: ignore[union-attr]
            function=sl651.TIMED,
            serial=n,
            sent=NOW,
            observed=NOW,
            values={"water_level_m": 2.08, "battery_v": 12.15},
        )
        for n in range(count)
    ]


# A header (13 bytes) whose direction nibble is 0 and whose length field says 4,095: what a
# truncated large frame, or line noise after 7E 7E, looks like to the splitter.
LONG_HEADER = b"\x7e\x7e" + b"\x01" + b"\x00" * 8 + b"\x0f\xff"


def _serials(splitter: Any, chunks: list[bytes]) -> list[int]:
    return [
        item.serial
        for chunk in chunks
        for item in splitter.feed(chunk)
        if not hasattr(item, "reason")
    ]


def test_sl651_valid_frames_behind_a_few_long_headers_come_out(city: Registry) -> None:
    frames = _frames(city, 120)  # ~5 KB of good frames
    stream = LONG_HEADER * 4 + b"".join(frames)
    old = _serials(OLD_SPLITTER(), [stream])
    new = _serials(sl651.FrameSplitter(), [stream])
    assert old == list(range(120))
    assert new == old, f"lost {sorted(set(old) - set(new))}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sl651_every_valid_frame_still_comes_out(city: Registry, data: st.DataObject) -> None:
    frames = _frames(city, 120)
    junk = st.one_of(
        st.just(b""),
        st.binary(max_size=16),
        st.just(LONG_HEADER),
        st.sampled_from(frames).flatmap(lambda f: st.integers(13, len(f) - 1).map(lambda n: f[:n])),
    )
    stream = b"".join(data.draw(junk) + f for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    old = _serials(OLD_SPLITTER(), chunks)
    new = _serials(sl651.FrameSplitter(), chunks)
    assert set(new) >= set(old), f"lost {sorted(set(old) - set(new))}"


def test_sl651_frames_skipped_by_the_budget_are_at_least_counted(city: Registry) -> None:
    """Past the budget, ``_skip(total)`` runs while ``_quiet`` (a bad_crc just before): the
    valid frames inside the skipped span leave no rejection, no dead letter, no count."""
    frames = _frames(city, 84)
    out = sl651.FrameSplitter().feed(LONG_HEADER * 5 + b"".join(frames))
    got = [o.serial for o in out if isinstance(o, sl651.Sl651Frame)]
    garbage = sum(
        int(o.detail.split()[0])
        for o in out
        if isinstance(o, sl651.Rejection) and o.detail.endswith("outside any frame")
    )
    lost = sum(len(frames[n]) for n in range(84) if n not in got)
    assert garbage >= lost, f"{84 - len(got)} valid frames vanished, {garbage} bytes counted"


# --- 4. HJ 212 finest data: a refused (or all-flagged) real-time frame still sets `finest` ----


def _hj212(city: Registry, cn: str, at: datetime, value_flag: str = "N") -> bytes:
    device = first_station(city, "hj212")
    return hj212.encode_data(
        mn=device.mn or "",
        pw=device.password.get_secret_value(),  # type: ignore[union-attr]
        cn=cn,
        values={"ph": 7.25},
        data_time=at,
        qn=at,
        value_flag=value_flag,
    )


@pytest.mark.parametrize(
    ("realtime_at", "flag"),
    [
        (datetime(1999, 12, 31, 16, 0, tzinfo=UTC), "N"),  # a logger's clock reset: refused
        (NOW, "D"),  # analyser faulty: every reading left out, nothing published
    ],
)
def test_hj212_hourly_means_not_dropped_after_an_unpublished_realtime_frame(
    city: Registry, realtime_at: datetime, flag: str
) -> None:
    outcomes = read_all(
        "hj212", city, [_hj212(city, "2011", realtime_at, flag), _hj212(city, "2061", NOW)]
    )
    first, hourly = outcomes
    assert not getattr(first, "messages", ())  # the real-time frame published nothing
    # translate.py:136-138 records finest=real-time before the payload check / valid values:
    # the station's valid hourly mean is answered and left out, as are all later ones.
    assert not isinstance(hourly, Refused)
    assert hourly.messages, "valid hourly means answered but never published"
