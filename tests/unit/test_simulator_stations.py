"""Simulated field stations (``citysense simulate --protocol hj212|sl651``): each telemetry
message becomes one frame the real parsers read back (the station's MN or address, its values,
its time at the frame's precision); scenarios play through the protocols; and the station link
against a small in-process gateway (an asyncio TCP server answering with the real
``data_response`` / ``answer``): an answered frame is not sent again, an unanswered one is
resent a bounded number of times, a dropped connection or a gateway gone and back is
reconnected and the unanswered frame resent, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from devices import hj212, sl651
from devices.kinds import Channel, Kind
from devices.payloads import RiverTelemetry
from devices.registry import Registry, RiverDevice, load_registry
from simulator import (
    GatewayTarget,
    MqttTarget,
    SimulationConfig,
    SimulationError,
    dry_run,
    run_simulation,
)
from simulator.arguments import add_arguments, config_from_args
from simulator.device import Outgoing
from simulator.plan import plan_run
from simulator.report import StationCounts
from simulator.stationframes import Frame, Hj212Station, Sl651Station, framer_for
from simulator.stationlink import StationLink

ROOT = Path(__file__).resolve().parents[2]
BEIJING = timezone(timedelta(hours=8))
START_MS = int(datetime(2026, 7, 1, 10, tzinfo=BEIJING).timestamp() * 1000)
HJ212_STATIONS = {"river-tj-0002", "river-yx-0001"}
SL651_STATIONS = {"river-ss-0004", "river-yx-0002", "river-sm-0002"}
QUALITY = ("ph", "do_mgl", "codmn_mgl", "nh3n_mgl", "tp_mgl", "water_temp_c", "turbidity_ntu")
HYDRO = ("water_level_m", "rainfall_mm", "flow_m3s", "water_temp_c", "battery_v")
UNUSED_BROKER = MqttTarget(port=1)  # a run of field stations only never connects to it


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(ROOT / "config" / "registry.yaml")


def river(city: Registry, device_id: str) -> RiverDevice:
    device = city.devices[device_id]
    assert isinstance(device, RiverDevice)
    return device


def telemetry(ts_ms: int, **values: float) -> Outgoing:
    payload = RiverTelemetry.model_validate({"ts": ts_ms, **values})
    return Outgoing(Kind.RIVER, "river-x", Channel.TELEMETRY, payload)


FULL = {
    "water_level_m": 212.345,
    "rainfall_mm": 0.4,
    "flow_m3s": 123.45,
    "water_temp_c": 18.27,
    "ph": 7.52,
    "do_mgl": 6.81,
    "nh3n_mgl": 0.412,
    "codmn_mgl": 2.93,
    "tp_mgl": 0.087,
    "turbidity_ntu": 12.5,
    "battery_v": 12.61,
}


# --- one message, one frame (pure) ---------------------------------------------------------


def test_hj212_frame_carries_the_water_quality_of_the_message() -> None:
    station = Hj212Station("43050310000201", "123456")
    ts = START_MS + 15_678
    frame = station.frame(telemetry(ts, **FULL))
    assert frame is not None
    got = hj212.parse(frame.data)
    assert isinstance(got, hj212.Hj212Frame), got
    assert (got.mn, got.pw, got.cn, got.flag, got.needs_answer) == (
        "43050310000201",
        "123456",
        "2011",
        5,
        True,
    )
    moment = datetime.fromtimestamp(ts / 1000, UTC)
    assert got.data_time == moment.replace(microsecond=0)
    assert got.qn == "20260701100015678"  # Beijing time to the millisecond
    assert {n: r.value for n, r in got.readings.items()} == {n: FULL[n] for n in QUALITY}
    assert {r.flag for r in got.readings.values()} == {"N"}
    # The gateway's answer names the frame.
    assert station.reader().feed(hj212.data_response(got)) == [frame.key]


def test_hj212_message_without_water_quality_makes_no_frame() -> None:
    station = Hj212Station("43050310000201", "123456")
    assert station.frame(telemetry(START_MS, water_level_m=210.0, battery_v=12.0)) is None


def test_hj212_second_message_within_a_second_makes_no_frame() -> None:
    # The gateway publishes at DataTime, to the second: a second frame would overwrite it.
    station = Hj212Station("43050310000201", "123456")
    assert station.frame(telemetry(START_MS + 100, ph=7.1)) is not None
    assert station.frame(telemetry(START_MS + 900, ph=7.2)) is None
    assert station.frame(telemetry(START_MS + 1000, ph=7.3)) is not None


def test_sl651_frame_is_a_timed_report_observed_to_the_minute() -> None:
    station = Sl651Station("0043050301", "1234")
    ts = START_MS + 75_432  # 10:01:15.432
    frame = station.frame(telemetry(ts, **FULL))
    assert frame is not None
    got = sl651.parse(frame.data)
    assert isinstance(got, sl651.Sl651Frame), got
    assert (got.station, got.password, got.function, got.serial) == ("0043050301", "1234", 0x32, 1)
    assert (got.direction, got.station_type) == ("up", 0x48)
    assert got.sent == datetime(2026, 7, 1, 10, 1, 15, tzinfo=BEIJING)
    assert got.observed == datetime(2026, 7, 1, 10, 1, tzinfo=BEIJING)  # the minute only
    expected = {n: FULL[n] for n in HYDRO} | {"water_temp_c": 18.3}  # N(3,1): 0.1 °C
    assert got.readings == expected
    assert station.reader().feed(sl651.answer(got, datetime.now(UTC))) == [frame.key]
    # The next minute takes the next serial; a second report within a minute makes no frame
    # (the gateway publishes at the observation time: it would overwrite the first).
    assert station.frame(telemetry(ts + 30_000, water_level_m=212.0)) is None
    later = station.frame(telemetry(ts + 60_000, water_level_m=212.0))
    assert later is not None
    again = sl651.parse(later.data)
    assert isinstance(again, sl651.Sl651Frame) and again.serial == 2
    assert later.key != frame.key


def test_framers_come_from_the_registry(city: Registry) -> None:
    hj = framer_for(river(city, "river-tj-0002"))
    assert isinstance(hj, Hj212Station) and (hj.mn, hj.pw) == ("43050310000201", "123456")
    sl = framer_for(river(city, "river-ss-0004"))
    assert isinstance(sl, Sl651Station) and (sl.station, sl.password) == ("0043050301", "1234")
    with pytest.raises(ValueError, match="MQTT"):
        framer_for(river(city, "river-zj-0001"))


# --- which devices a run simulates ---------------------------------------------------------


def simulated(city: Registry, *protocols: str) -> set[str]:
    config = SimulationConfig.model_validate({"protocols": protocols})
    return {d.sim.id for d in plan_run(config, city).devices}


def test_protocol_picks_the_devices(city: Registry) -> None:
    everyone = set(city.devices)
    assert simulated(city, "mqtt") == everyone - HJ212_STATIONS - SL651_STATIONS
    assert simulated(city, "hj212") == HJ212_STATIONS
    assert simulated(city, "sl651") == SL651_STATIONS
    assert simulated(city, "mqtt", "hj212", "sl651") == everyone
    assert SimulationConfig().protocols == ("mqtt",)


def test_cli_options() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--protocol",
            "sl651,hj212",
            "--gateway-hj212",
            "10.0.0.5:9300",
            "--gateway-sl651",
            "[::1]:1",
        ]
    )
    config = config_from_args(args)
    assert config.protocols == ("hj212", "sl651")
    assert config.gateways == {
        "hj212": GatewayTarget(host="10.0.0.5", port=9300),
        "sl651": GatewayTarget(host="::1", port=1),
    }
    assert config_from_args(parser.parse_args([])).protocols == ("mqtt",)
    for bad in (["--protocol", "modbus"], ["--protocol", ","], ["--gateway-hj212", "nohost"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_gateway_listening_on_every_interface_is_reached_on_loopback() -> None:
    assert GatewayTarget.listening_on("0.0.0.0", 9212) == GatewayTarget(host="127.0.0.1", port=9212)
    assert GatewayTarget.listening_on("::", 9651) == GatewayTarget(host="::1", port=9651)
    assert GatewayTarget.listening_on("10.1.2.3", 9651) == GatewayTarget(host="10.1.2.3", port=9651)
    assert GatewayTarget.listening_on("127.0.0.1", 0) is None  # only the gateway knows


# --- scenarios through the protocols (dry run, then each message framed) -------------------


def framed(city: Registry, protocol: str, **options: Any) -> Iterator[tuple[str, float, bytes]]:
    """(device, seconds into the run, frame) for a dry run of ``protocol``'s stations."""
    config = SimulationConfig(protocols=(protocol,), **options)
    framers = {d: framer_for(river(city, d)) for d in simulated(city, protocol)}
    for t, message in dry_run(config, city, START_MS):
        assert message.channel is Channel.TELEMETRY, message  # no status over a field protocol
        frame = framers[message.device_id].frame(message)
        if frame is not None:
            yield message.device_id, t, frame.data


