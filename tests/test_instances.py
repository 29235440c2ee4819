"""mpnet_model/infer/instances.py: the metric size filter on simulated lidar chairs near and far, occupied area,
oriented boxes on hand-made rotated boxes (full, partial, sparse, levelled), the fragment join, the confidence, and
how a model's metadata chooses the filter (old models keep today's)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.infer.backends.base import ModelMetadata
from mpnet_model.infer.instances import (
    SizeFilter,
    apply_area_filter,
    class_mean_instance_area,
    instance_confidence,
    instance_options,
    instance_summaries,
    join_fragments,
    occupied_area,
    oriented_boxes,
    yaw_error_deg,
)

CHAIR, FLOOR, TABLE = S3DIS_CLASSES.index('chair'), S3DIS_CLASSES.index('floor'), S3DIS_CLASSES.index('table')


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# --- the metric filter keeps a chair near and far ---------------------------------------------------------------

def _simulated_lidar_chair(distance: float) -> np.ndarray:
    """The returns of one chair `distance` m in front of a simulated OS-1-64 (1024 columns, 0.7 m high, ideal
    returns), ray cast against the chair's mesh (the package's lidar simulator and chair model)."""
    pytest.importorskip('trimesh')
    from mpnet_model.data.synthetic.layout import _chair_parts, _rest_on, _Scene
    from mpnet_model.data.synthetic.lidar import lidar_preset, simulate_lidar
    from mpnet_model.data.synthetic.raycast import RayCaster, SceneMesh

    scene = _Scene(np.random.default_rng(0), np.array([30.0, 30.0, 3.0]))
    parts = _chair_parts(np.random.default_rng(1), swivel=False)
    rotation = _rot_z(0.3)
    scene.add('chair', parts, rotation, _rest_on(parts, rotation, distance, 0.0, 0.0))
    pose = np.eye(4)
    pose[2, 3] = 0.7
    frame = simulate_lidar(RayCaster(SceneMesh.from_scene(scene)), lidar_preset('os1-64'),
                           lambda t: np.broadcast_to(pose, (np.size(t), 4, 4)), np.random.default_rng(2), ideal=True)
    return frame.xyz[frame.valid & (frame.ins == 0)].astype(np.float64)


@pytest.fixture(scope='module')
def static_room_statistics():
    """(class mean points, class mean occupied area) of a generated static office: the training data's kind."""
    from mpnet_model.data.room import Room
    from mpnet_model.data.synthetic.sampling import generate_room

    xyz, rgb, sem, ins, _ = generate_room(np.random.default_rng(0), 'office')
    room = Room('office', xyz, rgb / 255.0, sem, ins, S3DIS_CLASSES, ())
    ids, inverse, sizes = np.unique(ins, return_inverse=True, return_counts=True)
    majority = np.array([np.bincount(sem[ins == i]).argmax() for i in ids])
    points = np.array([sizes[majority == c].mean() if (majority == c).any() else 0.0 for c in range(13)])
    return points, class_mean_instance_area([room], 13)


def test_metric_filter_keeps_a_simulated_chair_at_2_and_12_m_where_todays_filter_drops_the_far_one(
        static_room_statistics):
    points_mean, area_mean = static_room_statistics
    assert points_mean[CHAIR] > 500 and 0.5 < area_mean[CHAIR] < 2.0           # a whole chair of a static scan
    near, far = _simulated_lidar_chair(2.0), _simulated_lidar_chair(12.0)
    assert len(far) < len(near) / 10                                            # density falls with range
    xyz = torch.from_numpy(np.concatenate([near, far]))
    index = torch.from_numpy(np.repeat([0, 1], [len(near), len(far)]))
    labels = torch.full((len(xyz),), CHAIR)
    sizes = torch.tensor([len(near), len(far)])
    today = SizeFilter('points', 0.1 * points_mean)             # the shipped model's fraction of the class means
    metric = SizeFilter('area', 0.1 * area_mean)
    assert today.keep(xyz, index, labels, sizes, 13).tolist() == [True, False]
    assert metric.keep(xyz, index, labels, sizes, 13).tolist() == [True, True]
    near_area, far_area = occupied_area(xyz, index, 2).tolist()
    assert far_area > 0.2 * near_area                           # vs a point ratio under 0.1


