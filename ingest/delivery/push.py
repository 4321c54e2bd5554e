"""Pushing to a neighbouring city (issue 19): a river crosses the city boundary, and the
downstream city is told what the upstream stations see, on a signed webhook.

The ``push:`` entries of the channels' config (ingest/channels/config.py ``Push``) name the
stations and the webhook. Two things go there, both through the same queue as people's
channels (``deliveries``, the per-endpoint rate, retries with backoff, receipts):

- every alert change of a pushed station — expanded with the announcement's job in
  ``dispatch.py`` (``push_rows``), recipient ``push/{id}``;
- every ``observations_every``, the newest values of the pushed stations as one batch — this
  module: ``ObservationPushes`` reads them from InfluxDB and writes one channel job
  ``push/{id}`` (``dispatch.batch_rows`` makes it one delivery). Periods are aligned on the
  clock (multiples of the period since the epoch). The delivery's key is sha256 of (the
  period's start, ``push/{id}``, the endpoint): a restart, or a new leader, inside a period
  queues that period's batch again, and the key makes it the same delivery, never a second
  push. A period during which InfluxDB cannot be read is skipped (logged); there is no
  catching up on periods the service was down for.

The batch is the notice's ``data`` (the webhook sends it; ingest/channels/webhook.py)::

    {"push": "loudi", "name": "娄底市", "period_start": "2026-11-19T08:00:00.000Z",
     "every_s": 300, "stations": [{"device": "river-zj-0005", "name": "资江酿溪水文站",
     "kind": "river", "river": "资江", "km": 52.0, "time": "2026-11-19T07:59:12.000Z",
     "fields": {"water_level_m": {"value": 203.41, "unit": "m"}, ...}}, ...]}

A station with nothing in InfluxDB is listed with ``time`` null and no fields.

The leader's only (as the sender): ``PushingSender`` runs the sender and this task in one
task group, inside the service's ``channel-delivery`` task. InfluxDB is read with the API's
query code, handed in (``influx_rows``: ingest/api/series.py ``influxql_rows``), as the API
room depends on this one and not the other way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from sqlalchemy.engine import Engine

from devices.kinds import Channel, Kind
from devices.registry import Registry, RiverDevice, RoadDevice
from devices.units import UNITS, numeric_fields
from ingest.alerts.database import channel_jobs, put_channel_jobs
from ingest.channels.config import Push
from ingest.delivery.dispatch import PUSH
from ingest.delivery.notices import TZ
from ingest.delivery.sender import Sender
from ingest.intake.lineprotocol import measurement_of
from ingest.transactions import WRITE, open_engine, serialise_writers

log = logging.getLogger(__name__)

# ingest/api/series.py ``influxql_rows``: (session, influx_url, database, query) → rows
InfluxRows = Callable[[aiohttp.ClientSession, str, str, str], Awaitable[list[dict[str, Any]]]]
MAX_TICK_S = 0.5  # a period's batch is queued at most this late


def _iso_utc(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def newest_query(kind: Kind, devices: Sequence[str]) -> str:
    """The newest point of each of ``devices`` (all of ``kind``), one query: ingest/api/
    devices.py's ``ORDER BY time DESC LIMIT 1``, per device. Names from the registry, quoted."""
    where = " OR ".join(f"{_ident('device')} = {_string(d)}" for d in devices)
    measurement = measurement_of(kind, Channel.TELEMETRY)
    return (
        f"SELECT * FROM {_ident(measurement)} WHERE {where} "
        f"GROUP BY {_ident('device')} ORDER BY time DESC LIMIT 1"
    )


def station_entry(registry: Registry, device_id: str, row: dict[str, Any] | None) -> dict[str, Any]:
    """One station of a batch: who and where it is, and its newest values with units."""
    device = registry.devices[device_id]
    entry: dict[str, Any] = {"device": device.id, "name": device.name, "kind": device.kind.value}
    if isinstance(device, RiverDevice):
        entry["river"] = device.river
    elif isinstance(device, RoadDevice):
        entry["road"] = device.road
    entry["km"] = getattr(device, "km", None)
    fields: dict[str, dict[str, Any]] = {}
    if row is not None:
        for name in numeric_fields(device.kind, Channel.TELEMETRY):
            value = row.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                fields[name] = {"value": value, "unit": UNITS.get(name, "")}
    entry["time"] = _iso_utc(int(row["time"])) if row is not None and "time" in row else None
    entry["fields"] = fields
    return entry


def batch_notice(
    push: Push, registry: Registry, rows: dict[str, dict[str, Any]], period_start_ms: int
) -> dict[str, Any]:
    """The notice's fields (all but ``key``) of one period's batch: ``data`` the batch."""
    stations = [station_entry(registry, s, rows.get(s)) for s in push.stations]
    every_s = (push.observations_every or 0) // 1000
    at = datetime.fromtimestamp(period_start_ms / 1000, UTC).astimezone(TZ)
    heard = sum(1 for s in stations if s["time"] is not None)
    return {
        "subject": "push",
        "subject_id": push.id,
        "event": "observations",
        "severity": "info",
        "title": f"{push.name}：{heard}/{len(stations)} 站最新观测 (newest observations)",
        "place": "",
        "rule": "",
        "value": "",
        "at": at.isoformat(timespec="seconds"),
        "link": "",
        "lines": [],
        "data": {
            "push": push.id,
            "name": push.name,
            "period_start": _iso_utc(period_start_ms),
            "every_s": every_s,
            "stations": stations,
        },
    }