def test_pollution_plays_through_hj212(city: Registry) -> None:
    target = "river-tj-0002"
    frames = list(
        framed(
            city,
            "hj212",
            scenarios=("pollution",),
            scenario_device={"pollution": target},
            scenario_at=1800,
            duration=3600,
            rate=0.1,
        )
    )
    mn = {d: river(city, d).mn for d in HJ212_STATIONS}
    before: list[Mapping[str, hj212.Reading]] = []
    after: list[Mapping[str, hj212.Reading]] = []
    for device_id, t, data in frames:
        got = hj212.parse(data)
        assert isinstance(got, hj212.Hj212Frame), got
        assert got.mn == mn[device_id]
        assert set(got.readings) == set(QUALITY)  # an HJ 212 station always has its analyser
        if device_id == target:
            (after if t >= 1800 else before).append(got.readings)
    assert len(before) >= 5 and len(after) >= 5  # every 300 s, the registry's interval
    assert all(r["nh3n_mgl"].value <= 1.0 and r["do_mgl"].value >= 5.0 for r in before)
    # GB 3838-2002 class V: NH3-N 2.0, TP 0.4, CODMn 15 mg/L, DO 2 mg/L.
    for r in after:
        assert r["nh3n_mgl"].value > 2.0 and r["tp_mgl"].value > 0.4
        assert r["codmn_mgl"].value > 15.0 and r["do_mgl"].value < 2.0