def test_segmenter_applies_the_area_filter_per_class(static_room_statistics):
    """SceneSegmenter._finalise_instances with the area filter: the same chairs and a small floor patch; only the
    instance below its own class's area goes."""
    from runtime_fixtures import exported_small

    from mpnet_model.infer.backends.base import make_backend
    from mpnet_model.infer.scene import SceneSegmenter

    _, area_mean = static_room_statistics
    near, far = _simulated_lidar_chair(2.0), _simulated_lidar_chair(12.0)
    patch = np.stack(np.meshgrid(np.arange(0, 0.3, 0.02), np.arange(0, 0.3, 0.02), [0.0]), -1).reshape(-1, 3)
    patch += [5.0, 5.0, -0.7]                                   # 0.09 m^2 of floor: far under the floor's mean
    cloud = torch.from_numpy(np.concatenate([near, far, patch]).astype(np.float32))
    instances = torch.from_numpy(np.repeat([0, 1, 2], [len(near), len(far), len(patch)]))
    labels = torch.from_numpy(np.repeat([CHAIR, CHAIR, FLOOR], [len(near), len(far), len(patch)]))
    segmenter = SceneSegmenter(make_backend('onnxruntime', exported_small()[1]), size_filter='area',
                               class_min_area=0.1 * area_mean, min_instance_points=10)
    final, (votes, counts, *_) = segmenter._finalise_instances(cloud, labels, torch.ones(len(cloud)), instances)
    assert counts.tolist() == [len(near), len(far)]                             # both chairs, largest first
    assert (final[-len(patch):] == -1).all()
    points = segmenter.replace(size_filter='points', class_min_points=np.full(13, 100.0))
    _, (_, counts, *_) = points._finalise_instances(cloud, labels, torch.ones(len(cloud)), instances)
    assert counts.tolist() == [len(near), len(patch)]                           # today's: the far chair goes
    with pytest.raises(ValueError, match='class_min_area'):
        SceneSegmenter(segmenter.backend, size_filter='area')


def test_occupied_area_equals_a_brute_force_count():
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform([0.0, 0.0, 0.0], [2.0, 1.0, 0.0], (20000, 3)) + [0.013, 0.017, 0.05],
                          rng.uniform(-5, 5, (300, 3))])
    index = np.repeat([0, 1], [20000, 300])
    area = occupied_area(torch.from_numpy(xyz), torch.from_numpy(index), 2, 0.1).numpy()
    reference = [len({tuple(c) for c in np.floor(xyz[index == k] / 0.1).astype(int)}) * 0.01 for k in (0, 1)]
    np.testing.assert_allclose(area, reference)
    assert area[0] == pytest.approx(2.0 + 0.3, abs=0.11)      # a 2 m x 1 m plane off the grid: 21 x 11 voxels
    # A huge extent takes the row-wise path: the same count.
    far = np.concatenate([xyz, [[1e6, -1e6, 3e5]]])
    area_far = occupied_area(torch.from_numpy(far), torch.from_numpy(np.append(index, 1)), 2, 0.1).numpy()
    np.testing.assert_allclose(area_far, [reference[0], reference[1] + 0.01])


def test_area_filter_on_numpy_results_matches_the_segmenter_rule():
    xyz = np.concatenate([np.zeros((50, 3)) + [0, 0, 0], np.random.default_rng(1).uniform(0, 1, (500, 3))])
    instances = np.repeat([4, 9], [50, 500])
    labels = np.full(550, CHAIR)
    out = apply_area_filter(xyz, instances, labels, np.full(13, 0.05))
    assert (out[:50] == -1).all() and (out[50:] == 9).all()                    # one voxel of 0.01 m^2 < 0.05
    assert apply_area_filter(xyz, instances, labels, None) is instances


# --- oriented boxes -----------------------------------------------------------------------------------------------

