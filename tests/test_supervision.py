"""Supervised like robot software: the exit codes of `ros2 launch` and `ros2 run` and the stop on SIGTERM, run as
the README says from the venv (real processes, real DDS, the shipped model), plus the contract the sample systemd
unit (docs/mpnet-segment.service) relies on.

systemd itself cannot run here (no init system in this container): the unit test reads the unit file, runs its
ExecStart as systemd would (its arguments split and `$$` unescaped, its Environment= set, in a session of its own
standing in for the unit's cgroup) and stops it as systemd does for KillMode=mixed (KillSignal to the main process,
SIGKILL to what is left after TimeoutStopSec); Restart=on-failure then restarts exactly when the exit is non-zero.

Each test is bounded in time and ends only the processes it started (its own session).
"""
from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('ros2launch', reason='ros2launch is not installed (the wheels in ../shared/wheels)')
pytest.importorskip('ros2run', reason='ros2run is not installed (the wheels in ../shared/wheels)')
pytest.importorskip('psutil')

from ros_helpers import to_rclpy, wait_for, xyz_cloud  # noqa: E402
from ros_process import (  # noqa: E402
    LAUNCH,
    NODE_EXECUTABLE,
    PREFIX,
    README,
    REPO,
    RUN,
    STARTED,
    Client,
    domain_id,
    find_process,
    gone_within,
    launched_pid,
    output,
    ros_env,
    session_processes,
    shell,
    stop_session,
    venv_command,
    wait_for_output,
)

from mpnet_ros.supervision import describe_exit, exit_is_failure, parent_is_ros2_run  # noqa: E402

pytestmark = pytest.mark.ros
UNIT = REPO / 'docs' / 'mpnet-segment.service'
START_TIMEOUT = 120.0      # the node imports torch / onnxruntime and loads the shipped model on a busy machine
GRACE_S = 5.0 + 5.0        # the launch file's sigterm_timeout + sigkill_timeout (its defaults)
if not (PREFIX / 'share' / 'mpnet_ros' / 'launch' / 'segment.launch.py').is_file():
    pytest.skip(f'mpnet_ros is not linked into {PREFIX} (make ament-links)', allow_module_level=True)
if not shutil.which('ros2', path=str(PREFIX / 'bin')):
    pytest.skip(f'no ros2 CLI in {PREFIX}/bin', allow_module_level=True)


# --- the rule, without processes -----------------------------------------------------------------------------------

@pytest.mark.parametrize('code, stopping, failure', [
    (0, False, False), (1, False, True), (1, True, True), (-9, False, True), (-9, True, True),
    (-11, False, True), (-15, False, True), (-15, True, False), (-2, True, False), (None, False, True)])
def test_exit_rule(code, stopping, failure):
    assert exit_is_failure(code, stopping) is failure


def test_exit_descriptions():
    assert describe_exit(1) == 'exited with code 1'
    assert describe_exit(-9) == 'was killed by signal 9 (SIGKILL)'
    assert describe_exit(-11) == 'was killed by signal 11 (SIGSEGV)'


def test_parent_detection_reads_the_command_line():
    assert not parent_is_ros2_run()                             # pytest is not ros2 run
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '/opt/bin/ros2', 'run', 'x'])
    try:
        assert wait_for(lambda: parent_is_ros2_run(proc.pid), 10)
    finally:
        proc.kill()
        proc.wait()


# --- ros2 launch -------------------------------------------------------------------------------------------------

@pytest.fixture
def domain():
    return domain_id()


def start(line: str, domain: int, tmp_path: Path, extra: str = '') -> subprocess.Popen:
    proc = shell(venv_command(line) + extra, ros_env(domain, tmp_path), cwd=REPO)
    if not wait_for_output(proc, STARTED, START_TIMEOUT):
        stop_session(proc)
        pytest.fail(f'the node did not start within {START_TIMEOUT:.0f} s:\n{output(proc)}')
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code of `proc` within `timeout` s (None: still running, the test then fails)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGSEGV], ids=['kill -9', 'SIGSEGV'])
def test_launch_exits_nonzero_when_the_node_dies_of_a_signal(signum, domain, tmp_path):
    proc = start(LAUNCH, domain, tmp_path)
    try:
        os.kill(launched_pid(proc), signum)
        code = finish(proc, 60)
        text = output(proc)
        assert code == 1, text
        assert f'was killed by signal {signum} ({signal.Signals(signum).name})' in text, text
        assert not session_processes(proc), session_processes(proc)      # the launch is down, nothing left
    finally:
        stop_session(proc)


def test_sigterm_to_the_launch_stops_the_node_within_the_grace_period_and_exits_0(domain, tmp_path):
    """SIGTERM to `ros2 launch` alone (what systemd sends to a unit's main process with KillMode=mixed): the node
    is stopped in order (SIGINT), well within sigterm_timeout + sigkill_timeout, and the launch exits 0."""
    proc = start(LAUNCH, domain, tmp_path)
    try:
        node = launched_pid(proc)
        launcher = find_process(proc, 'ros2', 'launch')
        sent = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        took = gone_within(node, GRACE_S + 5.0)
        code = finish(proc, 30)
        text = output(proc)
        print(f'SIGTERM to ros2 launch: node gone after {took} s (grace {GRACE_S:.0f} s), launch exit {code} '
              f'after {time.monotonic() - sent:.1f} s')
        assert took is not None and took < GRACE_S, text
        assert code == 0, text
        assert 'process has finished cleanly' in text and 'SIGTERM: shutting down' in text, text
        assert not session_processes(proc)
    finally:
        stop_session(proc)


