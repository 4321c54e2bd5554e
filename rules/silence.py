"""Silence: a device that says nothing, says it is offline, or stops reporting one sensor.

Three causes, told apart in the transition's reason:
- ``silent``: no message of any kind for ``k`` × the device's ``report_interval_s``, measured
  from when its newest message arrived — in the caller's read time, passed to
  ``Engine.observe`` as ``arrival_ms`` (else the device time of its newest message) — to the
  ``now`` the caller passes to ``tick`` (ingest passes how far it has read, not the wall clock:
  a backlog or a broker outage is not silence, ingest/alerts/readclock.py);
- ``offline``: a status ``online: false`` (the device's own, or the broker's last will) newer
  than every other message from the device;
- ``channel_quiet``: the device keeps sending telemetry but a watched field (``channels``) has
  been missing from it for ``k`` × ``report_interval_s`` of device time. A channel is watched on
  a device only after the device has reported it once, so a station without a water-quality
  analyser never counts as quiet.
One condition per (rule, device): a change of cause while it is open is an ``update``
(offline beats silent beats channel_quiet); any newer message clears silent and offline
(``back_online``), the quiet fields reporting again clears channel_quiet (``channel_resumed``).

A planned stop (an offline status whose ``reason`` is in ``planned_stop_reasons``, e.g. a clean
shutdown or maintenance) opens nothing, clears an open condition (``planned_stop``), and holds
the silence deadline until the device speaks again: nobody is woken for a planned stop (nor
by the broker's last will that follows it when the device drops its connection).

Late and out-of-order messages: the newest times only move forward (each is a maximum), and a
message no newer than the newest one seen changes no condition: a late message proves nothing
about now, and an old retained status must not flip the device back.
"""

from __future__ import annotations

from datetime import UTC, datetime

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage, Status
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator
from rules.model import SilenceRule
from rules.schema import numeric_fields
from rules.state import SilenceState
from rules.transition import Reason, Transition

# Causes as stored in the state (plain strings), and which outranks which.
_QUIET, _SILENT, _OFFLINE = (
    Reason.CHANNEL_QUIET.value,
    Reason.SILENT.value,
    Reason.OFFLINE.value,
)
_RANK = {None: 0, _QUIET: 1, _SILENT: 2, _OFFLINE: 3}
_SILENT_RANK = _RANK[_SILENT]
_TELEMETRY = Channel.TELEMETRY  # bound once: an enum member lookup costs ~0.1 µs (observe)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="seconds")


