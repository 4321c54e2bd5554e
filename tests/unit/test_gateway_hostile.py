"""The field gateways and vendor mappings against hostile input and bad moments: what the
issue-20 review proved, kept as regression tests. Fast: every test here takes well under
10 s (the denial-of-service ones are bounded by a small input)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from devices import hj212, sl651
from devices.registry import Registry, RiverDevice, load_registry
from devices.vendormap import ChannelMap, MappingError, apply, load_vendor_maps
from ingest.gateway.dialects import dialect
from ingest.gateway.server import GatewayServer
from ingest.gateway.translate import Accepted, Refused
from ingest.settings import Settings
from ingest.sinks.deadletters import NewDeadLetter
from tests.fakes.gateway import FakePublisher, Letters, first_station
from tests.fieldframes import hj212_frame, sl651_frame

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def with_password(device: RiverDevice, password: str) -> RiverDevice:
    """The device with another password, validated as the registry validates it (so the
    password is one an operator may configure)."""
    data = device.model_dump(mode="json")
    data["password"] = password
    return RiverDevice.model_validate(data)


def city_with(city: Registry, device: RiverDevice) -> Registry:
    devices = [d for d in city.devices.values() if d.id != device.id] + [device]
    return Registry(city.areas.values(), devices)


def read_all(protocol: str, registry: Registry, chunks: Sequence[bytes]) -> list[Any]:
    """What the gateway's read path makes of ``chunks`` arriving as separate TCP reads."""
    speaks = dialect(protocol, registry, None)
    splitter = speaks.splitter()
    return [speaks.read(item, NOW) for chunk in chunks for item in splitter.feed(chunk)]


async def start(registry: Registry, protocol: str) -> tuple[Any, ...]:
    publisher, letters, stop = FakePublisher(), Letters(), asyncio.Event()
    server_settings = Settings(gateway_bind="127.0.0.1", gateway_idle_s=30)
    server = GatewayServer(
        server_settings,
        dialect(protocol, registry, None),
        publisher,  # type: ignore[arg-type]
        letters,
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(0, stop, ready.set_result))
    port = await ready
    return server, publisher, letters, stop, task, port


# --- 1. SL 651 splitter: a few KiB from anyone block the gateway's event loop for seconds ---

# 7E 7E 0F repeated: every third byte starts a "header" whose direction nibble is 0 and whose
# length field is 0xF7E, so the splitter parses (and CRCs, bit by bit in Python) ~4 KiB at
# every third byte of input, after each bad_crc resuming one byte in.
AMPLIFIER = bytes([0x7E, 0x7E, 0x0F])


def test_sl651_splitter_cost_is_not_amplified_by_crafted_junk() -> None:
    junk = AMPLIFIER * 1600  # 4,800 bytes: one header's length (3,983) + 272 more starts
    began = time.perf_counter()
    sl651.FrameSplitter().feed(junk)
    crafted = time.perf_counter() - began
    began = time.perf_counter()
    sl651.FrameSplitter().feed(bytes(range(256)) * 19)  # 4,864 bytes of ordinary junk
    ordinary = time.perf_counter() - began
    # Measured: ~0.7 s (272 parses of 3,983 bytes each, CRC bit by bit) against ~0.1 ms;
    # one 16 KiB read costs ~4,100 parses: 5-10 s with the event loop blocked.
    assert crafted < 0.1, f"4,800 crafted bytes took {crafted:.2f} s (ordinary: {ordinary:.4f} s)"


