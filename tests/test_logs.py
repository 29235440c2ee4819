"""Per-kind warning limits and the library's logging forwarded to a (ROS) logger, without ROS."""
from __future__ import annotations

import logging
import warnings

from mpnet_ros.logs import KindRateLimiter, RateLimitedWarnings, forward_library_logs, warning_key


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_each_kind_has_its_own_limit_and_reports_what_it_suppressed():
    clock, out = Clock(), []
    limited = RateLimitedWarnings(out.append, 5.0, clock)
    assert limited.warn('malformed', 'bad 1') and limited.warn('extent', 'far 1')   # a second kind is not hidden
    assert not limited.warn('malformed', 'bad 2') and not limited.warn('malformed', 'bad 3')
    clock.now = 5.0
    assert limited.warn('malformed', 'bad 4')
    assert out == ['bad 1', 'far 1', "bad 4 (2 more 'malformed' warning(s) suppressed)"]


def test_defects_of_one_kind_are_limited_separately():
    clock, out = Clock(), []
    limited = RateLimitedWarnings(out.append, 5.0, clock)
    row_step, non_float = warning_key('malformed', 'row_step'), warning_key('malformed', 'non_float_xyz')
    assert (row_step, non_float) == ('malformed: row_step', 'malformed: non_float_xyz')
    assert warning_key('extent', 'extent') == warning_key('extent') == 'extent'
    for k in range(3):                                  # alternating defects: each is warned about once
        limited.warn(row_step, f'row_step {k}')
        limited.warn(non_float, f'non-float {k}')
    clock.now = 6.0
    limited.warn(row_step, 'row_step 3')
    assert out == ['row_step 0', 'non-float 0', "row_step 3 (2 more 'malformed: row_step' warning(s) suppressed)"]


def test_period_is_read_at_each_call():
    clock, period = Clock(), [10.0]
    limiter = KindRateLimiter(lambda: period[0], clock)
    assert limiter.allow('k')[0] and not limiter.allow('k')[0]
    period[0] = 0.0                                     # a runtime change of warn_throttle_sec applies at once
    assert limiter.allow('k') == (True, 1)


class FakeRosLogger:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(('info', text))

    def warning(self, text):
        self.lines.append(('warning', text))

    def error(self, text):
        self.lines.append(('error', text))

    def debug(self, text):
        self.lines.append(('debug', text))


def test_library_logging_and_warnings_are_forwarded_then_released():
    ros = FakeRosLogger()
    module_logger = logging.getLogger('mpnet_model.infer.some_module')
    undo = forward_library_logs(ros)
    try:
        module_logger.info('engine build: 40%')
        logging.getLogger('mpnet_model').error('engine broken')
        warnings.warn('invalid value encountered in cast', RuntimeWarning, stacklevel=1)
    finally:
        undo()
    module_logger.info('after undo')
    assert ('info', 'mpnet_model.infer.some_module: engine build: 40%') in ros.lines
    assert ('error', 'mpnet_model: engine broken') in ros.lines
    assert any(level == 'warning' and 'RuntimeWarning: invalid value encountered in cast' in text
               for level, text in ros.lines)
    assert not any('after undo' in text for _, text in ros.lines)