def test_sigterm_while_the_node_loads_is_a_clean_stop(domain, tmp_path):
    proc = shell(venv_command(LAUNCH), ros_env(domain, tmp_path), cwd=REPO)
    try:
        assert wait_for_output(proc, 'process started with pid', 60), output(proc)
        time.sleep(1.0)                                     # importing, loading the model or calibrating
        assert STARTED not in output(proc), 'the node started too fast for this test'
        find_process(proc, 'ros2', 'launch').send_signal(signal.SIGTERM)
        code = finish(proc, GRACE_S + 30)
        assert code == 0, output(proc)
        assert not session_processes(proc)
    finally:
        stop_session(proc)


# --- ros2 run ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('signum, expected', [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGKILL, -9)],
                         ids=['SIGTERM', 'SIGINT', 'kill -9'])
def test_ros2_run_passes_the_node_exit_on(signum, expected, domain, tmp_path):
    """`ros2 run` exits with the node's code: 0 after SIGINT / SIGTERM to the node, non-zero when it is killed
    (ros2 run returns -9, the shell's status 247)."""
    proc = start(RUN, domain, tmp_path)
    try:
        node = find_process(proc, NODE_EXECUTABLE)
        node.send_signal(signum)
        code = finish(proc, 30)
        assert code == expected % 256, output(proc)
    finally:
        stop_session(proc)


def test_sigterm_to_ros2_run_leaves_no_orphan(domain, tmp_path):
    """ros2 run has no SIGTERM handler (ros2/ros2cli#895): SIGTERM ends it at once (killed by SIGTERM: status 143,
    which systemd counts as a clean stop). The node, its child, is then told by the kernel (PR_SET_PDEATHSIG) and
    stops cleanly."""
    proc = start(RUN, domain, tmp_path)
    try:
        node = find_process(proc, NODE_EXECUTABLE)
        find_process(proc, 'ros2', 'run').send_signal(signal.SIGTERM)
        took = gone_within(node.pid, 15)
        assert took is not None, output(proc)
        code = finish(proc, 30)
        assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), output(proc)   # bash exec'd ros2 run, or waited
        assert not session_processes(proc)
    finally:
        stop_session(proc)


# --- the sample systemd unit ------------------------------------------------------------------------------------

def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=('=',))
    unit.optionxform = str
    unit.read_string(path.read_text())
    return unit


def unit_environment(service) -> dict[str, str]:
    env = {}
    for line in service.get('Environment', '').splitlines():
        for assignment in shlex.split(line):
            key, _, value = assignment.partition('=')
            env[key] = value
    return env


def test_unit_file_says_what_the_contract_needs():
    service = read_unit(UNIT)['Service']
    assert service['Restart'] == 'on-failure' and service['KillMode'] == 'mixed'
    assert service.get('KillSignal', 'SIGTERM') == 'SIGTERM'
    assert float(service['TimeoutStopSec']) > GRACE_S + 5      # the launch stops the node before systemd kills
    assert 'ros2 launch mpnet_ros segment.launch.py input_topic:=' in service['ExecStart']
    assert 'docs/mpnet-segment.service' in README


def test_unit_stop_is_a_clean_exit_and_leaves_nothing_running(domain, tmp_path):
    """ExecStart as systemd runs it, then `systemctl stop` (KillMode=mixed): exit 0 (Restart=on-failure does not
    restart), before TimeoutStopSec, and nothing of the unit left; a labelled cloud in between."""
    service = read_unit(UNIT)['Service']
    argv = [word.replace('$$', '$') for word in shlex.split(service['ExecStart'])]
    setup = tmp_path / 'setup.bash'
    setup.write_text(f'source {PREFIX}/bin/activate && export AMENT_PREFIX_PATH=$VIRTUAL_ENV\n')
    env = ros_env(domain, tmp_path, **{**unit_environment(service), 'MPNET_SETUP': str(setup),
                                      'MPNET_INPUT_TOPIC': '/unit_test/points', 'ROS_DOMAIN_ID': str(domain)})
    proc = shell(argv, env, cwd=tmp_path)                      # its own session: the unit's cgroup
    client = Client(domain, '/unit_test/points', name='mpnet_unit_client')
    try:
        cloud = to_rclpy(xyz_cloud(np.random.default_rng(0).uniform(0, 1, (2000, 3)).astype(np.float32)))
        assert client.labelled(cloud, timeout=START_TIMEOUT, proc=proc) is not None, output(proc)
        os.kill(proc.pid, getattr(signal, service.get('KillSignal', 'SIGTERM')))   # the main process only
        code = finish(proc, float(service['TimeoutStopSec']))
        assert code == 0, output(proc)
        assert not session_processes(proc), session_processes(proc)
    finally:
        client.close()
        stop_session(proc)
