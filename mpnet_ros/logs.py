"""Logging for the node (ROS-free parts): a rate limit per specific defect, and the library's Python `logging`
(and Python warnings) forwarded to a ROS logger.

One limit per defect means a flood of one defect cannot hide another: clouds with a bad row_step do not hide
clouds with non-float xyz (both malformed), nor a segmentation failure or a missing transform. Each key
(`warning_key(kind, defect)`, e.g. 'malformed: row_step', 'extent') gets its own `warn_throttle_sec`, and the next
message of a key says how many of that key were suppressed meanwhile.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

# Loggers of this package forwarded to the node's ROS logger; 'py.warnings' carries Python warnings (numpy's
# RuntimeWarnings and the like) once logging.captureWarnings is on, so they never reach stderr unformatted.
FORWARDED_LOGGERS = ('mpnet_model', 'mpnet_ros', 'mpnet-bag', 'py.warnings')


def warning_key(kind: str, defect: str | None = None) -> str:
    """The rate-limit key of a warning: its kind, refined by the specific defect when there is one
    ('malformed', 'row_step' -> 'malformed: row_step')."""
    return kind if not defect or defect == kind else f'{kind}: {defect}'


class KindRateLimiter:
    """`allow(kind)` -> (allowed, suppressed since the last allowed message of that kind)."""

    def __init__(self, period_s: float | Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self._period = period_s if callable(period_s) else (lambda: float(period_s))
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str) -> tuple[bool, int]:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._period():
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False, 0
            self._last[kind] = now
            return True, self._suppressed.pop(kind, 0)


class RateLimitedWarnings:
    """warn(kind, message) on `log` (a callable taking the text), at most once per period per kind."""

    def __init__(self, log: Callable[[str], Any], period_s: float | Callable[[], float],
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self.limiter = KindRateLimiter(period_s, clock)

    def warn(self, kind: str, message: str) -> bool:
        allowed, suppressed = self.limiter.allow(kind)
        if allowed:
            note = f' ({suppressed} more {kind!r} warning(s) suppressed)' if suppressed else ''
            self._log(message + note)
        return allowed


class RosLogHandler(logging.Handler):
    """A `logging` handler writing each record to a ROS logger (rclpy's RcutilsLogger) at the matching level."""

    def __init__(self, ros_logger: Any, level: int = logging.INFO):
        super().__init__(level)
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f'{record.name}: {record.getMessage()}'
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the library
            self.handleError(record)


def forward_library_logs(ros_logger: Any, level: int = logging.INFO) -> Callable[[], None]:
    """Forward the package's Python logging and Python warnings to `ros_logger`; returns the undo function."""
    handler = RosLogHandler(ros_logger, level)
    previous = []
    for name in FORWARDED_LOGGERS:
        logger = logging.getLogger(name)
        previous.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(min(level, logger.level) if logger.level else level)
        logger.propagate = False          # one copy only: the ROS logger already prints to the console
    # Their module loggers must propagate up to these. `launch` (imported by launch_pytest, say) makes every logger
    # created after it non-propagating, so switch propagation on for the package's loggers that exist now.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith(tuple(f'{n}.' for n in FORWARDED_LOGGERS)):
            previous.append((logger, logger.level, logger.propagate))
            logger.propagate = True
    logging.captureWarnings(True)

    def undo() -> None:
        for logger, old_level, old_propagate in previous:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
        logging.captureWarnings(False)
    return undo
