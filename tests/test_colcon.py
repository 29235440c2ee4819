"""A real `colcon build` of the package (colcon from PyPI) into a temporary workspace, then the README's launch
line from that workspace's install/ prefix (environment as install/setup.bash sets it), fed the shared Ouster bag
over DDS from a player process: a labelled cloud comes back.

The launch line gets a tiny random-weight checkpoint and a crop box through the launch arguments so a frame takes
about a second on a shared CPU; the build, the installed files, the ament index lookup, the launch file and the
installed executable are all the real ones.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('ros2launch', reason='ros2launch is not installed (the wheels in ../shared/wheels)')
colcon_core = pytest.importorskip('colcon_core', reason='colcon-core is not installed (requirements-dev.txt)')

from ros_helpers import OUSTER_BAG, tiny_checkpoint  # noqa: E402
from ros_process import PREFIX, README, REPO, Client, domain_id, interrupt, output, ros_env, shell  # noqa: E402

pytestmark = pytest.mark.ros
BUILD = 'colcon build --packages-select mpnet_ros && source install/setup.bash'
LAUNCH = 'ros2 launch mpnet_ros segment.launch.py input_topic:=/ouster/points'
# What setup.py installs (the package's sources; no venv, caches or data).
PACKAGE_FILES = ['setup.py', 'setup.cfg', 'package.xml', 'README.md', 'resource', 'launch', 'config', 'scripts',
                 'mpnet_model', 'mpnet_ros']
PARAMS = """/**:
  ros__parameters:
    crop_box: [-4.0, -10.0, -3.0, 4.0, -8.0, 5.0]
    processing_budget_ms: 60000.0
"""
HELPERS = REPO / 'tests' / 'ros_helpers.py'


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    if not shutil.which('colcon', path=str(PREFIX / 'bin')):
        pytest.skip(f'no colcon executable in {PREFIX}/bin')
    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    ws = tmp_path_factory.mktemp('colcon_ws')
    for name in PACKAGE_FILES:
        source, target = REPO / name, ws / 'src' / 'mpnet_ros' / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info'))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return ws


def test_colcon_build_then_launch_from_install_segments_the_ouster_bag(workspace, tmp_path):
    assert BUILD in README and LAUNCH in README
    domain = domain_id()
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS)
    # A robot has /opt/ros/jazzy on AMENT_PREFIX_PATH before it sources the workspace; here the venv is that base.
    env = ros_env(domain, tmp_path / 'log', AMENT_PREFIX_PATH=str(PREFIX))
    command = (f'{BUILD} && ros2 pkg prefix mpnet_ros && python3 -c "import mpnet_ros; print(mpnet_ros.__file__)" && '
               f'{LAUNCH} params_file:={params} model_path:={checkpoint} backend:=torch')
    proc = shell(command, env, cwd=workspace)
    client = Client(domain, '/unused', name='colcon_test_client')
    # the player starts once the node's output is matched here too (else the first labelled clouds can go out before
    # this client has discovered the node)
    deadline = time.monotonic() + 120
    while client.node.count_publishers('/mpnet_segment/labeled_cloud') == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    player = subprocess.Popen([sys.executable, str(HELPERS), 'play', str(OUSTER_BAG), '/ouster/points',
                               '--wait-for', '/mpnet_segment/labeled_cloud', '--wait-subscribers', '120'],
                              env=ros_env(domain, tmp_path / 'log'), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        played, _ = player.communicate(timeout=240)
        with client.lock:
            clouds = list(client.clouds)
    finally:
        if player.poll() is None:
            player.kill()
        code = interrupt(proc)
        client.close()
    text = output(proc)
    install = workspace / 'install' / 'mpnet_ros'
    assert (install / 'lib' / 'mpnet_ros' / 'segment').exists(), text
    assert f'{install}\n' in text, text                        # ament index: the package comes from the install
    assert f'{install}/lib/python3' in text, text              # and its Python modules too (setup.bash's PYTHONPATH)
    assert 'played 3 frames' in played and len(clouds) >= 3, played + text
    cloud = clouds[-1]
    assert cloud.header.frame_id == 'os_lidar' and cloud.width > 500
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb', 'label', 'instance', 'score']
    assert code == 0, text
