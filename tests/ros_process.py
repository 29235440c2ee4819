"""Helpers for tests that start the node as a separate process (ros2 launch / ros2 run / colcon install).

`shell(command)` runs a command line in bash in its own session (so SIGINT reaches ros2 launch and the node, as
Ctrl-C would); `Client` publishes clouds and collects the node's outputs on its own rclpy context.
"""
from __future__ import annotations

import os
import random
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


def shell(command: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`command` in `bash -c`, in a new session, output (stdout + stderr) collected in the background."""
    proc = subprocess.Popen(['bash', '-c', command], cwd=cwd, env=env, stdout=subprocess.PIPE,
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

    def labelled(self, cloud, timeout: float, proc: subprocess.Popen | None = None):
        """Publish `cloud` (again every 2 s: the node may still be loading) until a labelled cloud arrives."""
        deadline, last_sent = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            with self.lock:
                if self.clouds:
                    return self.clouds[-1]
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
