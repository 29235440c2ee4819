"""Health of the node from recent windows (ROS-free): how many frames were dropped, refused or over budget in the
last seconds, so /diagnostics recovers once a problem stops (cumulative counts never shrink: a WARN from them
would stay for the node's whole life).

`RecentCounts.observe(counters)` takes the node's cumulative counters at each diagnostics period and returns how
much each grew over the last `window_s` seconds (and per second); `status_level` turns that into a level and a
message.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_WINDOW_S = 10.0
OK, WARN = 0, 1          # diagnostic_msgs/DiagnosticStatus levels (OK, WARN), without importing ROS here


@dataclass(frozen=True)
class Recent:
    """Growth of each counter over the last `span_s` seconds (the window, up to one diagnostics period more; less
    right after start)."""
    counts: dict[str, int]
    span_s: float

    def per_second(self, name: str) -> float:
        return self.counts.get(name, 0) / self.span_s if self.span_s > 0 else 0.0


class RecentCounts:
    """Snapshots of cumulative counters; `observe` returns their growth over the last `window_s` seconds."""

    def __init__(self, window_s: float | Callable[[], float] = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self._window = window_s if callable(window_s) else (lambda: float(window_s))
        self._clock = clock
        self._snapshots: deque[tuple[float, dict[str, int]]] = deque([(clock(), {})])   # all counters start at 0

    def observe(self, counters: Mapping[str, int]) -> Recent:
        now = self._clock()
        self._snapshots.append((now, dict(counters)))
        start = now - self._window()
        # Keep the newest snapshot at or before the window's start as its baseline.
        while len(self._snapshots) > 2 and self._snapshots[1][0] <= start:
            self._snapshots.popleft()
        then, old = self._snapshots[0]
        counts = {name: int(value) - int(old.get(name, 0)) for name, value in counters.items()}
        return Recent(counts, now - then)


def status_level(recent: Recent, budget_ms: float, last_ms: float, last_error: str) -> tuple[int, str]:
    """(level, message) from what happened in the recent window (busy-over-budget and 'waiting' are the node's).

    WARN while frames are over budget, dropped (input faster than processing) or rejected in the window; OK once
    the window holds none of them."""
    window = f'in the last {recent.span_s:.0f} s'
    over = recent.counts.get('over_budget', 0)
    if over:
        return WARN, f'{over} frame(s) over the {budget_ms:.0f} ms budget {window} (latest {last_ms:.0f} ms)'
    dropped = recent.counts.get('dropped', 0)
    if dropped:
        return WARN, (f'{recent.per_second("dropped"):.1f} frame(s)/s dropped {window} (input faster than '
                      'processing; latest-only)')
    errors = recent.counts.get('parse_errors', 0) + recent.counts.get('segment_errors', 0)
    if errors:
        return WARN, f'{errors} cloud(s) or window(s) rejected {window}; last: {last_error}'
    return OK, 'ok'
