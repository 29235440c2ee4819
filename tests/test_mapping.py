"""The semantic map (mpnet_model.mapping): fusion maths on hand-made voxels, instance association, dirty-block
selection (a moved box marks exactly the blocks it touches and their neighbours), a static scene that costs
nothing after its first pass, the memory bound under eviction, map files (round trip, corrupt and missing files),
and the subset hook of the frame path (all of a frame's blocks through `segment_partition` = `segment`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpnet_model.infer.blocking import layout_partition
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.mapping import MapConfig, MapFileError, SemanticMapper
from mpnet_model.mapping.fusion import L_HIT, L_MAX, L_MIN, L_MISS, fuse_probabilities, update_occupancy
from mpnet_model.mapping.instances import associate
from mpnet_model.mapping.schedule import BlockSchedule
from mpnet_model.mapping.table import pack_cells, pack_voxels, unpack_cells, unpack_voxels
from mpnet_model.mapping.voxels import VoxelMap


@pytest.fixture(scope='module')
def segmenter(tmp_path_factory):
    from ros_helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path_factory.mktemp('map_model') / 'tiny.pt')
    return SceneSegmenter.from_config('torch', path, min_instance_points=5)


# --- fusion maths --------------------------------------------------------------------------------------------

def test_running_mean_is_the_arithmetic_mean_up_to_the_cap_then_an_ema():
    observations = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]], np.float32)
    mean, count = np.zeros((1, 3), np.float32), np.zeros(1, np.int64)
    for k, p in enumerate(observations, start=1):
        mean, count = fuse_probabilities(mean, count, p[None], max_observations=10)
        np.testing.assert_allclose(mean[0], observations[:k].mean(0), atol=1e-6)
        assert count[0] == k
    # cap 2: m1 = p1, m2 = (p1 + p2) / 2, then m_k = m_{k-1} + (p_k - m_{k-1}) / 2
    mean, count = np.zeros((1, 3), np.float32), np.zeros(1, np.int64)
    for p in observations:
        mean, count = fuse_probabilities(mean, count, p[None], max_observations=2)
    expected = (observations[0] + observations[1]) / 2
    for p in observations[2:]:
        expected = expected + (p - expected) / 2
    np.testing.assert_allclose(mean[0], expected, atol=1e-6)
    np.testing.assert_allclose(mean[0], [0.375, 0.525, 0.1], atol=1e-6)   # by hand: (.4,.5) (.25,.65) (.375,.525)
    assert count[0] == 2 and np.isclose(mean.sum(), 1.0)
    with pytest.raises(ValueError, match='max_observations'):
        fuse_probabilities(mean, count, observations[:1], max_observations=0)


def test_a_single_confident_mistake_does_not_flip_a_settled_voxel():
    wall = np.array([[0.1, 0.8, 0.1]], np.float32)
    mean, count = np.zeros((1, 3), np.float32), np.zeros(1, np.int64)
    for _ in range(5):
        mean, count = fuse_probabilities(mean, count, wall)
    mean, count = fuse_probabilities(mean, count, np.array([[0.99, 0.005, 0.005]], np.float32))
    assert mean[0].argmax() == 1                        # a log-odds sum would have flipped to class 0 here
    np.testing.assert_allclose(mean[0], (5 * wall[0] + [0.99, 0.005, 0.005]) / 6, atol=1e-6)


def test_occupancy_log_odds_clamp_and_values():
    assert np.isclose(L_HIT, np.log(0.7 / 0.3)) and np.isclose(L_MISS, np.log(0.4 / 0.6))
    value = np.zeros(1, np.float32)
    for _ in range(10):
        value = update_occupancy(value, L_HIT)
    assert value[0] == np.float32(L_MAX)
    for _ in range(20):
        value = update_occupancy(value, L_MISS)
    assert value[0] == np.float32(L_MIN)
    # a voxel seen once (L_HIT) is removed (log-odds <= 0) after three misses: 0.847 - 3 * 0.405 < 0 < 0.847 - 2*0.405
    once = update_occupancy(np.zeros(1, np.float32), L_HIT)
    assert update_occupancy(update_occupancy(once, L_MISS), L_MISS)[0] > 0
    assert update_occupancy(update_occupancy(update_occupancy(once, L_MISS), L_MISS), L_MISS)[0] <= 0


def test_keys_round_trip_and_range_check():
    index = np.array([[0, 0, 0], [-5, 7, -1], [2**20 - 1, -(2**20), 3]])
    np.testing.assert_array_equal(unpack_voxels(pack_voxels(index)), index)
    cells = np.array([[0, 0], [-3, 9], [100000, -100000]])
    np.testing.assert_array_equal(unpack_cells(pack_cells(cells)), cells)
    assert (np.diff(pack_cells(np.array([[-1, 5], [0, -5], [0, 4], [1, -9]]))) > 0).all()   # x-major order
    with pytest.raises(ValueError, match='map range'):
        pack_voxels(np.array([[2**20, 0, 0]]))


# --- instances on the map ------------------------------------------------------------------------------------

def test_association_continues_map_ids_and_numbers_new_ones():
    run = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, -1])
    current = np.array([7, 7, 7, -1, 3, 3, 9, -1, -1, 7])
    ids, next_id = associate(run, current, next_id=10, min_iou=0.25)
    # run 0 <-> map 7 (IoU 3 / 5), run 1 <-> map 3 (IoU 2 / 3), run 2 overlaps nothing: new id 10
    np.testing.assert_array_equal(ids, [7, 7, 7, 7, 3, 3, 3, 10, 10, -1])
    assert next_id == 11
    # below the gate: a new id instead
    ids, next_id = associate(np.array([0, 0, 0, 0]), np.array([5, -1, -1, -1]), 20, min_iou=0.5)
    np.testing.assert_array_equal(ids, [20] * 4)
    assert next_id == 21
    # one map id goes to one run instance only (the larger overlap)
    ids, _ = associate(np.array([0, 0, 0, 1]), np.array([4, 4, 4, 4]), 30, min_iou=0.1)
    np.testing.assert_array_equal(ids, [4, 4, 4, 30])


# --- dirty blocks ---------------------------------------------------------------------------------------------

def cell_centres(count: int, tile=(0, 0), start: int = 0) -> np.ndarray:
    """Centres of `count` distinct 0.125 m change cells inside tile (i, j) (0.5 m), 16 per layer from layer 0."""
    k = np.arange(start, start + count)
    return np.stack([tile[0] * 0.5 + (k % 4 + 0.5) * 0.125, tile[1] * 0.5 + (k // 4 % 4 + 0.5) * 0.125,
                     (k // 16 + 0.5) * 0.125], 1)


def test_schedule_marks_the_blocks_over_changed_tiles_then_their_neighbours():
    schedule = BlockSchedule(1.0, 0.5, min_points=1, dirty_fraction=0.0, min_changed=1, change_cell=0.125)
    schedule.record(added=cell_centres(3, tile=(4, 0)))
    plan = schedule.plan()
    assert {tuple(c) for c in plan.dirty} == {(3, -1), (3, 0), (4, -1), (4, 0)}
    # only blocks holding voxels run: the 4 dirty ones (their neighbours hold none)
    assert {tuple(c) for c in plan.run} == {(3, -1), (3, 0), (4, -1), (4, 0)}
    schedule.mark_run(plan)
    assert len(schedule.plan().run) == 0                                       # nothing changed since


def test_changed_enough_threshold():
    schedule = BlockSchedule(1.0, 0.5, min_points=20, dirty_fraction=0.25, min_changed=10, change_cell=0.125)
    schedule.record(added=cell_centres(15))
    assert len(schedule.plan().dirty) == 0                                     # 15 voxels < min_points 20
    schedule.record(added=cell_centres(85, start=15))
    plan = schedule.plan()
    assert len(plan.dirty) == 4                                                # 100 cells: the 4 blocks over them
    schedule.mark_run(plan)
    schedule.record(added=cell_centres(100) + 0.03)                            # denser, in the same cells: no change
    assert len(schedule.plan().dirty) == 0
    schedule.record(added=cell_centres(24, start=100))                         # 24 new cells < 0.25 * 100
    assert len(schedule.plan().dirty) == 0
    schedule.record(added=cell_centres(1, start=124))                          # 25 changes since the run
    assert len(schedule.plan().dirty) == 4
    schedule.mark_run(plan)
    # emptying cells is a change too; evicting them is not
    schedule.record(evicted=cell_centres(50, start=75))
    assert len(schedule.plan().dirty) == 0
    schedule.record(removed=cell_centres(32))                                  # one of the two voxels of each
    assert len(schedule.plan().dirty) == 0
    schedule.record(removed=cell_centres(32) + 0.03)                 # the other: 32 cells emptied >= 0.25 * 125
    assert len(schedule.plan().dirty) == 4


def test_block_cap_runs_the_nearest_and_keeps_the_rest_pending():
    schedule = BlockSchedule(1.0, 0.5, min_points=1, dirty_fraction=0.0, min_changed=1, change_cell=0.125)
    schedule.record(added=np.concatenate([cell_centres(1, (0, 0)), cell_centres(1, (20, 0))]))
    plan = schedule.plan(origin=np.array([10.5, 0.3, 0.0]), max_blocks=4)
    assert {tuple(c) for c in plan.dirty} == {(19, -1), (19, 0), (20, -1), (20, 0)} and plan.pending == 4
    schedule.mark_run(plan)
    later = schedule.plan(origin=np.array([10.5, 0.3, 0.0]), max_blocks=4)
    assert {tuple(c) for c in later.dirty} == {(-1, -1), (-1, 0), (0, -1), (0, 0)} and later.pending == 0


def grid_points(low, high, step, z=None):
    """A regular grid of points on a horizontal (z given) or vertical x = const (z None: low/high are y, z) face."""
    a = np.arange(low[0] + step / 2, high[0], step)
    b = np.arange(low[1] + step / 2, high[1], step)
    aa, bb = np.meshgrid(a, b, indexing='ij')
    return aa.ravel(), bb.ravel()


def box_scene(box_y: float) -> np.ndarray:
    """Floor [-3, 3]^2 and a wall at x = 3 sampled every 2.5 cm (voxel centres stay put), a 0.4 m box standing at
    x [2.05, 2.45], y [box_y, box_y + 0.4] (floor under it left out)."""
    step = 0.025
    x, y = grid_points((-3.0, -3.0), (3.0, 3.0), step)
    under = (x > 2.05) & (x < 2.45) & (y > box_y) & (y < box_y + 0.4)
    floor = np.stack([x[~under], y[~under], np.zeros((~under).sum())], 1)
    wy, wz = grid_points((-3.0, 0.0), (3.0, 2.0), step)
    wall = np.stack([np.full(len(wy), 2.99), wy, wz], 1)
    faces = []
    bx, by = grid_points((2.05, box_y), (2.45, box_y + 0.4), step)
    faces.append(np.stack([bx, by, np.full(len(bx), 0.39)], 1))                       # top
    for fixed, axis in ((2.06, 0), (2.44, 0), (box_y + 0.01, 1), (box_y + 0.39, 1)):  # sides
        u, h = grid_points((box_y if axis == 0 else 2.05, 0.0), (box_y + 0.4 if axis == 0 else 2.45, 0.4), step)
        side = np.zeros((len(u), 3))
        side[:, axis], side[:, 1 - axis], side[:, 2] = fixed, u, h
        faces.append(side)
    return np.concatenate([floor, wall, *faces]).astype(np.float32)


def test_moving_a_box_marks_exactly_the_blocks_it_touches_and_their_neighbours(segmenter):
    config = MapConfig(voxel_size=0.05, radius=50.0, dirty_fraction=0.0, min_changed=1, change_cell=0.05)
    mapper = SemanticMapper(segmenter, config)
    origin = np.array([0.0, 0.0, 1.0])
    before = box_scene(0.05)
    grey = np.full((len(before), 3), 0.5, np.float32)
    first = mapper.update(before, grey, origin)
    assert first.blocks_run > 0 and first.blocks_dirty == mapper.schedule.num_blocks()
    static = mapper.update(before, grey, origin)
    assert (static.blocks_run, static.blocks_dirty, static.added, static.removed) == (0, 0, 0, 0)
    after = box_scene(1.55)
    plan_blocks = []
    original_plan = mapper.schedule.plan
    mapper.schedule.plan = lambda *a, **k: plan_blocks.append(original_plan(*a, **k)) or plan_blocks[-1]
    moved = mapper.update(after, np.full((len(after), 3), 0.5, np.float32), origin)
    plan = plan_blocks[0]
    # the box left tile (4, 0) (x 2.0-2.5, y 0-0.5) and stands in tile (4, 3) (y 1.5-2.0); a block (i, j) holds
    # tiles (i..i+1, j..j+1)
    dirty = {(3, -1), (3, 0), (4, -1), (4, 0), (3, 2), (3, 3), (4, 2), (4, 3)}
    assert {tuple(c) for c in plan.dirty} == dirty
    neighbours = {(i + a, j + b) for i, j in dirty for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert {tuple(c) for c in plan.run} == neighbours and len(neighbours) == 28
    # new box and floor voxels; the old box's voxels (seen twice: log-odds 1.69) need 5 misses to go
    assert moved.added > 0 and moved.removed == 0
    # the new box's voxels are labelled (they were segmented this frame)
    rows, found = mapper.voxels.find(after[after[:, 2] > 0.3])
    assert found.all() and (mapper.voxels['observations'][rows] > 0).all()


def test_free_space_test_removes_what_moved_and_keeps_grazing_floor():
    voxels = VoxelMap(0.05, 3, 0.5)
    origin = np.array([0.0, 0.0, 1.0])
    scene = box_scene(0.05)
    voxels.integrate(scene, np.zeros_like(scene), frame=1)
    far_floor = (np.hypot(*voxels['centroid'][:, :2].T) > 2.8) & (voxels['centroid'][:, 2] < 0.03)
    count_far = int(far_floor.sum())
    moved = box_scene(1.55)
    for frame in range(2, 6):
        voxels.clear_seen_through(origin, moved)
        voxels.integrate(moved, np.zeros_like(moved), frame)
    old_top = scene[(scene[:, 2] > 0.3) & (scene[:, 1] < 0.5) & (scene[:, 0] < 2.5)]       # the old box's top
    assert len(old_top) > 200 and not voxels.find(old_top)[1].any()
    centroids = voxels['centroid']
    assert int(((np.hypot(*centroids[:, :2].T) > 2.8) & (centroids[:, 2] < 0.03)).sum()) == count_far


def test_eviction_keeps_the_bound_and_the_current_frame():
    rng = np.random.default_rng(0)
    voxels = VoxelMap(0.1, 4, 0.5)
    for frame in range(1, 30):
        origin = np.array([0.5 * frame, 0.0, 0.0])
        points = (origin + rng.uniform(-2, 2, (3000, 3)) * [1, 1, 0.5]).astype(np.float32)
        voxels.integrate(points, np.zeros_like(points), frame)
        voxels.evict(origin, radius=3.0, max_voxels=4000, frame=frame)
        assert len(voxels) <= 4000
        assert np.hypot(*(voxels['centroid'][:, :2] - origin[:2]).T).max() <= 3.0
        rows, found = voxels.find(points)
        assert found.all()                                    # never the voxels the sensor sees now
    assert voxels['last_seen'].min() >= 20                   # the oldest went first


def test_map_bytes_follow_the_voxel_count(segmenter):
    mapper = SemanticMapper(segmenter, MapConfig())
    assert mapper.voxels.bytes_per_voxel() == 8 + 12 + 12 + 4 + 4 + 4 * len(segmenter.class_names) + 2 + 4 + 4 + 8
    scene = box_scene(0.05)
    mapper.update(scene, np.full((len(scene), 3), 0.5, np.float32), np.array([0.0, 0.0, 1.0]))
    assert mapper.voxels.table.nbytes() == len(mapper) * mapper.voxels.bytes_per_voxel()


# --- files ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def built_map(segmenter):
    mapper = SemanticMapper(segmenter, MapConfig())
    scene = box_scene(0.05)
    rng = np.random.default_rng(1)
    mapper.update(scene, rng.uniform(0, 1, (len(scene), 3)).astype(np.float32), np.array([0.0, 0.0, 1.0]))
    return mapper, scene


@pytest.mark.parametrize('suffix', ['.npz', '.ply'])
def test_save_load_round_trip(built_map, segmenter, tmp_path, suffix):
    mapper, scene = built_map
    path = tmp_path / f'map{suffix}'
    mapper.save(path)
    assert not list(tmp_path.glob('.map*'))                                  # atomic: no temp file left
    loaded = SemanticMapper(segmenter, MapConfig())
    loaded.load(path)
    np.testing.assert_array_equal(loaded.voxels.table.keys, mapper.voxels.table.keys)
    for name in mapper.voxels.table.columns:
        np.testing.assert_array_equal(loaded.voxels[name], mapper.voxels[name], err_msg=name)
    assert (loaded.frame, loaded.next_instance) == (mapper.frame, mapper.next_instance)
    for a, b in zip(loaded.lookup(scene), mapper.lookup(scene)):
        np.testing.assert_array_equal(a, b)
    # a loaded map counts as segmented: the same scene costs nothing
    assert loaded.update(scene, np.full((len(scene), 3), 0.5, np.float32), np.array([0.0, 0.0, 1.0])).blocks_run == 0


def test_ply_is_readable_as_plain_ply(built_map, tmp_path):
    mapper, _ = built_map
    path = tmp_path / 'map.ply'
    mapper.save(path)
    data = path.read_bytes()
    header = data[:data.index(b'end_header\n')].decode()
    assert f'element vertex {len(mapper)}' in header and 'property uchar red' in header
    assert 'property float x' in header.splitlines()[4]


def test_bad_map_files_are_named(built_map, segmenter, tmp_path):
    mapper, _ = built_map
    fresh = SemanticMapper(segmenter, MapConfig())
    with pytest.raises(FileNotFoundError, match='no_map.npz: no such map file'):
        fresh.load(tmp_path / 'no_map.npz')
    with pytest.raises(MapFileError, match=r"map.pcd: map files are \.npz or \.ply"):
        fresh.load(tmp_path / 'map.pcd')
    garbage = tmp_path / 'garbage.npz'
    garbage.write_bytes(b'not a zip at all')
    with pytest.raises(MapFileError, match='garbage.npz: not a readable .npz map'):
        fresh.load(garbage)
    other = tmp_path / 'other.npz'
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(MapFileError, match="other.npz: not a map file \\('header' missing\\)"):
        fresh.load(other)
    good = tmp_path / 'good.ply'
    mapper.save(good)
    truncated = tmp_path / 'truncated.ply'
    truncated.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(MapFileError, match='truncated.ply: truncated or padded'):
        fresh.load(truncated)
    plain = tmp_path / 'plain.ply'
    plain.write_bytes(b'ply\nformat ascii 1.0\nelement vertex 0\nend_header\n')
    with pytest.raises(MapFileError, match='plain.ply: only binary little-endian'):
        fresh.load(plain)
    coarse = SemanticMapper(segmenter, MapConfig(voxel_size=0.1))
    with pytest.raises(MapFileError, match=r'good.ply: voxel size 0.05 m, but the map is configured with 0.1 m'):
        coarse.load(good)
    assert len(fresh) == 0 and len(coarse) == 0                             # nothing half-loaded


# --- the frame path's subset hook ----------------------------------------------------------------------------

def test_all_blocks_through_segment_partition_equal_segment(segmenter):
    rng = np.random.default_rng(3)
    xyz = np.concatenate([box_scene(0.05)[::3], rng.uniform([-2, -2, 0], [2, 2, 2], (3000, 3))]).astype(np.float32)
    colours = rng.uniform(0, 1, (len(xyz), 3)).astype(np.float32)
    whole = segmenter.segment(xyz, colours)
    partition = layout_partition(torch.from_numpy(xyz), segmenter.layout, segmenter.block_size, segmenter.stride,
                                 segmenter.min_block_points, True, max(segmenter.point_buckets))
    subset = segmenter.segment_partition(xyz, colours, partition)
    np.testing.assert_array_equal(subset.labels, whole.labels)
    np.testing.assert_array_equal(subset.instances, whole.instances)
    assert subset.num_blocks == whole.num_blocks
    np.testing.assert_allclose(subset.probabilities.max(1), whole.scores, atol=1e-6)
    np.testing.assert_array_equal(subset.probabilities.argmax(1), whole.labels)
