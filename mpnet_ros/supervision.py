"""Supervised like robot software: the exit-code contract of the node and of its launch file, and the signal
plumbing behind it (what systemd, a robot's process supervisor or CI rely on).

The contract (README "On a robot"):

* the node (`ros2 run mpnet_ros segment`, or the process `ros2 launch` starts) exits 0 after SIGINT or SIGTERM,
  at any time, also while it loads its model; non-zero when it refuses to start (1), raises an uncaught
  exception (1), or dies of a signal (SIGKILL, SIGSEGV, an OOM kill: -N to its parent);
* `ros2 launch mpnet_ros segment.launch.py` exits non-zero (1) whenever the node exits non-zero or dies of a
  signal, and 0 after Ctrl-C, SIGINT or SIGTERM to the launch (the node is then stopped in order: SIGINT, after
  `sigterm_timeout` s SIGTERM, after `sigkill_timeout` s more SIGKILL; a node that had to be SIGKILLed makes it 1).

`exit_is_failure` is that rule for the launch file's OnProcessExit handler; `route_sigterm_to_shutdown` gives
launch 3.4 the SIGTERM handling it lacks (ros2/launch#666: launch installs no SIGTERM handler, so SIGTERM killed
`ros2 launch` at once, exit 143, and left the node running, re-parented to PID 1); `stop_with_parent` is the
node's safety net for a launch that is killed outright (kill -9): the kernel then sends the node SIGTERM.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_WITH_PARENT_ENV = 'MPNET_STOP_WITH_PARENT'   # set by the launch file for the node it starts
_PR_SET_PDEATHSIG = 1                             # <linux/prctl.h>


def describe_exit(returncode: int | None) -> str:
    """'exited with code 1' / 'was killed by signal 9 (SIGKILL)' (a negative code: death by that signal)."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = 'unknown signal'
        return f'was killed by signal {-returncode} ({name})'
    return f'exited with code {returncode}'


def exit_is_failure(returncode: int | None, stopping: bool) -> bool:
    """Whether a supervised process's exit is a failure: any non-zero code or death by a signal, except death by
    SIGINT / SIGTERM while the supervisor is stopping it (what it asked for)."""
    if returncode == 0:
        return False
    if returncode is not None and returncode < 0 and -returncode in STOP_SIGNALS and stopping:
        return False
    return True


def stop_on_sigterm_like_sigint() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does: one clean-stop path for both, also
    before rclpy is initialised (rclpy's own handlers, installed by rclpy.init, chain to this one)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def ignore_stop_signals() -> None:
    """While stopping: a second Ctrl-C / SIGTERM must not interrupt the cleanup (SIGKILL still ends it)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def parent_is_ros2_run(ppid: int | None = None) -> bool:
    """Whether the parent process is `ros2 run` (a wrapper that only waits for us)."""
    try:
        argv = Path(f'/proc/{ppid or os.getppid()}/cmdline').read_bytes().split(b'\0')
    except OSError:
        return False
    return any(Path(os.fsdecode(word)).name == 'ros2' and following == b'run'
               for word, following in zip(argv, argv[1:]))


def stop_with_parent(signum: int = signal.SIGTERM, environ: dict[str, str] | None = None) -> bool:
    """When $MPNET_STOP_WITH_PARENT is 1 (the launch file sets it) or the parent is `ros2 run`, ask the kernel to
    send `signum` to this process when its parent dies (Linux PR_SET_PDEATHSIG): a `ros2 launch` killed outright,
    or a `ros2 run` ended by SIGTERM (it has no handler for it, ros2/ros2cli#895), leaves no orphan. True when
    set. Not otherwise: a node started from a shell that exits (nohup) must keep running."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith('linux') or (environ.get(STOP_WITH_PARENT_ENV) != '1'
                                                and not parent_is_ros2_run()):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:          # the parent died before the request: nobody is left to stop us
        os.kill(os.getpid(), signum)
    return True


def route_sigterm_to_shutdown(context: Any, log: Callable[[str], Any]) -> bool:
    """Inside a running `ros2 launch` (from an OpaqueFunction, main thread): make SIGTERM start the same orderly
    shutdown as a `Shutdown` event (SIGINT to each process, then SIGTERM / SIGKILL after their timeouts), exit 0.

    launch 3.4's signal manager (`AsyncSafeSignalManager`, around the run loop) dispatches signals that reach
    Python's wakeup fd to its handlers; its SIGTERM handler cancels the run (exit 1, processes orphaned), and no
    Python-level SIGTERM handler is installed, so the signal never even gets there. This replaces the manager's
    SIGTERM handler (its public `handle`) and installs a no-op Python handler so the signal reaches it. False (and
    launch's own behaviour kept) when the manager cannot be found (another launch version)."""
    from launch.events import Shutdown
    from launch.utilities.signal_management import AsyncSafeSignalManager

    manager = getattr(AsyncSafeSignalManager, '_AsyncSafeSignalManager__current', None)
    if manager is None or threading.current_thread() is not threading.main_thread():
        log('SIGTERM handling left to launch (no signal manager found): SIGTERM may leave processes running')
        return False

    def on_sigterm(signum: int) -> None:
        if context.is_shutdown:
            log('SIGTERM again: the shutdown is already under way')
            return
        log('SIGTERM: shutting down as for Ctrl-C (processes get SIGINT, then SIGTERM and SIGKILL after their '
            'timeouts)')
        context.emit_event_sync(Shutdown(reason='SIGTERM', due_to_sigint=False))

    manager.handle(signal.SIGTERM, on_sigterm)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: None)    # the wakeup fd is written for Python handlers
    return True