def test_flood_plays_through_sl651(city: Registry) -> None:
    target = river(city, "river-ss-0004")
    frames = list(
        framed(
            city,
            "sl651",
            scenarios=("flood",),
            scenario_device={"flood": target.id},
            scenario_at=600,
            duration=1800,
            rate=0.1,
        )
    )
    address = {d: river(city, d).station_address for d in SL651_STATIONS}
    levels: dict[str, list[tuple[float, float]]] = {}
    minutes: dict[str, list[datetime]] = {}
    for device_id, t, data in frames:
        got = sl651.parse(data)
        assert isinstance(got, sl651.Sl651Frame), got
        assert got.station == address[device_id] and got.function == sl651.TIMED
        assert got.observed is not None and got.observed.second == 0
        sent_at = datetime.fromtimestamp(START_MS / 1000 + t, UTC)
        assert got.observed == sent_at.replace(second=0, microsecond=0)
        levels.setdefault(device_id, []).append((t, got.readings["water_level_m"]))
        minutes.setdefault(device_id, []).append(got.observed)
    for device_id, seen in minutes.items():
        assert len(seen) == len(set(seen)) >= 10, device_id  # one report a minute at most
    mine = levels[target.id]
    assert max(v for t, v in mine if t < 600) < target.warning_level_m
    assert max(v for t, v in mine if t >= 720) > target.guarantee_level_m
    for device_id in SL651_STATIONS - {target.id}:
        assert max(v for _, v in levels[device_id]) < river(city, device_id).warning_level_m


# --- the station link against a gateway ----------------------------------------------------


