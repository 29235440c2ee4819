"""The README's ROS commands from the venv, run exactly as written: `ros2 launch`, the quoted `ros2 run`, and the
non-zero exit of `ros2 launch` when the node refuses to start.

Each command is checked to appear verbatim in README.md, then run in bash (in its own session, so Ctrl-C is a
real SIGINT to ros2 launch and the node) with the shipped default model; a test client on the same ROS domain
publishes a cloud and waits for the labelled cloud.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('ros2launch', reason='ros2launch is not installed (the wheels in ../shared/wheels)')
pytest.importorskip('ros2run', reason='ros2run is not installed (the wheels in ../shared/wheels)')
from importlib.util import find_spec  # noqa: E402

from ros_helpers import to_rclpy, xyz_cloud  # noqa: E402
from ros_process import (  # noqa: E402
    LAUNCH,
    PREFIX,
    README,
    REPO,
    RUN,
    Client,
    domain_id,
    interrupt,
    output,
    ros_env,
    shell,
    venv_command,
)

pytestmark = pytest.mark.ros
NODE_LIST = 'ros2 node list'
TOPIC_HZ = 'ros2 topic hz /mpnet_segment/labeled_cloud'
DIAGNOSTICS = 'ros2 topic echo /diagnostics --once'
CLI_WHEELS = find_spec('ros2topic') is not None and find_spec('ros2node') is not None
SHARE = PREFIX / 'share' / 'mpnet_ros'
if not (SHARE / 'launch' / 'segment.launch.py').is_file() or not (PREFIX / 'lib' / 'mpnet_ros' / 'segment').exists():
    pytest.skip(f'mpnet_ros is not linked into {PREFIX} (make ament-links)', allow_module_level=True)
if not shutil.which('ros2', path=str(PREFIX / 'bin')):
    pytest.skip(f'no ros2 CLI in {PREFIX}/bin', allow_module_level=True)


@pytest.fixture(scope='module')
def domain():
    return domain_id()


@pytest.fixture
def client(domain):
    client = Client(domain, '/points')
    yield client
    client.close()


def cube_cloud():
    xyz = np.random.default_rng(0).uniform(0, 1, (2000, 3)).astype(np.float32)
    return to_rclpy(xyz_cloud(xyz, frame_id='sensor'))


@pytest.mark.parametrize('line', [LAUNCH, RUN], ids=['ros2 launch', 'ros2 run'])
def test_readme_command_segments_from_the_venv(line, client, domain, tmp_path):
    env = ros_env(domain, tmp_path)
    proc = shell(venv_command(line), env, cwd=REPO)
    try:
        got = client.labelled(cube_cloud(), timeout=120, proc=proc)
        assert got is not None, output(proc)
        assert got.width == 2000 and [f.name for f in got.fields][-3:] == ['label', 'instance', 'score']
        labels = np.frombuffer(bytes(got.data), np.uint8).reshape(-1, got.point_step)[:, 16]
        assert (labels < 13).all(), 'the shipped model labels every point of a dense cube'
        if line == LAUNCH and CLI_WHEELS:
            is_it_running(client, env)
    finally:
        code = interrupt(proc)
    assert code == 0, output(proc)                                # Ctrl-C is a normal end


def is_it_running(client, env):
    """The README's "Is it running?" lines against the running node (with --no-daemon where they take it)."""
    for line in (NODE_LIST, TOPIC_HZ, DIAGNOSTICS):
        assert line in README, f'README no longer says {line!r}'
    for _ in range(3):    # discovery is best effort: a fresh process can miss a busy participant within 3 s
        nodes = subprocess.run(f'{NODE_LIST} --no-daemon --spin-time 3', shell=True, env=env, capture_output=True,
                               text=True, timeout=60)
        if '/mpnet_segment' in nodes.stdout.split():
            break
    assert '/mpnet_segment' in nodes.stdout.split(), nodes.stdout + nodes.stderr
    diagnostics = subprocess.run(f'{DIAGNOSTICS} --no-daemon --spin-time 3', shell=True, env=env, capture_output=True,
                                 text=True, timeout=60)
    assert 'mpnet_segment: segmentation' in diagnostics.stdout and 'frames_processed' in diagnostics.stdout, \
        diagnostics.stdout + diagnostics.stderr
    stop = threading.Event()

    def keep_publishing():                        # output flows while `ros2 topic hz` listens
        cloud = cube_cloud()
        while not stop.is_set():
            client.publisher.publish(cloud)
            time.sleep(0.3)
    feeder = threading.Thread(target=keep_publishing, daemon=True)
    feeder.start()
    try:
        hz = shell(TOPIC_HZ, env, cwd=REPO)
        deadline = time.monotonic() + 45
        while 'average rate' not in output(hz) and time.monotonic() < deadline and hz.poll() is None:
            time.sleep(0.2)
        interrupt(hz)
    finally:
        stop.set()
        feeder.join(timeout=5)
    rates = [float(line.split(':')[1]) for line in output(hz).splitlines() if line.startswith('average rate')]
    assert rates and all(rate > 0 for rate in rates), output(hz)


def test_ros2_launch_exits_nonzero_when_the_node_refuses_to_start(domain, tmp_path):
    missing = tmp_path / 'missing.onnx'
    proc = shell(venv_command(LAUNCH) + f' model_path:={missing}', ros_env(domain, tmp_path), cwd=REPO)
    try:
        proc.wait(timeout=90)
    finally:
        code = interrupt(proc)
    text = output(proc)
    assert code == 1, text
    assert "parameter 'model_path'" in text and str(missing) in text and 'file does not exist' in text
    assert 'mpnet_segment' in text and 'exited with code 1' in text
