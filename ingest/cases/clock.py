"""The cases' clock: every second, each case whose step is past its deadline is supervised
(督办, rules/cases.py ``supervise``) and announced through the outbox.

In a cluster only the leader runs it (``leads``: the holder of the leader partition, as the
alert escalation clock, ingest/alerts/alerting.py), so a case moves up once, not once per
worker; its writes are fenced by ``check`` when it has lost the lead meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ingest.cases.store import Announce, CaseStore, Check
from rules.cases import Case, CaseDeadlines, CaseEvent

log = logging.getLogger(__name__)

TICK_S = 1.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CaseClock:
    """Sweeps overdue cases every ``tick_s`` while ``leads()``; tells ``told`` of each change
    (already in the outbox) and ``wake``s the publisher."""

    def __init__(
        self,
        store: CaseStore,
        deadlines: CaseDeadlines,
        announce: Announce,
        *,
        leads: Callable[[], bool] = lambda: True,
        check: Callable[[], Check | None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
        told: Callable[[Sequence[tuple[Case, CaseEvent]]], Awaitable[None]] | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self._store = store
        self._deadlines = deadlines
        self._announce = announce
        self._leads = leads
        self._check = check
        self._wake = wake
        self._told = told
        self._tick_s = tick_s
        self.supervised = 0  # cases supervised since start (tests, metrics)

    async def sweep(self, now_ms: int | None = None) -> list[tuple[Case, CaseEvent]]:
        """One sweep now (or at ``now_ms``): what was supervised."""
        now = _now_ms() if now_ms is None else now_ms
        done = await asyncio.to_thread(
            self._store.supervise_overdue, now, self._deadlines, self._announce, self._check()
        )
        if done:
            self.supervised += len(done)
            for case, event in done:
                log.info("case %s %s", case.id, event.detail)
            self._wake()
            if self._told is not None:
                await self._told(done)
        return done

    async def run(self) -> None:
        """Sweep every tick until cancelled. A failing store is logged and tried again next
        tick: the clock must not end (through the TaskGroup it would end the service)."""
        while True:
            await asyncio.sleep(self._tick_s)
            if not self._leads():
                continue
            try:
                await self.sweep()
            except Exception:
                log.exception("could not supervise overdue cases; trying again")