class JobQueue:
    """Writes a push's batch as a channel job on the alert store's database (``url``), as an
    announcement's is written (``put_channel_jobs``); the sender expands it."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = open_engine(url)
        self._writer = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:
            serialise_writers(conn)
            channel_jobs.create(conn, checkfirst=True)

    def put(self, topic: str, payload: bytes, now_ms: int) -> None:
        with self._writer.begin() as conn:
            serialise_writers(conn)
            put_channel_jobs(conn, [(topic, payload)], now_ms)

    def close(self) -> None:
        self._engine.dispose()


class ObservationPushes:
    """Every ``observations_every`` of each push: its stations' newest values, one job."""

    def __init__(
        self,
        pushes: Sequence[Push],
        registry: Registry,
        queue: JobQueue,
        influx_rows: InfluxRows,
        influx_url: str,
        database: str,
        *,
        active: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pushes = tuple(p for p in pushes if p.observations_every)
        self._registry = registry
        self._queue = queue
        self._rows = influx_rows
        self._influx_url = influx_url
        self._database = database
        self._active = active
        self._clock = clock
        self.on_queued: Callable[[], None] = lambda: None  # the sender: look now
        self._queued: dict[str, int] = {}  # push id → the period start queued last
        self._failed: dict[str, int] = {}  # push id → the period start whose reading failed
        shortest = min((p.observations_every or 0 for p in self.pushes), default=0)
        self.tick_s = min(MAX_TICK_S, shortest / 5000) if shortest else MAX_TICK_S
        self.queued = 0  # batches queued by this process

    async def run(self) -> None:
        """Queue each period's batch until cancelled (while ``active``: the leader)."""
        if not self.pushes:
            return
        async with aiohttp.ClientSession() as http:
            while True:
                if self._active():
                    try:
                        await self.round(http)
                    except Exception:
                        log.exception("push round failed; trying again")
                await asyncio.sleep(self.tick_s)

    async def round(self, http: aiohttp.ClientSession) -> int:
        """Queue the batch of every push whose current period has none yet; how many."""
        made = 0
        for push in self.pushes:
            every = push.observations_every or 0
            now = round(self._clock() * 1000)
            start = now - now % every
            if self._queued.get(push.id) == start:
                continue
            try:
                rows = await self._newest(http, push)
            except Exception as e:  # InfluxDB down or refusing: tried again next tick
                if self._failed.get(push.id) != start:
                    self._failed[push.id] = start
                    log.warning("push %s: cannot read InfluxDB (%s); trying again", push.id, e)
                continue
            body = {
                "period_start_ms": start,
                "notice": batch_notice(push, self._registry, rows, start),
            }
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            await asyncio.to_thread(self._queue.put, f"{PUSH}{push.id}", payload, now)
            self._queued[push.id] = start
            self.queued += 1
            made += 1
        if made:
            self.on_queued()
        return made

    async def _newest(self, http: aiohttp.ClientSession, push: Push) -> dict[str, dict[str, Any]]:
        by_kind: dict[Kind, list[str]] = {}
        for station in push.stations:
            device = self._registry.devices.get(station)
            if device is not None:
                by_kind.setdefault(device.kind, []).append(device.id)
        found: dict[str, dict[str, Any]] = {}
        for kind, devices in by_kind.items():
            query = newest_query(kind, devices)
            for row in await self._rows(http, self._influx_url, self._database, query):
                if row.get("device") in devices:
                    found[str(row["device"])] = row
        return found

    def close(self) -> None:
        self._queue.close()


class PushingSender(Sender):
    """The sender with the pushes' periodic task beside it (``attach``), in one task group:
    whoever runs the sender (the service's ``channel-delivery`` task) owns both, and stopping
    it stops both. Without pushes attached it is the sender alone."""

    pushes: ObservationPushes | None = None

    def attach(self, pushes: ObservationPushes | None) -> None:
        self.pushes = pushes
        if pushes is not None:
            pushes.on_queued = self.wake

    async def run(self) -> None:
        if self.pushes is None:
            await super().run()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run(), name="channel-sender")
            tg.create_task(self.pushes.run(), name="push-observations")


def observation_pushes(
    pushes: Sequence[Push],
    registry: Registry,
    url: str,
    influx_rows: InfluxRows | None,
    influx_url: str,
    database: str,
    active: Callable[[], bool],
) -> ObservationPushes | None:
    """The task for the pushes with ``observations_every``; None if there are none (or no
    way to read InfluxDB was handed in: logged, and only alerts are pushed)."""
    periodic = [p for p in pushes if p.observations_every]
    if not periodic:
        return None
    if influx_rows is None:
        log.warning(
            "push %s: observations_every is set but this process was given no InfluxDB "
            "reader; only alerts are pushed",
            ", ".join(p.id for p in periodic),
        )
        return None
    return ObservationPushes(
        periodic, registry, JobQueue(url), influx_rows, influx_url, database, active=active
    )
