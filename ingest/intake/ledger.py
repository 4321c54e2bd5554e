"""The accounting identity received = written + dead-lettered + spooled + in flight.

Its place in the delivery guarantee: docs/architecture.md.

Plain integers on the hot path (a Prometheus collector reads them at scrape time); each side of
the identity is counted where it happens, so a leak shows up as an imbalance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Ledger:
    """Where every received message went."""

    received: int = 0
    written: Counter[str] = field(default_factory=Counter)  # points stored, by measurement
    rejected: Counter[str] = field(default_factory=Counter)  # by reason, when decided
    dead_lettered: int = 0  # rows committed to the dead-letter store
    spooled: int = 0  # points this run put in the on-disk spool (durable there)
    replayed: Counter[str] = field(default_factory=Counter)  # spooled points later written

    def add_dead_lettered(self, rows: int) -> None:
        """Count rows the dead-letter store has committed."""
        self.dead_lettered += rows

    @property
    def written_total(self) -> int:
        """Points confirmed by InfluxDB."""
        return sum(self.written.values())

    def balances(self, in_flight: int) -> bool:
        """True when every received message is accounted for."""
        return self.received == self.written_total + self.dead_lettered + self.spooled + in_flight

    def summary(self, in_flight: int) -> dict[str, object]:
        """The ledger as plain data, for logs, the CLI and tests."""
        return {
            "received": self.received,
            "written": dict(sorted(self.written.items())),
            "written_total": self.written_total,
            "rejected": dict(sorted(self.rejected.items())),
            "dead_lettered": self.dead_lettered,
            "spooled": self.spooled,
            "replayed": sum(self.replayed.values()),
            "in_flight": in_flight,
            "balanced": self.balances(in_flight),
        }
