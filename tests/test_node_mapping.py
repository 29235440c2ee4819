"""The segment node in mapping mode over real DDS: a synthetic sensor drives down a corridor, its poses injected
(`KnownPoses`) or broadcast on /tf (real tf2_ros in this process); `~/map_cloud` grows, then stays within the bound;
a frame without a transform is skipped with a warning and leaves the map unchanged; `~/save_map` writes a map that
loads back. A tiny random-weight checkpoint drives the torch backend (labels meaningless, the path real)."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_helpers import labeled_records, spinning, tiny_checkpoint, to_rclpy, wait_for, xyz_cloud  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from mpnet_model.mapping import MapConfig, SemanticMapper  # noqa: E402
from mpnet_ros.accumulate import transform_matrix  # noqa: E402
from mpnet_ros.segment_node import SegmentNode  # noqa: E402
from mpnet_ros.transforms import KnownPoses  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN_ID = int(os.environ['ROS_DOMAIN_ID'])
STAMP0 = 2_000_000_000_000
MAX_VOXELS = 6000


def corridor(rng) -> np.ndarray:
    """A 40 m corridor in the map frame: floor, two walls (y = +-1.2 m), boxes along the left wall."""
    floor = np.stack([rng.uniform(0, 40, 60000), rng.uniform(-1.2, 1.2, 60000), np.zeros(60000)], 1)
    walls = np.stack([rng.uniform(0, 40, 60000), np.repeat([-1.2, 1.2], 30000), rng.uniform(0, 2.5, 60000)], 1)
    boxes = np.stack([rng.uniform(0, 40, 20000), rng.uniform(0.6, 1.2, 20000), rng.uniform(0, 0.6, 20000)], 1)
    boxes = boxes[(boxes[:, 0] % 4) < 0.6]
    return np.concatenate([floor, walls, boxes]).astype(np.float32)


def pose(k: int) -> np.ndarray:
    """The sensor drives along x, 0.4 m a frame, 0.5 m high, turning slightly."""
    yaw = 0.05 * np.sin(k / 3)
    return transform_matrix((2.0 + 0.4 * k, 0.0, 0.5), (0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)))


def frame_points(scene: np.ndarray, k: int) -> np.ndarray:
    """Scene points within 3 m of the sensor, in the sensor frame."""
    world_from_sensor = pose(k)
    near = scene[np.hypot(*(scene[:, :2] - world_from_sensor[:2, 3]).T) < 3.0]
    inverse = np.linalg.inv(world_from_sensor)
    return (near @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.float32)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp('model') / 'tiny.pt')


class Maps:
    """The node's ~/labeled_cloud and ~/map_cloud, received on a test node."""

    def __init__(self, context, namespace: str):
        self.node = rclpy.create_node(f'mpnet_map_listener_{namespace.strip("/") or "root"}', context=context)
        self.lock = threading.Lock()
        self.clouds: list[PointCloud2] = []
        self.maps: list[PointCloud2] = []
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(PointCloud2, f'{namespace}/mpnet_segment/labeled_cloud',
                                      self._append(self.clouds), reliable)
        self.node.create_subscription(PointCloud2, f'{namespace}/mpnet_segment/map_cloud',
                                      self._append(self.maps), latched)
        self.publisher = self.node.create_publisher(PointCloud2, '/lidar/points', qos_profile_sensor_data)

    def _append(self, target):
        def callback(msg):
            with self.lock:
                target.append(msg)
        return callback

    def send(self, xyz: np.ndarray, stamp_ns: int, expect_reply: bool = True, timeout: float = 60.0) -> bool:
        """Publish a frame; with expect_reply wait for its labelled cloud (resent up to 3 times: best effort)."""
        wait_for(lambda: self.publisher.get_subscription_count() > 0, 20.0)
        before = len(self.clouds)
        for _ in range(3):
            self.publisher.publish(to_rclpy(xyz_cloud(xyz, frame_id='lidar', stamp_ns=stamp_ns)))
            if not expect_reply:
                return True
            if wait_for(lambda: any(_stamp(c) == stamp_ns for c in self.clouds[before:]), timeout / 3):
                return True
        return False


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def overrides(checkpoint, tmp_path, **extra):
    values = {'model_path': str(checkpoint), 'backend': 'torch', 'input_topic': '/lidar/points',
              'fixed_frame': 'map', 'mapping': True, 'map_voxel_size': 0.1, 'map_radius': 6.0,
              'map_max_voxels': MAX_VOXELS, 'map_publish_rate': 100.0, 'processing_budget_ms': 3_600_000.0,
              'warn_throttle_sec': 0.0, 'map_save_path': str(tmp_path / 'corridor.npz'), **extra}
    return [Parameter(name, value=value) for name, value in values.items()]


