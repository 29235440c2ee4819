"""The node as a robot uses it, over real DDS: runtime parameter changes (applied or refused), parameter files and
overrides validated alike, unknown names warned about, per-kind warning limits, library logs on the ROS logger,
pipeline latency, persistent ids and marker lifetimes, fixed-frame accumulation with injected poses, and a large
frame kept within its budget with /diagnostics reporting the busy worker and memory returned afterwards.

The node runs in this process on its own rclpy context (a tiny random-weight checkpoint on the torch backend);
a listener node on another context talks to it over DDS.
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('mpnet_model.infer.merging')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import rss_bytes, spinning, tiny_checkpoint, to_rclpy, wait_for, xyz_cloud  # noqa: E402
from ros_process import REPO, domain_id, ros_env  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from test_transforms import WALL_X, sensor_pose, wall_in_sensor_frame  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

import mpnet_model.infer.backends.tensorrt_backend  # noqa: E402,F401 - its logger exists before the node starts
from mpnet_model.infer.budget import estimate_load, segmenter_weights  # noqa: E402
from mpnet_ros.cloud_io import parse_cloud  # noqa: E402
from mpnet_ros.health import RecentCounts  # noqa: E402
from mpnet_ros.segment_node import SegmentNode  # noqa: E402
from mpnet_ros.transforms import KnownPoses  # noqa: E402

pytestmark = pytest.mark.ros
INPUT = '/robot_test/points'
PREFIX = '/mpnet_segment'


class Listener:
    """Everything the node publishes, plus a publisher for its input and a parameter client."""

    def __init__(self, context):
        self.node = rclpy.create_node('mpnet_robot_listener', context=context)
        self.lock = threading.Lock()
        self.topics: dict[str, list] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for topic, msg_type in ((f'{PREFIX}/labeled_cloud', PointCloud2), (f'{PREFIX}/instances', MarkerArray),
                                (f'{PREFIX}/debug/pipeline_latency_ms', Float64),
                                ('/diagnostics', DiagnosticArray), ('/rosout', Log)):
            self.topics[topic] = []
            self.node.create_subscription(msg_type, topic, self._keep(self.topics[topic]),
                                          reliable if msg_type is not Log else 100)
        self.publisher = self.node.create_publisher(PointCloud2, INPUT, 10)
        self.parameters = AsyncParameterClient(self.node, 'mpnet_segment')

    def _keep(self, target):
        def callback(msg):
            with self.lock:
                target.append(msg)
        return callback

    def get(self, topic):
        with self.lock:
            return list(self.topics[topic])

    def clear(self):
        with self.lock:
            for messages in self.topics.values():
                messages.clear()

    def wait(self, topic, count=1, timeout=60.0, predicate=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.get(topic) if predicate is None or predicate(m)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return [m for m in self.get(topic) if predicate is None or predicate(m)]

    def set(self, **values):
        """Set parameters on the node through its parameter service; returns the results."""
        future = self.parameters.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        deadline = time.monotonic() + 60
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), 'no answer from the parameter service'
        return future.result().results

    def publish(self, xyz, stamp_ns, frame_id='lidar'):
        self.publisher.publish(to_rclpy(xyz_cloud(np.asarray(xyz, np.float32), frame_id=frame_id, stamp_ns=stamp_ns)))


@pytest.fixture(scope='module')
def robot(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp('robot_model') / 'tiny.pt')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id())
    poses = KnownPoses('map')
    overrides = [Parameter('model_path', value=str(checkpoint)), Parameter('backend', value='torch'),
                 Parameter('input_topic', value=INPUT), Parameter('diagnostics_period', value=0.2),
                 Parameter('processing_budget_ms', value=60_000.0), Parameter('warn_throttle_sec', value=30.0)]
    node = SegmentNode(context=context, parameter_overrides=overrides, transforms=poses)
    listener = Listener(context)
    with spinning(context, node, listener.node):
        deadline = time.monotonic() + 20
        while listener.publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield node, listener, poses


def cube(seed=0, count=2000):
    return np.random.default_rng(seed).uniform(0, 1, (count, 3))


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def labelled(listener, stamp_ns, timeout=60.0):
    found = listener.wait(f'{PREFIX}/labeled_cloud', timeout=timeout, predicate=lambda m: stamp_of(m) == stamp_ns)
    assert found, f'no labelled cloud stamped {stamp_ns}'
    return found[-1]


def test_runtime_changes_are_applied_or_refused(robot):
    node, listener, _ = robot
    cost = node.pipeline.cost
    (ok,) = listener.set(cluster_bandwidth=1.5)
    assert ok.successful, ok.reason
    assert node.params.cluster_bandwidth == 1.5 and node.pipeline.segmenter.bandwidth == 1.5   # rebuilt
    assert node.pipeline.cost is cost and cost.ms_per_block      # same model and device: the measured cost stays
    (refused,) = listener.set(backend='tensorrt')
    assert not refused.successful and "parameter 'backend'='tensorrt'" in refused.reason
    assert node.params.backend == 'torch'
    (out_of_range,) = listener.set(window_frames=0)
    assert not out_of_range.successful and node.pipeline.window is not None
    (window,) = listener.set(window_frames=2)
    assert window.successful and node.params.window_frames == 2
    listener.publish(cube(), 5_000_000_001)
    assert labelled(listener, 5_000_000_001).width == 2000        # the rebuilt pipeline segments
    assert listener.set(window_frames=1, cluster_bandwidth=0.6)[0].successful


def test_persistent_ids_in_cloud_and_markers_with_lifetimes(robot):
    node, listener, _ = robot
    listener.clear()
    clouds, markers = [], []
    for k in range(2):
        stamp = 6_000_000_000 + k
        listener.publish(cube(3, 6000) * 3.0, stamp)
        clouds.append(labelled(listener, stamp))
        markers.append(listener.wait(f'{PREFIX}/instances', count=k + 1)[k])
    ids = []
    for cloud, array in zip(clouds, markers):
        instance = np.frombuffer(bytes(cloud.data), np.uint8).reshape(-1, cloud.point_step)[:, 20:24].copy()
        in_cloud = set(instance.view('<u4').reshape(-1).tolist()) - {0xFFFFFFFF}
        boxes = [m for m in array.markers if m.ns == 'mpnet/boxes']
        assert {m.id for m in boxes} == in_cloud                         # the same ids in both
        assert all(m.lifetime.sec + m.lifetime.nanosec > 0 for m in boxes)
        ids.append(in_cloud)
    assert ids[0] and ids[0] == ids[1], ids                              # the same scene keeps its ids
    colours = {m.id: (m.color.r, m.color.g, m.color.b) for m in markers[0].markers if m.ns == 'mpnet/boxes'}
    assert all(colours[m.id] == (m.color.r, m.color.g, m.color.b) for m in markers[1].markers
               if m.ns == 'mpnet/boxes')                                 # colours follow the id


def test_warning_kinds_are_limited_separately_and_numpy_stays_quiet(robot, capfd):
    node, listener, _ = robot
    capfd.readouterr()
    listener.clear()
    truncated = to_rclpy(xyz_cloud(cube().astype(np.float32)))
    truncated.data = truncated.data[:100]
    garbage = cube(9, 500)
    garbage[::50] = (1e30, -3e38, 1e25)                                 # corrupt coordinates
    for k in range(10):
        listener.publisher.publish(truncated)
        time.sleep(0.02)
        listener.publish(garbage, 7_000_000_000 + k)
        time.sleep(0.02)
    listener.publish(cube(), 7_100_000_000, frame_id='')                 # empty frame_id: fallback, warned
    cloud = labelled(listener, 7_100_000_000)
    time.sleep(0.5)
    errors = capfd.readouterr().err
    assert cloud.header.frame_id == 'sensor'
    assert len(re.findall('skipped a bad cloud', errors)) == 1, errors          # 10 malformed: one warning
    assert len(re.findall('outside the sane extent', errors)) == 1, errors      # 10 corrupt: one warning of its own
    assert len(re.findall('empty header.frame_id', errors)) == 1, errors
    assert not re.search(r'\.py:\d+: \w*Warning', errors), errors              # no raw Python/numpy warnings
    assert node.stats.errors['extent'] >= 5 and node.stats.errors['malformed'] >= 5


def test_two_defects_in_a_row_each_get_their_own_warning(robot, capfd):
    """Malformed clouds of two different defects, alternating: one warning for each defect (not one for both)."""
    node, listener, _ = robot
    capfd.readouterr()
    bad_row_step = to_rclpy(xyz_cloud(cube(4, 100).astype(np.float32)))
    bad_row_step.row_step = 100                                            # < width * point_step
    non_float = to_rclpy(xyz_cloud(cube(5, 100).astype(np.float32)))
    non_float.fields[2].datatype = 6                                       # z as UINT32
    before = node.stats.parse_errors
    for _ in range(4):
        listener.publisher.publish(bad_row_step)
        time.sleep(0.02)
        listener.publisher.publish(non_float)
        time.sleep(0.02)
    assert wait_for(lambda: node.stats.parse_errors - before >= 6, 30)
    time.sleep(0.3)
    errors = capfd.readouterr().err
    assert len(re.findall(r'skipped a bad cloud: row_step 100 < width\*point_step', errors)) == 1, errors
    assert len(re.findall('skipped a bad cloud: non-float xyz', errors)) == 1, errors
    assert node.stats.defects['malformed: row_step'] >= 3 and node.stats.defects['malformed: non_float_xyz'] >= 3


def test_degenerate_cloud_does_not_crop_the_next_good_one(robot):
    """After one valid 500,000-point cloud at a single coordinate (segmented, or refused naming why when predicted
    over the budget), the next good cloud (20,000 points, 121 blocks) is processed whole within the budget; the
    budget is 4x its predicted cost, so an estimate poisoned by the degenerate cloud (its time as the cost of one
    block, what the moving average took in before) would have cropped it to a few blocks."""
    node, listener, _ = robot
    segmenter, cost = node.pipeline.segmenter, node.pipeline.cost
    good = np.random.default_rng(7).uniform((-3, -3, 0), (3, 3, 2), (20_000, 3))
    _, load = estimate_load(good.astype(np.float32), segmenter.block_size, segmenter.stride,
                            segmenter.min_block_points, point_weight=cost.point_weight, **segmenter_weights(segmenter))
    budget = 4 * cost.predict_ms(load)
    assert listener.set(processing_budget_ms=budget)[0].successful
    try:
        cropped, errors = node.stats.cropped, node.stats.segment_errors
        done = node.stats.processed + errors
        listener.clear()
        listener.publish(np.tile([[1.0, 2.0, 0.5]], (500_000, 1)), 10_000_000_000)
        assert wait_for(lambda: node.stats.processed + node.stats.segment_errors > done, 120)
        degenerate_ms = node.stats.last_ms if node.stats.processed + node.stats.segment_errors > done else 0.0
        refused = node.stats.segment_errors > errors and 'alone holds 500,000 points' in node.stats.last_error
        listener.publish(good, 10_000_000_001)
        after = labelled(listener, 10_000_000_001, timeout=120)
        after_ms = node.stats.last_ms
    finally:
        assert listener.set(processing_budget_ms=60_000.0)[0].successful
    print(f'budget {budget:.0f} ms: degenerate cloud ' + ('refused' if refused else f'{degenerate_ms:.0f} ms') +
          f', next good cloud {after.width:,} points in {after_ms:.0f} ms; {cost.ms_per_block:.2f} ms/block')
    assert after.width == 20_000 and node.stats.cropped == cropped
    assert refused or labelled(listener, 10_000_000_000).width == 500_000


def test_zero_stamps_have_no_latency_and_diagnostics_recover(robot):
    """A cloud stamped 0 gets no latency (not 'now minus 0'); once nothing is dropped, rejected or over budget in
    the recent window, /diagnostics is back to OK (a 2 s window here instead of 10 s)."""
    node, listener, _ = robot
    node._recent = RecentCounts(2.0)
    listener.clear()
    listener.publish(cube(), 0)
    labelled(listener, 0)
    time.sleep(2.5)
    listener.clear()
    (diagnostics,) = listener.wait('/diagnostics')[:1]
    values = {kv.key: kv.value for kv in diagnostics.status[0].values}
    assert values['pipeline_latency_ms'] == 'n/a (stamp 0)'
    assert diagnostics.status[0].level == DiagnosticStatus.OK and diagnostics.status[0].message == 'ok', values
    assert int(values['frames_dropped']) + int(values['parse_errors']) > 0   # there were problems, earlier
    assert not listener.get(f'{PREFIX}/debug/pipeline_latency_ms')


def test_library_logs_reach_the_ros_logger(robot):
    _, listener, _ = robot
    logging.getLogger('mpnet_model.infer.backends.tensorrt_backend').info('TensorRT build: test phase 3/7')
    found = listener.wait('/rosout', predicate=lambda m: 'TensorRT build: test phase 3/7' in m.msg, timeout=30)
    assert found and found[0].name == 'mpnet_segment' and found[0].level == Log.INFO


def test_pipeline_latency_is_published(robot):
    node, listener, _ = robot
    listener.clear()
    now = node.get_clock().now().nanoseconds
    listener.publish(cube(), now)
    labelled(listener, now)
    (latency,) = listener.wait(f'{PREFIX}/debug/pipeline_latency_ms')[-1:]
    assert 0.0 < latency.data < 60_000.0


def test_fixed_frame_accumulation_over_dds(robot):
    node, listener, poses = robot
    assert listener.set(fixed_frame='map', window_frames=3)[0].successful
    try:
        rng = np.random.default_rng(0)
        for k in range(3):
            stamp = 8_000_000_000 + k
            poses.add('lidar', stamp, sensor_pose(k))
            listener.publish(wall_in_sensor_frame(sensor_pose(k), rng), stamp)
            time.sleep(0.3)
        cloud = labelled(listener, 8_000_000_002)
        xyz = parse_cloud(cloud).xyz
        assert cloud.header.frame_id == 'map' and len(xyz) == 9000          # three frames in one window
        np.testing.assert_allclose(xyz[:, 0], WALL_X, atol=1e-3)           # the wall stays one plane
    finally:
        assert listener.set(fixed_frame='', window_frames=1)[0].successful


def test_large_frame_is_bounded_reported_busy_and_memory_returns(robot):
    """A valid 2,000,000-point cloud over 60 x 60 x 3 m: cropped to the blocks of a 3 s budget, /diagnostics says
    the worker is busy with it, RSS comes back to within 300 MB of the steady state (measured, printed)."""
    node, listener, _ = robot
    assert listener.set(processing_budget_ms=3000.0)[0].successful
    try:
        for k in range(3):
            listener.publish(cube(k) * 3, 9_000_000_000 + k)
            labelled(listener, 9_000_000_000 + k)
        steady = rss_bytes()
        listener.clear()
        big = np.random.default_rng(1).uniform((-30, -30, 0), (30, 30, 3), (2_000_000, 3))
        sent = time.monotonic()
        listener.publish(big, 9_100_000_000)
        busy = listener.wait('/diagnostics', timeout=60, predicate=lambda m: any(
            kv.key == 'busy' and kv.value == 'true' for kv in m.status[0].values))
        cloud = labelled(listener, 9_100_000_000, timeout=120)
        took = time.monotonic() - sent
        for k in range(3):
            listener.publish(cube(k) * 3, 9_200_000_000 + k)
            labelled(listener, 9_200_000_000 + k)
        after = rss_bytes()
    finally:
        assert listener.set(processing_budget_ms=60_000.0)[0].successful
    assert busy, 'no /diagnostics with busy=true while the large frame was processed'
    values = {kv.key: kv.value for kv in busy[0].status[0].values}
    assert int(values['current_frame_points']) > 0 and float(values['current_elapsed_ms']) >= 0
    assert node.stats.cropped >= 1 and 0 < cloud.width < 2_000_000
    print(f'large frame: {cloud.width:,} of 2,000,000 points kept, {took:.1f} s from publish to result '
          f'(budget 3 s, {node.pipeline.cost.ms_per_block:.1f} ms/block); RSS steady {steady / 1e6:.0f} MB, after '
          f'{after / 1e6:.0f} MB ({(after - steady) / 1e6:+.0f} MB)')
    assert took < 60.0                                   # not the 309 s of an unbounded frame
    assert after - steady < 300e6


# --- parameters from the command line, as `ros2 run` gives them ------------------------------------------------

def run_node(tmp_path, *ros_args, wait_for=None, timeout=120):
    """Start the node with `ros_args`; with `wait_for`, stop it (SIGINT) once that text appeared on stderr."""
    command = [sys.executable, '-m', 'mpnet_ros.segment_node', '--ros-args', *ros_args]
    proc = subprocess.Popen(command, cwd=REPO, env=ros_env(domain_id(), tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if wait_for and wait_for in line or time.monotonic() > deadline:
            proc.send_signal(2)
            break
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode, ''.join(lines) + proc.stdout.read()


def test_params_file_and_override_validated_alike(tmp_path):
    code, text = run_node(tmp_path, '--params-file', 'config/segment.yaml', '-p', 'voxel_size:=abc')
    assert code == 1 and "parameter 'voxel_size'='abc': must be a number" in text, text
    code, text = run_node(tmp_path, '-p', 'backend:=tensorrt')
    assert code == 1 and "parameter 'backend'='tensorrt'" in text and 'CUDA' in text, text


def test_unknown_parameter_is_warned_by_name(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    code, text = run_node(tmp_path, '--params-file', 'config/segment.yaml', '-p', 'voxelsize:=0.1', '-p',
                          f'model_path:={checkpoint}', '-p', 'backend:=torch', wait_for='segmenting')
    assert "unknown parameter 'voxelsize' ignored (did you mean 'voxel_size'?)" in text, text
    assert 'segmenting' in text and code == 0, text