class FakeGateway:
    """An in-process gateway: the real splitter, parser and answer, and rules for each copy
    it receives (numbered from 0 in arrival order): answer it or not, hang up on it or not."""

    def __init__(
        self,
        protocol: str,
        answer: Callable[[int], bool] = lambda n: True,
        hang_up: Callable[[int], bool] = lambda n: False,
    ) -> None:
        self.protocol = protocol
        self.answer = answer
        self.hang_up = hang_up
        self.received: list[tuple[int, bytes]] = []  # (connection number, raw frame)
        self.refused: list[object] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def target(self) -> GatewayTarget:
        return GatewayTarget(host="127.0.0.1", port=self.port)

    async def start(self) -> FakeGateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Go away as a SIGKILLed process does: listener closed, connections reset."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def frames(self) -> list[bytes]:
        return [raw for _, raw in self.received]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        splitter: Any = hj212.FrameSplitter() if self.protocol == "hj212" else sl651.FrameSplitter()
        try:
            while data := await reader.read(4096):
                for item in splitter.feed(data):
                    reply = self._reply(item, number)
                    if reply is None:
                        continue
                    if reply == b"":
                        writer.transport.abort()
                        return
                    writer.write(reply)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _reply(self, item: object, number: int) -> bytes | None:
        """The answer to send, None for none, b"" to hang up."""
        if isinstance(item, bytes):
            parsed: object = hj212.parse(item)
            raw = item
        else:
            parsed = item
            raw = getattr(item, "raw", b"")
        if not isinstance(parsed, hj212.Hj212Frame | sl651.Sl651Frame):
            self.refused.append(parsed)
            return None
        copy = len(self.received)
        self.received.append((number, raw))
        if self.hang_up(copy):
            return b""
        if not self.answer(copy):
            return None
        if isinstance(parsed, hj212.Hj212Frame):
            return hj212.data_response(parsed) if parsed.needs_answer else None
        return sl651.answer(parsed, datetime.now(UTC))


@contextlib.asynccontextmanager
async def gateway(protocol: str, **rules: Any) -> Any:
    fake = await FakeGateway(protocol, **rules).start()
    try:
        yield fake
    finally:
        await fake.kill()


TIMEOUT_S = 0.2
RESENDS = 3


def link_to(fake: FakeGateway, counts: StationCounts | None = None) -> StationLink:
    framer = (
        Hj212Station("43050310000201", "123456")
        if fake.protocol == "hj212"
        else Sl651Station("0043050301", "1234")
    )
    return StationLink(fake.target, framer, counts or StationCounts(), TIMEOUT_S, RESENDS)


def frame_of(link: StationLink, minute: int = 0) -> Frame:
    frame = link.framer.frame(telemetry(START_MS + minute * 60_000, **FULL))
    assert frame is not None
    return frame


@pytest.mark.parametrize("protocol", ["hj212", "sl651"])
async def test_answered_frame_is_not_sent_again(protocol: str) -> None:
    async with gateway(protocol) as fake:
        counts = StationCounts()
        link = link_to(fake, counts)
        await link.open()
        first, second = frame_of(link, 0), frame_of(link, 1)
        assert await link.send(first) and await link.send(second)
        await asyncio.sleep(2 * TIMEOUT_S)  # nothing comes later either
        await link.close()
    assert fake.frames() == [first.data, second.data]
    assert counts == StationCounts(sent=2, answered=2, connections=1)
    assert fake.refused == []


@pytest.mark.parametrize("protocol", ["hj212", "sl651"])
async def test_unanswered_frame_is_resent_then_given_up(protocol: str) -> None:
    async with gateway(protocol, answer=lambda n: False) as fake:
        counts = StationCounts()
        link = link_to(fake, counts)
        await link.open()
        frame = frame_of(link)
        started = asyncio.get_running_loop().time()
        assert not await link.send(frame)
        took = asyncio.get_running_loop().time() - started
        await link.close()
    assert fake.frames() == [frame.data] * (1 + RESENDS)  # the same bytes each time
    assert counts == StationCounts(sent=1, resent=RESENDS, unanswered=1, connections=1)
    assert (1 + RESENDS) * TIMEOUT_S <= took < (1 + RESENDS) * TIMEOUT_S + 1.0


@pytest.mark.parametrize("protocol", ["hj212", "sl651"])
async def test_answer_to_a_resent_copy_ends_the_resending(protocol: str) -> None:
    async with gateway(protocol, answer=lambda n: n >= 2) as fake:
        counts = StationCounts()
        link = link_to(fake, counts)
        await link.open()
        frame = frame_of(link)
        assert await link.send(frame)
        await link.close()
    assert fake.frames() == [frame.data] * 3
    assert counts == StationCounts(sent=1, answered=1, resent=2, connections=1)


