"""The floor estimator (mpnet_model/infer/floor.py) against known floors, and a known floor winning over it."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_model.data.synthetic import generate_room, room_rng
from mpnet_model.infer.floor import NOMINAL_TABLE_HEIGHT, estimate_floor
from mpnet_model.infer.gravity import estimate_up

FLOOR_CLASS = 1


def _tilt(pitch_deg: float, roll_deg: float) -> np.ndarray:
    p, r = np.radians(pitch_deg), np.radians(roll_deg)
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    return ry @ rx


def _room(index: int, height_offset: float = -1.3):
    """A generated room with its floor at z = `height_offset` (the sensor at the origin, 1.3 m above it)."""
    xyz, rgb, sem, _, _ = generate_room(room_rng(3, 1, index), density=40.0, offset=False)
    xyz = xyz - np.array([*np.median(xyz[:, :2], axis=0), 0.0])
    xyz[:, 2] += height_offset
    return xyz.astype(np.float32), sem


@pytest.mark.parametrize('pitch, roll, index', [(0, 0, 0), (30, 0, 1), (-20, 25, 2), (12, -30, 3)])
def test_tilted_frames_levelled_then_floor_found_within_3_cm(pitch, roll, index):
    xyz, sem = _room(index)
    sensor = (xyz @ _tilt(pitch, roll)).astype(np.float32)          # a tilted sensor's view of the room
    level = sensor @ estimate_up(sensor).rotation.T
    truth = float(np.median(level[sem == FLOOR_CLASS, 2]))
    estimate = estimate_floor(level, origin=(0.0, 0.0, 0.0))
    assert estimate.found and estimate.method == 'histogram'
    assert abs(estimate.z - truth) < 0.03


def test_stray_points_windows_and_crops_do_not_move_the_floor():
    xyz, sem = _room(4)
    base = estimate_floor(xyz).z
    assert abs(base - np.median(xyz[sem == FLOOR_CLASS, 2])) < 0.02
    strays = np.array([[0.0, 0.0, -6.0], [1.0, 1.0, 14.0], [900.0, 0.0, 0.0], [2.0, -1.0, -30.0]], np.float32)
    assert abs(estimate_floor(np.concatenate([xyz, strays])).z - base) < 0.01
    rain = np.random.default_rng(0).uniform([-10, -10, -8], [10, 10, 15], (len(xyz) // 100, 3)).astype(np.float32)
    assert abs(estimate_floor(np.concatenate([xyz, rain])).z - base) < 0.01        # 1 % scattered returns
    window = np.concatenate([xyz, xyz + np.float32([0.5, 0.2, 0.0]), xyz + np.float32([1.0, 0.4, 0.0])])
    assert abs(estimate_floor(window).z - base) < 0.01
    near = np.linalg.norm(xyz[:, :2], axis=1) < 2.0
    assert abs(estimate_floor(xyz[near]).z - base) < 0.02
    # the radius around the sensor: a lower floor 40 m away does not count
    far_floor = xyz[sem == FLOOR_CLASS] + np.float32([40.0, 0.0, -2.0])
    assert abs(estimate_floor(np.concatenate([xyz, far_floor]), origin=(0, 0, 0)).z - base) < 0.02


def test_a_floor_seen_by_a_simulated_lidar_and_camera():
    pytest.importorskip('trimesh')
    pytest.importorskip('embreex')
    from mpnet_model.data.synthetic.layout import _Scene, _structure
    from mpnet_model.data.synthetic.lidar import lidar_preset, simulate_lidar
    from mpnet_model.data.synthetic.raycast import RayCaster, SceneMesh

    scene = _Scene(np.random.default_rng(0), np.array([8.0, 6.0, 3.0]))
    _structure(scene)
    caster = RayCaster(SceneMesh.from_scene(scene))
    pose = np.eye(4)
    pose[:3, 3] = [3.0, 2.5, 0.8]                         # the lidar 0.8 m above the floor (z = 0 in the room)
    frame = simulate_lidar(caster, lidar_preset('os1-64', 1024), lambda t: np.repeat(pose[None], len(np.atleast_1d(
        t)), axis=0), np.random.default_rng(1))
    xyz = frame.xyz.reshape(-1, 3)[frame.valid.reshape(-1)]
    estimate = estimate_floor(xyz, origin=(0.0, 0.0, 0.0))
    assert estimate.found and abs(estimate.z + 0.8) < 0.03


def test_without_a_floor_in_view():
    rng = np.random.default_rng(0)
    # a camera 0.6 m above a table looking down at it: the table top is the lowest dominant plane; without the
    # sensor's position it is the reference, with it the view is a tabletop view and the floor lies a nominal
    # table height below the top
    top = np.column_stack([rng.uniform(-0.6, 0.6, (20000, 2)), rng.normal(-0.6, 0.003, 20000)])
    cups = np.column_stack([rng.uniform(-0.1, 0.1, (3000, 2)), rng.uniform(-0.6, -0.45, 3000)])
    table_view = np.concatenate([top, cups])
    estimate = estimate_floor(table_view)
    assert estimate.found and estimate.method == 'histogram' and abs(estimate.z + 0.6) < 0.01
    estimate = estimate_floor(table_view, origin=(0.0, 0.0, 0.0))
    assert not estimate.found and estimate.method == 'tabletop'
    assert estimate.z == pytest.approx(-0.6 - NOMINAL_TABLE_HEIGHT, abs=0.01)
    # the same plane seen from 2 m above (a floor under a tall sensor), or from 0.6 m but ahead of the sensor at
    # shallow angles (a robot's camera looking at the floor in front of it), or wider than a table: a floor
    for origin, shift in (((0.0, 0.0, 1.4), (0.0, 0.0)), ((0.0, 0.0, 0.0), (1.5, 0.0))):
        moved = table_view + [*shift, 0.0]
        assert estimate_floor(moved, origin=origin).method == 'histogram'
    wide = np.column_stack([rng.uniform(-2, 2, (20000, 2)), rng.normal(-0.6, 0.003, 20000)])
    assert estimate_floor(wide, origin=(0.0, 0.0, 0.0)).method == 'histogram'
    # a wall seen head-on with no horizontal surface: the 1st percentile of z, flagged as not found
    wall = np.column_stack([rng.normal(2.0, 0.005, 20000), rng.uniform(-1, 1, 20000), rng.uniform(-1.2, 1.5, 20000)])
    estimate = estimate_floor(wall)
    assert not estimate.found and estimate.method == 'percentile'
    assert estimate.z == pytest.approx(np.percentile(wall[:, 2], 1.0))
    with pytest.raises(ValueError, match='shape'):
        estimate_floor(np.zeros((5, 2)))
    assert not estimate_floor(np.zeros((0, 3))).found


def test_real_ouster_crops_agree_on_the_ground():
    from benchmarks import sample_frames

    if sample_frames.missing():
        pytest.skip(sample_frames.missing())
    xyz = sample_frames.ouster_scans(1)[0][0]
    distance = np.linalg.norm(xyz, axis=1)
    heights = [estimate_floor(xyz[distance < crop], origin=(0, 0, 0)).z for crop in (8.0, 15.0, 30.0, np.inf)]
    assert max(heights) - min(heights) < 0.03


def test_a_known_floor_wins_over_the_estimate():
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_ros.params import ParamError, validate_params
    from mpnet_ros.pipeline import ScenePipeline

    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    segmenter.backend.metadata.input_encoding = 'floor'      # the shipped file's weights, read as a floor model
    xyz, _ = _room(5)
    xyz = xyz[np.all(np.abs(xyz[:, :2]) < 1.5, axis=1)]        # wider than a table: not a tabletop view
    grey = np.full(len(xyz), 0.5, np.float32)
    estimated = ScenePipeline(validate_params({}, check_files=False), segmenter, enforce_budget=False)
    known = ScenePipeline(validate_params({'floor_source': 'sensor_height', 'sensor_height': 1.0},
                                          check_files=False), segmenter, enforce_budget=False)
    assert estimated.segment_cloud(xyz, intensity=grey).floor_z == pytest.approx(-1.3, abs=0.03)
    assert known.segment_cloud(xyz, intensity=grey).floor_z == pytest.approx(-1.0)
    with pytest.raises(ParamError, match='needs fixed_frame'):
        validate_params({'floor_source': 'fixed_frame'}, check_files=False)
    with pytest.raises(ParamError, match='sensor_height'):
        validate_params({'floor_source': 'sensor_height'}, check_files=False)
