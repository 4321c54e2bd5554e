"""What people have been told of each alert: repeats and flapping are told on a schedule.

A river above its warning level repeats with every reading; a phone that buzzes every minute
gets muted. So every change of state is told, a repeat only ``renotify`` after the last word,
and an alert held open by flap suppression is told once that it flaps, then as a repeat
(issue 14 item 8). The store and InfluxDB still record every repeat.

The decision is made inside the change's transaction (its messages are written there, into the
outbox), but what it changes in the memory is applied only once that transaction has
committed (``Telling.commit``): a store round that fails and is retried must tell again what
it could not store (issue 14 review F5). The memory is in memory only: after a restart, the
next repeat of each open alert is told.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rules.alerts import Alert, AlertAction, AlertEvent, AlertState

Change = tuple[Alert, AlertEvent]
Messages = list[tuple[str, bytes]]


class ToldMemory:
    """Per alert, when people were last told of it, and whether its flapping was told."""

    def __init__(self, renotify_ms: int) -> None:
        self.renotify_ms = renotify_ms
        self.last_ms: dict[str, int] = {}
        self.flapping: set[str] = set()

    def forget(self, alert_id: str) -> None:
        """The alert was resolved elsewhere (another process): drop what is kept of it."""
        self.last_ms.pop(alert_id, None)
        self.flapping.discard(alert_id)

    def telling(self) -> Telling:
        """A draft for one transaction's decisions."""
        return Telling(self)


class Telling:
    """One transaction's decisions: read through to the memory, applied by ``commit``."""

    def __init__(self, memory: ToldMemory) -> None:
        self._memory = memory
        self._last_ms: dict[str, int | None] = {}  # None: forgotten (the alert is resolved)
        self._flapping: dict[str, bool] = {}

    def worth_telling(self, alert: Alert, event: AlertEvent, now_ms: int) -> bool:
        """Every change of state; a repeat only ``renotify_ms`` after the last word."""
        aid = alert.id
        memory = self._memory
        last = self._last_ms[aid] if aid in self._last_ms else memory.last_ms.get(aid)
        flapping_told = self._flapping.get(aid, aid in memory.flapping)
        if event.action is AlertAction.FLAPPING and not flapping_told:
            self._flapping[aid] = True  # held open by flap suppression: told once
        elif (
            event.action in (AlertAction.REPEATED, AlertAction.FLAPPING)
            and last is not None
            and now_ms - last < memory.renotify_ms
        ):
            return False
        if alert.state is AlertState.RESOLVED:
            self._last_ms[aid] = None
            self._flapping[aid] = False
        else:
            self._last_ms[aid] = now_ms
        return True

    def commit(self) -> None:
        """The transaction committed: people were told what it decided."""
        memory = self._memory
        for aid, last in self._last_ms.items():
            if last is None:
                memory.last_ms.pop(aid, None)
            else:
                memory.last_ms[aid] = last
        for aid, told in self._flapping.items():
            if told:
                memory.flapping.add(aid)
            else:
                memory.flapping.discard(aid)


class DeferredTelling:
    """The ``announce`` callback for one store call, its decisions applied by ``commit`` once
    the call has returned (committed). Called again (the store redoes a refused batch one
    item at a time), it starts afresh: only the call that committed counts."""

    def __init__(
        self, memory: ToldMemory, messages: Callable[[Sequence[Change], Telling], Messages]
    ) -> None:
        self._memory = memory
        self._messages = messages
        self._telling: Telling | None = None

    def __call__(self, changes: Sequence[Change]) -> Messages:
        self._telling = self._memory.telling()
        return self._messages(changes, self._telling)

    def commit(self) -> None:
        if self._telling is not None:
            self._telling.commit()