def _box_points(centre, size, yaw, count, rng, faces=None):
    """Points on the faces of a box (or on `faces`, a subset of '-x +x -y +y +z')."""
    faces = faces or ['-x', '+x', '-y', '+y', '+z']
    half = np.asarray(size) / 2
    points = []
    for face in faces:
        axis, sign = 'xyz'.index(face[1]), 1.0 if face[0] == '+' else -1.0
        local = rng.uniform(-half, half, (count, 3))
        local[:, axis] = sign * half[axis]
        points.append(local)
    return np.concatenate(points) @ _rot_z(yaw).T + centre


@pytest.mark.parametrize('yaw_deg', [0.0, 17.0, 45.0, 88.0, -33.0, 120.0])
def test_oriented_box_of_rotated_boxes(yaw_deg):
    rng = np.random.default_rng(int(yaw_deg) % 7)
    boxes = [((1.0, 2.0, 0.4), (1.6, 0.8, 0.75)), ((-3.0, 0.5, 1.0), (1.8, 0.35, 2.0)),
             ((4.0, -4.0, 1.2), (3.0, 0.05, 1.0))]                 # a table, a bookcase, a board
    xyz = np.concatenate([_box_points(c, s, math.radians(yaw_deg + 10 * k), 1500, rng)
                          for k, (c, s) in enumerate(boxes)])
    index = np.repeat(np.arange(3), 7500)
    centre, extent, yaw = (v.numpy() for v in oriented_boxes(torch.from_numpy(xyz), torch.from_numpy(index), 3))
    truth = [math.radians(yaw_deg + 10 * k) for k in range(3)]
    assert yaw_error_deg(yaw, truth).max() < 0.6
    assert ((yaw >= -math.pi / 2) & (yaw < math.pi / 2)).all()
    np.testing.assert_allclose(centre, [c for c, _ in boxes], atol=0.01)
    np.testing.assert_allclose(extent, [s for _, s in boxes], atol=0.01)          # x = the longer side


def test_oriented_box_of_a_partial_sparse_view():
    """What a lidar sees of a table: two sides and the top, sparse, with range noise."""
    rng = np.random.default_rng(3)
    yaw = math.radians(27.0)
    xyz = _box_points((2.0, 1.0, 0.37), (1.4, 0.7, 0.74), yaw, 60, rng, faces=['-x', '-y', '+z'])
    xyz += rng.normal(0, 0.01, xyz.shape)
    _, extent, estimate = oriented_boxes(torch.from_numpy(xyz), torch.zeros(len(xyz), dtype=torch.long), 1)
    assert yaw_error_deg(estimate.numpy(), [yaw])[0] < 3.0
    np.testing.assert_allclose(extent.numpy()[0], [1.4, 0.7, 0.74], atol=0.06)


def test_yaw_error_is_modulo_a_half_turn():
    errors = yaw_error_deg(np.radians([0.0, 179.0, -89.0, 10.0]), np.radians([180.0, 0.0, 89.0, 100.0]))
    np.testing.assert_allclose(errors, [0.0, 1.0, 2.0, 90.0], atol=1e-9)


def test_levelled_boxes_go_back_to_the_input_frame():
    """An instance segmented in the levelled frame: its box centre and orientation in the (pitched) input frame."""
    from scipy.spatial.transform import Rotation

    from mpnet_model.infer.gravity import boxes_in_input_frame
    from mpnet_model.infer.instances import rotation_quaternion
    from mpnet_model.infer.scene import InstanceInfo, SceneResult

    level = Rotation.from_euler('x', 25, degrees=True).as_matrix()             # aligned = level @ input
    yaw = math.radians(30.0)
    aligned = _box_points((1.0, 0.0, 0.5), (1.2, 0.6, 1.0), yaw, 400, np.random.default_rng(0))
    xyz = aligned @ level                                                      # the input frame (level.T @ p)
    centre, extent, estimate = oriented_boxes(torch.from_numpy(aligned), torch.zeros(len(aligned), dtype=torch.long), 1)
    info = InstanceInfo(0, CHAIR, 'chair', np.zeros(3), np.zeros(3), len(xyz), 1.0, box_centre=centre.numpy()[0],
                        box_extent=extent.numpy()[0], box_yaw=float(estimate[0]))
    result = SceneResult(np.zeros(len(xyz), np.int32), np.ones(len(xyz), np.float32), np.zeros(len(xyz), np.int32),
                         [info])
    boxes_in_input_frame(result, xyz, level)
    np.testing.assert_allclose(info.box_centre, level.T @ np.array([1.0, 0.0, 0.5]), atol=0.01)
    expected = rotation_quaternion(level.T @ _rot_z(yaw))
    assert abs(abs(float(np.dot(info.box_orientation, expected))) - 1.0) < 1e-4
    np.testing.assert_allclose(info.centre, (xyz.min(0) + xyz.max(0)) / 2, atol=1e-5)   # the AABB, input frame


