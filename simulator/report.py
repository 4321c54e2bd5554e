"""What a run sent: the numbers a test or an operator compares with what arrived."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from devices.kinds import Channel, Kind
from simulator.device import Outgoing

TABLE_DEVICES_MAX = 12  # above this the table summarises seq numbers instead of listing them


class ScenarioRun(BaseModel):
    """A scenario as it ran."""

    name: str
    device_id: str
    start_s: float
    summary: str
    reaches: dict[str, float] = Field(default_factory=dict)  # device → seconds after start_s


class StationCounts(BaseModel):
    """What the field stations of one protocol did (simulator/stationlink.py)."""

    sent: int = 0  # frames the stations sent (each once, however often it was resent)
    answered: int = 0  # frames the gateway answered: delivered, like a PUBACKed message
    resent: int = 0  # attempts after a frame's first (no answer in time, or no connection)
    unanswered: int = 0  # frames given up after every resend (also counted in ``failed``)
    not_framed: int = 0  # telemetry messages that made no frame (simulator/stationframes.py)
    connections: int = 0  # TCP connections opened (more than the stations: reconnects)


class SentReport(BaseModel):
    """Messages acknowledged by the broker (PUBACK), by kind and channel, and per device.

    The last will is published by the broker, not the device, so it is not counted here. A
    field station's telemetry message counts when the gateway answered its frame (which it
    does once the broker has it); ``stations`` has the frames per protocol.
    """

    devices: int = 0
    rate: float = 0.0  # messages per second asked for
    duration_s: float = 0.0  # asked for; 0 = until cancelled
    started_at_ms: int | None = None  # wall clock when all devices were connected
    elapsed_s: float = 0.0  # from then until the last device stopped
    interrupted: bool = False  # stopped by cancellation (Ctrl-C) rather than by duration
    counts: dict[Kind, dict[Channel, int]] = Field(default_factory=dict)
    last_seq: dict[str, int] = Field(default_factory=dict)
    scenarios: list[ScenarioRun] = Field(default_factory=list)
    failed: int = 0  # publishes with no PUBACK (connection lost, timeout), frames unanswered
    skipped: int = 0  # ticks dropped because the device was too far behind schedule
    reconnects: int = 0
    stations: dict[str, StationCounts] = Field(default_factory=dict)  # by protocol

    def record(self, message: Outgoing) -> None:
        """Count one acknowledged message."""
        by_channel = self.counts.setdefault(message.kind, {})
        by_channel[message.channel] = by_channel.get(message.channel, 0) + 1
        seq = message.payload.seq
        if seq is not None:
            self.last_seq[message.device_id] = max(seq, self.last_seq.get(message.device_id, 0))

    def count(self, kind: Kind | None = None, channel: Channel | None = None) -> int:
        """Messages sent, optionally of one kind and/or on one channel."""
        return sum(
            n
            for k, by_channel in self.counts.items()
            if kind is None or k is kind
            for c, n in by_channel.items()
            if channel is None or c is channel
        )

    @property
    def total(self) -> int:
        """All messages sent."""
        return self.count()

    @property
    def achieved_rate(self) -> float:
        """Telemetry and events per second over the run (statuses are not part of --rate)."""
        scheduled = self.count(channel=Channel.TELEMETRY) + self.count(channel=Channel.EVENT)
        return scheduled / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> str:
        """The report as JSON, with totals added for scripts."""
        data = self.model_dump(mode="json")
        data["total"] = self.total
        data["by_kind"] = {k.value: self.count(kind=k) for k in Kind if k in self.counts}
        data["by_channel"] = {c.value: self.count(channel=c) for c in Channel}
        data["achieved_rate"] = round(self.achieved_rate, 3)
        return json.dumps(data, indent=2, ensure_ascii=False)

    def table(self) -> str:
        """A small text table for people."""
        channels = list(Channel)
        header = f"{'kind':<8}" + "".join(f"{c.value:>11}" for c in channels) + f"{'total':>11}"
        lines = [header, "-" * len(header)]
        for kind in (k for k in Kind if k in self.counts):
            cells = "".join(f"{self.count(kind, c):>11}" for c in channels)
            lines.append(f"{kind.value:<8}{cells}{self.count(kind):>11}")
        totals = "".join(f"{self.count(channel=c):>11}" for c in channels)
        lines += ["-" * len(header), f"{'total':<8}{totals}{self.total:>11}", ""]
        how = "interrupted" if self.interrupted else "finished"
        lines.append(
            f"{self.devices} devices, {how} after {self.elapsed_s:.1f} s: "
            f"{self.achieved_rate:.1f} msg/s of {self.rate:g} asked"
        )
        if self.failed or self.skipped or self.reconnects:
            lines.append(
                f"failed {self.failed}, skipped {self.skipped}, reconnects {self.reconnects}"
            )
        for protocol, c in self.stations.items():
            lines.append(
                f"{protocol} frames: sent {c.sent}, answered {c.answered}, resent {c.resent},"
                f" unanswered {c.unanswered}, not framed {c.not_framed},"
                f" connections {c.connections}"
            )
        for s in self.scenarios:
            reached = "".join(f", {d} +{t:g} s" for d, t in s.reaches.items())
            lines.append(f"scenario {s.name} → {s.device_id} at {s.start_s:g} s{reached}")
        if self.last_seq and len(self.last_seq) <= TABLE_DEVICES_MAX:
            lines += [f"last seq {d}: {n}" for d, n in sorted(self.last_seq.items())]
        elif self.last_seq:
            low, high = min(self.last_seq.values()), max(self.last_seq.values())
            lines.append(f"last seq over {len(self.last_seq)} devices: {low}..{high}")
        return "\n".join(lines)