def _station_waits(port: int, junk: bytes, frame: bytes) -> float:
    """From another thread (the gateway's loop must not be ours to block): an attacker sends
    ``junk``, then a good station its frame; how long the station waits for its answer."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port)) as attacker,
        socket.create_connection(("127.0.0.1", port)) as station,
    ):
        attacker.sendall(junk)
        time.sleep(0.05)
        began = time.perf_counter()
        station.sendall(frame)
        station.settimeout(30)
        answer = station.recv(1000)
        waited = time.perf_counter() - began
    assert isinstance(sl651.parse(answer), sl651.Sl651Frame), answer
    return waited


async def test_one_client_s_junk_does_not_stall_every_other_station(city: Registry) -> None:
    _server, _publisher, _letters, stop, task, port = await start(city, "sl651")
    try:
        frame = sl651_frame(first_station(city, "sl651"), 9, NOW, 20840)
        # 8 KiB, unauthenticated, in one read
        waited = await asyncio.to_thread(_station_waits, port, AMPLIFIER * 2731, frame)
        assert waited < 1.0, f"a good station waited {waited:.1f} s for its answer"
    finally:
        stop.set()
        await task


# --- 2. HJ 212: '#' in a password would let a split read cut a frame inside it -------------


def test_a_password_with_hash_is_refused_by_the_registry(city: Registry) -> None:
    """A stream split inside ``PW=ab##cd`` would be cut at its ``##``, the frame refused and
    half its password kept in a dead letter: the registry does not take such a password."""
    with pytest.raises(ValidationError, match="none of # & , ; ="):
        with_password(first_station(city, "hj212"), "ab##cd")


# --- 3. dead letters: a station's true password kept in clear --------------------------------


def sl651_ascii_frame(station: str, password: str) -> bytes:
    """An SL 651-2014 ASCII-mode timed report (SOH 01, fields as ASCII hex; appendix A's
    layout): what an RTU set to ASCII instead of HEX/BCD sends."""
    body = b"0001261206103000ST " + station.encode() + b" H TT 2612061030 Z 208.520 VT 12.15 "
    head = b"\x01" + b"01" + station.encode() + password.encode() + b"32" + b"0%03X" % len(body)
    frame = head + b"\x02" + body + b"\x03"
    return frame + b"%04X" % sl651.crc16_modbus(frame)


def test_sl651_ascii_mode_frame_keeps_no_password(city: Registry) -> None:
    device = with_password(first_station(city, "sl651"), "BEEF")
    frame = sl651_ascii_frame(device.station_address or "", "BEEF")
    outcomes = read_all("sl651", city_with(city, device), [frame])
    assert outcomes and all(isinstance(o, Refused) for o in outcomes)
    kept = [o.raw for o in outcomes]
    assert not [k for k in kept if b"BEEF" in k], f"password in clear in the dead letter: {kept}"


def test_hj212_junk_run_masks_every_password(city: Registry) -> None:
    device = first_station(city, "hj212")
    secret = device.password.get_secret_value()  # type: ignore[union-attr]
    frame = hj212_frame(device, NOW, {"ph": "7.25"})
    # Line noise ate one '#' of two frames that arrived in one read (a station's resend).
    outcomes = read_all("hj212", city, [frame[1:] + frame[1:] + frame])
    refused = [o for o in outcomes if isinstance(o, Refused)]
    assert any(isinstance(o, Accepted) for o in outcomes) and refused
    assert not [o.raw for o in refused if f"PW={secret};".encode() in o.raw]


# --- 4. the dialect read path never raises (fuzz) ---------------------------------------------


def _hj212_mutants() -> st.SearchStrategy[bytes]:
    segment = (
        "QN=20261206103000123;ST=21;CN=2011;PW=123456;MN=43050310000201;Flag=5;"
        "CP=&&DataTime=20261206103000;w01001-Rtd=7.25,w01001-Flag=N&&"
    )
    fragments = st.sampled_from(
        [
            "DataTime=00010101000000",
            "DataTime=99991231235959",
            "w01001-Rtd=-0",
            "w01010-Rtd=999999999999.999999999",
            "w01001-Flag=T",
            "w01001-SampleTime=20261340000000",
            "PNUM=9999;PNO=9999",
            "CN=2031",
            "CN=9014",
            "Flag=255",
            ";",
            ",",
            "=",
            "&&",
            "##",
            "\r\n",
        ]
    )

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        text = segment
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(fragments) + text[at + draw(st.integers(0, 5)) :]
        try:
            framed = hj212.wrap(text)
        except (ValueError, UnicodeEncodeError):
            return text.encode("utf-8")
        return framed

    return build()


def _sl651_mutants(city: Registry) -> st.SearchStrategy[bytes]:
    device = first_station(city, "sl651")
    good = bytearray(sl651_frame(device, 1, NOW, 20840))

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        body = bytearray(good[sl651.HEAD : -3])
        for _ in range(draw(st.integers(0, 6))):
            at = draw(st.integers(0, len(body)))
            body[at:at] = draw(st.binary(min_size=1, max_size=6))
        if draw(st.booleans()) and len(body) > 8:
            del body[draw(st.integers(8, len(body) - 1))]
        head = bytearray(good[: sl651.HEAD])
        head[10] = draw(st.sampled_from([0x2F, 0x30, 0x32, 0x33, 0x34, 0x99]))
        head[11:13] = (draw(st.sampled_from([0x0000, 0x8000])) | len(body)).to_bytes(2, "big")
        message = (
            bytes(head) + bytes(body) + bytes([draw(st.sampled_from(sorted(sl651.END_MARKERS)))])
        )
        return message + sl651.crc16_modbus(message).to_bytes(2, "big")

    return build()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_the_read_path_never_raises(city: Registry, data: st.DataObject) -> None:
    protocol = data.draw(st.sampled_from(["hj212", "sl651"]))
    frames = _hj212_mutants() if protocol == "hj212" else _sl651_mutants(city)
    stream = b"".join(
        data.draw(st.lists(st.one_of(frames, st.binary(max_size=64)), min_size=1, max_size=4))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for outcome in read_all(protocol, city, chunks):
        assert isinstance(outcome, Accepted | Refused)
        if isinstance(outcome, Accepted):
            for _topic, payload in outcome.messages:
                json.loads(payload)


# --- 5. an SL 651 password is two bytes, and guessing costs nothing --------------------------


async def test_password_guessing_is_slowed_or_stopped(city: Registry) -> None:
    """A peer past 20 wrong passwords in 10 minutes is shut out (ingest/gateway/guesses.py):
    65,536 SL 651 passwords would take months from one address."""
    device = first_station(city, "sl651")
    server, publisher, _letters, stop, task, port = await start(city, "sl651")
    try:
        guesses = 0
        for _ in range(3):  # 3 connections x 31 wrong guesses
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with contextlib.suppress(ConnectionError):
                for _ in range(31):
                    guess = f"{0xF000 + guesses:04X}"
                    guesses += 1
                    writer.write(sl651_frame(with_password(device, guess), guesses, NOW, 20840))
                await writer.drain()
                await asyncio.wait_for(reader.read(1000), 2.0)  # b"": the gateway hung up
            writer.close()
        right = sl651_frame(device, 999, NOW, 20840)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(right)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(1000), 1.0)
        writer.close()
        assert server.counts["refused_bad_password"] == 20
        assert server.counts["connections_refused_guessing"] == 3
        assert not answer and not publisher.calls, "the right password, guessed, was answered"
    finally:
        stop.set()
        await task


# --- 6. vendor mappings: ``apply`` raises only MappingError ----------------------------------


def test_apply_raises_only_mapping_error_on_a_unicode_digit_path() -> None:
    mapping = ChannelMap.model_validate(
        {
            "ts": {"path": "t", "format": "epoch_ms"},
            "fields": {"water_level_m": {"path": "levels.²"}},  # loads: a path is any text
        }
    )
    try:
        apply(mapping, {"t": 1_780_000_000_000, "levels": [1.0, 2.0]})
    except MappingError:
        pass  # the named error is fine
    except Exception as e:
        pytest.fail(f"apply raised {type(e).__name__}: {e} (the consumer expects MappingError)")


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


_VENDORS = load_vendor_maps(REPO / "config" / "vendors.yaml")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_apply_on_hostile_vendor_documents_raises_only_mapping_error(data: st.DataObject) -> None:
    maps = _VENDORS
    model = data.draw(st.sampled_from(sorted(maps.models)))
    channel = data.draw(st.sampled_from(sorted(maps.models[model].channels)))
    mapping = maps.models[model].channels[channel]
    # A document with every path the mapping reads, each holding anything JSON can.
    paths = [r.path for r in mapping.fields.values() if r.path] + (
        [mapping.ts.path] if mapping.ts else []
    )
    document: dict[str, Any] = {}
    for path in paths:
        node = document
        keys = path.split(".")
        for key in keys[:-1]:
            nxt = node.get(key)
            if not isinstance(nxt, dict):
                nxt = node[key] = {}
            node = nxt
        node[keys[-1]] = data.draw(_JSON)
    with contextlib.suppress(MappingError):
        apply(mapping, document)


def test_a_huge_epoch_number_is_a_mapping_error_not_a_crash() -> None:
    mapping = ChannelMap.model_validate(
        {"ts": {"path": "t", "format": "epoch_s"}, "fields": {"water_level_m": {"path": "v"}}}
    )
    for value in (10**5000, "9" * 64, -(10**400), 1e308):
        with contextlib.suppress(MappingError):
            apply(mapping, {"t": value, "v": 1.0})


def test_sl651_dead_letter_keeps_the_frame_as_hex_with_its_size(city: Registry) -> None:
    """docs/payloads.md: the first 2 KiB of the frame, as hex text (4 KiB of text); the size
    is the frame's."""
    device = first_station(city, "sl651")
    frame = bytearray(sl651_frame(device, 1, NOW, 20840))
    body = bytes(range(256)) * 12  # a 3 KiB body, so the frame is > 2 KiB
    message = bytes(frame[:11]) + len(body).to_bytes(2, "big") + b"\x02" + body + b"\x03"
    message += b"\x00\x00"  # bad CRC
    letters = Letters()
    server = GatewayServer(Settings(), dialect("sl651", city, None), FakePublisher(), letters)  # type: ignore[arg-type]
    for outcome in read_all("sl651", city, [message]):
        server._refuse(outcome, "203.0.113.9:40000")
    [row] = [r for r in letters.rows if r.reason == "sl651.bad_crc"]
    from ingest.sinks.deadletters import MAX_KEPT_BYTES

    assert row.size == len(message)
    kept = bytes.fromhex(row.payload[:MAX_KEPT_BYTES].decode())
    assert len(kept) == MAX_KEPT_BYTES // 2
    assert kept[:8] == message[:8] and kept[8:10] == b"\x00\x00" and kept[10:] == message[10:2048]