# --- the fragment join and the confidence ------------------------------------------------------------------------

def test_join_fragments_joins_touching_pieces_of_one_class_only():
    rng = np.random.default_rng(0)
    wall_a = rng.uniform([0, 0, 0], [2, 0.05, 2], (2000, 3))
    wall_b = rng.uniform([2.1, 0, 0], [4, 0.05, 2], (2000, 3))        # 0.1 m gap: touches at d = 0.2
    chair = rng.uniform([2.05, 0.1, 0], [2.5, 0.5, 0.9], (800, 3))    # touches wall_b, another class
    far = rng.uniform([8, 0, 0], [9, 0.05, 2], (800, 3))              # same class, 4 m away
    xyz = torch.from_numpy(np.concatenate([wall_a, wall_b, chair, far]))
    instances = torch.from_numpy(np.repeat([7, 3, 5, 9], [2000, 2000, 800, 800]))
    wall = S3DIS_CLASSES.index('wall')
    labels = torch.from_numpy(np.repeat([wall, wall, CHAIR, wall], [2000, 2000, 800, 800]))
    joined = join_fragments(xyz, instances, labels, 0.2, 13).numpy()
    assert set(joined[:4000]) == {3} and set(joined[4000:4800]) == {5} and set(joined[4800:]) == {9}
    assert (join_fragments(xyz, instances, labels, 0.05, 13).numpy() == instances.numpy()).all()   # gap > d
    with pytest.raises(ValueError, match='distance'):
        join_fragments(xyz, instances, labels, 0.0, 13)


def test_confidence_is_the_mean_class_probability_with_disagreeing_points_as_zero():
    index = torch.tensor([0, 0, 0, 0, 1, 1])
    labels = torch.tensor([CHAIR, CHAIR, CHAIR, TABLE, TABLE, TABLE])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    classes = torch.tensor([CHAIR, TABLE])
    np.testing.assert_allclose(instance_confidence(index, labels, scores, classes, 2).numpy(),
                               [(0.9 + 0.8 + 0.7) / 4, 0.4])


# --- which filter a model brings ---------------------------------------------------------------------------------

def test_old_models_keep_todays_filter_and_tuned_models_get_the_metric_one():
    old = ModelMetadata(class_names=S3DIS_CLASSES, min_instance_fraction=0.1,
                        class_mean_instance_points=tuple(float(v) for v in range(1, 14)))
    chosen = instance_options(old, 'auto', 'lidar')
    assert chosen['size_filter'] == 'points' and chosen['fragment_join'] == 0.0 and 'min_instance_points' not in chosen
    np.testing.assert_allclose(chosen['class_min_points'], 0.1 * np.arange(1, 14))
    with pytest.raises(ValueError, match='no class mean instance areas'):
        instance_options(old, 'area', 'lidar')
    tuned = ModelMetadata(class_names=S3DIS_CLASSES, min_instance_fraction=0.1,
                          class_mean_instance_points=old.class_mean_instance_points,
                          class_mean_instance_area=tuple(float(v) for v in range(1, 14)),
                          min_instance_area_fraction={'lidar': 0.2}, fragment_join={'lidar': 0.3},
                          instance_min_points={'lidar': 10})
    chosen = instance_options(tuned, 'auto', 'lidar')
    assert chosen['size_filter'] == 'area' and chosen['fragment_join'] == 0.3 and chosen['min_instance_points'] == 10
    np.testing.assert_allclose(chosen['class_min_area'], 0.2 * np.arange(1, 14))
    assert instance_options(tuned, 'auto', 'rgbd')['size_filter'] == 'points'     # not tuned for rgbd
    with pytest.raises(ValueError, match="sensor_kind 'rgbd'"):
        instance_options(tuned, 'area', 'rgbd')
    np.testing.assert_allclose(instance_options(tuned, 'area', 'rgbd', fraction=0.5)['class_min_area'],
                               0.5 * np.arange(1, 14))
    assert instance_options(tuned, 'auto', 'lidar', fraction=0.0)['size_filter'] == 'off'
    assert instance_options(tuned, 'points', 'lidar')['class_min_area'] is None
    assert ModelMetadata.from_props(tuned.to_props(), 'x') == tuned                 # exact metadata round trip
    with pytest.raises(ValueError, match='sensor_kind'):
        instance_options(tuned, 'auto', 'sonar')


