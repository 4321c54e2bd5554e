"""A device clock running fast: its stamps judged less its measured lead (issue 14 review F2, F3).

A stamp further than ``CITYSENSE_AHEAD_TOLERANCE_S`` ahead of its arrival used to be judged at
its arrival plus the tolerance. So a redelivery, read later, was judged later — after a
person's resolve — and opened a second alert (F2); and a burst read in one go (a backlog) was
judged at one millisecond, which event_count took for copies of one event (F3). Unit tests
on ``Alerting`` with its store (as ``tests/unit/test_alerting_trust.py``): the measured skew is
passed in as the pipeline passes it (``ingest/pipeline.py``), so a skew estimate that moved
between two deliveries can be set exactly — on the real stack it is whatever the timing gives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Channel
from devices.payloads import GateEvent
from devices.registry import Registry, load_registry
from ingest.alerts.alerting import Alerting
from ingest.intake.decode import Decoder
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.intake.skew import ClockSkew
from ingest.pipeline import Pipeline
from tests.unit.test_alerting_trust import GATE, T0, TAILGATING, alerting, unresolved
from tests.unit.test_pipeline import REPO, Parts

SECOND = 1000
MINUTE = 60 * SECOND
FAST = 60 * SECOND  # the gate's clock runs this far ahead
FORCED: dict[str, Any] = {
    "id": "gate_forced_open",
    "name": "Gate forced open",
    "name_zh": "闸门被强行打开",
    "type": "event",
    "severity": "major",
    "kinds": ["gate"],
    "events": ["forced_open"],
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


async def send(
    a: Alerting, registry: Registry, message: GateEvent, received: int, skew: int | None
) -> None:
    """One gate event read at ``received``, with the skew the pipeline had measured."""
    assert message.ts is not None
    device = registry.devices[GATE]
    a.take(a.observe(device, Channel.EVENT, message, message.ts, received, skew))
    await a._store_round()


@pytest.mark.parametrize(
    ("first_skew", "again_skew"),
    [(None, None), (None, FAST), (FAST, FAST - 10), (FAST - 10, FAST)],
    ids=["never-measured", "measured-after", "estimate-fell-10ms", "estimate-rose-10ms"],
)
async def test_a_redelivery_from_a_fast_clock_cannot_reopen_a_resolved_alert(
    tmp_path: Path, registry: Registry, first_skew: int | None, again_skew: int | None
) -> None:
    """F2: forced_open without seq from a gate 60 s fast; a person resolves it; the broker
    sends the same message again 30 s later. It was judged at its new arrival + 2 s, newer
    than the resolve, and opened a second alert — and must not, whether the skew was known at
    either delivery and if the estimate moved by a few ms in between."""
    a = alerting(tmp_path, registry, FORCED)
    message = GateEvent(ts=T0 + FAST, event="forced_open")  # no seq: only its time tells
    await send(a, registry, message, T0, first_skew)
    [first] = unresolved(a, "gate_forced_open")
    a._store.resolve(first.id, "duty officer", T0 + 10 * SECOND)
    await a._hear_resolves()
    await send(a, registry, message, T0 + 30 * SECOND, again_skew)  # the same message again
    assert unresolved(a, "gate_forced_open") == []
    later = GateEvent(ts=T0 + FAST + 40 * SECOND, event="forced_open")  # a new one still opens
    await send(a, registry, later, T0 + 40 * SECOND, again_skew)
    [second] = unresolved(a, "gate_forced_open")
    assert second.id != first.id


@pytest.mark.parametrize("skew", [None, FAST])
async def test_a_burst_from_a_fast_clock_read_at_once_is_counted(
    tmp_path: Path, registry: Registry, skew: int | None
) -> None:
    """F3: three tailgating events 1 s apart (distinct seqs) from a gate 60 s fast, read in the
    same millisecond (a backlog after a reconnect), were all judged at arrival + 2 s and taken
    for copies of one: the burst alert never opened. With the skew measured, they keep their
    spacing; without, they are still three events (told apart by seq and stamp as sent)."""
    a = alerting(tmp_path, registry, TAILGATING)
    received = T0 + 5 * SECOND
    burst = [GateEvent(ts=T0 + FAST + i * SECOND, seq=i + 1, event="tailgating") for i in range(3)]
    for message in burst:
        await send(a, registry, message, received, skew)
    [opened] = unresolved(a, "gate_tailgating_burst")
    if skew is not None:
        times = a.engine.snapshot()["rules"]["gate_tailgating_burst"]["states"][GATE]["times"]
        assert times == [T0, T0 + SECOND, T0 + 2 * SECOND]
    for message in burst:  # sent again: copies, by (seq, stamp as sent)
        await send(a, registry, message, received + SECOND, skew)
    assert unresolved(a, "gate_tailgating_burst") == [opened]
    assert opened.value == 3.0


async def test_the_pipeline_passes_the_measured_skew(tmp_path: Path) -> None:
    """The wiring of F3 on the service's own path (``Pipeline.handle`` with its ClockSkew): a
    gate 60 s fast, measured so by its earlier messages, flushes three tailgating events it
    queued 5, 4 and 3 s ago; they are judged 1 s apart, not at one millisecond."""
    parts = Parts(tmp_path)
    skew = ClockSkew()
    decoder = Decoder(
        parts.registry, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10
    )
    encoder = LineEncoder(parts.registry, PlateHasher(b"test"))
    pipeline = Pipeline(
        decoder,
        encoder,
        parts.batcher,
        parts.dead,  # type: ignore[arg-type]
        parts.ledger,
        parts.alerting,
        skew,
    )
    gate_id = parts.gate.id
    now = time.time_ns() // 1_000_000
    skew.saw(gate_id, now - MINUTE + FAST, now - MINUTE)  # its clock measured a minute ago
    sent = [now - 5 * SECOND + i * SECOND for i in range(3)]  # true times
    for i, at in enumerate(sent):
        body = {"ts": at + FAST, "seq": i + 1, "event": "tailgating"}
        pipeline.handle(f"iot/gate/{gate_id}/event", json.dumps(body).encode(), token=i + 1)
    states = parts.alerting.engine.snapshot()["rules"]["gate_tailgating_burst"]["states"]
    assert states[gate_id]["times"] == sent
    await parts.settle()
    assert [a.rule_id for a in parts.store.open_alerts()] == ["gate_tailgating_burst"]
