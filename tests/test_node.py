"""The segment node over real DDS: bag playback from another process, fuzz, overload, refusal to start.

The node runs in this process (its own rclpy Context on a private ROS domain, spun in a thread); the Ouster bag
is published by `ros_helpers.py play` in a subprocess with the original stamps. A tiny random-weight MPNet
checkpoint (small_config) drives the torch backend: results are meaningless but the whole path is real.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import (  # noqa: E402
    OUSTER_BAG,
    fuzz_clouds,
    labeled_records,
    read_bag,
    rss_bytes,
    spinning,
    tiny_checkpoint,
    to_rclpy,
    wait_for,
    xyz_cloud,
)
from sensor_msgs.msg import PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from mpnet_ros.cloud_io import parse_cloud  # noqa: E402
from mpnet_ros.pipeline import ScenePipeline, make_segmenter  # noqa: E402
from mpnet_ros.segment_node import SegmentNode  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN_ID = int(os.environ['ROS_DOMAIN_ID'])     # this session's private domain (conftest)
INPUT = '/ouster/points'
OUTPUT = '/mpnet_segment/labeled_cloud'
# ~12k Ouster points on a building front, 8 m x 2 m: about a second per frame on 2 CPU cores, slow enough that the
# overload test's 20 Hz input is >= 10x the processing rate.
CROP_BOX = [-4.0, -10.0, -3.0, 4.0, -8.0, 5.0]
HELPERS = Path(__file__).with_name('ros_helpers.py')


class Listener:
    """Collects the node's outputs (labelled clouds, markers, diagnostics) on its own test node."""

    def __init__(self, context):
        self.node = rclpy.create_node('mpnet_test_listener', context=context)
        self.lock = threading.Lock()
        self.clouds: list[tuple[float, PointCloud2]] = []   # (arrival monotonic time, msg)
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(PointCloud2, OUTPUT, self._on_cloud, reliable)
        self.node.create_subscription(MarkerArray, '/mpnet_segment/instances', self._append(self.markers), reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._append(self.diagnostics), 10)

    def _on_cloud(self, msg):
        with self.lock:
            self.clouds.append((time.monotonic(), msg))

    def _append(self, target):
        def callback(msg):
            with self.lock:
                target.append(msg)
        return callback

    def wait_clouds(self, count: int, timeout: float) -> list[PointCloud2]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.clouds) < count:
            time.sleep(0.05)
        with self.lock:
            return [msg for _, msg in self.clouds]

    def last_diagnostic(self) -> dict[str, str]:
        with self.lock:
            status = self.diagnostics[-1].status[0]
        return {kv.key: kv.value for kv in status.values} | {'level': status.level, 'message': status.message}

    def wait_diagnostic(self, predicate, timeout: float = 30.0) -> dict[str, str]:
        """The first diagnostic (from now on) for which `predicate(values)` holds; the last one on timeout."""
        def matches():
            with self.lock:
                if not self.diagnostics:
                    return False
            return predicate(self.last_diagnostic())
        wait_for(matches, timeout)
        return self.last_diagnostic()

    def reset(self):
        with self.lock:
            self.clouds.clear()
            self.markers.clear()
            self.diagnostics.clear()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp('model') / 'tiny.pt')


@pytest.fixture(scope='module')
def ros(checkpoint):
    """(context, node, listener, executor) with the node spinning in a background thread."""
    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    overrides = [Parameter('model_path', value=str(checkpoint)), Parameter('backend', value='torch'),
                 Parameter('input_topic', value=INPUT),
                 Parameter('crop_box', value=CROP_BOX), Parameter('diagnostics_period', value=0.2),
                 Parameter('warn_throttle_sec', value=2.0),
                 # no block cap: the cap follows measured timings, and this module compares node and library exactly
                 Parameter('processing_budget_ms', value=3_600_000.0)]
    node = SegmentNode(context=context, parameter_overrides=overrides)
    listener = Listener(context)
    with spinning(context, node, listener.node):
        yield context, node, listener


