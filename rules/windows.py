"""Window maths on device timestamps, as pure functions of sorted lists.

A window of length ``W`` ending at ``end`` holds the timestamps ``t`` with ``end - W < t <= end``:
half-open, so two events exactly ``W`` apart are never in the same window. Timestamps are epoch
milliseconds; lists are kept sorted ascending by the callers (``insort``), so late entries land
in their place and count wherever they fall inside the window.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def count_in_window(times: Sequence[int], end: int, window: int) -> int:
    """How many of the sorted ``times`` fall in ``(end - window, end]``."""
    lo = bisect.bisect_right(times, end - window)
    hi = bisect.bisect_right(times, end)
    return hi - lo


def trim_before(times: list[int], end: int, window: int) -> None:
    """Drop, in place, the sorted ``times`` at or before ``end - window``."""
    cut = bisect.bisect_right(times, end - window)
    if cut:
        del times[:cut]


def insert_time(times: list[int], ts: int) -> None:
    """Insert ``ts`` into the sorted ``times`` (after any equal ones)."""
    bisect.insort(times, ts)


def count_drops_below_at(times: Sequence[int], n: int, window: int) -> int | None:
    """When the count of the sorted ``times`` in a sliding window falls below ``n``.

    With no further entries, the window ending at ``τ`` holds fewer than ``n`` of ``times`` once
    the ``n``-th newest has left it, at ``τ = times[-n] + window``. None if there are fewer than
    ``n`` entries (the count is already below ``n``).
    """
    if n <= 0 or len(times) < n:
        return None
    return times[-n] + window


# Points for rates: [ts_ms, value] pairs (lists, so a snapshot is plain JSON), sorted by ts.
# A point is never changed in place (a newer reading replaces it with a new list): snapshots
# share the pairs with the live state (rules.state.encode).
Point = list[float]
# Running least-squares sums over the points: [t0, v0, n, Σt, Σv, Σt², Σtv] with t and v taken
# relative to the origin (t0, v0). Kept in step with the points by add_point and trim_points,
# so a rate costs O(1) per reading; rebased (recomputed) once the origin is a window old.
Fit = list[float]


def fit_of(points: Sequence[Point]) -> Fit:
    """The sums for ``points``, with the first point as origin."""
    if not points:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    fit = [float(points[0][0]), float(points[0][1]), 0.0, 0.0, 0.0, 0.0, 0.0]
    for t, v in points:
        fit_add(fit, t, v, 1)
    return fit


def fit_add(fit: Fit, t: float, v: float, sign: int) -> None:
    """Add (``sign`` 1) or remove (-1) one point's share of the sums."""
    dt = t - fit[0]
    dv = v - fit[1]
    fit[2] += sign
    fit[3] += sign * dt
    fit[4] += sign * dv
    fit[5] += sign * dt * dt
    fit[6] += sign * dt * dv


def fit_rate(fit: Fit, per: int) -> float | None:
    """The least-squares slope from the sums, per ``per`` ms; None if it is not determined."""
    n = fit[2]
    if n < 2:
        return None
    sxx = fit[5] - fit[3] * fit[3] / n
    if sxx <= 1e-9 * max(fit[5], 1.0):
        return None
    return (fit[6] - fit[3] * fit[4] / n) * per / sxx


def trim_points(points: list[Point], end: int, window: int, fit: Fit | None = None) -> None:
    """Drop, in place, the points at or before ``end - window`` (and their share of ``fit``)."""
    start = end - window
    cut = 0
    while cut < len(points) and points[cut][0] <= start:
        if fit is not None:
            fit_add(fit, points[cut][0], points[cut][1], -1)
        cut += 1
    if cut:
        del points[:cut]


def add_point(
    points: list[Point], ts: int, value: float, min_gap: int, cap: int, fit: Fit | None = None
) -> None:
    """Add a reading to the sorted ``points``, thinning so a window holds at most ~``cap``.

    While the newest point is closer than ``min_gap`` to the one before it, a newer reading
    replaces it; once it is ``min_gap`` away it stays and the next reading is appended. So the
    window keeps its newest reading exactly, and the points before it are ``min_gap`` apart.
    A late reading is inserted in its place; the same timestamp twice keeps the first. Beyond
    ``cap`` points the oldest are dropped. ``fit``, if given, is kept in step.
    """
    if points and ts > points[-1][0]:
        if len(points) >= 2 and points[-1][0] - points[-2][0] < min_gap:
            if fit is not None:
                fit_add(fit, points[-1][0], points[-1][1], -1)
            points[-1] = [ts, value]
        else:
            points.append([ts, value])
    else:
        i = bisect.bisect_left([p[0] for p in points], ts)
        if i < len(points) and points[i][0] == ts:
            return
        points.insert(i, [ts, value])
    if fit is not None:
        fit_add(fit, ts, value, 1)
    if len(points) > cap:
        drop = len(points) - cap
        if fit is not None:
            for t, v in points[:drop]:
                fit_add(fit, t, v, -1)
        del points[:drop]


def span(points: Sequence[Point]) -> int:
    """Milliseconds between the oldest and the newest point (0 for fewer than two)."""
    return int(points[-1][0] - points[0][0]) if len(points) >= 2 else 0


def rate_per(points: Sequence[Point], per: int) -> float | None:
    """Least-squares slope of value over time, in value units per ``per`` milliseconds.

    One pass over the points; times and values are taken relative to the first point so the sums
    stay small. None for fewer than two points or all points at one time.
    """
    n = len(points)
    if n < 2:
        return None
    t0, v0 = points[0][0], points[0][1]
    s_t = s_v = s_tt = s_tv = 0.0
    for t, v in points:
        dt = t - t0
        dv = v - v0
        s_t += dt
        s_v += dv
        s_tt += dt * dt
        s_tv += dt * dv
    sxx = s_tt - s_t * s_t / n
    if sxx <= 0:
        return None
    return (s_tv - s_t * s_v / n) * per / sxx
