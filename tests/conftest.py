"""Suite-wide test settings: one torch thread, a private ROS domain per session, and no silently skipped layers.

* ROS: every session claims a free ROS_DOMAIN_ID in 31..101 (a lock file under the temp folder keeps two
  concurrent sessions on one machine apart; MPNET_TEST_ROS_DOMAIN_ID forces one) and sets
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, before any test imports rclpy; child processes inherit both.
* Shared sample data (MPNET_SHARED, default ../shared beside the repository; MPNET_SHARED_DATA, default
  $MPNET_SHARED/data) and the launch wheels (shared/wheels, installed by `make venv`) are required: without them
  the session stops with a message naming what is missing, instead of turning whole layers into skips.
  MPNET_ALLOW_MISSING_SHARED=1 allows the skips (e.g. a machine without the shared folder).
"""
from __future__ import annotations

import importlib.util
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault('MPNET_SHARED', str(REPO.parent / 'shared'))
os.environ.setdefault('MPNET_SHARED_DATA', str(Path(os.environ['MPNET_SHARED']) / 'data'))
REQUIRED_MODULES = ('rclpy', 'sensor_msgs_py', 'launch_ros', 'launch_pytest', 'launch_testing')
_DOMAIN_LOCK = None          # the open, locked file that holds this session's domain id


def claim_ros_domain(low: int = 31, high: int = 101) -> int:
    """A ROS domain id no other test session on this machine holds (kept until this process exits)."""
    global _DOMAIN_LOCK
    import fcntl

    forced = os.environ.get('MPNET_TEST_ROS_DOMAIN_ID')
    if forced:
        return int(forced)
    folder = Path(tempfile.gettempdir()) / 'mpnet_ros_test_domains'
    folder.mkdir(exist_ok=True)
    candidates = list(range(low, high + 1))
    random.Random().shuffle(candidates)
    for domain in candidates:
        handle = open(folder / f'{domain}.lock', 'w')  # noqa: SIM115 - held open for the whole session
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _DOMAIN_LOCK = handle
        return domain
    raise RuntimeError(f'no free ROS domain id in {low}..{high} (all locked under {folder})')


os.environ['ROS_DOMAIN_ID'] = str(claim_ros_domain())
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'


def missing_layers() -> list[str]:
    """What the suite needs but this machine lacks (empty when complete)."""
    missing = []
    data = Path(os.environ['MPNET_SHARED_DATA'])
    if not data.is_dir():
        missing.append(f'the shared sample data {data} (set MPNET_SHARED or MPNET_SHARED_DATA)')
    absent = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        missing.append(f'the modules {absent} (make venv installs them from {os.environ["MPNET_SHARED"]}/wheels '
                       'and requirements-dev.txt)')
    return missing


def pytest_configure(config):
    missing = missing_layers()
    if missing and os.environ.get('MPNET_ALLOW_MISSING_SHARED') != '1':
        raise pytest.UsageError('the test suite needs ' + '; '.join(missing) + '. Set MPNET_ALLOW_MISSING_SHARED=1 '
                                'to run anyway with those tests skipped.')


def pytest_report_header(config):
    return f'ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]} (LOCALHOST discovery), data {os.environ["MPNET_SHARED_DATA"]}'


@pytest.fixture(autouse=True, scope='module')
def single_torch_thread():
    """The test machines have 2 shared cores; one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
