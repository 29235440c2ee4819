"""Accumulation in a fixed frame through the injected transform lookup: a moving sensor with known poses sees a wall
that stays one plane across the window's frames (and does not without the transforms)."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_ros.accumulate import transform_matrix
from mpnet_ros.cloud_io import ParsedCloud
from mpnet_ros.params import validate_params
from mpnet_ros.pipeline import FrameRejected, ScenePipeline
from mpnet_ros.transforms import KnownPoses, TransformUnavailable, tf2_transforms

WALL_X = 5.0


def sensor_pose(k: int) -> np.ndarray:
    """The sensor drives along y and turns: 0.6 m and 12 degrees per frame."""
    yaw = np.radians(12.0 * k)
    return transform_matrix((0.3 * k, 0.6 * k, 0.4), (0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)))


def wall_in_sensor_frame(pose: np.ndarray, rng) -> np.ndarray:
    """Points of the wall x = WALL_X (map frame), expressed in the sensor frame of `pose`."""
    wall = np.stack([np.full(3000, WALL_X), rng.uniform(-3, 3, 3000), rng.uniform(0, 2.5, 3000)], axis=1)
    inverse = np.linalg.inv(pose)
    return (wall @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.float32)


def parsed(xyz, stamp_ns, frame_id='lidar'):
    return ParsedCloud(xyz=xyz, rgb=None, intensity=None, source_index=np.arange(len(xyz)), frame_id=frame_id,
                       stamp_ns=stamp_ns, num_input_points=len(xyz))


def plane_residual(xyz: np.ndarray) -> float:
    """RMS distance of the points to their best-fit plane."""
    centred = xyz - xyz.mean(axis=0)
    return float(np.linalg.svd(centred, full_matrices=False)[1][-1] / np.sqrt(len(xyz)))


def moving_sensor_window(transforms):
    params = validate_params({'fixed_frame': 'map', 'window_frames': 3}, check_files=False)
    pipeline = ScenePipeline(params, segmenter=None, transforms=transforms)
    rng = np.random.default_rng(0)
    for k in range(3):
        pipeline.add(parsed(wall_in_sensor_frame(sensor_pose(k), rng), stamp_ns=1_000 + k))
    return pipeline.window.snapshot()


def test_wall_stays_one_plane_in_the_fixed_frame():
    poses = KnownPoses('map')
    for k in range(3):
        poses.add('lidar', 1_000 + k, sensor_pose(k))
    window = moving_sensor_window(poses)
    assert window.num_frames == 3 and window.frame_id == 'map' and len(window.xyz) == 9000
    np.testing.assert_allclose(window.xyz[:, 0], WALL_X, atol=1e-4)
    assert plane_residual(window.xyz) < 1e-4
    np.testing.assert_allclose(window.origin, sensor_pose(2)[:3, 3])          # the newest sensor position


def test_without_the_transforms_the_wall_smears():
    window = moving_sensor_window(None)                    # static-sensor assumption: clouds stay in 'lidar'
    assert window.frame_id == 'lidar' and plane_residual(window.xyz) > 0.3


def test_missing_pose_rejects_the_cloud():
    poses = KnownPoses('map')
    params = validate_params({'fixed_frame': 'map'}, check_files=False)
    pipeline = ScenePipeline(params, segmenter=None, transforms=poses)
    with pytest.raises(FrameRejected, match="no pose of 'lidar' in 'map' at 7 ns") as info:
        pipeline.add(parsed(np.ones((10, 3), np.float32), stamp_ns=7))
    assert info.value.kind == 'transform'
    with pytest.raises(TransformUnavailable, match="only poses in 'map'"):
        poses.lookup('odom', 'lidar', 7)


def test_tf2_is_used_when_importable():
    rclpy = pytest.importorskip('rclpy')
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        assert tf2_transforms(object()) is None             # plain venv: the node falls back to a static sensor
        pytest.skip('tf2_ros is not installed here (a robot has it); the None fallback was checked')
    from geometry_msgs.msg import TransformStamped

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('mpnet_tf2_test', context=context)
        source = tf2_transforms(node)
        stamped = TransformStamped()
        stamped.header.frame_id, stamped.child_frame_id = 'map', 'lidar'
        stamped.transform.translation.x, stamped.transform.rotation.w = 1.5, 1.0
        source.buffer.set_transform_static(stamped, 'test')
        np.testing.assert_allclose(source.lookup('map', 'lidar', 0)[:3, 3], [1.5, 0.0, 0.0])
        with pytest.raises(TransformUnavailable):
            source.lookup('map', 'nowhere', 0)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
