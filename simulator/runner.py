"""The publisher: one connection per device, the whole run owned by one TaskGroup.

A run has two phases. First every device connects (a bounded number at a time, so 1000 devices
do not hit the broker at once) and publishes its retained online status. When the last one is
up the clock starts and each device follows its own timeline. At the end (duration reached, or
the run cancelled) each device still connected publishes its retained offline status and
disconnects cleanly.

A field station (registered with a ``protocol``) connects to its protocol's gateway over TCP
instead (``stationlink.py``) and turns each telemetry message into a frame
(``stationframes.py``); it has no status to publish, and its link resends what goes
unanswered and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import aiomqtt

from devices.kinds import Channel
from devices.registry import Registry, RiverDevice
from simulator.actions import Drop, Emit, Tick
from simulator.config import GatewayTarget, MqttTarget, SimulationConfig
from simulator.device import Outgoing, SimulatedDevice
from simulator.errors import SimulationError
from simulator.link import DeviceLink
from simulator.plan import DevicePlan, RunPlan, plan_run
from simulator.report import SentReport, StationCounts
from simulator.stationframes import framer_for
from simulator.stationlink import StationLink

GOODBYE_TIMEOUT_S = 5.0  # a stopping run does not wait longer than this for a dead broker
RECONNECT_MAX_DELAY_S = 10.0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_simulation(
    config: SimulationConfig,
    registry: Registry,
    mqtt: MqttTarget,
    gateways: Mapping[str, GatewayTarget | None] | None = None,
) -> SentReport:
    """Publish for the configured devices until the duration is reached or the task is cancelled.

    ``gateways``: where each field protocol's gateway listens, unless ``config.gateways``
    says otherwise. Cancellation (Ctrl-C under ``asyncio.run``) is the normal way to end an
    open-ended run: it is absorbed after every device has said goodbye, and the report comes
    back with ``interrupted`` set. Raises SimulationError if devices cannot connect (or a
    protocol has no gateway address), ScenarioError if a scenario has no device to act on.
    """
    plan = plan_run(config, registry)
    targets: dict[str, GatewayTarget | None] = dict(gateways or {})
    targets.update({protocol: target for protocol, target in config.gateways.items()})
    for protocol in {d.sim.protocol for d in plan.devices if d.sim.protocol is not None}:
        if targets.get(protocol) is None:
            raise SimulationError(
                f"no address for the {protocol} gateway: give --gateway-{protocol} HOST:PORT"
            )
    run = _Run(plan, mqtt, {p: t for p, t in targets.items() if t is not None})
    try:
        await run.go()
    except asyncio.CancelledError:
        # Stopping is what the canceller asked for, and it is done: hand back the report
        # rather than propagating, so the caller can print what was sent.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        run.report.interrupted = True
    run.finish()
    return run.report


class _Run:
    """State shared by the device tasks of one run."""

    def __init__(self, plan: RunPlan, target: MqttTarget, gateways: Mapping[str, GatewayTarget]):
        self.plan = plan
        self.config = plan.config
        self.target = target
        self.gateways = gateways
        self.report = plan.new_report()
        self._loop = asyncio.get_running_loop()
        self._connecting = asyncio.Semaphore(self.config.connect_concurrency)
        self._connected = 0
        self._everyone_up = asyncio.Event()
        self._start: float | None = None  # loop time when the timelines start
        self._end: float | None = None
        # A tick this far behind schedule is skipped (after a reconnect, or on an overloaded
        # machine) rather than sent in a burst that would distort the rate.
        interval = plan.devices[0].ticks.interval_s if plan.devices else 0.0
        self._max_late_s = max(1.0, interval)

    async def go(self) -> None:
        """Run every device to the end, in one TaskGroup."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for device in self.plan.devices:
                    tasks.create_task(self._device(device), name=f"simulate {device.sim.id}")
        except ExceptionGroup as group:
            failures, others = group.split((aiomqtt.MqttError, SimulationError))
            if others is not None or failures is None:
                raise
            first = failures.exceptions[0]
            if isinstance(first, SimulationError):
                raise first from group
            where = f"{self.target.host}:{self.target.port}"
            raise SimulationError(f"MQTT broker {where}: {first}") from group

    def finish(self) -> None:
        """Close the books: how long the run lasted."""
        if self._start is not None:
            self.report.elapsed_s = round((self._end or self._loop.time()) - self._start, 3)

    async def _device(self, plan: DevicePlan) -> None:
        sim = plan.sim
        if sim.protocol is not None:
            await self._station(plan, sim.protocol)
            return
        link = DeviceLink(self.target, sim.id, sim.will(), self.config.publish_timeout_s)
        try:
            async with self._connecting:
                # Failing here fails the run: a wrong port or password is not worth retrying.
                await link.open()
                await self._send(link, sim.status(_wall_ms(), online=True))
            await self._ready()
            await self._follow(link, plan)
        finally:
            await self._goodbye(link, sim)

    async def _station(self, plan: DevicePlan, protocol: str) -> None:
        """A field station: its gateway connection, then its timeline; no status either way."""
        assert isinstance(plan.sim.device, RiverDevice)  # only rivers have a protocol
        target = self.gateways[protocol]
        counts = self.report.stations.setdefault(protocol, StationCounts())
        link = StationLink(
            target,
            framer_for(plan.sim.device),
            counts,
            self.config.answer_timeout_s,
            self.config.resends,
        )
        try:
            await self._first_connection(link, protocol)
            await self._ready()
            await self._follow(link, plan)
        finally:
            self.report.reconnects += max(0, link.opened - 1)
            await link.close()

    async def _first_connection(self, link: StationLink, protocol: str) -> None:
        """Connect, giving a gateway started together with the run (``make run``) as long as
        a station gives a frame: ``(1 + resends) × answer_timeout_s``. Still no gateway then
        is a wrong address, not an outage, and fails the run as a wrong broker port does."""
        give_up = self._loop.time() + (1 + self.config.resends) * self.config.answer_timeout_s
        delay = 0.25
        while True:
            try:
                async with self._connecting:
                    await link.open()
                return
            except OSError as e:
                if self._loop.time() + delay > give_up:
                    raise SimulationError(f"{protocol} gateway {link.target}: {e}") from e
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def _ready(self) -> None:
        """Wait until every device is connected; the last one to connect starts the clock."""
        self._connected += 1
        if self._connected == len(self.plan.devices):
            self._start = self._loop.time()
            self.report.started_at_ms = _wall_ms()
            self._everyone_up.set()
        await self._everyone_up.wait()

    async def _follow(self, link: DeviceLink | StationLink, plan: DevicePlan) -> None:
        """Do what the device's timeline says, on time."""
        sim = plan.sim
        until = self.config.until_s
        for offset, action in plan.timeline(until):
            late = await self._sleep_until(offset)
            if isinstance(action, Drop):
                await link.drop()
                return
            if isinstance(action, Tick) and late > self._max_late_s:
                self.report.skipped += 1
                continue
            await self._act(link, sim, action, offset)
        if until is not None:
            # Stay connected to the end, so every device says goodbye at about the same time.
            await self._sleep_until(until)
            self._end = self._loop.time()

    async def _act(
        self,
        link: DeviceLink | StationLink,
        sim: SimulatedDevice,
        action: Tick | Emit,
        offset: float,
    ) -> None:
        if isinstance(link, StationLink):
            await self._frame(link, sim.act(action, offset, _wall_ms()))
            return
        if not link.is_open and not await self._reconnect(link, sim):
            return
        message = sim.act(action, offset, _wall_ms())
        if message is None:
            return
        try:
            await self._send(link, message)
        except aiomqtt.MqttError:
            # The message is lost (its seq leaves a gap, as a real device's would); reconnect
            # now so the next tick finds the connection up.
            self.report.failed += 1
            await self._reconnect(link, sim)

    async def _frame(self, link: StationLink, message: Outgoing | None) -> None:
        """Send a station's telemetry as a frame; count it as delivered once answered."""
        if message is None or message.channel is not Channel.TELEMETRY:
            return  # silent; or an event, which neither protocol carries (rivers have none)
        frame = link.framer.frame(message)
        counts = self.report.stations[link.framer.protocol]
        if frame is None:
            counts.not_framed += 1
            return
        try:
            delivered = await link.send(frame)
        except asyncio.CancelledError:
            if link.last_answered:  # the answer came while the run was stopping
                self.report.record(message)
            raise
        if delivered:
            self.report.record(message)
        else:
            self.report.failed += 1

    async def _sleep_until(self, offset: float) -> float:
        """Sleep until ``offset`` seconds into the run; return how late we are then."""
        assert self._start is not None  # _ready() ran first
        delay = self._start + offset - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, self._loop.time() - self._start - offset)

    def _elapsed(self) -> float:
        """Seconds into the run (0 before it started)."""
        return 0.0 if self._start is None else self._loop.time() - self._start

    def _past_end(self) -> bool:
        until = self.config.until_s
        return (
            until is not None
            and self._start is not None
            and (self._loop.time() - self._start >= until)
        )

    async def _reconnect(self, link: DeviceLink, sim: SimulatedDevice) -> bool:
        """Reconnect with backoff until it works or the run is over; say online again."""
        await link.close()
        delay = 0.5
        while not self._past_end():
            await asyncio.sleep(delay)
            try:
                async with self._connecting:
                    await link.open()
                    await self._send(link, sim.status(_wall_ms(), online=True))
            except aiomqtt.MqttError:
                await link.close()
                delay = min(2 * delay, RECONNECT_MAX_DELAY_S)
                continue
            self.report.reconnects += 1
            return True
        return False

    async def _send(self, link: DeviceLink, message: Outgoing) -> None:
        """Publish; the report counts the message when the broker acknowledges it."""
        await link.publish(message, self.report.record)

    async def _goodbye(self, link: DeviceLink, sim: SimulatedDevice) -> None:
        """Retained offline status (unless hung), then DISCONNECT; also runs when cancelled."""
        goodbye = sim.goodbye(_wall_ms(), self._elapsed())
        if link.is_open and goodbye is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                    await self._send(link, goodbye)
        await link.close()
