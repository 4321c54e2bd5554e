"""Kill anywhere: after a crash at any moment, the alerts are those of an undisturbed run.

Issue 13 item 2. The service's own alert path — pipeline, rule engine, ``Alerting`` with its
store, announce and clock tasks, batcher, ``AckTracker`` — runs in-process on a real
``AlertStore`` (a SQLite file). The only fakes are the broker (it hands the messages over in
order and redelivers what was not acknowledged, as Mosquitto does for a persistent session),
InfluxDB (a batch is durable the moment the writer takes it) and the MQTT outbox.

Why not the real stack: a SIGKILL there lands where the scheduler happens to be, and hitting
the instants between a store commit and the next snapshot, or between a commit and a PUBACK,
takes luck; ``tests/integration/test_faults.py`` kills three times per run and measures. Here
every kill point is enumerated: what survives a crash is exactly the committed content of the
SQLite file and the set of PUBACKs the broker has had; a crash between two changes of these
leaves the same as a crash right after the first, so one run that records them after each
commit and each PUBACK has visited every kill point there is (after observe, after a store
commit, after a state save, after an acknowledgement...). For each, a new process is started
from that file, the broker redelivers what was not acknowledged and then the rest, and the
alerts must equal the undisturbed run's: rule, device, state, opening and last change (device
time), clear time and actor, value, repeat count — no alert missing, extra or doubled.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devices.registry import Registry, load_registry
from ingest.alerts.alerting import Alerting
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.intake.batcher import Batcher
from ingest.intake.decode import Decoder
from ingest.intake.ledger import Ledger
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.mqtt.acks import AckTracker
from ingest.pipeline import Pipeline
from rules import load_rules
from tests.unit.test_pipeline import REPO, DeadLetters, Outbox

T0 = 1_719_800_000_000
STEP_MS = 30_000
RIVERS = ("river-zj-0001", "river-zj-0002")
GATE = "gate-sq-0001"
# A river's levels, one reading every 30 s: above warning for 4 min (opens after the rule's
# `for: 2m`, and rising fast), down (clears), up again (opens again), down (clears).
LEVELS = [210.0] * 3 + [212.0] * 8 + [211.0] * 5 + [212.2] * 8 + [210.0] * 4

# One kept alert, everything that must match an undisturbed run (not ids or wall-clock times).
AlertRow = tuple[Any, ...]


def messages() -> list[tuple[str, bytes]]:
    """Both rivers' readings interleaved (the second 3 readings behind), and forced-open gate
    events (an alert that opens, repeats, and is never cleared by a rule)."""
    out: list[tuple[str, bytes]] = []
    seqs = dict.fromkeys((*RIVERS, GATE), 0)

    def add(device: str, topic: str, body: dict[str, Any]) -> None:
        seqs[device] += 1
        payload = {"ts": body.pop("ts"), "seq": seqs[device], **body}
        out.append((topic, json.dumps(payload).encode()))

    for i in range(len(LEVELS) + 3):
        ts = T0 + i * STEP_MS
        for lag, device in zip((0, 3), RIVERS, strict=True):
            if 0 <= i - lag < len(LEVELS):
                level = LEVELS[i - lag]
                add(device, f"iot/river/{device}/telemetry", {"ts": ts, "water_level_m": level})
        if i % 7 == 3:
            add(GATE, f"iot/gate/{GATE}/event", {"ts": ts + 1, "event": "forced_open"})
    return out


@dataclass
class Durable:
    """What a crash leaves: the committed SQLite file's content and how many messages (a
    prefix, as acknowledgements go out in order) the broker has had a PUBACK for."""

    database: sqlite3.Connection
    acked: int


class RecordingStore(AlertStore):
    """The real store; after each commit, a copy of the committed database is kept."""

    def __init__(self, path: Path, on_commit: Any) -> None:
        super().__init__(sqlite_url(path.parent))
        self._path = path
        self._on_commit = on_commit

    def copy(self) -> sqlite3.Connection:
        copy = sqlite3.connect(":memory:", check_same_thread=False)
        source = sqlite3.connect(self._path)
        try:
            source.backup(copy)
        finally:
            source.close()
        return copy

    def apply_many(self, *args: Any, **kwargs: Any) -> Any:
        done = super().apply_many(*args, **kwargs)
        self._on_commit(self.copy())
        return done

    def save_state(self, *args: Any, **kwargs: Any) -> None:
        super().save_state(*args, **kwargs)
        self._on_commit(self.copy())


@dataclass
class Recorder:
    """Every durable state one run went through, in order."""

    states: list[Durable] = field(default_factory=list)
    database: sqlite3.Connection | None = None
    acked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def committed(self, database: sqlite3.Connection) -> None:
        with self.lock:
            self.database = database
            self.states.append(Durable(database, self.acked))

    def acknowledged(self, acked: int) -> None:
        with self.lock:
            self.acked = acked
            if self.database is not None:
                self.states.append(Durable(self.database, acked))


class Process:
    """One life of the service's alert path, from the store file in ``data_dir``."""

    def __init__(self, data_dir: Path, registry: Registry, recorder: Recorder | None) -> None:
        self.recorder = recorder
        path = data_dir / "alerts.sqlite3"
        self.store = (
            RecordingStore(path, recorder.committed)
            if recorder
            else AlertStore(sqlite_url(data_dir))
        )
        self.batcher = Batcher(size=2, interval_s=0.005)
        self.alerting = Alerting(
            load_rules(REPO / "config" / "rules.yaml", registry),
            registry,
            self.store,
            Outbox(),  # type: ignore[arg-type]
            self.batcher,
            start_grace_s=3600,  # no silence deadlines: alerts follow the messages only
            snapshot_interval_s=0.005,
        )
        decoder = Decoder(registry, max_payload_bytes=16384, future_skew_ms=0, max_age_ms=10**12)
        self.pipeline = Pipeline(
            decoder,
            LineEncoder(registry, PlateHasher(b"test")),
            self.batcher,
            DeadLetters(),  # type: ignore[arg-type]
            Ledger(),
            self.alerting,
        )
        self.acks = AckTracker()
        self.acks.connected(self._puback)
        self.first = 0  # index of the first message this life was given
        self.acked = 0  # messages acknowledged, counted from the very first one
        self._all_acked = asyncio.Event()
        self._expected = 0

    def _puback(self, mids: list[int]) -> None:
        if not mids:
            return
        self.acked = max(mids)  # mid = the message's index + 1, over all lives
        if self.recorder is not None:
            self.recorder.acknowledged(self.acked)
        if self.acked >= self._expected:
            self._all_acked.set()

    async def _write(self) -> None:
        """InfluxDB: a batch is durable as soon as it is taken."""
        while (batch := await self.batcher.next_batch()) is not None:
            self.batcher.done(batch)
            self.acks.safe([t for t in batch.tokens if t is not None])

    async def run(self, all_messages: list[tuple[str, bytes]], first: int, pace: bool) -> None:
        """Receive messages ``first``… in order, until every one is acknowledged; then stop
        as the service does (store and tell the last changes, save the state)."""
        self._expected = len(all_messages)
        if first == self._expected:  # all were acknowledged before the crash
            self._all_acked.set()
        a = self.alerting
        tasks = [
            asyncio.create_task(c)
            for c in (
                a.run_store(),
                a.run(),
                a.run_clock(),
                self.batcher.run_timer(),
                self._write(),
            )
        ]
        try:
            for i in range(first, len(all_messages)):
                token = self.acks.received(mid=i + 1, qos=1)
                self.pipeline.handle(*all_messages[i], token=token)
                # Some messages back to back, some apart: rounds, saves and acks interleave.
                if pace:
                    await asyncio.sleep((0, 0.001, 0, 0.004)[i % 4])
            async with asyncio.timeout(10):
                await self._all_acked.wait()
            await a.settle(5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        a.save()

    def alerts(self) -> list[AlertRow]:
        try:
            return sorted(
                (
                    x.rule_id,
                    x.device_id,
                    x.state.value,
                    x.opened_ms,
                    x.updated_ms,
                    x.resolved_ms,
                    x.resolved_by,
                    x.value,
                    x.repeat_count,
                    x.flapping,
                )
                for x in self.store.list(limit=100_000)
            )
        finally:
            self.store.close()


@pytest.fixture(autouse=True)
def fast_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ingest.alerts.alerting.TICK_S", 0.005)
    # Store rounds of points only: paced like the service's, at the scale of this test.
    monkeypatch.setattr("ingest.alerts.alerting.COVER_EVERY_S", 0.003, raising=False)


async def test_after_a_crash_anywhere_the_alerts_are_those_of_an_undisturbed_run(
    tmp_path: Path,
) -> None:
    registry = load_registry(REPO / "config" / "registry.yaml")
    stream = messages()
    recorder = Recorder()
    first_life = Process(tmp_path / "undisturbed", registry, recorder)
    await first_life.run(stream, 0, pace=True)
    undisturbed = first_life.alerts()
    # The scenario means something: both rivers open, clear and reopen; the gate repeats.
    by_rule: dict[tuple[str, str], list[str]] = {}
    for row in undisturbed:
        by_rule.setdefault((row[0], row[1]), []).append(row[2])
    for river in RIVERS:
        assert by_rule[("river_over_warning", river)] == ["resolved", "resolved"]
    assert [r[8] for r in undisturbed if r[0] == "gate_forced_open"] == [3]

    kill_points = [Durable(sqlite3.connect(":memory:"), 0), *recorder.states]
    # Many moments of the stream: a PUBACK at least every few messages, commits between.
    assert len({d.acked for d in kill_points}) > len(stream) // 3
    wrong: list[str] = []
    for k, durable in enumerate(kill_points):
        data_dir = tmp_path / f"kill-{k}"
        data_dir.mkdir()
        target = sqlite3.connect(data_dir / "alerts.sqlite3")
        durable.database.backup(target)
        target.close()
        restarted = Process(data_dir, registry, None)
        await restarted.run(stream, durable.acked, pace=False)
        after = restarted.alerts()
        if after != undisturbed:
            missing = sorted(set(undisturbed) - set(after))
            extra = sorted(set(after) - set(undisturbed))
            wrong.append(
                f"kill {k} (acked {durable.acked}): missing {missing[:2]} extra {extra[:2]}"
            )
    assert not wrong, f"{len(wrong)} of {len(kill_points)} kill points differ: {wrong[:3]}"