class SilenceEvaluator(Evaluator[SilenceRule, SilenceState]):
    """Compiled ``type: silence``."""

    state_type = SilenceState
    reads = tuple(Channel)

    def __init__(self, rule: SilenceRule) -> None:
        super().__init__(rule)
        self.needs_deadline = True
        self.k = rule.k
        self.planned = frozenset(rule.planned_stop_reasons)
        self.channels: dict[Kind, tuple[str, ...]] = {
            kind: tuple(c for c in rule.channels if c in numeric_fields(kind, Channel.TELEMETRY))
            for kind in rule.kinds
        }
        # report_interval_s → limit_ms, worked out once per interval rather than per message
        # (a pure function of the number, so it cannot go stale when a device changes).
        self._limits: dict[float, int] = {}
        # The caller's read time of the message being observed (Engine.observe sets it): when
        # given, silence is judged on arrival in the caller's read time, not on the device's
        # own stamp (a slow device clock, a backlog read late: ingest/alerts/readclock.py).
        self.arrival_ms: int | None = None

    def limit_ms(self, device: AnyDevice) -> int:
        """How long without a message (or a channel) counts as silence for ``device``."""
        interval = device.report_interval_s
        limit = self._limits.get(interval)
        if limit is None:
            limit = self._limits[interval] = round(self.k * interval * 1000)
        return limit

    def observe(
        self,
        st: SilenceState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        last_seen = st.last_seen
        newer = last_seen is None or ts > last_seen or not st.heard
        if channel is _TELEMETRY:
            names = self.channels.get(device.kind)
            if names:
                seen = st.channels
                for name in names:
                    if getattr(message, name, None) is not None:
                        before = seen.get(name)
                        seen[name] = ts if before is None or ts >= before else before
            last = st.last_telemetry
            st.last_telemetry = ts if last is None or ts >= last else last
        reason: str | None = None  # a status's reason, for the transition's detail
        if isinstance(message, Status):
            reason = message.reason
            # Equal times count for a status: "offline" stamped with the last report's time
            # is the later statement.
            newer = newer or ts == last_seen
            # The broker's last will (offline, no ts of its own: it was composed at connect)
            # after a planned stop is part of the stop: a station switched off for
            # maintenance drops its connection too.
            will_after_stop = st.stopped and not message.online and message.ts is None
            if newer and not will_after_stop:
                planned = not message.online and message.reason in self.planned
                st.stopped = planned
                if planned or message.online:
                    st.offline_ts = None
                elif self.spec.offline_status:
                    st.offline_ts = ts
        elif newer:
            st.stopped = False  # it speaks again after a planned stop
            if st.offline_ts is not None and ts > st.offline_ts:
                st.offline_ts = None
        if last_seen is None or ts > last_seen:
            st.last_seen = ts
        arrival = self.arrival_ms
        if arrival is not None and (st.heard_at is None or arrival > st.heard_at):
            st.heard_at = arrival
        st.heard = True
        if not newer:
            return []
        if (
            st.cause is None
            and st.offline_ts is None
            and not st.channels
            and not st.life.active
            and not st.quiet
        ):
            # Nothing wrong and nothing to clear: _settle_cause would find no cause and change
            # nothing; skipped as this is most messages from devices without watched channels.
            return []
        return self._settle_cause(st, device, ts, reason)

    def _settle_cause(
        self, st: SilenceState, device: AnyDevice, ts: int, status_reason: str | None
    ) -> list[Transition]:
        limit = self.limit_ms(device)
        quiet: list[str] = []
        last = st.last_telemetry
        if last is not None and st.channels and last - min(st.channels.values()) >= limit:
            quiet = sorted(name for name, seen in st.channels.items() if last - seen >= limit)
        cause: str | None
        if st.offline_ts is not None:
            cause = _OFFLINE
        elif quiet:
            cause = _QUIET
        else:
            cause = None
        life = st.life
        if cause is None:
            was = st.cause
            st.cause = None
            if st.quiet:  # an empty list is left as it is: no new one per message
                st.quiet = quiet
            if not life.active:
                return []
            if st.stopped:
                said = f" ({status_reason})" if status_reason else ""
                detail, why = f"device announced a planned stop{said}", Reason.PLANNED_STOP
            elif was == _QUIET:
                detail, why = "the quiet channels report again", Reason.CHANNEL_RESUMED
            else:
                detail, why = "device back online", Reason.BACK_ONLINE
            cleared = self.deactivate(life, device.id, ts, None, detail, why)
            return [cleared] if cleared is not None else []
        if cause == st.cause and quiet == st.quiet and life.active:
            return []
        st.cause, st.quiet = cause, quiet
        if cause == _OFFLINE:
            said = f" ({status_reason})" if status_reason else ""
            return [
                self.activate(
                    life, device.id, ts, "offline", f"device reported offline{said}", Reason.OFFLINE
                )
            ]
        detail = (
            f"{', '.join(quiet)} not reported for {format_duration(limit)} "
            "while the device still reports"
        )
        return [self.activate(life, device.id, ts, ", ".join(quiet), detail, Reason.CHANNEL_QUIET)]

    def form_deadline(self, st: SilenceState, device: AnyDevice) -> int | None:
        last_seen = st.last_seen
        if last_seen is None or st.stopped or _RANK[st.cause] >= _SILENT_RANK:
            return None
        # limit_ms's cache read inline: this runs after every message.
        limit = self._limits.get(device.report_interval_s)
        heard = st.heard_at if st.heard_at is not None else last_seen
        return heard + (self.limit_ms(device) if limit is None else limit)

    def form_expire(self, st: SilenceState, device: AnyDevice, now: int) -> list[Transition]:
        due = self.form_deadline(st, device)
        if due is None or now < due or st.last_seen is None:
            return []
        st.cause = _SILENT
        limit = format_duration(self.limit_ms(device))
        if st.heard:
            detail = f"no message for {limit}; last at {_iso(st.last_seen)}"
        else:
            detail = f"no message for {limit} since watching began"
        interval = format_duration(round(device.report_interval_s * 1000))
        detail += f" ({self.k:g} × report interval {interval})"
        return [self.activate(st.life, device.id, due, "silent", detail, Reason.SILENT)]
