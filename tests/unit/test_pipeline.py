"""The synchronous per-message path: where each message ends, and when its point may go on.

Real decoder, encoder, batcher, rule engine and alert store (SQLite in a temp dir); the MQTT
outbox is a list (publishing is covered by the integration tests).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from devices.registry import Registry, load_registry
from ingest.alerts.alerting import Alerting
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.intake.batcher import Batcher
from ingest.intake.decode import Decoder
from ingest.intake.ledger import Ledger
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.pipeline import Pipeline
from ingest.sinks.deadletters import NewDeadLetter
from rules import load_rules

REPO = Path(__file__).resolve().parents[2]


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def put(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    def wake(self) -> None:
        pass


class DeadLetters:
    def __init__(self) -> None:
        self.rows: list[NewDeadLetter] = []

    @property
    def pending(self) -> int:
        return len(self.rows)

    def add(self, row: NewDeadLetter) -> None:
        self.rows.append(row)


class Parts:
    def __init__(self, tmp_path: Path) -> None:
        self.registry: Registry = load_registry(REPO / "config" / "registry.yaml")
        self.batcher = Batcher(size=1000, interval_s=60)
        self.dead = DeadLetters()
        self.ledger = Ledger()
        self.store = AlertStore(sqlite_url(tmp_path))
        self.outbox = Outbox()
        self.alerting = Alerting(
            load_rules(REPO / "config" / "rules.yaml", self.registry),
            self.registry,
            self.store,
            self.outbox,  # type: ignore[arg-type]
            self.batcher,
        )
        decoder = Decoder(
            self.registry, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10
        )
        encoder = LineEncoder(self.registry, PlateHasher(b"test"))
        self.pipeline = Pipeline(
            decoder,
            encoder,
            self.batcher,
            self.dead,  # type: ignore[arg-type]
            self.ledger,
            self.alerting,
        )
        self.gate = next(d for d in self.registry.devices.values() if d.kind.value == "gate")

    def gate_event(self, seq: int, event: str) -> tuple[str, bytes]:
        body: dict[str, Any] = {"ts": time.time_ns() // 1_000_000, "seq": seq, "event": event}
        return f"iot/gate/{self.gate.id}/event", json.dumps(body).encode()

    def lines(self) -> list[tuple[str, int | None]]:
        """Lines of messages in the open batch (not citysense's own alert points)."""
        batch = self.batcher._open
        pairs = zip(batch.lines, batch.tokens, strict=True)
        return [(line, t) for line, t in pairs if t is not None]

    async def settle(self) -> None:
        """Run the store and announce tasks until every queued change is stored and told."""
        tasks = [
            asyncio.create_task(self.alerting.run_store()),
            asyncio.create_task(self.alerting.run()),
        ]
        try:
            async with asyncio.timeout(5):
                await self.alerting.settle(5)
        finally:
            for task in tasks:
                task.cancel()


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    return Parts(tmp_path)


async def test_a_message_that_raises_an_alert_waits_for_the_store(parts: Parts) -> None:
    parts.pipeline.handle(*parts.gate_event(1, "forced_open"), token=7)
    assert parts.lines() == []  # held: its alert is not stored yet
    assert parts.pipeline.in_flight == 1  # ... and still counted, so the ledger balances
    assert parts.store.open_alerts() == []
    await parts.settle()
    [alert] = parts.store.open_alerts()
    assert alert.rule_id == "gate_forced_open" and alert.device_id == parts.gate.id
    [(line, token)] = parts.lines()
    assert token == 7 and line.startswith("gate_event,")
    # Told through the store's outbox, written in the alert's own transaction.
    told = parts.store.pending_announcements()
    assert told and all(alert.id.encode() in p for _, _, p in told)


async def test_an_ordinary_message_waits_for_a_saved_engine_state_that_has_seen_it(
    parts: Parts,
) -> None:
    # Acknowledged before a saved state has seen it, a crash would restore an engine that
    # never judged it while the broker never sends it again (issue 13 item 2).
    parts.pipeline.handle(*parts.gate_event(1, "pass"), token=3)
    assert parts.lines() == [] and parts.alerting.pending_points == 1
    assert parts.store.load_state("engine") is None
    await parts.settle()
    assert [token for _, token in parts.lines()] == [3]
    assert parts.alerting.pending_points == 0
    saved = parts.store.load_state("engine")
    assert saved is not None and saved["devices"][parts.gate.id]["seen"] == [[1, 1, ANY, ANY]]


async def test_a_failure_inside_citysense_is_kept_as_an_internal_error(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(parts.pipeline._decoder, "decode", broken)
    topic, payload = parts.gate_event(1, "pass")
    parts.pipeline.handle(topic, payload, token=5)  # does not raise
    [row] = parts.dead.rows
    assert (row.reason, row.detail, row.payload, row.token) == (
        "internal_error",
        "RuntimeError: a bug",
        payload,
        5,
    )
    assert parts.ledger.rejected["internal_error"] == 1


async def test_a_rule_engine_failure_keeps_the_reading(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: object) -> object:
        raise ZeroDivisionError("rule bug")

    monkeypatch.setattr(parts.alerting.engine, "observe", broken)
    parts.pipeline.handle(*parts.gate_event(1, "forced_open"), token=9)
    await parts.settle()
    assert [token for _, token in parts.lines()] == [9] and parts.dead.rows == []
    assert parts.pipeline.rule_failures == 1


async def test_a_store_failure_is_retried_and_the_point_held_meanwhile(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = parts.store.apply_many
    calls = 0

    def flaky(items: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return real(items, **kwargs)

    monkeypatch.setattr(parts.store, "apply_many", flaky)
    monkeypatch.setattr("ingest.alerts.alerting.STORE_RETRY_S", 0.05)
    parts.pipeline.handle(*parts.gate_event(1, "forced_open"), token=1)
    storing = asyncio.create_task(parts.alerting.run_store())
    await asyncio.sleep(0.02)
    storing.cancel()
    assert calls == 1 and parts.lines() == []  # failed once: nothing let through
    await parts.settle()
    assert calls == 2 and len(parts.store.open_alerts()) == 1
    assert [token for _, token in parts.lines()] == [1]


async def test_engine_state_is_not_saved_ahead_of_the_alert_store(parts: Parts) -> None:
    # The engine has judged a forced_open whose alert is not stored yet: a snapshot saved now
    # would, after a crash, remember an open condition the store never got.
    parts.pipeline.handle(*parts.gate_event(1, "forced_open"), token=1)
    parts.alerting.save()
    assert parts.store.load_state("engine") is None
    await parts.settle()
    parts.alerting.save()
    saved = parts.store.load_state("engine")
    assert saved is not None and parts.gate.id in saved["devices"]