@pytest.mark.parametrize("protocol", ["hj212", "sl651"])
async def test_dropped_connection_is_reopened_and_the_frame_resent(protocol: str) -> None:
    # The gateway hangs up on the first copy without answering (killed mid-frame, say).
    async with gateway(protocol, hang_up=lambda n: n == 0) as fake:
        counts = StationCounts()
        link = link_to(fake, counts)
        await link.open()
        frame = frame_of(link)
        started = asyncio.get_running_loop().time()
        assert await link.send(frame)
        took = asyncio.get_running_loop().time() - started
        await link.close()
    assert fake.received == [(1, frame.data), (2, frame.data)]  # on a new connection
    assert counts == StationCounts(sent=1, answered=1, resent=1, connections=2)
    assert took < TIMEOUT_S  # at once: a broken connection does not wait out the timeout


async def test_gateway_gone_and_back_gets_the_frame() -> None:
    fake = await FakeGateway("hj212").start()
    counts = StationCounts()
    link = link_to(fake, counts)
    await link.open()
    assert await link.send(frame_of(link, 0))
    await fake.kill()  # SIGKILL: the connection is reset, nobody listens
    frame = frame_of(link, 1)
    sending = asyncio.create_task(link.send(frame))
    await asyncio.sleep(1.5 * TIMEOUT_S)  # the first attempt cannot connect, nor the second
    await fake.start()  # back on the same port
    try:
        assert await sending
    finally:
        await link.close()
        await fake.kill()
    assert fake.frames()[-1] == frame.data
    assert counts.answered == 2 and counts.unanswered == 0 and counts.connections == 2
    assert counts.resent >= 1  # the attempts made while it was away


async def test_late_answer_of_a_given_up_frame_does_not_answer_the_next() -> None:
    # The gateway answers only the very first copy, and only after the station gave up.
    answered_late = asyncio.Event()

    async with gateway("sl651", answer=lambda n: False) as fake:
        link = link_to(fake)
        await link.open()
        first = frame_of(link, 0)
        assert not await link.send(first)
        # Now the answer to ``first`` arrives, while ``second`` waits for its own.
        parsed = sl651.parse(first.data)
        assert isinstance(parsed, sl651.Sl651Frame)
        second = frame_of(link, 1)
        sending = asyncio.create_task(link.send(second))
        await asyncio.sleep(0.05)
        writer = next(iter(fake._writers))
        writer.write(sl651.answer(parsed, datetime.now(UTC)))
        answered_late.set()
        assert not await sending
        await link.close()
    assert answered_late.is_set()


# --- whole runs against the fake gateways --------------------------------------------------


