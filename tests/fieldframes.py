"""A field station's side of the link for tests and the benchmark: frames of HJ 212-2017 and
SL 651-2014 (the encoders of devices/), and a client that sends one and waits for the
centre's answer, as a station does."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from devices import hj212, sl651
from devices.registry import RiverDevice


def hj212_frame(
    device: RiverDevice, at: datetime, values: dict[str, str], pw: str | None = None
) -> bytes:
    """A CN 2011 real-time frame asking for an answer (Flag=5: A bit and version 2017), by the
    station's encoder; ``pw`` to send another password than the registry's."""
    secret = pw if pw is not None else device.password.get_secret_value()  # type: ignore[union-attr]
    return hj212.encode_data(
        mn=device.mn or "",
        pw=secret,
        cn="2011",
        values={name: float(v) for name, v in values.items()},
        data_time=at,
        qn=at,
    )


def sl651_frame(device: RiverDevice, serial: int, at: datetime, level_cm: int) -> bytes:
    """A 0x32 timed report of water level (m) and battery (12.15 V), by the station's encoder."""
    return sl651.encode_report(
        station=device.station_address or "",
        centre=1,
        password=device.password.get_secret_value(),  # type: ignore[union-attr]
        function=sl651.TIMED,
        serial=serial,
        sent=at,
        observed=at,
        values={"water_level_m": level_cm / 100, "battery_v": 12.15},
    )


def is_answer(protocol: str, sent: bytes, item: object) -> bool:
    """Whether ``item`` (cut by the protocol's splitter) answers the frame ``sent``."""
    if protocol == "hj212":
        if not isinstance(item, bytes):
            return False
        got, asked = hj212.parse(item), hj212.parse(sent)
        return (
            isinstance(got, hj212.Hj212Frame)
            and isinstance(asked, hj212.Hj212Frame)
            and got.cn == hj212.RESPONSE_CN
            and got.qn == asked.qn
        )
    report = sl651.parse(sent)
    return (
        isinstance(item, sl651.Sl651Frame)
        and isinstance(report, sl651.Sl651Frame)
        and item.direction == "down"
        and item.serial == report.serial
        and item.function == report.function
    )


class Station:
    """A station's side of the link: send a frame, wait for its answer, reconnect if broken."""

    def __init__(self, protocol: str, port: int) -> None:
        self.protocol, self.port = protocol, port
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, frame: bytes, timeout_s: float = 3.0) -> bool:
        """Send once; True when the centre answered it within ``timeout_s``."""
        splitter = hj212.FrameSplitter() if self.protocol == "hj212" else sl651.FrameSplitter()
        try:
            if self._conn is None:
                self._conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self._conn
            writer.write(frame)
            await writer.drain()
            async with asyncio.timeout(timeout_s):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        raise ConnectionResetError("the centre hung up")
                    if any(is_answer(self.protocol, frame, i) for i in splitter.feed(data)):
                        return True
        except (OSError, TimeoutError):
            await self.close()
            return False

    async def send_until_answered(self, frame: bytes, tries: int = 15) -> int:
        """The standards' resend: the same frame again until answered; how many sends it took."""
        for attempt in range(1, tries + 1):
            if await self.send(frame, timeout_s=2.0):
                return attempt
            await asyncio.sleep(0.2)
        raise AssertionError(f"not answered after {tries} sends")

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            with contextlib.suppress(OSError):
                await self._conn[1].wait_closed()
            self._conn = None
