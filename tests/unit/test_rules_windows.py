"""Window maths as pure functions of timestamps."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from rules.windows import (
    add_point,
    count_drops_below_at,
    count_in_window,
    fit_of,
    fit_rate,
    insert_time,
    rate_per,
    span,
    trim_before,
    trim_points,
)

W = 600_000  # 10 minutes


def test_window_is_half_open_so_events_exactly_a_window_apart_never_share_one() -> None:
    times = [0, W]
    assert count_in_window(times, W, W) == 1  # (0, W] excludes 0
    assert count_in_window(times, W - 1, W) == 1  # (-1, W-1] holds only 0
    assert count_in_window([0, W - 1], W - 1, W) == 2
    assert count_in_window([], 5, W) == 0


def test_trim_and_insert_keep_the_list_sorted_and_inside() -> None:
    times = [0, 100, 200]
    insert_time(times, 150)
    insert_time(times, 50)
    assert times == [0, 50, 100, 150, 200]
    trim_before(times, 100 + W, W)
    assert times == [150, 200]


def test_count_drops_below_when_the_nth_newest_leaves() -> None:
    times = [0, 60_000, 120_000, 180_000]
    at = count_drops_below_at(times, 3, W)
    assert at == 60_000 + W
    assert at is not None
    assert count_in_window(times, at - 1, W) == 3
    assert count_in_window(times, at, W) == 2
    assert count_drops_below_at(times[:2], 3, W) is None


@given(st.lists(st.integers(0, 10 * W), min_size=1, max_size=40), st.integers(1, 6))
def test_drop_time_agrees_with_counting(raw: list[int], n: int) -> None:
    times = sorted(raw)
    at = count_drops_below_at(times, n, W)
    if at is None:
        assert len(times) < n
        return
    # From then on (with no new events) fewer than n remain; just before, n were there.
    assert count_in_window(times, max(at, times[-1]), W) < n
    if at - 1 >= times[-1]:
        assert count_in_window(times, at - 1, W) >= n


def test_rate_is_the_least_squares_slope_per_unit() -> None:
    hour = 3_600_000
    points = [[0, 100.0], [hour / 2, 100.25], [hour, 100.5]]
    rate = rate_per(points, hour)
    assert rate is not None and abs(rate - 0.5) < 1e-12
    # Noise around a line does not move the slope much; one point or one instant gives none.
    noisy = [[0, 100.0], [hour / 2, 100.3], [hour, 100.5]]
    noisy_rate = rate_per(noisy, hour)
    assert noisy_rate is not None and abs(noisy_rate - 0.5) < 1e-12
    assert rate_per(points[:1], hour) is None
    assert rate_per([[5, 1.0], [5, 2.0]], hour) is None
    assert span(points) == hour


def test_points_are_thinned_keeping_the_newest_and_late_ones_inserted() -> None:
    points: list[list[float]] = []
    for t in range(0, 100_001, 1_000):  # every second for 100 s, min gap 10 s
        add_point(points, t, float(t), min_gap=10_000, cap=1000)
    assert points[-1] == [100_000, 100_000.0]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(points[:-1])]
    assert all(g >= 10_000 for g in gaps)
    assert len(points) <= 12
    add_point(points, 55_500, -1.0, min_gap=10_000, cap=1000)
    assert [55_500, -1.0] in points
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    add_point(points, 55_500, -2.0, min_gap=10_000, cap=1000)  # same time twice: first kept
    assert [55_500, -2.0] not in points
    trim_points(points, 100_000, 50_000)
    assert points[0][0] > 50_000
    capped: list[list[float]] = []
    for t in range(10):
        add_point(capped, t * 100, 0.0, min_gap=1, cap=4)
    assert [p[0] for p in capped] == [600, 700, 800, 900]


@given(
    st.lists(
        st.tuples(st.integers(0, 4 * W), st.floats(-5, 5, allow_nan=False)),
        min_size=1,
        max_size=200,
    ),
    st.integers(1, W // 4),
)
def test_running_sums_agree_with_the_direct_slope(
    readings: list[tuple[int, float]], min_gap: int
) -> None:
    points: list[list[float]] = []
    fit = fit_of(points)
    newest = 0
    for ts, value in readings:
        add_point(points, ts, 200.0 + value, min_gap, cap=64, fit=fit)
        newest = max(newest, ts)
        trim_points(points, newest, W, fit)
        if points and points[0][0] - fit[0] > W:
            fit = fit_of(points)
        direct = rate_per(points, 3_600_000)
        running = fit_rate(fit, 3_600_000)
        assert fit[2] == len(points)
        if direct is None or running is None or span(points) < 60_000:
            continue
        assert abs(direct - running) <= 1e-6 * max(1.0, abs(direct))