def test_map_grows_then_stays_bounded_and_a_missing_pose_changes_nothing(checkpoint, tmp_path, capfd):
    scene = corridor(np.random.default_rng(0))
    poses = KnownPoses('map')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = SegmentNode(context=context, parameter_overrides=overrides(checkpoint, tmp_path), transforms=poses)
    maps = Maps(context, '')
    with spinning(context, node, maps.node):
        sizes = []
        for k in range(16):
            poses.add('lidar', STAMP0 + k, pose(k))
            assert maps.send(frame_points(scene, k), STAMP0 + k), f'no labelled cloud for frame {k}'
            assert wait_for(lambda k=k: maps.maps and _stamp(maps.maps[-1]) == STAMP0 + k, 10.0)
            with maps.lock:
                sizes.append(maps.maps[-1].width)
        # grows while the sensor sees new corridor, then the region around the sensor bounds it
        assert sizes[3] > sizes[0] and max(sizes) <= MAX_VOXELS
        assert sizes[-1] >= 0.9 * MAX_VOXELS and len(node.pipeline.mapper) == MAX_VOXELS   # at the bound
        records = labeled_records(maps.maps[-1])
        xyz = np.stack([records['x'], records['y'], records['z']], 1)
        assert maps.maps[-1].header.frame_id == 'map' and maps.clouds[-1].header.frame_id == 'map'
        assert np.abs(xyz[:, 1]).max() < 1.3 and xyz[:, 2].min() > -0.1  # map-frame corridor, not sensor frame
        assert np.hypot(xyz[:, 0] - pose(15)[0, 3], xyz[:, 1]).max() <= 6.0 + 0.1       # the radius around it
        assert xyz[:, 0].min() > pose(15)[0, 3] - 6.0 and xyz[:, 0].min() > pose(0)[0, 3]  # the oldest went
        assert (records['label'] < 13).all()                          # every published voxel is segmented
        # the labelled cloud of the last frame: its points in the map frame, labels from the map
        last = labeled_records(maps.clouds[-1])
        assert len(last) == len(frame_points(scene, 15)) and (last['label'] < 13).mean() > 0.95
        # a frame whose pose is unknown: skipped with a warning, the map unchanged
        mapper = node.pipeline.mapper
        keys, probs = mapper.voxels.table.keys.copy(), mapper.voxels['probs'].copy()
        frames_before, received = mapper.frame, len(maps.clouds)
        capfd.readouterr()
        maps.send(frame_points(scene, 3), STAMP0 + 999, expect_reply=False)
        assert wait_for(lambda: node.stats.parse_errors >= 1, 20.0)
        time.sleep(0.5)
        assert "no pose of 'lidar' in 'map'" in capfd.readouterr().err
        assert mapper.frame == frames_before and len(maps.clouds) == received
        np.testing.assert_array_equal(mapper.voxels.table.keys, keys)
        np.testing.assert_array_equal(mapper.voxels['probs'], probs)
        # ~/save_map writes the map; it loads back with the same voxels
        from std_srvs.srv import Trigger

        client = maps.node.create_client(Trigger, '/mpnet_segment/save_map')
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 20.0)
        assert future.result().success, future.result().message
        assert f'{len(mapper):,} voxels' in future.result().message
        loaded = SemanticMapper(mapper.segmenter, MapConfig(voxel_size=0.1, radius=6.0))
        loaded.load(tmp_path / 'corridor.npz')
        np.testing.assert_array_equal(loaded.voxels.table.keys, keys)


