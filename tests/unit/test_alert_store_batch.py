"""``AlertStore.apply_many``: a batch of engine transitions in one transaction gives what
``apply`` on each in turn gives, results and stored alerts and history alike; later items see
earlier ones; all or nothing; a batch the database refuses is redone item by item."""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import event

from devices.kinds import Kind, Level
from ingest.alerts.store import AlertStore, StoreTransition, sqlite_url
from ingest.alerts.transaction import WriteTransaction
from rules.alerts import AUTO, Alert, AlertAction, AlertEvent, AlertState, area_ids
from rules.model import Severity
from rules.transition import Action, Reason, Transition
from tests.unit.test_alert_store import REGISTRY

T0 = 1_795_000_000_000
RULES = ("river_over_warning", "river_over_guarantee")
DEVICES = ("r1", "r2", "r3")
PAIRS = [(r, d) for r in RULES for d in DEVICES]

Applied = tuple[Alert, AlertEvent, bool] | None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    s = AlertStore(sqlite_url(tmp_path))
    yield s
    s.close()


def item(
    action: Action,
    ts: int,
    *,
    rule: str = "river_over_warning",
    device: str = "r1",
    reason: Reason | None = None,
    value: float | str | None = 211.7,
) -> StoreTransition:
    if reason is None:
        reason = Reason.CLEARED if action == "clear" else Reason.THRESHOLD
    t = Transition(rule, device, action, ts, value, f"{action} {value}", reason)
    areas = area_ids(REGISTRY.device_path(device))
    return StoreTransition(t, Severity.MAJOR, Kind.RIVER, areas, now_ms=ts + 5)


def apply_one_by_one(store: AlertStore, items: list[StoreTransition]) -> list[Applied]:
    return [
        store.apply(i.transition, severity=i.severity, kind=i.kind, areas=i.areas, now_ms=i.now_ms)
        for i in items
    ]


# -- the same as apply, one by one ----------------------------------------------------------


def random_items(rng: random.Random, n: int) -> list[StoreTransition]:
    """Opens, updates (some flapping) and clears over a few (rule, device), time mostly on."""
    out = []
    for k in range(n):
        rule, device = rng.choice(PAIRS)
        action: Action = rng.choice(["open", "update", "update", "clear"])
        reason = Reason.FLAPPING if action == "update" and rng.random() < 0.2 else None
        ts = T0 + k * 1000 + rng.randrange(-3000, 3000)  # some out of order
        value = rng.choice([round(rng.uniform(1, 4), 2), "overflow", None])
        out.append(item(action, ts, rule=rule, device=device, reason=reason, value=value))
    return out


def seed_some(store: AlertStore) -> None:
    """Alerts already there: one open, one acknowledged, one resolved."""
    for device in DEVICES:
        store.apply_many([item("open", T0 - 10_000, device=device)])
    (acked, resolved) = (store.not_resolved(RULES[0], d) for d in ("r2", "r3"))
    assert acked is not None and resolved is not None
    store.acknowledge(acked.id, "li.na", T0 - 5_000, "on it")
    store.resolve(resolved.id, "li.na", T0 - 4_000)


