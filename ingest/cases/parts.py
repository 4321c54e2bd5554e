"""The cases' parts of a running service, built together: the store (on the alert store's
database), the config, the photos directory, the overdue clock and the alerts' filing hook."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from devices.registry import Registry
from ingest.alerts.store import Opened
from ingest.alerts.transaction import wall_ms
from ingest.cases.announce import case_messages
from ingest.cases.clock import CaseClock
from ingest.cases.config import CaseConfig, load_case_config
from ingest.cases.filing import CaseFiler
from ingest.cases.photos import PhotoStore
from ingest.cases.store import CaseStore, Check
from ingest.cluster.seat import LEADER_PARTITION, Seat
from ingest.settings import Settings
from rules.cases import Case, CaseEvent
from rules.model import RuleSet

PHOTOS_DIR = "photos"


@dataclass
class CaseParts:
    """What ``citysense serve`` runs for cases."""

    store: CaseStore
    config: CaseConfig
    photos: PhotoStore
    clock: CaseClock
    filer: CaseFiler  # the alert store's hook: cases of rules with ``case: auto``
    wake: Callable[[], None]  # the outbox publisher: a step wrote announcements, send now

    def close(self) -> None:
        self.store.close()

    def on_opened(self, rules: RuleSet) -> Opened:
        """The alert store's hook (``AlertStore.on_opened``): alerts of ``case: auto`` rules
        become cases in the transaction that opens them, so a crash loses neither."""
        return lambda conn, opened: self.filer(conn, opened, rules, wall_ms())

    def context(self) -> dict[str, Any]:
        """The API context's fields for cases (ingest/api/context.py)."""
        return {
            "cases": self.store,
            "case_config": self.config,
            "photos": self.photos,
            "wake_outbox": self.wake,
        }


def open_cases(
    settings: Settings,
    registry: Registry,
    url: str,
    seat: Seat | None = None,
    wake: Callable[[], None] = lambda: None,
) -> CaseParts:
    """The parts on the database ``url``: the alert store's, so a case filed from an alert is
    written in the alert's transaction and its announcements go through the same outbox.
    CaseConfigError for a bad ``settings.cases`` file. ``seat``: a cluster's worker, where only
    the leader runs the clock (as the alerts' escalation clock), its writes fenced; ``wake``:
    the outbox publisher."""
    config = load_case_config(settings.cases)

    def leads() -> bool:
        return seat is None or seat.leader()

    def check() -> Check | None:
        return None if seat is None else seat.check({LEADER_PARTITION})

    store = CaseStore(url)

    def announce(changes: Sequence[tuple[Case, CaseEvent]]) -> list[tuple[str, bytes]]:
        return case_messages(changes, registry)

    return CaseParts(
        store=store,
        config=config,
        photos=PhotoStore(settings.data_dir / PHOTOS_DIR, settings.case_photo_max_bytes),
        clock=CaseClock(store, config.deadlines, announce, leads=leads, check=check, wake=wake),
        filer=CaseFiler(config.deadlines, registry),
        wake=wake,
    )
