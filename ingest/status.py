"""The periodic status line an operator watches in ``make run``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ingest.intake.ledger import Ledger

log = logging.getLogger("citysense.status")


def status_line(ledger: Ledger, in_flight: int) -> str:
    """One line: stored per measurement, rejected per reason, in flight, balance."""
    stored = " ".join(f"{m}={n}" for m, n in sorted(ledger.written.items())) or "nothing yet"
    rejected = ", ".join(f"{r}={n}" for r, n in sorted(ledger.rejected.items()))
    spool = ""
    if ledger.spooled or ledger.replayed:
        spool = f" | spooled {ledger.spooled}, replayed {sum(ledger.replayed.values())}"
    return (
        f"received {ledger.received} | stored {stored} | "
        f"rejected {sum(ledger.rejected.values())}{f' ({rejected})' if rejected else ''}{spool} | "
        f"in flight {in_flight}"
    )


async def report_status(ledger: Ledger, in_flight: Callable[[], int], interval_s: float) -> None:
    """Log the status line every ``interval_s`` while anything changed; until cancelled."""
    last = ""
    while True:
        await asyncio.sleep(interval_s)
        line = status_line(ledger, in_flight())
        if line != last:
            log.info("%s", line)
            last = line