def test_true_boxes_of_simulated_frames_hold_their_objects(tmp_path):
    """The simulator's recorded object boxes (the yaw benchmark's truth), in a frame's level frame: the objects'
    returns lie inside their boxes."""
    pytest.importorskip('trimesh')
    from mpnet_model.data.synthetic.frames import frame_true_boxes, generate_frames, list_frames, load_frame

    generate_frames(tmp_path, {1: 1}, sensors=('os1-64',), frames=2, columns=512, progress=False)
    path = list_frames(tmp_path, [1])[1]
    room, boxes = load_frame(path), frame_true_boxes(path)
    checked = 0
    for instance, box in boxes.items():
        points = room.xyz[room.ins == instance].astype(np.float64)
        if box['yaw'] is None or len(points) < 20:
            continue
        local = (points - box['centre']) @ _rot_z(box['yaw'])          # into the box's axes: R(yaw).T @ p
        # a lidar frame's points are taken during the 100 ms sweep while the robot moves: ~0.1 m of motion skew
        assert (np.abs(local) <= box['size'] / 2 + 0.15).all(axis=1).mean() > 0.98, (instance, box)
        checked += 1
    assert checked >= 5


def test_the_sync_free_gpu_route_equals_the_cpu_route():
    """Oriented boxes, confidence and occupied area take sync-free routes on CUDA (no nonzero / unique / host
    reads, docs/gpu_syncs.md); forced on the CPU here (`syncs.gpu_strategies`), they give the CPU's values."""
    from mpnet_model.infer.syncs import gpu_strategies

    rng = np.random.default_rng(5)
    parts, ids = [], []
    for k in range(6):                       # boxes of points at random yaws and places, and loose points (-1)
        local = rng.uniform(-1, 1, (400, 3)) * [1.2 - 0.15 * k, 0.3 + 0.05 * k, 0.4]
        yaw = rng.uniform(0, math.pi)
        turn = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        parts.append(local @ turn.T + [rng.uniform(-20, 20), rng.uniform(-20, 20), 0.5])
        ids.append(np.full(400, k))
    parts.append(rng.uniform(-25, 25, (500, 3)))
    ids.append(np.full(500, -1))
    cloud = torch.from_numpy(np.concatenate(parts))
    instances = torch.from_numpy(np.concatenate(ids))
    labels = torch.from_numpy(rng.integers(0, 3, instances.numel()))
    scores = torch.from_numpy(rng.uniform(0.3, 1.0, instances.numel())).float()
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    cpu = instance_summaries(cloud, instances, labels, scores, classes)
    members = instances >= 0
    area_cpu = occupied_area(cloud[members], instances[members], 6)
    with gpu_strategies():
        gpu = instance_summaries(cloud, instances, labels, scores, classes)
        area_gpu = occupied_area(cloud[members], instances[members], 6)
    for name, a, b in zip(('centre', 'extent', 'yaw', 'confidence'), cpu, gpu):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9, msg=name)
    torch.testing.assert_close(area_gpu, area_cpu, rtol=0, atol=0)
    assert (area_cpu > 0).all()