class Canonical:
    """Alert ids are random: name them by order of first appearance, to compare two stores."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def id(self, alert_id: str) -> str:
        return self.names.setdefault(alert_id, f"#{len(self.names)}")

    def alert(self, a: Alert) -> dict[str, Any]:
        return {**a.model_dump(), "id": self.id(a.id)}

    def event(self, e: AlertEvent) -> dict[str, Any]:
        return {**e.model_dump(), "alert_id": self.id(e.alert_id)}

    def applied(self, r: Applied) -> Any:
        return None if r is None else (self.alert(r[0]), self.event(r[1]), r[2])

    def stored(self, store: AlertStore) -> dict[str, Any]:
        every = store.list(limit=10_000)
        for a in sorted(every, key=lambda a: (a.opened_ms, a.rule_id, a.device_id)):
            self.id(a.id)  # seeded alerts the results never mention
        return {
            self.id(a.id): (self.alert(a), [self.event(e) for e in store.history(a.id)])
            for a in every
        }


def check_same_as_one_by_one(items: list[StoreTransition], cuts: list[int]) -> None:
    one_by_one, batched = AlertStore("sqlite://"), AlertStore("sqlite://")
    try:
        seed_some(one_by_one)
        seed_some(batched)
        expected = apply_one_by_one(one_by_one, items)
        got: list[Applied] = []
        bounds = [0, *sorted(set(cuts)), len(items)]
        for start, end in pairwise(bounds):
            got.extend(batched.apply_many(items[start:end]))
        a, b = Canonical(), Canonical()
        assert [b.applied(r) for r in got] == [a.applied(r) for r in expected]
        assert b.stored(batched) == a.stored(one_by_one)
        assert batched.count_by_state() == one_by_one.count_by_state()
    finally:
        one_by_one.close()
        batched.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
)
def test_batches_give_what_apply_one_by_one_gives(seed: int, n: int, cuts: list[int]) -> None:
    items = random_items(random.Random(seed), n)
    check_same_as_one_by_one(items, [c for c in cuts if c <= n])


def test_a_long_seeded_sequence_in_batches_of_every_size() -> None:
    items = random_items(random.Random(20_260_601), 300)
    rng = random.Random(1)
    check_same_as_one_by_one(items, rng.sample(range(300), 40))


# -- later items see earlier ones -----------------------------------------------------------


def test_open_repeat_flap_clear_and_reopen_of_one_pair_in_one_batch(store: AlertStore) -> None:
    results = store.apply_many(
        [
            item("open", T0, value=2.1),
            item("update", T0 + 1000, value=2.3),
            item("update", T0 + 2000, reason=Reason.FLAPPING),
            item("clear", T0 + 3000),
            item("open", T0 + 4000, value=2.6),
            item("update", T0 + 5000, device="r2"),  # another device: opens
        ]
    )
    done = [r for r in results if r is not None]
    assert len(done) == 6
    (first, opened, c1), (again, repeated, c2), (flap, flapped, c3) = done[:3]
    (gone, resolved, c4), (second, reopened, c5), (other, _, c6) = done[3:]
    assert [c1, c2, c3, c4, c5, c6] == [True, False, False, False, True, True]
    assert again.id == flap.id == gone.id == first.id and again.repeat_count == 1
    assert flap.flapping and flap.repeat_count == 1 and flap.value == 2.3
    assert gone.state is AlertState.RESOLVED and gone.resolved_by == AUTO
    assert gone.resolved_ms == T0 + 3000
    assert second.id != first.id and second.state is AlertState.OPEN and second.value == 2.6
    assert other.device_id == "r2" and other.id not in (first.id, second.id)
    assert first.raised_ms == T0 + 5  # the item's now_ms

    assert store.get(first.id) == gone and store.get(second.id) == second
    assert store.not_resolved("river_over_warning", "r1") == second
    actions = [e.action for e in store.history(first.id)]
    assert actions == [
        AlertAction.OPENED,
        AlertAction.REPEATED,
        AlertAction.FLAPPING,
        AlertAction.RESOLVED,
    ]
    assert store.history(first.id) == [opened, repeated, flapped, resolved]
    assert store.history(second.id) == [reopened]
    assert store.count_by_state() == {"open": 2, "acknowledged": 0, "resolved": 1}


def test_a_batch_carries_on_an_alert_stored_before_it(store: AlertStore) -> None:
    (before,) = store.apply_many([item("open", T0)])
    assert before is not None
    acked, _ = store.acknowledge(before[0].id, "w", T0 + 1)
    results = store.apply_many([item("update", T0 + 2), item("clear", T0 + 3)])
    assert [r[0].id for r in results if r is not None] == [acked.id, acked.id]
    repeated, resolved = (r[0] for r in results if r is not None)
    assert repeated.state is AlertState.ACKNOWLEDGED and repeated.acknowledged_by == "w"
    assert resolved.state is AlertState.RESOLVED and store.get(acked.id) == resolved
    assert len(store.history(acked.id)) == 4


def test_a_batch_is_one_transaction_even_when_it_reopens_a_stored_alert(
    store: AlertStore,
) -> None:
    """Clear an alert stored before the batch and open the next one for the same pair: the
    resolved row is written before the new one, or the unique index would refuse the batch (and
    it would be redone item by item, the same results at the price of a transaction each)."""
    (before,) = store.apply_many([item("open", T0)])
    assert before is not None
    begun: list[object] = []
    event.listen(store._engine, "begin", begun.append)
    results = store.apply_many([item("clear", T0 + 1), item("open", T0 + 2), item("open", T0 + 3)])
    assert len(begun) == 1
    cleared, reopened, repeated = (r for r in results if r is not None)
    assert cleared[0].id == before[0].id and cleared[0].state is AlertState.RESOLVED
    assert reopened[2] and reopened[0].id != before[0].id
    assert not repeated[2] and repeated[0].id == reopened[0].id
    assert store.count_by_state() == {"open": 1, "acknowledged": 0, "resolved": 1}


def test_an_empty_batch_does_nothing(store: AlertStore) -> None:
    assert store.apply_many([]) == []
    assert store.list() == [] and store.count_by_state()["open"] == 0


def test_a_clear_with_nothing_open_is_none_and_the_rest_is_stored(store: AlertStore) -> None:
    results = store.apply_many(
        [
            item("clear", T0, device="r2"),  # never opened
            item("open", T0 + 1),
            item("clear", T0 + 2),
            item("clear", T0 + 3),  # already cleared in this batch
        ]
    )
    assert results[0] is None and results[3] is None
    assert results[1] is not None and results[2] is not None
    assert results[2][0].state is AlertState.RESOLVED and results[2][2] is False
    assert store.count_by_state() == {"open": 0, "acknowledged": 0, "resolved": 1}


def test_apply_is_the_same_as_a_batch_of_one(store: AlertStore) -> None:
    (opened,) = store.apply_many([item("open", T0)])
    again = apply_one_by_one(store, [item("update", T0 + 1)])[0]
    assert opened is not None and again is not None
    assert again[0].id == opened[0].id and again[0].repeat_count == 1 and not again[2]


# -- all or nothing, and the retry ------------------------------------------------------------


def test_a_failing_item_stores_nothing_of_its_batch(store: AlertStore) -> None:
    good = item("open", T0)
    bad = StoreTransition(
        item("open", T0 + 1, device="r2").transition,
        Severity.MAJOR,
        Kind.RIVER,
        {"nowhere": "x"},  # type: ignore[dict-item]  # not a Level: the alert will not validate
        T0,
    )
    with pytest.raises(ValidationError):
        store.apply_many([good, bad])
    assert store.list() == []
    assert store.apply_many([good])[0] is not None  # and the store goes on


def test_a_batch_the_unique_index_refuses_is_redone_item_by_item(
    store: AlertStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on PostgreSQL when another writer opens an alert after the batch read it (here the
    batch's read is made to miss it): the batch rolls back, and each item is applied again."""
    (raced,) = store.apply_many([item("open", T0, device="r2")])
    assert raced is not None
    read = WriteTransaction.read_not_resolved
    missed: list[bool] = []

    def read_missing_r2(tx: Any, pairs: Any) -> None:
        read(tx, pairs)
        if not missed:
            missed.append(True)
            tx._unresolved["river_over_warning", "r2"] = None

    monkeypatch.setattr(WriteTransaction, "read_not_resolved", read_missing_r2)
    results = store.apply_many([item("open", T0 + 1), item("update", T0 + 2, device="r2")])
    assert missed == [True]
    assert results[0] is not None and results[0][2] is True  # r1 opened, once
    assert results[1] is not None and results[1][2] is False  # r2 is now a repeat
    assert results[1][0].id == raced[0].id and results[1][0].repeat_count == 1
    assert [a.device_id for a in store.open_alerts()] == ["r2", "r1"]
    assert len(store.history(raced[0].id)) == 2
    assert len(store.list(device_id="r1")) == 1  # the rolled back attempt left nothing


def test_store_transition_is_a_frozen_value() -> None:
    one = item("open", T0)
    with pytest.raises(AttributeError):
        one.now_ms = 1  # type: ignore[misc]
    assert one == item("open", T0)
    assert set(one.areas) == {Level.GRID, Level.VILLAGE, Level.TOWNSHIP, Level.COUNTY, Level.CITY}