def test_map_start_from_a_file_and_a_bad_file_refuses_to_start(checkpoint, tmp_path):
    bad = tmp_path / 'bad.ply'
    bad.write_bytes(b'ply\nformat binary_little_endian 1.0\nend_header\n')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    try:
        with pytest.raises(ValueError, match=r'bad.ply: a PLY file, but not a mpnet-semantic-map'):
            SegmentNode(context=context, parameter_overrides=overrides(checkpoint, tmp_path,
                                                                         map_load_path=str(bad)),
                        transforms=KnownPoses('map'))
    finally:
        rclpy.shutdown(context=context)


def test_a_refused_start_does_not_silence_the_next_nodes_rosout(checkpoint, tmp_path):
    """rcl keys /rosout publishers by logger name and unregisters the name when any node of that name is destroyed.
    A refused SegmentNode left half-built (CI, once) was collected later and silenced the next node's /rosout."""
    import gc

    from rcl_interfaces.msg import Log

    bad = tmp_path / 'bad.ply'
    bad.write_bytes(b'ply\nformat binary_little_endian 1.0\nend_header\n')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    refused = []
    try:
        try:
            SegmentNode(context=context, parameter_overrides=overrides(checkpoint, tmp_path, map_load_path=str(bad)),
                        transforms=KnownPoses('map'))
        except ValueError as error:
            refused.append(error)           # keeps the traceback (and so a half-built node) alive, as pytest does
        assert refused, 'the bad map file was accepted'
        node = SegmentNode(context=context, parameter_overrides=overrides(checkpoint, tmp_path),
                           transforms=KnownPoses('map'))
        listener = rclpy.create_node('rosout_listener', context=context)
        received = []
        listener.create_subscription(Log, '/rosout', received.append, 100)
        with spinning(context, node, listener):
            assert wait_for(lambda: listener.count_publishers('/rosout') >= 2, timeout=20)
            refused.clear()
            gc.collect()                    # a half-built node would be destroyed here
            node.get_logger().info('after the refused start: still on /rosout')
            assert wait_for(lambda: any('still on /rosout' in m.msg for m in received), timeout=20), \
                'the node\'s log never reached /rosout'
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


def test_real_tf2_broadcaster_drives_the_map(checkpoint, tmp_path):
    """No injected poses: the node's own tf2_ros Buffer / TransformListener, fed by a TransformBroadcaster."""
    tf2_ros = pytest.importorskip('tf2_ros')
    from geometry_msgs.msg import TransformStamped

    scene = corridor(np.random.default_rng(1))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = SegmentNode(context=context, namespace='tfnode', parameter_overrides=overrides(
        checkpoint, tmp_path, input_topic='/lidar/points', map_save_path=''))
    maps = Maps(context, '/tfnode')
    broadcaster = tf2_ros.TransformBroadcaster(maps.node)
    with spinning(context, node, maps.node):
        for k in range(4):
            stamped = TransformStamped()
            stamped.header.frame_id, stamped.child_frame_id = 'map', 'lidar'
            stamped.header.stamp.sec, stamped.header.stamp.nanosec = divmod(STAMP0 + k, 1_000_000_000)
            matrix = pose(k)
            stamped.transform.translation.x, stamped.transform.translation.y, stamped.transform.translation.z = \
                (float(v) for v in matrix[:3, 3])
            yaw = 0.05 * np.sin(k / 3)
            stamped.transform.rotation.z, stamped.transform.rotation.w = float(np.sin(yaw / 2)), float(np.cos(yaw / 2))
            for _ in range(20):                     # until the node's buffer has it: a labelled cloud comes back
                broadcaster.sendTransform(stamped)
                time.sleep(0.1)
                if maps.send(frame_points(scene, k), STAMP0 + k, timeout=6.0):
                    break
            else:
                pytest.fail(f'frame {k} never came back labelled (transform not received?)')
        assert wait_for(lambda: maps.maps and _stamp(maps.maps[-1]) == STAMP0 + 3, 10.0)
        records = labeled_records(maps.maps[-1])
        xyz = np.stack([records['x'], records['y'], records['z']], 1)
        # in the map frame: the corridor's walls at |y| <= 1.2, its floor at z = 0, around the sensor's path
        assert np.abs(xyz[:, 1]).max() < 1.3 and xyz[:, 2].min() > -0.1
        assert xyz[:, 0].min() < pose(0)[0, 3] and xyz[:, 0].max() > pose(3)[0, 3] + 2.0
