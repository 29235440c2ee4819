"""Helpers for tests that start the node as a separate process (ros2 launch / ros2 run / colcon install).

`shell(command)` runs a command line in bash in its own session (so SIGINT reaches ros2 launch and the node, as
Ctrl-C would); `Client` publishes clouds and collects the node's outputs on its own rclpy context.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)
README = (REPO / 'README.md').read_text()
OUTPUT = '/mpnet_segment/labeled_cloud'
# The README's venv lines, run as written (test_readme_ros, test_supervision).
VENV_SETUP = 'source .venv/bin/activate && export AMENT_PREFIX_PATH=$VIRTUAL_ENV'
LAUNCH = 'ros2 launch mpnet_ros segment.launch.py input_topic:=/points'
RUN = "ros2 run mpnet_ros segment --ros-args -r '~/input:=/points' --params-file config/segment.yaml"
STARTED = 'segmenting '            # the node's last start-up line: it is subscribed and calibrated


def venv_command(line: str) -> str:
    """The README's venv lines for the venv running these tests (the same lines for the repo's own .venv)."""
    assert VENV_SETUP in README and line in README, f'README no longer says {line!r}'
    return VENV_SETUP.replace('.venv', str(PREFIX)) + ' && ' + line


def domain_id() -> int:
    """The ROS domain of this test run: $ROS_DOMAIN_ID when set, else a random one (parallel runs stay apart)."""
    return int(os.environ.get('ROS_DOMAIN_ID') or random.randint(1, 100))


def ros_env(domain: int, log_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a ROS process of the test: its domain on loopback, logs in `log_dir`, the venv on PATH."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_LOG_DIR=str(log_dir), PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0')
    env['PATH'] = os.pathsep.join([str(PREFIX / 'bin'), env.get('PATH', '')])
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)  # let child interpreters set their own library path
    env.update(extra)
    return env


def shell(command: str | list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`command` in `bash -c` (or an argv list as is), in a new session, output (stdout + stderr) collected in the
    background."""
    argv = ['bash', '-c', command] if isinstance(command, str) else list(command)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.lines = []

    def drain():
        for line in proc.stdout:
            proc.lines.append(line)
    proc.drainer = threading.Thread(target=drain, daemon=True)
    proc.drainer.start()
    return proc


def output(proc: subprocess.Popen) -> str:
    return ''.join(proc.lines)


def interrupt(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Ctrl-C for the whole process group (bash, ros2 launch, the node); returns the exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.drainer.join(timeout=5)
    return proc.returncode


def wait_for_output(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    """Wait until `text` appears in the output of `proc` (False on timeout or when `proc` ended without it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in output(proc):
            return True
        if proc.poll() is not None:
            proc.drainer.join(timeout=5)
            return text in output(proc)
        time.sleep(0.1)
    return text in output(proc)


def launched_pid(proc: subprocess.Popen, name: str = 'segment-1') -> int:
    """The pid `ros2 launch` reports for its process `name` ('[INFO] [segment-1]: process started with pid [N]')."""
    match = re.search(rf'\[{re.escape(name)}\]: process started with pid \[(\d+)\]', output(proc))
    assert match, f'no pid of {name} in the launch output:\n{output(proc)}'
    return int(match.group(1))


def session_processes(proc: subprocess.Popen) -> list:
    """Live processes of the session `shell` started `proc` in (what a systemd unit's cgroup would hold)."""
    import psutil

    alive = []
    for each in psutil.process_iter(['pid', 'status']):
        try:
            if os.getsid(each.pid) == proc.pid and each.info['status'] != psutil.STATUS_ZOMBIE:
                alive.append(each)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive


NODE_EXECUTABLE = 'lib/mpnet_ros/segment'


def find_process(proc: subprocess.Popen, *words: str):
    """`proc` or its descendant whose arguments hold `words` in a row (an argument matches a word equal to it or
    ending in '/' + word): ('ros2', 'launch') is the `ros2 launch` process, (NODE_EXECUTABLE,) the node, never the
    `bash -c '... ros2 launch ...'` around them."""
    import psutil

    def matches(arg: str, word: str) -> bool:
        return arg == word or arg.endswith('/' + word)

    for each in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            argv = each.cmdline()
        except psutil.Error:
            continue
        if any(all(matches(arg, word) for arg, word in zip(argv[i:], words)) and i + len(words) <= len(argv)
               for i in range(len(argv))):
            return each
    raise AssertionError(f'no process with arguments {words} under {proc.pid}:\n{output(proc)}')


def gone_within(pid: int, timeout: float) -> float | None:
    """Seconds until process `pid` no longer runs (None when it still runs after `timeout`)."""
    import psutil

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - start
        except psutil.NoSuchProcess:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def stop_session(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Test teardown: end whatever of the session is left (SIGKILL to its group) and wait for `proc`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    for each in session_processes(proc):           # processes that left the group (setsid) but not the session
        with contextlib.suppress(Exception):
            each.kill()
    proc.drainer.join(timeout=5)


class Client:
    """A test node on `domain`: publishes clouds on `input_topic`, collects labelled clouds (and any other topics)."""

    def __init__(self, domain: int, input_topic: str, name: str = 'mpnet_test_client'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import PointCloud2

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.clouds: list = []
        self.node.create_subscription(PointCloud2, OUTPUT, self._keep(self.clouds), 10)
        self.publisher = self.node.create_publisher(PointCloud2, input_topic, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _keep(self, target: list):
        def callback(msg):
            with self.lock:
                target.append(msg)
        return callback

    def subscribe(self, msg_type, topic: str, qos=10) -> list:
        """Start collecting `topic` into the returned list."""
        target: list = []
        self.node.create_subscription(msg_type, topic, self._keep(target), qos)
        return target

    def labelled(self, cloud, timeout: float, proc: subprocess.Popen | None = None, whole: bool = True):
        """Publish `cloud` (again every 2 s: the node may still be loading) until a labelled cloud arrives; with
        `whole`, until one of all its points arrives (on a starved CPU the first frames after the start-up
        calibration can be cropped to the budget until the measured cost follows the frames)."""
        deadline, last_sent = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            with self.lock:
                found = [c for c in self.clouds if not whole or c.width == cloud.width * cloud.height]
                if found:
                    return found[-1]
            if proc is not None and proc.poll() is not None:
                return None                                   # the node (or ros2 launch) is gone
            if self.publisher.get_subscription_count() and time.monotonic() - last_sent > 2.0:
                self.publisher.publish(cloud)
                last_sent = time.monotonic()
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        self.spinner.join(timeout=5)
