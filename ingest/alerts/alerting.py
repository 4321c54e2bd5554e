"""From the rule engine's transitions to alerts people receive.

The pipeline hands every valid message to the engine (cheap, pure, on the event loop), then
hands over what it said (often nothing) together with the message's point. One task stores
the waiting transitions in the alert store together with the engine's state after them (one
transaction, a worker thread), then lets the points go on to the batcher — so a message is
acknowledged only once the alerts it caused and an engine state that has seen it are stored:
after a crash the restored engine has judged every message the broker will not send again
(those it will send again and the engine has judged are recognised as redeliveries), and the
store holds exactly what that engine said (``take``, ``run_store``).
Another task publishes each change on ``alerts/{level}/{area}`` for every level the alert
has reached, and writes it to InfluxDB (measurement ``alert``). A clock task
drives time: the engine's deadlines (silence, expiry), escalation, and state saves.

Why one module (over 400 lines): the store round, the clock and the announcing share one engine
and one ordering — a transition is stored before it is announced, a state is saved only with
what it has seen, a person's resolve is heard between rounds. Spread over files, that ordering
would have no single place to be read. The store itself is ``store``, the outbox ``outbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from devices.registry import AnyDevice, GateDevice, Registry, RiverDevice, RoadDevice
from ingest.alerts.feed import AlertFeed, Change
from ingest.alerts.outbox import MqttOutbox
from ingest.alerts.readclock import ReadClock, clock_data, read_clock_state
from ingest.alerts.store import AlertStore, Check, NamedState, StoreTransition
from ingest.alerts.told import Change as ToldChange
from ingest.alerts.told import DeferredTelling, Telling, ToldMemory
from ingest.cluster.engines import PartitionEngines, state_key
from ingest.cluster.leases import Fenced
from ingest.cluster.seat import LEADER_PARTITION, Seat
from ingest.intake.batcher import Batcher
from ingest.intake.lineprotocol import encode_fields, series_key
from ingest.intake.skew import ClockSkew
from ingest.intake.stamps import UntimedStamps
from rules import Engine, RuleSet, Transition
from rules.alerts import (
    Alert,
    AlertEvent,
    AlertState,
    InvalidTransition,
    area_ids,
    due_for_escalation,
)
from rules.audiences import Reach, reach
from rules.messages import describe
from rules.model import AnyRule

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "engine"
TICK_S = 1.0
# Points with no alert change wait at most this long for a store round (which saves the
# engine's state, ~1 ms for the example city); a round with alert changes starts at once.
COVER_EVERY_S = 0.05
# A device stamp at most this far past its arrival is taken as it is (clocks disagree a
# little); further ahead, at the stamp less the device's measured skew, never later than its
# arrival plus this.
AHEAD_TOLERANCE_S = 2.0
FOLLOW_S = 0.25  # a worker's live stream reads the store's new changes this often
STORE_RETRY_S = 1.0  # the alert store failed (disk full, locked): try the same batch again

# A message's point held back until its transitions are stored: (line, measurement, ack token).
HeldPoint = tuple[str, str, int | None]
# What the engine said of a message (its point, its device) or of a tick: waiting to be stored.
Item = tuple[list[Transition], HeldPoint | None, str | None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Alerting:
    """Owns the engine, the alert store side and the alert publisher."""

    def __init__(
        self,
        rules: RuleSet,
        registry: Registry,
        store: AlertStore,
        outbox: MqttOutbox,
        batcher: Batcher,
        *,
        start_grace_s: float = 0.0,
        snapshot_interval_s: float = 1.0,
        renotify_s: float = 0.0,
        feed: AlertFeed | None = None,
        cover_every_s: float | None = None,
        ahead_tolerance_s: float = AHEAD_TOLERANCE_S,
        seat: Seat | None = None,
    ) -> None:
        self._rules = rules
        self.rules = rules
        self._registry = registry
        self._reaches: dict[tuple[str, str], Reach] = {}
        self._store = store
        self._outbox = outbox
        self._batcher = batcher  # alert points go the way of every point (spool included)
        # Resolves by people are read from the store's history from here on (``_hear_resolves``);
        # taken before the reconcile below, so none falls between the two.
        self._resolves_seen = store.last_event_seq()
        self._feed_seen = self._resolves_seen  # a worker's live stream follows the store
        self.state_problem: str | None = None  # why the rules' state was not (all) restored
        # A cluster's worker (``seat``): one engine per partition it holds, each restored as
        # its lease is taken (``take_partition``); alone: one engine for every device.
        self._seat = seat
        self.engine: Engine | PartitionEngines = (
            self._restore(rules, registry, store)
            if seat is None
            else PartitionEngines(rules, registry, seat.partitions)
        )
        self.engine.on_failure = self._rule_failed
        # Silence is judged on how far we have read; until ``follow_reading`` says how to
        # tell, reading counts as always live (the unit tests' engine-only use).
        # Continued from the snapshot; on a first start the first message read sets it.
        caller = self.engine.caller_state or {}
        start = read_clock_state(caller.get("read_clock"))
        # Stamps of messages without ts, saved with the state that has seen them.
        self.stamps = UntimedStamps.from_data(caller.get("stamps"))
        self._live: Callable[[], bool] = lambda: True
        # Each device's measured clock skew, saved with the state (a resolve is placed in the
        # device's time with it, ``_judged``); the live one once ``follow_clocks`` gives it.
        self._saved_skew = caller.get("clock_skew")
        self._skew: ClockSkew | None = None
        self._waiting: Callable[[], int] = lambda: 0
        self.read_clock = ReadClock(start, _now_ms(), lambda: self._live(), lambda: self._waiting())
        # What the engine said of each message (often nothing) with the message's point, and
        # its ticks' transitions, not yet stored with an engine state that has seen them.
        # With the message's device id (None for ticks): a worker drops what it judged of a
        # partition it lost (``drop_partition``).
        self._to_store: deque[Item] = deque()
        self._dropped_meanwhile: set[int] = set()  # partitions dropped while a round ran
        self._held_points = 0  # points among _to_store and in the thread
        self._to_store_ready = asyncio.Event()  # set: run_store has something to do now
        self._urgent = False  # transitions wait in _to_store: no pacing
        self._save_wanted = False  # the clock asks for a state save with nothing waiting
        self._cover_every_s = COVER_EVERY_S if cover_every_s is None else cover_every_s
        self._stored_all = asyncio.Event()
        self._stored_all.set()
        # Changes already in the store, waiting to be told (MQTT, listeners, InfluxDB).
        self._queue: asyncio.Queue[tuple[Alert, AlertEvent]] = asyncio.Queue()
        self._deadlines_from_ms = _now_ms() + round(start_grace_s * 1000)
        self._snapshot_every_ms = round(snapshot_interval_s * 1000)
        self._renotify_ms = round(renotify_s * 1000)
        self._ahead_ms = round(ahead_tolerance_s * 1000)
        self._told = ToldMemory(self._renotify_ms)  # repeats told on a schedule (told.py)
        if seat is None:
            for told in self._reconcile(self.engine, None, _now_ms()):
                told.commit()
        self.fenced = 0  # messages judged for a partition lost meanwhile: left to its new owner
        self.feed = feed or AlertFeed()
        self.evaluated = 0  # messages the engine has judged, and the time it took (metrics)
        self.eval_seconds = 0.0
        self.changes = 0  # alert changes applied, for tests and the status line

    def _restore(self, rules: RuleSet, registry: Registry, store: AlertStore) -> Engine:
        """The engine from its saved state; fresh (said loudly) if that cannot be read: a
        state a rollback cannot read must never stop ingest."""
        try:
            snapshot = store.load_state(SNAPSHOT_KEY)
            if snapshot is None:
                return Engine(rules, registry)
            engine = Engine.restore(rules, registry, snapshot)
        except Exception as e:
            self.state_problem = f"the rules' saved state could not be read ({e}); started afresh"
            log.error(
                "%s: open alerts are adopted, silence and windows start over", self.state_problem
            )
            return Engine(rules, registry)
        if engine.restore_problems:
            self.state_problem = "; ".join(engine.restore_problems[:5])
            log.warning("rules' saved state partly read: %s", "; ".join(engine.restore_problems))
        return engine

    def _reconcile(
        self, engine: Engine | PartitionEngines, devices: Collection[str] | None, now_ms: int
    ) -> list[DeferredTelling]:
        """Make the engine and the alert store agree at start (a worker: ``engine`` of the
        partition it takes, whose ``devices`` these are); what is to be told once committed.

        - an alert the store holds open whose rule is gone or no longer watches the device:
          resolved (``rule_changed``) — nothing would ever clear it;
        - one the engine does not hold (state lost, or the rule changed form): adopted, the
          next reading decides;
        - a condition the engine holds that the store has resolved (a person, while we were
          down or since the last save): forgotten, the next reading that shows it reopens.
        """
        held = set(engine.open_conditions())
        unresolved = {
            (a.rule_id, a.device_id): a
            for a in self._store.open_alerts()
            if devices is None or a.device_id in devices
        }
        tellings = []
        for (rule_id, device_id), alert in unresolved.items():
            device = self._registry.devices.get(device_id)
            if device is None or not engine.watches(rule_id, device):
                detail = "rule_changed: the rule no longer watches this device"
                told = self._deferred_telling()
                self._store.resolve_auto(rule_id, device_id, now_ms, detail, told)
                tellings.append(told)
                log.warning("resolved %s (%s on %s): %s", alert.id, rule_id, device_id, detail)
            elif (rule_id, device_id) not in held:
                engine.adopt(rule_id, device_id, alert.opened_ms)
        read_now = self.read_clock.now(now_ms)
        for rule_id, device_id in held - unresolved.keys():
            resolved_ms = self._store.last_resolved_ms(rule_id, device_id)
            resolved_ts = (
                None if resolved_ms is None else self._judged(device_id, resolved_ms, now_ms)
            )
            engine.resolve(rule_id, device_id, read_now, resolved_ts=resolved_ts)
        return tellings

    # -- a cluster's worker: partitions come and go with their leases ------------------------

    async def take_partition(self, partition: int) -> None:
        """Judge ``partition``'s devices from now on: its engine restored from its saved state
        and reconciled with the store, before its messages are read (ingest/cluster/worker.py).
        """
        engines = self._partition_engines()
        key = state_key(partition)
        # Resolves heard from here on find no engine for the partition until it is installed
        # (``_hear_resolves``): read again from here, and given to it before it is.
        heard_from = self._resolves_seen
        try:
            snapshot = await asyncio.to_thread(self._store.load_state, key)
            engine = engines.restore(partition, snapshot)
        except Exception as e:
            self.state_problem = f"partition {partition}'s rule state could not be read ({e})"
            log.error("%s: started afresh, its open alerts adopted", self.state_problem)
            engine = engines.restore(partition, None)
        if engine.restore_problems:
            log.warning(
                "partition %d's rule state partly read: %s", partition, engine.restore_problems
            )
        caller = engine.caller_state or {}
        self.stamps.merge(UntimedStamps.from_data(caller.get("stamps")))
        if self._skew is not None:
            self._skew.load(caller.get("clock_skew"))  # keeps what this worker measured itself
        devices = engines.devices_of(partition)
        tellings = await asyncio.to_thread(self._reconcile, engine, devices, _now_ms())
        for told in tellings:
            told.commit()
        await self._hear_resolves_since(engine, heard_from, devices)
        # No ``await`` from the catch-up to here, nor in the caller until it records the
        # partition's epoch: the engine judges nothing the round's fence could refuse.
        engines.install(partition, engine)
        log.info("judging partition %d (%d devices)", partition, len(devices))

    def drop_partition(self, partition: int) -> int:
        """Stop judging ``partition`` (its lease is lost or handed back): what was judged of
        it and not stored is dropped, points included, so its messages are not acknowledged
        and come again to its next owner. Returns how many messages were dropped."""
        engines = self._partition_engines()
        engines.remove(partition)
        self._dropped_meanwhile.add(partition)
        mine = engines.devices_of(partition)
        kept: deque[Item] = deque()
        dropped = 0
        for transitions, point, device_id in self._to_store:
            if device_id in mine:
                if point is not None:
                    self._held_points -= 1
                dropped += 1
                continue
            kept.append(([t for t in transitions if t.device_id not in mine], point, device_id))
        self._to_store = kept
        self.fenced += dropped
        if dropped:
            log.warning("partition %d lost: %d messages left to its next owner", partition, dropped)
        return dropped

    def _partition_engines(self) -> PartitionEngines:
        if not isinstance(self.engine, PartitionEngines):
            raise RuntimeError("partitions are a cluster worker's (CITYSENSE_BROKER=nats)")
        return self.engine

    async def _hear_resolves_since(
        self, engine: Engine, after_seq: int, devices: Collection[str]
    ) -> None:
        """Resolves of ``devices`` recorded after ``after_seq``, given to a partition's
        ``engine`` not yet installed, until it has every one ``_hear_resolves`` has passed
        (one given twice is harmless: ``Engine.resolve`` leaves a later episode alone)."""
        while True:
            last, found = await asyncio.to_thread(self._store.resolved_by_people, after_seq)
            now = _now_ms()
            read_now = self.read_clock.now(now)
            for rule_id, device_id, opened_ms, resolved_ms, alert_id in found:
                if device_id in devices:
                    self._told.forget(alert_id)
                    resolved_ts = self._judged(device_id, resolved_ms, now)
                    engine.resolve(rule_id, device_id, read_now, opened_ms, resolved_ts)
            after_seq = last
            if after_seq >= self._resolves_seen:  # what comes after, _hear_resolves gives it
                return

    async def _hear_resolves(self) -> None:
        """Forget the conditions of alerts people resolved since the last look (API, CLI,
        any process): the next reading that still shows the condition opens a new alert."""
        last, found = await asyncio.to_thread(self._store.resolved_by_people, self._resolves_seen)
        self._resolves_seen = last
        now = _now_ms()
        read_now = self.read_clock.now(now)
        for rule_id, device_id, opened_ms, resolved_ms, alert_id in found:
            self._told.forget(alert_id)  # resolved elsewhere: nothing more to tell of it
            resolved_ts = self._judged(device_id, resolved_ms, now)
            if self.engine.resolve(rule_id, device_id, read_now, opened_ms, resolved_ts):
                self._save_wanted = True  # saved by the next store round
                self._to_store_ready.set()

    def _rule_failed(self, rule_id: str, device_id: str, error: Exception) -> None:
        """A rule raised: its verdict on that message or tick is lost, the others' go on."""
        n = self.engine.failures.get(rule_id, 0)
        if n <= 3 or n % 1000 == 0:  # a rule failing on every message must not flood the log
            log.error(
                "rule %s failed on %s (%d failures so far)",
                rule_id,
                device_id,
                n,
                exc_info=(type(error), error, error.__traceback__),
            )

    def _caller_state(self) -> dict[str, Any]:
        """What ingest keeps in the engine's snapshot: its read clock, untimed stamps and clock
        skews."""
        skew = self._skew.data() if self._skew is not None else self._saved_skew
        return {
            "read_clock": clock_data(self.read_clock.state()),
            "stamps": self.stamps.data(),
            "clock_skew": skew if isinstance(skew, dict) else {},
        }

    def _caller_states(self, engines: PartitionEngines) -> dict[int, dict[str, Any]]:
        """``_caller_state`` split by partition (each saves its own devices' part), in one
        pass over the stamps and skews rather than one per partition."""
        whole = self._caller_state()
        parts: dict[int, dict[str, Any]] = {
            p: {"read_clock": whole["read_clock"], "stamps": {}, "clock_skew": {}}
            for p in engines.engines
        }
        for device_id, value in whole["clock_skew"].items():
            if (part := parts.get(engines.of.get(device_id, -1))) is not None:
                part["clock_skew"][device_id] = value
        for topic, value in whole["stamps"].items():
            # A topic's device id is its second-last level (devices/topics.py).
            device_id = topic.rsplit("/", 2)[-2]
            if (part := parts.get(engines.of.get(device_id, -1))) is not None:
                part["stamps"][topic] = value
        return parts

    def follow_reading(self, live: Callable[[], bool], waiting: Callable[[], int]) -> None:
        """How the read clock tells we are reading (connected, not paused) and what waits."""
        self._live, self._waiting = live, waiting

    def follow_clocks(self, skew: ClockSkew) -> None:
        """Each device's measured clock skew (ingest/intake/skew.py), for ``_judged``; it
        starts from the estimates saved with the state."""
        skew.load(self._saved_skew)
        self._skew = skew

    def _skew_of(self, device_id: str) -> int | None:
        if self._skew is not None:
            return self._skew.skew_ms(device_id)
        saved = self._saved_skew.get(device_id) if isinstance(self._saved_skew, dict) else None
        return saved if type(saved) is int else None

    def _judged(self, device_id: str, wall_ms: int, now_ms: int) -> int | None:
        """A person's resolve at wall time ``wall_ms``, in the device's time as the engine
        judges its stamps (``observe``); None when the device's clock was never measured
        (then the engine uses the newest it has read: a clock of unknown skew could put the
        resolve days after the device's own time and hide its real events that long).

        Never later than ``now_ms``, the hearing: the clock of the host that resolved (the
        CLI, another worker) may run ahead. A clock running fast past the tolerance is judged
        at wall time; one slow (or a little fast) at its own, wall + its measured skew."""
        skew = self._skew_of(device_id)
        if skew is None:
            return None
        wall_ms = min(wall_ms, now_ms)
        return wall_ms + skew if skew <= self._ahead_ms else wall_ms

    @property
    def pending_points(self) -> int:
        """Message points held back until their transitions are stored."""
        return self._held_points

    def observe(
        self,
        device: GateDevice | RiverDevice | RoadDevice,
        channel: Channel,
        message: DeviceMessage,
        ts_ms: int,
        received_ms: int | None = None,
        skew_ms: int | None = None,
    ) -> list[Transition]:
        """Evaluate one valid message (read at wall time ``received_ms``; ``skew_ms`` the
        device clock's measured skew, ingest/intake/skew.py); what the engine says goes to
        ``take`` (if anything)."""
        started = time.perf_counter()
        arrival = (
            None if received_ms is None else self.read_clock.saw(ts_ms, received_ms, device.id)
        )
        # A stamp ahead of when the message arrived is a device clock running fast: judged
        # at the stamp less the clock's measured lead, never past its arrival (plus the
        # tolerance), so it cannot hide the readings after it (Engine.observe).
        not_after = None if received_ms is None else received_ms + self._ahead_ms
        lead = skew_ms if skew_ms is not None and skew_ms > self._ahead_ms else None
        transitions = self.engine.observe(device, channel, message, ts_ms, arrival, not_after, lead)
        self.eval_seconds += time.perf_counter() - started
        self.evaluated += 1
        return transitions

    def take(
        self,
        transitions: list[Transition],
        point: HeldPoint | None = None,
        device_id: str | None = None,
    ) -> None:
        """What the engine said of a message (or a tick), stored with the engine's state;
        ``point`` goes to the batcher once they are. Called for every message the engine saw,
        with its ``device_id``.
        """
        engine = self.engine
        if (
            device_id is not None
            and isinstance(engine, PartitionEngines)
            and engine.of.get(device_id) not in engine.engines
        ):
            # Read for a partition lost meanwhile: not acknowledged, its next owner judges it.
            self.fenced += 1
            return
        self._to_store.append((transitions, point, device_id))
        if point is not None:
            self._held_points += 1
        self._stored_all.clear()
        # Wake the store task only when it has new work to judge: not once per point.
        if transitions and not self._urgent:
            self._urgent = True
            self._to_store_ready.set()
        elif len(self._to_store) == 1:
            self._to_store_ready.set()

    async def run_store(self) -> None:
        """Store rounds until cancelled: at once for alert changes, else paced by
        ``cover_every_s`` (each round saves the engine's whole state)."""
        loop = asyncio.get_running_loop()
        last_round = -self._cover_every_s
        while True:
            if not self._to_store and not self._save_wanted:
                self._stored_all.set()
                self._to_store_ready.clear()
                await self._to_store_ready.wait()
                continue
            wait_s = last_round + self._cover_every_s - loop.time()
            if wait_s > 0 and not self._urgent and not self._save_wanted:
                self._to_store_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._to_store_ready.wait(), wait_s)
                continue
            last_round = loop.time()
            await self._store_round()

    async def _store_round(self) -> None:
        """Store every waiting transition with the engine's state, then release their points.

        The state is taken here, on the event loop with no ``await`` since the items were
        taken: it is the engine after exactly the messages and ticks of this round and of the
        rounds before it (each message is ``take``n as it is judged), so the transaction holds
        the alert changes and the state that made them, and nothing the state has not seen.
        """
        items = list(self._to_store)
        self._to_store.clear()
        self._urgent = self._save_wanted = False
        self._dropped_meanwhile = set()
        states, check = self._states(self._partitions_of(items))
        transitions = [t for ts, _, _ in items for t in ts]
        told = self._deferred_telling()
        try:
            changes, reopened = await asyncio.to_thread(
                self._apply_all, transitions, states, told, check
            )
        except Fenced as e:
            # Another worker took these partitions (this one was paused past its lease): its
            # work for them is refused; theirs is the new owner's to redo from the store.
            log.warning("%s: their unstored work is dropped", e)
            self._put_back(items, set(e.lost))
            for p, epoch in sorted(e.lost.items()):
                seat = self._seat
                # Only the lease that was refused: taken again since, at a new epoch, it is ours.
                if seat is not None and seat.epochs.get(p) == epoch:
                    self.drop_partition(p)
                    seat.epochs.pop(p, None)
                    seat.lost.set()  # its session is closed by the next beat, now
            self._urgent = True
            return
        except Exception:
            log.exception("could not store %d alert changes; retrying", len(transitions))
            self._put_back(items, set())
            self._urgent = True
            await asyncio.sleep(STORE_RETRY_S)
            return
        told.commit()  # only now: a failed round tells again what it could not store
        for alert in reopened:
            # A repeat found its alert resolved by a person and opened a new one: the engine
            # holds that one now, so the older resolve, heard later, does not forget it, and
            # a condition forgotten meanwhile is held again (the next reading decides).
            self.engine.hold(alert.rule_id, alert.device_id, alert.opened_ms)
        for change in changes:
            self._queue.put_nowait(change)
        for _, point, _ in items:
            if point is not None:
                self._held_points -= 1
                self._batcher.add(*point)

    def _partitions_of(self, items: Sequence[Item]) -> set[int]:
        """The partitions a round's items were judged for (a worker's; empty alone)."""
        engine = self.engine
        if not isinstance(engine, PartitionEngines):
            return set()
        devices = {d for _, _, d in items if d is not None}
        devices.update(t.device_id for ts, _, _ in items for t in ts)
        return {p for d in devices if (p := engine.of.get(d)) is not None}

    def _put_back(self, items: Sequence[Item], refused: set[int]) -> None:
        """A failed round's items, waiting again — except a worker's for partitions refused,
        dropped while the round ran (a later owner, or this worker again at a new epoch,
        judges them afresh) or no longer judged here: dropped, points unacknowledged."""
        engine = self.engine
        if isinstance(engine, PartitionEngines):
            held = set(engine.engines)
            gone = refused | self._dropped_meanwhile | (set(range(engine.partitions)) - held)

            def lost(device_id: str) -> bool:
                return engine.of.get(device_id) in gone

            kept: list[Item] = []
            for transitions, point, device_id in items:
                if device_id is not None and lost(device_id):
                    if point is not None:
                        self._held_points -= 1
                    self.fenced += 1
                    continue
                # A tick's item spans partitions: only the lost ones' transitions go.
                kept.append(([t for t in transitions if not lost(t.device_id)], point, device_id))
            items = kept
        self._to_store.extendleft(reversed(items))

    def _states(self, partitions: set[int]) -> tuple[list[NamedState], Check | None]:
        """The engine's state to store with this round, and the lease fence of a worker.

        Taken on the event loop with no ``await`` since the round's items were taken (see
        ``_store_round``). A worker saves every partition it judges, each under its own key,
        and fences every partition it saves or stores changes for (``partitions``): one it
        no longer holds has no epoch, so the round is refused rather than written unfenced.
        """
        now = _now_ms()
        engine = self.engine
        seat = self._seat
        if isinstance(engine, Engine) or seat is None:
            assert isinstance(engine, Engine)  # a seat comes with partition engines (__init__)
            engine.caller_state = self._caller_state()
            return [NamedState(SNAPSHOT_KEY, engine.snapshot(), now)], None
        states = []
        callers = self._caller_states(engine)
        for p, sub in engine.engines.items():
            sub.caller_state = callers[p]
            states.append(NamedState(state_key(p), sub.snapshot(), now))
        return states, seat.check(set(engine.engines) | partitions)

    def _apply_all(
        self,
        transitions: Sequence[Transition],
        states: list[NamedState],
        told: DeferredTelling,
        check: Check | None = None,
    ) -> tuple[list[tuple[Alert, AlertEvent]], list[Alert]]:
        """Store a batch and the engine's state in one transaction (in the store's thread);
        the changes it made, and the alerts a repeat opened (its alert was resolved by a
        person) that are still unresolved at the end of the batch.

        One transaction reads and writes, so a person's acknowledgement and these changes
        cannot overwrite each other; one per batch, because a transaction's fixed cost is
        most of a change's (ingest/alerts/store.py).
        """
        now_ms = states[0].at_ms if states else _now_ms()
        items = []

        def judge(device_id: str, wall_ms: int) -> int | None:
            # In the store's thread: reads one int of the skew estimates (safe unlocked).
            return self._judged(device_id, wall_ms, _now_ms())

        for t in transitions:
            rule = self._rules.get(t.rule_id)
            device = self._registry.devices.get(t.device_id)
            if rule is None or device is None:
                continue
            areas = area_ids(self._registry.device_path(device.id))
            reach = self._reach(rule, device) if t.action != "clear" else None
            items.append(
                StoreTransition(t, rule.severity, device.kind, areas, now_ms, judge, reach)
            )
        done = self._store.apply_many(items, state=states, announce=told, check=check)
        changes = [(alert, event) for alert, event, _ in filter(None, done)]
        final = {alert.id: alert for alert, _ in changes}
        reopened = [
            final[d[0].id]
            for item, d in zip(items, done, strict=True)
            if d is not None and d[2] and item.transition.action != "open"
        ]
        return changes, [a for a in reopened if a.state is not AlertState.RESOLVED]

    async def run(self) -> None:
        """Tell people of stored changes, in order, until cancelled."""
        while True:
            alert, event = await self._queue.get()
            try:
                await self.announce(alert, event, queued=True)
            finally:
                self._queue.task_done()

    async def announce(self, alert: Alert, event: AlertEvent, *, queued: bool = False) -> None:
        """Tell people of a change: MQTT (grid and escalation levels), live listeners, InfluxDB.

        The MQTT messages go through the alert store's outbox (``announcements``), from which
        the publisher sends them and deletes each once the broker has it: a crash, or the
        broker away for hours, loses none, and nothing here waits for the broker. ``queued``:
        the change's own transaction already wrote them (the engine's changes, escalations,
        the API's ack and resolve: ``announce_stored``); otherwise (a caller without a
        transaction of its own: tools, tests) they are written now, just after the commit.
        """
        self.changes += 1
        zh, en = self._describe(alert, event)
        log.info("%s %s | %s", alert.id, en, zh)
        if self._seat is None:  # a worker's listeners hear every worker's changes: run_follow
            self.feed.publish(Change(alert, event, zh, en))
        if not queued:
            rows = self.announcements([(alert, event)])
            try:
                await asyncio.to_thread(self._store.queue_announcements, rows)
            except Exception:
                # The change itself is committed; only its telling is lost (logged loudly).
                log.exception("could not queue the announcement of %s", alert.id)
        self._outbox.wake()
        self._batcher.add(self._line(alert, event), "alert", own=True)

    async def announce_stored(self, alert: Alert, event: AlertEvent) -> None:
        """``announce`` a change whose own transaction wrote its MQTT messages with
        ``announcements`` (the API's ack and resolve)."""
        await self.announce(alert, event, queued=True)

    def _reach(self, rule: AnyRule, device: AnyDevice) -> Reach:
        """Who a new alert of ``rule`` on ``device`` is told to; the same for the service's
        life (rules and registry are read once), so worked out once per pair."""
        key = (rule.id, device.id)
        found = self._reaches.get(key)
        if found is None:
            found = self._reaches[key] = reach(rule, device, self._registry)
        return found

    def _describe(self, alert: Alert, event: AlertEvent) -> tuple[str, str]:
        rule = self._rules.get(alert.rule_id)
        name, name_zh = (rule.name, rule.name_zh) if rule else (alert.rule_id, alert.rule_id)
        return describe(alert, event, name, name_zh, self._registry)

    def announcements(self, changes: Sequence[tuple[Alert, AlertEvent]]) -> list[tuple[str, bytes]]:
        """The MQTT messages (topic, payload) that tell of ``changes``; in the store's thread,
        inside the changes' transaction. Repeats only every ``renotify_s`` (told.py).

        For callers with a transaction of their own (the API's ack and resolve, tools): the
        told memory is changed at once, so if their transaction then fails, a repeat of that
        alert may go untold for one renotify period. The engine's rounds, its auto-resolves
        and escalations use ``_deferred_telling`` and change it only after the commit.
        """
        telling = self._told.telling()
        rows = self._messages(changes, telling)
        telling.commit()
        return rows

    def _deferred_telling(self) -> DeferredTelling:
        return DeferredTelling(self._told, self._messages)

    def _messages(self, changes: Sequence[ToldChange], telling: Telling) -> list[tuple[str, bytes]]:
        rows: list[tuple[str, bytes]] = []
        now = _now_ms()
        for alert, event in changes:
            if not telling.worth_telling(alert, event, now):
                continue
            zh, en = self._describe(alert, event)
            payload = json.dumps(
                {
                    "alert": alert.model_dump(mode="json"),
                    "event": event.model_dump(mode="json"),
                    "message_zh": zh,
                    "message_en": en,
                },
                ensure_ascii=False,
            ).encode()
            rows += [(topic, payload) for topic in alert.topics]
        return rows

    @staticmethod
    def _line(alert: Alert, event: AlertEvent) -> str:
        tags = {
            "rule": alert.rule_id,
            "device": alert.device_id,
            "severity": alert.severity,
            "action": event.action,
            **{lv.value: a for lv, a in alert.areas.items()},
        }
        value = alert.value
        fields = {
            "alert_id": alert.id,
            "state": alert.state.value,
            "repeat_count": alert.repeat_count,
            "value": value if isinstance(value, float) else None,
            "value_text": value if isinstance(value, str) else None,
            "actor": event.actor,
        }
        return f"{series_key('alert', tags)} {encode_fields(fields)} {event.at_ms}"

    async def run_follow(self) -> None:
        """A worker's live stream: every change any worker stores (the engine's, people's,
        escalations) told to this worker's listeners, in the store's order, until cancelled.
        The browser on worker B sees what worker A raised or someone acknowledged on C."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                if self.feed.listeners == 0:  # nobody listens: skip ahead, read no bodies
                    self._feed_seen = await asyncio.to_thread(self._store.last_event_seq)
                    continue
                last, changes = await asyncio.to_thread(self._store.changes_since, self._feed_seen)
            except Exception:
                log.exception("could not read alert changes for the live stream; trying again")
                continue
            self._feed_seen = last
            for alert, event in changes:
                zh, en = self._describe(alert, event)
                self.feed.publish(Change(alert, event, zh, en))

    async def run_clock(self) -> None:
        """Engine deadlines, escalation and state saves, every second, until cancelled.

        Deadlines wait for the start-up grace: after a restart the broker hands over what it
        queued meanwhile, and a device is not silent just because its backlog is unread.
        """
        saved_ms = _now_ms()
        while True:
            await asyncio.sleep(TICK_S)
            now = _now_ms()
            # Deadlines on how far we have read, not the wall clock (ingest/alerts/readclock.py).
            read_now = self.read_clock.now(now)
            if now >= self._deadlines_from_ms and (due := self.engine.tick(read_now)):
                self.take(due)
            try:
                await self._hear_resolves()
            except Exception:
                log.exception("could not read resolves from the alert store; trying again")
            # A failing store (locked, disk full) is logged and tried again next second: the
            # clock task must not end (through the TaskGroup it would end the service).
            try:
                escalated = (
                    await asyncio.to_thread(self._escalate_due, now) if self._leads() else []
                )
            except Exception:
                log.exception("could not look for alerts to escalate; trying again")
                escalated = []
            for alert, event in escalated:
                await self.announce(alert, event, queued=True)
            # Every store round saves the state; this is for a quiet engine whose ticks
            # changed it without a transition. Through run_store, the one writer of the state,
            # so an older state never overwrites a newer one.
            if now - saved_ms >= self._snapshot_every_ms:
                self._save_wanted = True
                self._to_store_ready.set()
                saved_ms = now

    def _leads(self) -> bool:
        """Whether the escalation clock is this process's: alone, always; a worker, while it
        holds the leader partition (ingest/cluster/seat.py): it runs once in the cluster."""
        return self._seat is None or self._seat.leader()

    def _escalate_due(self, now_ms: int) -> list[tuple[Alert, AlertEvent]]:
        """Escalate every open alert that is due (all of them: no cut-off at the newest N)."""
        out: list[tuple[Alert, AlertEvent]] = []
        seat = self._seat
        check = None if seat is None else seat.check({LEADER_PARTITION})
        for alert in self._store.open_alerts():
            rule = self._rules.get(alert.rule_id)
            after = rule.escalate_after if rule else None
            if not due_for_escalation(alert, after, now_ms):
                continue
            told = self._deferred_telling()
            try:
                out.append(self._store.escalate(alert.id, now_ms, told, check))
                told.commit()
            except InvalidTransition:
                continue  # acknowledged or resolved since it was listed
            except Fenced:
                break  # another worker leads now: the clock is its
            except Exception:
                # Those escalated so far are committed (their messages in the outbox): tell
                # of them; the rest are due again next second.
                log.exception("could not escalate %s; trying again", alert.id)
                break
        return out

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until queued transitions are stored and told; for an orderly stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._stored_all.wait()
                await self._queue.join()

    def save(self) -> None:
        """Persist the engine's state now (at shutdown; every store round also saves it).

        Not when messages or transitions are still unstored (the stop gave up waiting): the
        state of the last stored round is the one that matches the store, and the messages
        after it were not acknowledged, so they come again to redo the rest.
        """
        if not self._stored_all.is_set():
            log.warning("%d alert changes not stored; engine state not saved", len(self._to_store))
            return
        if not isinstance(self.engine, Engine):
            return  # a worker's partitions are saved by each store round, under their lease
        self.engine.caller_state = self._caller_state()
        self._store.save_state(SNAPSHOT_KEY, self.engine.snapshot(), _now_ms())
