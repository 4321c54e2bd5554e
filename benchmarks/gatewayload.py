"""The stations of ``make bench-gateway``: N TCP connections, each sending frames back to back.

A process of its own (``python -m benchmarks.gatewayload``, a JSON job on stdin, a JSON result
on stdout), so what it costs is not counted as the gateway's CPU. Each connection is one
station of the job: it sends a frame, waits for the centre's answer to it, then sends the next,
as a station does. Frames are built before the run (a ring of ``RING`` per station, each with
its own QN or serial, so an answer names the frame it answers) and answers are recognised by
what they repeat of the frame (HJ 212: CN 9014 with the frame's QN; SL 651: function and serial)
without parsing them, so the generator stays cheap beside the gateway on the same two cores.

Timeline: connect every station (in batches, before anything is timed), start sending, let
``warmup_s`` pass, then measure ``duration_s``: answers that arrive in the window, latency
(send → answer) of every frame sent in it, the gateway's and the broker's CPU time and the
gateway's RSS from ``/proc`` at the window's edges. Then stop sending and give each frame still
out ``drain_s`` to be answered; what is not is ``unanswered`` (as is a frame not answered in
``answer_timeout_s`` during the run; that station then goes on with its next frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devices import hj212, sl651

RING = 8  # distinct frames per station, sent in turn
CONNECT_BATCH = 100  # connections opened at once (the server's listen backlog is 100)
_TICKS = os.sysconf("SC_CLK_TCK")

HJ212_VALUES = {
    "ph": 7.42,
    "do_mgl": 6.85,
    "codmn_mgl": 3.21,
    "nh3n_mgl": 0.412,
    "tp_mgl": 0.087,
    "water_temp_c": 18.35,
    "turbidity_ntu": 12.5,
}
SL651_VALUES = {
    "rainfall_mm": 1.5,
    "water_level_m": 216.345,
    "flow_m3s": 35.125,
    "water_temp_c": 17.8,
    "battery_v": 12.15,
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (s): /proc/stat's first line
    less idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


# --- frames and how their answers look -----------------------------------------------------------


def hj212_frames(mn: str, pw: str, start: datetime) -> list[tuple[bytes, bytes]]:
    """``RING`` CN 2011 frames asking for an answer; each with the bytes its answer carries."""
    out = []
    for i in range(RING):
        at = start + timedelta(seconds=i)
        frame = hj212.encode_data(mn=mn, pw=pw, cn="2011", values=HJ212_VALUES, data_time=at, qn=at)
        out.append((frame, f"QN={hj212.qn_of(at)}".encode()))
    return out


def sl651_frames(station: str, password: str, start: datetime) -> list[tuple[bytes, bytes]]:
    """``RING`` timed reports (0x32), serials 1…RING; each with the serial its answer carries."""
    out = []
    for serial in range(1, RING + 1):
        at = start + timedelta(minutes=serial)
        frame = sl651.encode_report(
            station=station,
            centre=1,
            password=password,
            function=sl651.TIMED,
            serial=serial,
            sent=at,
            observed=at,
            values=SL651_VALUES,
        )
        out.append((frame, serial.to_bytes(2, "big")))
    return out


def hj212_answered(buf: bytearray, key: bytes) -> bool | None:
    """True: ``buf`` holds the answer with ``key``; False: a whole frame that is not it; None:
    not a whole frame yet."""
    if not buf.endswith(b"\r\n"):
        return None
    return key in buf and b"CN=9014" in buf


def sl651_answered(buf: bytearray, key: bytes) -> bool | None:
    """As ``hj212_answered``, for SL 651's confirmation: its length from its header, its
    serial the first two bytes of the body."""
    if len(buf) < sl651.HEAD:
        return None
    total = sl651.HEAD + (int.from_bytes(buf[11:13], "big") & 0x0FFF) + 3
    if len(buf) < total:
        return None
    return len(buf) == total and buf[10] == sl651.TIMED and bytes(buf[14:16]) == key


# --- the stations --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What all stations saw; times are ``time.perf_counter()``."""

    window: tuple[float, float] = (float("inf"), float("inf"))
    sending: bool = True
    closing: bool = False  # our own closes at the end are no loss
    out: int = 0  # frames sent and not yet answered (or given up on)
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # out is 0, sending is over

    def settled(self) -> None:
        """One frame less out."""
        self.out -= 1
        if not self.sending and self.out == 0:
            self.drained.set()

    answered: int = 0  # every answer, in the window or not
    answered_in_window: int = 0
    sent: int = 0
    timed_out: int = 0  # not answered within answer_timeout_s (the station goes on)
    wrong_answers: int = 0  # a whole frame back that was not the answer
    connections_lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # frames sent in the window


