"""The field gateway without a broker: what a frame means (translate.py) and the TCP server's
order of things (server.py) with a fake publisher standing in for Mosquitto."""

from __future__ import annotations

import asyncio
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devices import hj212, sl651
from devices.registry import Registry, load_registry
from ingest.gateway.dialects import dialect
from ingest.gateway.server import MAX_REFUSALS, GatewayServer
from ingest.gateway.translate import Accepted, Refused, from_hj212, from_sl651, topic_for
from ingest.ops.tls import ensure_local_tls
from ingest.settings import Settings
from tests.fakes.gateway import FakePublisher, Letters, first_station
from tests.fieldframes import hj212_frame, sl651_frame

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def hj212_outcome(city: Registry, frame: bytes) -> Accepted | Refused:
    parsed = hj212.parse(frame)
    assert isinstance(parsed, hj212.Hj212Frame), parsed
    return from_hj212(parsed, frame, city.stations_of("hj212"), None)


def test_hj212_data_becomes_the_stations_telemetry_and_its_answer(city: Registry) -> None:
    device = first_station(city, "hj212")
    frame = hj212_frame(device, NOW, {"ph": "7.25", "do_mgl": "6.8"})
    got = hj212_outcome(city, frame)
    assert isinstance(got, Accepted)
    assert got.device_id == device.id
    [(topic, payload)] = got.messages
    assert topic == f"iot/river/{device.id}/telemetry"
    assert json.loads(payload) == {"ts": int(NOW.timestamp() * 1000), "ph": 7.25, "do_mgl": 6.8}
    answer = hj212.parse(got.answer or b"")
    assert isinstance(answer, hj212.Hj212Frame) and answer.cn == hj212.RESPONSE_CN


def test_hj212_flagged_values_are_left_out_and_daily_means_not_stored(city: Registry) -> None:
    device = first_station(city, "hj212")
    frame = hj212_frame(device, NOW, {"ph": "7.2", "do_mgl": "6.1"}).replace(
        b"w01009-Flag=N", b"w01009-Flag=D"
    )
    got = hj212_outcome(city, hj212.wrap(frame[6:-6].decode()))
    assert isinstance(got, Accepted) and got.left_out == 1
    assert json.loads(got.messages[0][1]) == {"ts": int(NOW.timestamp() * 1000), "ph": 7.2}
    daily = hj212_frame(device, NOW, {"ph": "7.2"})[6:-6].decode()
    daily = daily.replace("CN=2011", "CN=2031").replace("w01001-Rtd", "w01001-Avg")
    got = hj212_outcome(city, hj212.wrap(daily))
    assert isinstance(got, Accepted) and got.messages == () and got.answer is not None


def test_hj212_without_the_a_bit_gets_no_answer(city: Registry) -> None:
    device = first_station(city, "hj212")
    segment = hj212_frame(device, NOW, {"ph": "7.2"})[6:-6].decode().replace("Flag=5", "Flag=4")
    got = hj212_outcome(city, hj212.wrap(segment))
    assert isinstance(got, Accepted) and got.answer is None and len(got.messages) == 1


def test_hj212_refusals_are_named_and_mask_the_password(city: Registry) -> None:
    device = first_station(city, "hj212")
    wrong = hj212_outcome(city, hj212_frame(device, NOW, {"ph": "7"}, pw="999999"))
    assert isinstance(wrong, Refused) and wrong.reason == "bad_password"
    assert b"999999" not in wrong.raw and b"PW=******;" in wrong.raw
    other = device.model_copy(update={"mn": "NOSUCHSTATION1"})
    unknown = hj212_outcome(city, hj212_frame(other, NOW, {"ph": "7"}))
    assert isinstance(unknown, Refused) and unknown.reason == "unknown_station"
    assert b"PW=******;" in unknown.raw and b"123456" not in unknown.raw


def test_sl651_report_becomes_telemetry_at_its_observation_time(city: Registry) -> None:
    device = first_station(city, "sl651")
    frame = sl651.parse(sl651_frame(device, 7, NOW, 20840))
    assert isinstance(frame, sl651.Sl651Frame)
    got = from_sl651(frame, city.stations_of("sl651"), 4, NOW)
    assert isinstance(got, Accepted)
    [(topic, payload)] = got.messages
    assert topic == topic_for(device.id, 4) and topic.startswith("iot/") and topic.count("/") == 4
    assert json.loads(payload) == {
        "ts": int(NOW.timestamp() * 1000),
        "water_level_m": 208.4,
        "battery_v": 12.15,
    }
    answer = sl651.parse(got.answer or b"")
    assert isinstance(answer, sl651.Sl651Frame) and answer.serial == 7