def player(*args: str) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    return subprocess.Popen([sys.executable, str(HELPERS), 'play', str(OUSTER_BAG), INPUT, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_labelled_cloud_for_each_played_frame(ros):
    _context, node, listener = ros
    listener.reset()
    expected = {}
    for _topic, _time, _raw, msg in read_bag(OUSTER_BAG):
        frame = node.pipeline.filter_frame(parse_cloud(msg))
        expected[stamp_ns(msg)] = frame.xyz
    proc = player('--wait-for', OUTPUT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    clouds = listener.wait_clouds(len(expected), timeout=30)
    assert {stamp_ns(c) for c in clouds} == set(expected) and len(expected) == 3, output
    # What the library gives for the same frames (same params, same model, its own backend instance).
    # One pipeline over the frames in order, as the node: instance ids persist across frames (tracking).
    offline = {}
    pipeline = ScenePipeline(node.params, make_segmenter(node.params))
    for _topic, _time, _raw, msg in read_bag(OUSTER_BAG):
        pipeline.add(parse_cloud(msg, node.params.max_points, node.params.drop_zero_points))
        offline[stamp_ns(msg)] = pipeline.process(pipeline.window.snapshot())
    for cloud in clouds:
        xyz = expected[stamp_ns(cloud)]  # same stamp as the played frame
        assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb', 'label', 'instance', 'score']
        assert cloud.header.frame_id == 'os_lidar' and cloud.height == 1 and cloud.width == len(xyz) > 500
        np.testing.assert_array_equal(parse_cloud(cloud).xyz, xyz)
        # Every point carries the library's label, instance and score for it: the node adds nothing, drops nothing.
        records, reference = labeled_records(cloud), offline[stamp_ns(cloud)]
        np.testing.assert_array_equal(records['label'], reference.labels)
        np.testing.assert_array_equal(records['instance'].astype(np.int64),
                                      reference.instances.astype(np.int64) % 2**32)
        np.testing.assert_allclose(records['score'], reference.scores, rtol=1e-6)
    markers = listener.markers[-1].markers
    assert markers[0].action == Marker.DELETEALL
    assert all(np.isfinite([m.pose.position.x, m.scale.x]).all() for m in markers)
    diagnostic = listener.wait_diagnostic(lambda d: int(d['frames_processed']) >= 3)
    assert diagnostic['backend'] == 'torch' and int(diagnostic['frames_processed']) >= 3


def test_shipped_model_over_dds_matches_the_golden_frame(ros):
    """A second node (namespace `shipped`) with the default parameters, i.e. the shipped model, and the golden's crop
    and size filter, on the golden Ouster crop: its labelled cloud matches tests/golden/ouster_8m_bag.npz (made with
    mpnet-bag) point for point."""
    from golden_cases import OUSTER_BOX, OUSTER_MAX_RANGE, golden_path
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message

    from mpnet_model.eval.golden import GoldenReference, compare

    context, _node, listener = ros
    overrides = [Parameter('input_topic', value='/golden/points'), Parameter('max_range', value=OUSTER_MAX_RANGE),
                 Parameter('crop_box', value=OUSTER_BOX), Parameter('min_instance_fraction', value=0.0),
                 Parameter('processing_budget_ms', value=3_600_000.0)]   # the whole crop, whatever the machine's speed
    node = SegmentNode(context=context, namespace='shipped', parameter_overrides=overrides)
    outputs = []
    listener.node.create_subscription(PointCloud2, '/shipped/mpnet_segment/labeled_cloud', outputs.append,
                                      QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
    publisher = listener.node.create_publisher(PointCloud2, '/golden/points', qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert wait_for(lambda: publisher.get_subscription_count() > 0, timeout=20)
        frame = deserialize_message(read_bag(OUSTER_BAG)[0][2], PointCloud2)
        for _attempt in range(5):          # best effort: publish again if this 6 MB scan was lost
            publisher.publish(frame)
            if wait_for(lambda: outputs, timeout=20):
                break
        assert outputs, 'no labelled cloud from the shipped-model node'
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        spinner.join(timeout=5)
    records = labeled_records(outputs[0])
    labels = np.where(records['label'] == 255, -1, records['label'].astype(np.int64))
    instances = records['instance'].astype(np.int64)
    instances[instances == 2**32 - 1] = -1
    report = compare(GoldenReference.load(golden_path('ouster_8m_bag')), labels, instances)
    assert report.ok, report.summary()
    assert len(np.unique(labels)) >= 3


def _accounted(node) -> bool:
    """Every cloud the node took was rejected, segmented, superseded (dropped) or failed: nothing is pending."""
    with node._stats_lock:
        s = node.stats
        return s.received - s.parse_errors == s.processed + s.dropped + s.segment_errors


def test_fuzz_over_dds_node_survives_and_recovers(ros, capfd):
    context, node, listener = ros
    publisher_node = rclpy.create_node('mpnet_test_fuzzer', context=context)
    publisher = publisher_node.create_publisher(PointCloud2, INPUT, 10)
    try:
        assert wait_for(lambda: publisher.get_subscription_count() > 0, timeout=20)
        before = (node.stats.received, node.stats.parse_errors)
        start = time.monotonic()
        rng = np.random.default_rng(7)
        bad = [to_rclpy(cloud) for _, cloud in fuzz_clouds(rng, 300)]
        for msg in bad:
            count = node.stats.received
            publisher.publish(msg)
            wait_for(lambda count=count: node.stats.received > count, timeout=2.0)   # one in flight at a time
        fuzz_seconds = time.monotonic() - start
        received = node.stats.received - before[0]
        rejected = node.stats.parse_errors - before[1]
        assert received >= 290, received                      # delivered (lockstep), none crashed the node
        assert rejected >= 100, rejected                      # most fuzzed clouds are rejected as malformed

        listener.reset()
        inside_crop = np.random.default_rng(0).uniform((0.2, -9.8, 0.0), (1.2, -8.8, 1.0), (3000, 3))
        good = xyz_cloud(inside_crop.astype(np.float32), frame_id='os_lidar', stamp_ns=1_234_000_000_000)
        publisher.publish(to_rclpy(good))
        assert wait_for(lambda: any(stamp_ns(c) == 1_234_000_000_000 for c in listener.wait_clouds(0, 0)), 30)
        assert listener.wait_clouds(1, 0)[-1].width == 3000
        assert wait_for(lambda: _accounted(node), timeout=30)   # every accepted fuzz cloud was handled too
    finally:
        publisher_node.destroy_node()
    warnings = [line for line in capfd.readouterr().err.splitlines() if 'skipped a bad cloud' in line]
    # Rate-limited to one per warn_throttle_sec (2 s) per defect over the fuzzing time, each naming the defect.
    defects = [key for key in node.stats.defects if key.startswith('malformed')]
    assert len(defects) >= 3, node.stats.defects                 # point_step, row_step, truncated, fields, ...
    assert 1 <= len(warnings) <= len(defects) * (fuzz_seconds / 2.0 + 2), (len(warnings), defects, fuzz_seconds)
    assert len(warnings) < rejected                             # the flood was limited
    assert any(word in ' '.join(warnings) for word in ('truncated', 'point_step', 'row_step', 'field', 'points'))


def test_overload_latest_only_bounded_memory(ros):
    _context, node, listener = ros
    listener.reset()
    start_stats = (node.stats.received, node.stats.processed, node.stats.dropped)
    baseline = rss_bytes()
    peak = [baseline]
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.1)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    # Publish at >= 12x the node's measured processing rate (earlier tests processed frames), 20-80 Hz.
    mean_before = node.stats.total_ms / max(node.stats.processed, 1)
    rate = min(80.0, max(20.0, 12_000.0 / max(mean_before, 1.0)))
    proc = player('--rate', f'{rate:.1f}', '--repeat', '1000', '--duration', '10')
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output
    sent = int(output.rsplit('played ', 1)[1].split()[0])
    processed_at_stop = node.stats.processed
    # Events, not sleeps: wait until every cloud the node took is accounted for (processed or superseded).
    assert wait_for(lambda: _accounted(node), timeout=60), node.stats
    stop.set()
    sampler.join()

    received = node.stats.received - start_stats[0]
    processed = node.stats.processed - start_stats[1]
    dropped = node.stats.dropped - start_stats[2]
    mean_ms = node.stats.total_ms / max(node.stats.processed, 1)
    assert processed >= 1 and dropped >= 1 and received == processed + dropped, (sent, received, processed, dropped)
    assert received <= sent
    # Latest-only, no backlog: once input stops, at most the window in progress and the newest one are segmented.
    assert node.stats.processed - processed_at_stop <= 2, (processed_at_stop, node.stats.processed)
    print(f'overload: sent {sent}, received {received}, processed {processed}, dropped {dropped}, '
          f'mean {mean_ms:.0f} ms/frame, RSS growth {(peak[0] - baseline) / 1e6:.0f} MB')
    assert peak[0] - baseline < 1.5e9, (peak[0] - baseline) / 1e6
    # Drops reported (the test's budget is 60 s, so not over budget), as counted.
    total_dropped = node.stats.dropped
    diagnostic = listener.wait_diagnostic(lambda d: int(d['frames_dropped']) == total_dropped)
    assert int(diagnostic['frames_dropped']) == total_dropped and 'dropped' in diagnostic['message']
    assert diagnostic['level'] == DiagnosticStatus.WARN


def test_refuses_to_start_on_bad_model_path(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    missing = tmp_path / 'missing.pt'
    proc = subprocess.run([sys.executable, '-m', 'mpnet_ros.segment_node', '--ros-args', '-p',
                           f'model_path:={missing}'], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'model_path' in proc.stderr and str(missing) in proc.stderr and 'file does not exist' in proc.stderr