class StationLink(asyncio.Protocol):
    """One station: its ring of frames, the frame out and when it was sent."""

    def __init__(
        self,
        frames: list[tuple[bytes, bytes]],
        answered: Callable[[bytearray, bytes], bool | None],
        tally: Tally,
    ) -> None:
        self.frames, self.answered, self.tally = frames, answered, tally
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.next = 0
        self.key = b""
        self.sent_at: float | None = None  # None: nothing out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        frame, self.key = self.frames[self.next]
        self.next = (self.next + 1) % len(self.frames)
        self.buf.clear()
        self.sent_at = time.perf_counter()
        self.tally.sent += 1
        self.tally.out += 1
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        verdict = self.answered(self.buf, self.key)
        if verdict is None:
            return
        if not verdict or self.sent_at is None:
            self.tally.wrong_answers += 1
            self.buf.clear()
            return
        now = time.perf_counter()
        t = self.tally
        t.answered += 1
        start, end = t.window
        if start <= now < end:
            t.answered_in_window += 1
        if start <= self.sent_at < end:
            t.latencies_ms.append((now - self.sent_at) * 1000)
        self.sent_at = None
        t.settled()
        if t.sending:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.tally.closing:
            self.tally.connections_lost += 1
        self.transport = None


async def run(job: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    protocol = job["protocol"]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    build = hj212_frames if protocol == "hj212" else sl651_frames
    answered = hj212_answered if protocol == "hj212" else sl651_answered
    tally = Tally()
    links = [StationLink(build(ident, pw, start), answered, tally) for ident, pw in job["stations"]]
    failed = 0
    for i in range(0, len(links), CONNECT_BATCH):
        batch = links[i : i + CONNECT_BATCH]
        got = await asyncio.gather(
            *(
                loop.create_connection(lambda link=link: link, "127.0.0.1", job["port"])  # type: ignore[misc]
                for link in batch
            ),
            return_exceptions=True,
        )
        failed += sum(isinstance(g, BaseException) for g in got)
    live = [link for link in links if link.transport is not None]
    gateway, brokers = job["gateway_pid"], job.get("broker_pids", [])
    timeout_s = job.get("answer_timeout_s", 10.0)

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.perf_counter()
            for link in live:
                if link.sent_at is not None and now - link.sent_at > timeout_s:
                    tally.timed_out += 1
                    link.sent_at = None
                    tally.settled()
                    if tally.sending:
                        link.send()

    dog = asyncio.create_task(watchdog())
    began = time.perf_counter()
    for link in live:
        link.send()
    await asyncio.sleep(job["warmup_s"])
    cpu0 = (
        cpu_seconds(gateway),
        sum(map(cpu_seconds, brokers)),
        time.process_time(),
        machine_busy_seconds(),
    )
    rss_start_kb = memory_kb(gateway)[0]
    t0 = time.perf_counter()
    tally.window = (t0, t0 + job["duration_s"])
    await asyncio.sleep(job["duration_s"])
    t1 = time.perf_counter()
    cpu1 = (
        cpu_seconds(gateway),
        sum(map(cpu_seconds, brokers)),
        time.process_time(),
        machine_busy_seconds(),
    )
    rss_kb, hwm_kb = memory_kb(gateway)
    tally.sending = False
    if tally.out == 0:
        tally.drained.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(job.get("drain_s", 10.0)):
            await tally.drained.wait()
    dog.cancel()
    still_out = sum(link.sent_at is not None for link in live)
    tally.closing = True
    for link in live:
        if link.transport is not None:
            link.transport.close()
    window = t1 - t0
    return {
        "protocol": protocol,
        "stations": len(links),
        "connected": len(live),
        "connect_failed": failed,
        "warmup_s": job["warmup_s"],
        "window_s": window,
        "sent": tally.sent,
        "answered": tally.answered,
        "answered_in_window": tally.answered_in_window,
        "frames_per_s": tally.answered_in_window / window,
        "unanswered": still_out + tally.timed_out,
        "timed_out_during_run": tally.timed_out,
        "wrong_answers": tally.wrong_answers,
        "connections_lost": tally.connections_lost,
        "latencies_ms": tally.latencies_ms,
        "gateway_cpu_pct": (cpu1[0] - cpu0[0]) / window * 100,
        "broker_cpu_pct": (cpu1[1] - cpu0[1]) / window * 100,
        "load_cpu_pct": (cpu1[2] - cpu0[2]) / window * 100,
        # Everything else the machine ran in the window (another job on the shared cores):
        "other_cpu_pct": (cpu1[3] - cpu0[3] - sum(cpu1[:3]) + sum(cpu0[:3])) / window * 100,
        "gateway_rss_start_mb": rss_start_kb / 1024,  # after the warm-up
        "gateway_rss_mb": rss_kb / 1024,  # at the end of the window
        "gateway_peak_rss_mb": hwm_kb / 1024,
        "run_s": time.perf_counter() - began,
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(job["stations"]) + 64
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    result = asyncio.run(run(job))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
