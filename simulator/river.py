"""Behaviour of a river monitoring station (河长制): rain, level, flow and water quality."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from devices.payloads import DeviceMessage, RiverTelemetry
from devices.registry import RiverDevice
from simulator.behaviour import Condition, Conditions, Stamp
from simulator.hydrology import Catchment, WaveLevels, wave_level
from simulator.localtime import local_hour, sunshine
from simulator.rain import RainProcess
from simulator.stochastic import Drift, clamp
from simulator.water_quality import WaterQuality

FLOOD_RISE_S = 60.0  # a flood scenario takes the level from where it is to its peak in this time
GAUGE_RESOLUTION_MM = 0.1  # a tipping-bucket rain gauge reports whole tips
LEVEL_NOISE_M = 0.003  # radar level gauges are good to a few millimetres


class StationProfile(StrEnum):
    """What a station is equipped to measure."""

    FULL = "full"  # hydrology, water-quality analyser and battery telemetry
    HYDRO = "hydro"  # a simple level-and-rain-gauge post


@dataclass(slots=True)
class RiverBehaviour:
    """One station's river, stepped forward at each report."""

    device: RiverDevice
    rng: random.Random
    profile: StationProfile
    normal_flow_m3s: float
    normal_depth_m: float  # depth at the normal level; the rating curve's zero is below it
    rain: RainProcess
    catchment: Catchment
    battery: Drift
    quality: WaterQuality | None = None  # created at the first report, which knows the season
    last_ms: int | None = None
    level_m: float | None = None
    gauge_mm: float = 0.0  # rain in the gauge not yet reported (below one tip)
    flood_from_m: float | None = None  # the level when the running flood began
    wave_found: tuple[float, float] | None = None  # (time since warning, level) a wave found
    spill_share: float = 1.0  # how much of a spill reaches this station (less downstream)

    @classmethod
    def create(
        cls, device: RiverDevice, rng: random.Random, needs_quality: bool, spill_share: float = 1.0
    ) -> RiverBehaviour:
        """A station with its own river size and equipment; ``needs_quality`` forces an analyser,
        ``spill_share`` is how much of a spill reaches it (simulator/water_quality.py)."""
        gap = device.warning_level_m - device.normal_level_m
        # Sustained 10 mm/h rain would lift the level ~60% of the way to warning: normal weather
        # shows clear rises after showers but only a flood scenario crosses the warning level.
        tau_s = rng.uniform(2.5, 3.5) * 3600
        gain = 0.6 * gap / (10.0 * tau_s / 3600)
        hydro_only = not needs_quality and rng.random() < 0.3
        return cls(
            device=device,
            rng=rng,
            profile=StationProfile.HYDRO if hydro_only else StationProfile.FULL,
            normal_flow_m3s=rng.uniform(30.0, 400.0),
            normal_depth_m=rng.uniform(2.0, 4.0),
            rain=RainProcess(),
            catchment=Catchment(gain_m_per_mm=gain, tau_s=tau_s),
            battery=Drift(12.6, 0.05, 3600.0),
            spill_share=spill_share,
        )

    def on_tick(self, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """The station's telemetry; river stations publish no events."""
        dt_s = self._advance_clock(stamp.ts)
        flood_s = active.get(Condition.FLOOD)
        if flood_s is None:
            rain_mm = self.rain.step(self.rng, dt_s)
            self.flood_from_m = None
        else:
            rain_mm = self.rain.downpour(self.rng, dt_s)
        excess = self.catchment.step(rain_mm, dt_s)
        level = self.device.normal_level_m + excess
        wave = self._wave_level(active.get(Condition.WAVE), level)
        if flood_s is not None:
            level = self._flood_level(flood_s)
            self.catchment.hold_at(level - self.device.normal_level_m)
        elif wave is not None:
            level = wave
            self.catchment.release_at(level - self.device.normal_level_m)
        self.level_m = level
        level_reading = round(level + self.rng.gauss(0.0, LEVEL_NOISE_M), 3)
        rainfall = self._gauge(rain_mm)
        if self.profile is StationProfile.HYDRO:
            return RiverTelemetry(
                ts=stamp.ts, seq=stamp.seq, water_level_m=level_reading, rainfall_mm=rainfall
            )
        flow = self._flow(level)
        if self.quality is None:
            self.quality = WaterQuality.typical(self.rng, stamp.ts)
        q = self.quality.step(
            self.rng,
            dt_s,
            stamp.ts,
            flow / self.normal_flow_m3s,
            spill=self.spill_share if Condition.SPILL in active else 0.0,
        )
        return RiverTelemetry(
            ts=stamp.ts,
            seq=stamp.seq,
            water_level_m=level_reading,
            rainfall_mm=rainfall,
            flow_m3s=round(flow, 2),
            water_temp_c=q.water_temp_c,
            ph=q.ph,
            do_mgl=q.do_mgl,
            nh3n_mgl=q.nh3n_mgl,
            codmn_mgl=q.codmn_mgl,
            tp_mgl=q.tp_mgl,
            turbidity_ntu=q.turbidity_ntu,
            battery_v=round(self._battery(stamp.ts, dt_s), 2),
        )

    def on_script(self, event: str, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """River stations have no event channel (docs/payloads.md)."""
        raise ValueError(f"a river station cannot publish a {event!r} event")

    def _advance_clock(self, ts_ms: int) -> float:
        # The first report covers one nominal interval; later ones the time since the last.
        dt_s = (
            self.device.report_interval_s
            if self.last_ms is None
            else max(0.0, (ts_ms - self.last_ms) / 1000)
        )
        self.last_ms = ts_ms
        return dt_s

    def _flood_level(self, flood_s: float) -> float:
        """Level during a flood: a straight climb to above the guarantee level, then held."""
        d = self.device
        if self.flood_from_m is None:
            self.flood_from_m = self.level_m if self.level_m is not None else d.normal_level_m
        peak = d.guarantee_level_m + max(0.3, 0.15 * (d.guarantee_level_m - d.warning_level_m))
        start = min(self.flood_from_m, peak)
        rise = min(1.0, flood_s / FLOOD_RISE_S)
        # Past the peak the river churns a few centimetres around it.
        churn = 0.0 if rise < 1.0 else 0.03 * math.sin(flood_s / 47.0)
        return start + (peak - start) * rise + churn

    def _wave_level(self, since_s: float | None, level_m: float) -> float | None:
        """The level while a flood wave passes (``since_s`` after it passes warning here), or
        None when there is none, or it has passed and the river recedes on its own."""
        if since_s is None:
            self.wave_found = None
            return None
        if self.wave_found is None:
            self.wave_found = (since_s, self.level_m if self.level_m is not None else level_m)
        d = self.device
        levels = WaveLevels(d.normal_level_m, d.warning_level_m, d.guarantee_level_m)
        found_s, found_m = self.wave_found
        return wave_level(levels, since_s, found_m, found_s)

    def _flow(self, level_m: float) -> float:
        """Discharge from the level via a power-law rating curve: flow rises with level."""
        depth = max(0.05, level_m - (self.device.normal_level_m - self.normal_depth_m))
        return self.normal_flow_m3s * float((depth / self.normal_depth_m) ** 1.6)

    def _gauge(self, rain_mm: float) -> float:
        """Rain reported this time: whole gauge tips, the remainder kept for the next report."""
        self.gauge_mm += rain_mm
        tips = math.floor(self.gauge_mm / GAUGE_RESOLUTION_MM + 1e-9)
        reported = tips * GAUGE_RESOLUTION_MM
        self.gauge_mm = max(0.0, self.gauge_mm - reported)
        return round(min(reported, 999.9), 1)

    def _battery(self, ts_ms: int, dt_s: float) -> float:
        """A solar-charged 12 V battery: charging by day, slowly sagging at night."""
        target = 12.3 + 1.2 * sunshine(local_hour(ts_ms))
        return clamp(self.battery.step(self.rng, dt_s, target), 11.0, 14.4)