def qn_ms(qn: str) -> int:
    moment = datetime.strptime(qn[:14], "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    return int(moment.timestamp() * 1000) + int(qn[14:])


async def test_a_run_sends_each_stations_frames_to_its_gateway(city: Registry) -> None:
    config = SimulationConfig(
        protocols=("hj212", "sl651"), duration=9, rate=20, seed=5, answer_timeout_s=2
    )
    async with gateway("hj212") as hj, gateway("sl651") as sl:
        wall_before = datetime.now(UTC)
        report = await run_simulation(
            config, city, UNUSED_BROKER, {"hj212": hj.target, "sl651": sl.target}
        )
        wall_after = datetime.now(UTC)
    assert report.devices == 5 and not report.interrupted
    mns = {river(city, d).mn: river(city, d) for d in HJ212_STATIONS}
    addresses = {river(city, d).station_address: river(city, d) for d in SL651_STATIONS}
    heard: set[str] = set()
    for raw in hj.frames():
        got = hj212.parse(raw)
        assert isinstance(got, hj212.Hj212Frame), got
        station = mns[got.mn]
        assert station.password is not None and got.pw == station.password.get_secret_value()
        assert got.data_time is not None
        assert wall_before - timedelta(seconds=1) <= got.data_time <= wall_after
        assert got.qn is not None and got.data_time == datetime.fromtimestamp(
            qn_ms(got.qn) // 1000, UTC
        )
        assert set(got.readings) == set(QUALITY)
        heard.add(station.id)
    for raw in sl.frames():
        got651 = sl651.parse(raw)
        assert isinstance(got651, sl651.Sl651Frame), got651
        station = addresses[got651.station]
        assert got651.function == sl651.TIMED and got651.observed is not None
        assert wall_before - timedelta(minutes=1) <= got651.observed <= wall_after
        assert "water_level_m" in got651.readings
        heard.add(station.id)
    assert heard == HJ212_STATIONS | SL651_STATIONS
    # Every frame arrived once and was answered; the report counts each as a delivered message.
    hj_counts, sl_counts = report.stations["hj212"], report.stations["sl651"]
    assert hj_counts.sent == hj_counts.answered == len(hj.frames()) >= 2 * 5  # ≥ 1.25 s apart
    assert sl_counts.sent == sl_counts.answered == len(sl.frames()) == 3  # one a minute at most
    assert hj_counts.resent == sl_counts.resent == 0 and report.failed == 0
    assert report.count(Kind.RIVER, Channel.TELEMETRY) == len(hj.frames()) + len(sl.frames())
    assert report.count(channel=Channel.STATUS) == 0  # the protocols have no status
    assert set(report.last_seq) == HJ212_STATIONS | SL651_STATIONS
    table = report.table()
    assert re.search(r"hj212 frames: sent \d+, answered \d+, resent 0, unanswered 0", table)


async def test_offline_scenario_drops_the_station_connection(city: Registry) -> None:
    config = SimulationConfig(
        protocols=("hj212",),
        duration=4,
        rate=20,
        scenarios=("offline",),
        scenario_device={"offline": "river-tj-0002"},
        scenario_at=2,
    )
    async with gateway("hj212") as hj:
        report = await run_simulation(config, city, UNUSED_BROKER, {"hj212": hj.target})
    dropped_mn = river(city, "river-tj-0002").mn
    times = []
    for raw in hj.frames():
        got = hj212.parse(raw)
        assert isinstance(got, hj212.Hj212Frame) and got.qn is not None
        if got.mn == dropped_mn:
            times.append(qn_ms(got.qn))
    assert report.started_at_ms is not None and times
    assert max(times) < report.started_at_ms + 2000 + 500  # nothing after the drop
    assert report.stations["hj212"].unanswered == 0


async def test_cancelling_a_run_of_stations_returns_the_report(city: Registry) -> None:
    config = SimulationConfig(protocols=("hj212",), rate=20)  # open-ended
    async with gateway("hj212") as hj:
        task = asyncio.create_task(
            run_simulation(config, city, UNUSED_BROKER, {"hj212": hj.target})
        )
        await asyncio.sleep(3)
        task.cancel()
        report = await task
    assert report.interrupted
    counts = report.stations["hj212"]
    assert counts.answered == len(hj.frames()) >= 2
    assert report.count(Kind.RIVER, Channel.TELEMETRY) == counts.answered


async def test_a_gateway_still_starting_is_waited_for(city: Registry) -> None:
    fake = FakeGateway("hj212")
    await fake.start()
    await fake.kill()  # its port, not listening yet
    config = SimulationConfig(protocols=("hj212",), duration=2, rate=20, answer_timeout_s=1)

    async def start_late() -> None:
        await asyncio.sleep(0.7)
        await fake.start()

    starting = asyncio.create_task(start_late())
    try:
        report = await run_simulation(config, city, UNUSED_BROKER, {"hj212": fake.target})
    finally:
        await starting
        await fake.kill()
    assert report.stations["hj212"].answered == len(fake.frames()) >= 2
    assert report.reconnects == 0


async def test_unreachable_gateway_is_a_clear_error(city: Registry) -> None:
    fake = await FakeGateway("sl651").start()
    port = fake.port
    await fake.kill()  # a port nobody listens on
    config = SimulationConfig(protocols=("sl651",), duration=2, answer_timeout_s=0.2)
    target = GatewayTarget(port=port)
    started = asyncio.get_running_loop().time()
    with pytest.raises(SimulationError, match=f"sl651 gateway 127.0.0.1:{port}"):
        await run_simulation(config, city, UNUSED_BROKER, {"sl651": target})
    # It gave the gateway as long as a frame's resends take (4 × 0.2 s), not much longer.
    assert 0.5 <= asyncio.get_running_loop().time() - started < 2.0
    with pytest.raises(SimulationError, match="--gateway-hj212"):
        await run_simulation(
            SimulationConfig(protocols=("hj212",), duration=2), city, UNUSED_BROKER, {}
        )