def test_frames_far_outside_the_service_window_are_not_answered(city: Registry) -> None:
    """A frame the service will refuse (ts before 2000, or years ahead) is answered by the
    gateway anyway: the station never resends it and its data is only a service dead letter.
    docs/payloads.md documents the 5-min/30-day case; the gateway could refuse at least what
    the payload schema itself refuses (ts outside 2000-2100), as the SL 651 parser does."""
    device = first_station(city, "hj212")
    far = datetime(1999, 1, 1, tzinfo=UTC) - timedelta(days=1)
    frame = hj212_frame(device, far, {"ph": "7.25"})
    [outcome] = read_all("hj212", city, [frame])
    assert isinstance(outcome, Refused), "answered, then refused out_of_range by the service"


# --- 7. HJ 212: real-time, minute and hourly data of one DataTime are one stored point --------


def test_hj212_hourly_mean_does_not_overwrite_the_real_time_reading(city: Registry) -> None:
    """CN 2011 (real-time Rtd) and CN 2061 (hourly Avg) frames with the same DataTime would be
    one InfluxDB point, the later winning: once a station has sent real-time data, its means
    are answered and left out (ingest/gateway/translate.py ``finest``)."""
    device = first_station(city, "hj212")
    on_the_hour = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
    real_time = hj212_frame(device, on_the_hour, {"ph": "9.10"})
    hourly = hj212.encode_data(
        mn=device.mn or "",
        pw=device.password.get_secret_value(),  # type: ignore[union-attr]
        cn="2061",
        values={"ph": 7.30},
        data_time=on_the_hour,
        qn=on_the_hour,
    )
    first_real, then_hourly = read_all("hj212", city, [real_time, hourly])
    assert isinstance(first_real, Accepted) and isinstance(then_hourly, Accepted)
    assert json.loads(first_real.messages[0][1])["ph"] == 9.1
    assert then_hourly.messages == () and then_hourly.answer is not None
    # A station that sends only hourly means has them stored.
    [alone] = read_all("hj212", city, [hourly])
    assert isinstance(alone, Accepted) and json.loads(alone.messages[0][1])["ph"] == 7.3


