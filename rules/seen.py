"""Which (``seq``, ``ts``) a device has already sent us: runs instead of a list of pairs.

A redelivery must be recognised however far back it goes: after a crash or a reconnect the
broker sends again every message it has not had a PUBACK for, up to its in-flight window
(20,000 in ``mosquitto.conf``), which can be hundreds of messages of one device. Remembering
each (seq, ts) would make the engine's state, and so its snapshot, grow with that window.

A device counts ``seq`` up by one per message and stamps increasing ``ts``, so what it sent
is a few runs: ``(first seq, last seq, first ts, last ts)``, every seq in between seen once, at
increasing times. An in-order device is one run (plus one per restart, when ``seq`` starts at
1 again at a later ``ts``); a lost or late message splits a run, and a late one that fills the
gap joins the two again. A message is a repeat if a run holds its seq at a time inside the
run's span (exactly the end's time for a run's first or last seq). Bounded: at most
``MAX_RUNS`` runs per device, the one that ended longest ago is forgotten first, so a device
sending seqs at random costs ``MAX_RUNS`` comparisons a message, not memory.

A restart usually starts the new run at a later ts, past the old run's span. Not always: a
device whose clock ran fast and is set right as it restarts counts 1, 2, 3… again at times
inside the old run's span. So a message that continues a run exactly (its next seq, at a later
ts) is new, whatever older run its (seq, ts) falls inside: within one run of a counting device
that never happens to a message already seen (adjacent runs are joined), so a redelivery is
still recognised, of the old runs as of the new.

The one mistake it can make: a message whose seq lies inside a run and whose ts lies strictly
inside that run's span but differs from the one seen, and that continues no run — a device
reusing a seq within a run, which a counting device never does; or the first message after a
restart of a device with its clock set back, when the new count's first messages were lost
(seq 3 before any of 1 and 2): dropped, with the ones after it, until the count or the clock
passes the old run.

Runs are tuples, replaced rather than changed, so a snapshot may share them (``rules.state``).
"""

from __future__ import annotations

# (first seq, last seq, first ts, last ts)
Run = tuple[int, int, int, int]

MAX_RUNS = 64


def is_repeat(runs: list[Run], seq: int, ts: int) -> bool:
    """Whether (seq, ts) was remembered."""
    repeat = False
    for lo, hi, ts_lo, ts_hi in runs:
        if seq == hi + 1 and ts > ts_hi:
            # It continues a run (the next seq, later): new, even inside an older run's span
            # — a device restarted with its clock set back counts again over the old run.
            return False
        if lo <= seq <= hi and ts_lo <= ts <= ts_hi:
            if (seq == lo and ts != ts_lo) or (seq == hi and ts != ts_hi):
                continue
            repeat = True
    return repeat


def remember(runs: list[Run], seq: int, ts: int) -> None:
    """Add (seq, ts), not a repeat (``is_repeat``), extending or joining runs where it fits."""
    after = before = -1  # the run it extends at the end, the run it extends at the start
    for i, (lo, hi, ts_lo, ts_hi) in enumerate(runs):
        if seq == hi + 1 and ts > ts_hi:
            after = i
        elif seq == lo - 1 and ts < ts_lo:
            before = i
    if after >= 0 and before >= 0:
        lo, _, ts_lo, _ = runs[after]
        _, hi, _, ts_hi = runs[before]
        runs[after] = (lo, hi, ts_lo, ts_hi)
        del runs[before]
    elif after >= 0:
        lo, _, ts_lo, _ = runs[after]
        runs[after] = (lo, seq, ts_lo, ts)
    elif before >= 0:
        _, hi, _, ts_hi = runs[before]
        runs[before] = (seq, hi, ts, ts_hi)
    else:
        runs.append((seq, seq, ts, ts))
        if len(runs) > MAX_RUNS:
            del runs[min(range(len(runs)), key=lambda i: runs[i][3])]


def from_pairs(pairs: list[list[int]]) -> list[Run]:
    """Runs from the [seq, ts] pairs of the older snapshot format, oldest first."""
    runs: list[Run] = []
    for seq, ts in pairs:
        if not is_repeat(runs, int(seq), int(ts)):
            remember(runs, int(seq), int(ts))
    return runs
