"""A run worked out before anything is sent: devices, their schedules, scenario targets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from devices.registry import Registry
from simulator.actions import Timed
from simulator.config import SimulationConfig
from simulator.device import SimulatedDevice
from simulator.errors import ScenarioError
from simulator.report import ScenarioRun, SentReport
from simulator.scenarios import Assignment, assign
from simulator.schedule import TickPlan, at_least_every, at_most_every, spread, timeline
from simulator.selection import select_devices, transport_of
from simulator.stationframes import MIN_INTERVAL_S
from simulator.stochastic import device_rng


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One device and its regular schedule."""

    sim: SimulatedDevice
    ticks: TickPlan
    seed: int

    def timeline(self, until_s: float | None) -> Iterator[Timed]:
        """Everything the device will do, in time order: its ticks and its scenario cues."""
        rng = device_rng(self.seed, self.sim.id, "schedule")
        return timeline(self.ticks.times(rng), self.sim.cued(), until_s)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The whole run."""

    config: SimulationConfig
    devices: tuple[DevicePlan, ...]
    assignments: tuple[Assignment, ...]

    def new_report(self) -> SentReport:
        """An empty report describing this run."""
        return SentReport(
            devices=len(self.devices),
            rate=self.config.rate,
            duration_s=self.config.duration,
            scenarios=[
                ScenarioRun(
                    name=a.scenario.name,
                    device_id=a.device_id,
                    start_s=a.start_s,
                    summary=a.scenario.summary,
                    reaches={r.device_id: r.delay_s for r in a.reaches},
                )
                for a in self.assignments
            ],
        )


def plan_run(config: SimulationConfig, registry: Registry) -> RunPlan:
    """Select the devices, spread the rate over them and bind the scenarios.

    Raises ScenarioError if the registry has no device to simulate or a scenario cannot find
    its device.
    """
    devices = select_devices(registry, config.kinds, config.devices, config.protocols)
    if not devices:
        kinds = ", ".join(k.value for k in config.kinds)
        over = ", ".join(config.protocols)
        raise ScenarioError(f"the registry has no device of the kinds {kinds} reporting by {over}")
    assignments = assign(
        config.scenarios, devices, config.scenario_start_s, config.scenario_device, registry
    )
    # No device reports less often than its registry interval: at a low --rate the total is
    # then higher than asked, but a healthy device never looks silent to the alert rules.
    # A field station reports no more often than its frames' time stamps can tell apart.
    plans = [
        at_least_every(
            at_most_every(plan, d.report_interval_s), MIN_INTERVAL_S.get(transport_of(d), 0.0)
        )
        for d, plan in zip(devices, spread(len(devices), config.rate), strict=True)
    ]
    return RunPlan(
        config=config,
        devices=tuple(
            DevicePlan(SimulatedDevice(d, config.seed, assignments), ticks, config.seed)
            for d, ticks in zip(devices, plans, strict=True)
        ),
        assignments=tuple(assignments),
    )