def test_sl651_wrong_password_and_unknown_address_are_refused(city: Registry) -> None:
    device = first_station(city, "sl651")
    stations = city.stations_of("sl651")
    bad = device.model_copy(update={"password": device.password.__class__("ABCD")})
    frame = sl651.parse(sl651_frame(bad, 1, NOW, 20840))
    assert isinstance(frame, sl651.Sl651Frame)
    got = from_sl651(frame, stations, None, NOW)
    assert isinstance(got, Refused) and got.reason == "bad_password"
    assert got.raw[8:10] == b"\x00\x00" and got.raw[10:] == sl651_frame(bad, 1, NOW, 20840)[10:]
    down = sl651.parse(sl651.answer(frame, NOW))  # a centre's frame, sent up by a station
    assert isinstance(down, sl651.Sl651Frame)
    got = from_sl651(down, {**stations, frame.station: bad}, None, NOW)
    assert isinstance(got, Refused) and got.reason == "wrong_direction"
    stranger = device.model_copy(update={"station_address": "0099999999"})
    frame = sl651.parse(sl651_frame(stranger, 1, NOW, 20840))
    assert isinstance(frame, sl651.Sl651Frame)
    got = from_sl651(frame, stations, None, NOW)
    assert isinstance(got, Refused) and got.reason == "unknown_station"


# --- the server, with a publisher that does what the test says ------------------------------


async def serving(city: Registry, protocol: str, **settings_: Any) -> tuple[Any, ...]:
    publisher, letters, stop = FakePublisher(), Letters(), asyncio.Event()
    context = settings_.pop("client_tls", None)
    settings = Settings(gateway_bind="127.0.0.1", gateway_idle_s=5, **settings_)
    server = GatewayServer(settings, dialect(protocol, city, None), publisher, letters)  # type: ignore[arg-type]
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(0, stop, ready.set_result))
    port = await ready
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
    )
    return server, publisher, letters, stop, task, reader, writer


async def test_the_answer_comes_only_after_the_broker_has_it(city: Registry) -> None:
    server, publisher, _letters, stop, task, reader, writer = await serving(city, "hj212")
    device = first_station(city, "hj212")
    publisher.release.clear()  # the broker is slow
    writer.write(hj212_frame(device, NOW, {"ph": "7.1"}))
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.3)
    publisher.release.set()
    answer = await asyncio.wait_for(reader.read(1000), 5)
    assert isinstance(hj212.parse(answer), hj212.Hj212Frame) and len(publisher.calls) == 1
    publisher.ok = False  # the broker did not acknowledge: no answer
    writer.write(hj212_frame(device, NOW, {"ph": "7.2"}))
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.3)
    assert len(publisher.calls) == 2 and server.counts["unanswered"] == 1
    writer.close()
    stop.set()
    await task


async def test_junk_is_kept_and_a_junk_only_connection_is_closed(city: Registry) -> None:
    server, publisher, letters, stop, task, reader, writer = await serving(city, "sl651")
    device = first_station(city, "sl651")
    frame = bytearray(sl651_frame(device, 1, NOW, 20840))
    frame[-1] ^= 0xFF  # bad CRC
    writer.write(bytes(frame))
    writer.write(sl651_frame(device, 2, NOW, 20840))
    await writer.drain()
    answer = sl651.parse(await asyncio.wait_for(reader.read(1000), 5))
    assert isinstance(answer, sl651.Sl651Frame) and answer.serial == 2
    assert [r.reason for r in letters.rows] == ["sl651.bad_crc"]
    assert letters.rows[0].topic == "gateway/sl651/" + letters.rows[0].topic.split("/")[-1]
    kept = bytes.fromhex(letters.rows[0].payload.decode())
    assert kept[8:10] == b"\x00\x00" and kept[10:] == bytes(frame)[10:]  # all but the password
    for _ in range(MAX_REFUSALS):
        writer.write(bytes(frame))
        await writer.drain()
    assert await asyncio.wait_for(reader.read(1000), 5) == b""  # the gateway hung up
    assert server.counts["junk_closed"] == 1 and len(publisher.calls) == 1
    writer.close()
    stop.set()
    await task


async def test_a_connection_that_never_identifies_itself_is_closed(
    city: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ingest.gateway.server.FIRST_FRAME_S", 0.3)
    server, _publisher, _letters, stop, task, reader, writer = await serving(city, "hj212")
    writer.write(b"##00")  # a slow start that never becomes a frame
    await writer.drain()
    assert await asyncio.wait_for(reader.read(100), 5) == b""
    assert server.counts["never_identified"] == 1
    writer.close()
    stop.set()
    await task


async def test_stations_may_connect_over_tls(city: Registry, tmp_path: Path) -> None:
    tls = ensure_local_tls(tmp_path / "tls")
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    _server, _publisher, _letters, stop, task, reader, writer = await serving(
        city,
        "sl651",
        gateway_tls_cert_file=tls.server_cert,
        gateway_tls_key_file=tls.server_key,
        client_tls=client,
    )
    writer.write(sl651_frame(first_station(city, "sl651"), 5, NOW, 20840))
    await writer.drain()
    answer = sl651.parse(await asyncio.wait_for(reader.read(1000), 5))
    assert isinstance(answer, sl651.Sl651Frame) and answer.serial == 5
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
    stop.set()
    await task