# --- 8. stopping with stations connected --------------------------------------------------


async def test_stopping_with_stations_connected_logs_no_errors(
    city: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    _server, _publisher, _letters, stop, task, port = await start(city, "hj212")
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for _reader, writer in connections:
        writer.write(hj212_frame(first_station(city, "hj212"), NOW, {"ph": "7.1"}))
        await writer.drain()
    await asyncio.sleep(0.2)
    caplog.clear()
    with caplog.at_level("ERROR"):
        stop.set()
        await task
        await asyncio.sleep(0.05)
    errors = [r.getMessage()[:90] for r in caplog.records if r.levelname == "ERROR"]
    assert not errors, f"a planned stop logs {len(errors)} ERROR tracebacks: {errors}"
    for _reader, writer in connections:
        writer.close()


# --- 9. anyone on the TCP port can evict the service's dead letters ------------------------


def test_unauthenticated_frames_cannot_prune_the_services_dead_letters(
    city: Registry, tmp_path: Path
) -> None:
    """The parser's checks come first (documented), so a frame with a valid CRC, any MN and a
    pH of 20 is refused ``out_of_range`` before anyone is identified; the gateway keeps it in
    the dead-letter store it shares with ``serve``, under the reason MQTT devices' out-of-range
    payloads use, and the per-reason cap then prunes the service's own rows first."""
    from ingest.gateway.server import GatewayServer as _Server
    from ingest.sinks.deadletters import DeadLetterStore

    store = DeadLetterStore(tmp_path / "deadletters.sqlite3", max_rows=20)
    store.add_many(
        [NewDeadLetter(1, "iot/river/river-tj-0002/telemetry", "out_of_range", "ph: ≤ 14", b"{}")]
    )
    forged = hj212.wrap(
        "QN=20261206103000123;ST=21;CN=2011;PW=x;MN=ATTACKER;Flag=5;"
        "CP=&&DataTime=20261206103000;w01001-Rtd=20.0,w01001-Flag=N&&"
    )
    refused = read_all("hj212", city, [forged] * 20)
    assert {o.reason for o in refused} == {"out_of_range"}  # kept as hj212.out_of_range

    class Sink:
        pending = 0

        def add(self, row: NewDeadLetter) -> None:
            store.add_many([row])

    server = _Server(Settings(), dialect("hj212", city, None), FakePublisher(), Sink())  # type: ignore[arg-type]
    for outcome in refused:
        server._refuse(outcome, "203.0.113.9:40000")
    topics = [row.topic for row in store.list(reason="out_of_range", limit=100)]
    store.close()
    assert "iot/river/river-tj-0002/telemetry" in topics, "pruned by 20 anonymous TCP frames"


# --- 10. run_gateway stops promptly with the broker away and a frame waiting on it ----------


async def test_run_gateway_stops_promptly_with_the_broker_away(
    city: Registry, tmp_path: Path
) -> None:
    import socket

    from ingest.gateway.service import run_gateway

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    conf = Settings(
        mqtt_host="127.0.0.1",
        mqtt_port=dead_port,
        data_dir=tmp_path,
        gateway_bind="127.0.0.1",
        status_interval_s=5,
    )
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_gateway(conf, city, "hj212", stop, port=0, on_ready=ready.set_result)
    )
    port = await asyncio.wait_for(ready, 10)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"junk that becomes a dead letter\r\n")
    writer.write(
        hj212_frame(first_station(city, "hj212"), NOW, {"ph": "7.1"})
    )  # waits for a broker
    await writer.drain()
    await asyncio.sleep(0.3)
    began = time.perf_counter()
    stop.set()
    server = await asyncio.wait_for(task, 10)
    took = time.perf_counter() - began
    writer.close()
    assert took < 2.0, f"stop took {took:.1f} s"
    assert server.counts["answered"] == 0
    from ingest.sinks.deadletters import DeadLetterStore, store_path

    store = DeadLetterStore(store_path(tmp_path))
    kept = store.counts()
    store.close()
    assert kept.get("hj212.bad_frame", 0) >= 1, kept  # flushed at stop
