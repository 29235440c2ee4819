"""Gravity alignment without tf (mpnet_model/infer/gravity.py): known rotations are recovered within 2 degrees."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_model.data.synthetic import generate_room, room_rng
from mpnet_model.infer.gravity import (
    alignment_rotation,
    estimate_up,
    prior_up_for_frame,
    rotation_to_z,
    segment_gravity_aligned,
)
from mpnet_model.infer.scene import SceneSegmenter


def _tilt(pitch_deg: float, roll_deg: float) -> np.ndarray:
    p, r = np.radians(pitch_deg), np.radians(roll_deg)
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    return ry @ rx


def _room(index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz, rgb, sem, _, _ = generate_room(room_rng(3, 1, index), density=60.0, offset=False)
    return xyz - xyz.mean(axis=0), rgb, sem


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_rotation_to_z_is_a_proper_rotation():
    for up in ([0, 0, 1], [0, -1, 0], [0.3, -0.2, 0.9], [0, 0, -1]):
        r = rotation_to_z(np.asarray(up, float))
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(r @ (np.asarray(up) / np.linalg.norm(up)), [0, 0, 1], atol=1e-12)


def test_a_nearly_level_cloud_stays_as_mounted():
    xyz, _, _ = _room(5)
    for degrees, rotated in ((1.0, False), (5.0, True)):
        estimate = estimate_up(xyz @ _tilt(degrees, 0.0))
        assert estimate.found and abs(estimate.tilt_deg - degrees) < 1.0
        rotation = alignment_rotation(estimate)
        assert np.allclose(rotation, np.eye(3)) != rotated      # 1 deg: left level; 5 deg: corrected
    camera = alignment_rotation(estimate_up(xyz @ _tilt(1.0, 0.0) @ rotation_to_z([0, -1, 0]), prior_up=(0, -1, 0)),
                                prior_up=(0, -1, 0))
    np.testing.assert_allclose(camera, rotation_to_z([0, -1, 0]), atol=1e-12)   # an optical frame still turns z-up


@pytest.mark.parametrize('pitch, roll, index', [(0, 0, 0), (30, 0, 1), (-20, 25, 2), (12, -30, 3), (28, 28, 4)])
def test_recovers_a_known_rotation_within_2_degrees(pitch, roll, index):
    xyz, _, _ = _room(index)
    tilt = _tilt(pitch, roll)                          # the sensor frame is tilted: xyz_sensor = tilt^T xyz_level
    sensor = xyz @ tilt                                # (tilt^T x)^T = x^T tilt
    estimate = estimate_up(sensor)
    true_up = tilt.T @ np.array([0.0, 0.0, 1.0])
    assert estimate.found
    assert _angle_deg(estimate.up, true_up) < 2.0
    aligned = sensor @ estimate.rotation.T
    floor_normal = estimate.rotation @ true_up
    assert _angle_deg(floor_normal, np.array([0.0, 0.0, 1.0])) < 2.0
    assert aligned.shape == sensor.shape


def test_optical_frame_prior_and_clutter_only_clouds():
    xyz, _, _ = _room(5)
    optical_from_level = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])   # x right, y down, z fwd
    optical = xyz @ (optical_from_level @ _tilt(0, 20).T).T
    np.testing.assert_array_equal(prior_up_for_frame('camera_rgb_optical_frame'), [0, -1, 0])
    np.testing.assert_array_equal(prior_up_for_frame('os_lidar'), [0, 0, 1])
    estimate = estimate_up(optical, prior_up_for_frame('camera_rgb_optical_frame'))
    true_up = optical_from_level @ _tilt(0, 20).T @ np.array([0.0, 0.0, 1.0])
    assert _angle_deg(estimate.up, true_up) < 2.0
    # a cloud without any plane near the prior (a single wall seen head-on) is left alone
    wall = np.random.default_rng(0).uniform(-1, 1, (5000, 3)) * [0.01, 2.0, 1.5]
    assert not estimate_up(wall).found


def test_segmenting_aligned_keeps_per_point_results_and_boxes_in_the_input_frame():
    xyz, rgb, sem = _room(6)
    near = (np.abs(xyz[:, :2]) < 1.25).all(axis=1)          # a 2.5 m square: ~20 blocks keep the test fast
    xyz, rgb, sem = xyz[near], rgb[near], sem[near]
    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    tilt = _tilt(25, -15)
    sensor = (xyz @ tilt).astype(np.float32)
    result, estimate = segment_gravity_aligned(segmenter, sensor, rgb / np.float32(255))
    level = segmenter.segment((sensor @ estimate.rotation.T).astype(np.float32), rgb / np.float32(255))
    assert (result.labels == level.labels).mean() > 0.999        # the same aligned cloud (float32 rounding aside)
    assert 'gravity' in result.timings
    for info in result.instances_info:
        points = sensor[result.instances == info.id]
        np.testing.assert_allclose(info.centre, (points.min(0) + points.max(0)) / 2, atol=1e-5)
    # aligned, the floor is found again as floor far more often than in the tilted cloud
    tilted = segmenter.segment(sensor, rgb / np.float32(255))
    floor = sem == 1
    assert (result.labels[floor] == 1).mean() > (tilted.labels[floor] == 1).mean() + 0.2


def test_pipeline_levels_optical_frames_only_without_tf():
    from mpnet_ros.cloud_io import ParsedCloud
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import ScenePipeline

    xyz, rgb, _ = _room(7)
    near = (np.abs(xyz[:, :2]) < 1.0).all(axis=1)
    optical_from_level = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    cloud = (xyz[near] @ optical_from_level.T).astype(np.float32)
    colours = rgb[near] / np.float32(255)
    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    parsed = ParsedCloud(cloud, colours, None, np.arange(len(cloud)), 'camera_rgb_optical_frame', 7, len(cloud))
    runs = {}
    unbounded = {'processing_budget_ms': 3_600_000.0}   # this test is about alignment, not the per-frame block cap
    for name, values in (('auto', {}), ('off', {'gravity_align': 'off'}), ('tf', {'fixed_frame': 'map'})):
        pipeline = ScenePipeline(validate_params({**unbounded, **values}, check_files=False), segmenter)
        pipeline.add(parsed)
        runs[name] = pipeline.process(pipeline.window.snapshot())
    aligned, _ = segment_gravity_aligned(segmenter, cloud, colours, prior_up=(0, -1, 0))
    np.testing.assert_array_equal(runs['auto'].labels, aligned.labels)          # default: levelled (-y prior)
    direct = segmenter.segment(cloud, colours)
    np.testing.assert_array_equal(runs['off'].labels, direct.labels)            # off: as it comes
    np.testing.assert_array_equal(runs['tf'].labels, direct.labels)             # a tf fixed frame: trusted
