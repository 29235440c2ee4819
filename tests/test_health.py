"""/diagnostics levels from the recent window (drops, overruns, rejected clouds per window), without ROS."""
from __future__ import annotations

import pytest
from test_logs import Clock

from mpnet_ros.health import OK, WARN, RecentCounts, status_level


def test_growth_over_the_window_not_since_start():
    clock = Clock()
    recent = RecentCounts(10.0, clock)
    counters = {'dropped': 0, 'processed': 0}
    for second in range(1, 31):                    # 30 s at 10 frames/s in, 1 processed, 9 dropped
        clock.now += 1.0
        counters = {'dropped': 9 * second, 'processed': second}
        window = recent.observe(counters)
    assert window.counts == {'dropped': 90, 'processed': 10} and window.span_s == pytest.approx(10.0)
    assert window.per_second('dropped') == pytest.approx(9.0)
    assert status_level(window, 1000.0, 800.0, '') == (WARN, '9.0 frame(s)/s dropped in the last 10 s (input '
                                                              'faster than processing; latest-only)')
    for _ in range(11):                             # input stopped: the counters stay where they are
        clock.now += 1.0
        window = recent.observe(counters)
    assert window.counts == {'dropped': 0, 'processed': 0}
    assert status_level(window, 1000.0, 800.0, '') == (OK, 'ok')


def test_right_after_start_the_window_is_what_there_is():
    clock = Clock()
    recent = RecentCounts(10.0, clock)
    clock.now += 2.0
    window = recent.observe({'dropped': 4})
    assert window.span_s == pytest.approx(2.0) and window.per_second('dropped') == pytest.approx(2.0)


def test_levels_name_what_happened_recently():
    clock = Clock()
    recent = RecentCounts(lambda: 5.0, clock)
    clock.now += 5.0
    window = recent.observe({'over_budget': 1, 'dropped': 3, 'parse_errors': 2, 'segment_errors': 0})
    level, message = status_level(window, 1000.0, 1450.0, 'skipped a bad cloud: row_step 10 < 12')
    assert level == WARN and message == "1 frame(s) over the 1000 ms budget in the last 5 s (latest 1450 ms)"
    clock.now += 5.0
    window = recent.observe({'over_budget': 1, 'dropped': 3, 'parse_errors': 4, 'segment_errors': 1})
    assert status_level(window, 1000.0, 500.0, 'skipped a bad cloud: row_step 10 < 12') == (
        WARN, '3 cloud(s) or window(s) rejected in the last 5 s; last: skipped a bad cloud: row_step 10 < 12')
